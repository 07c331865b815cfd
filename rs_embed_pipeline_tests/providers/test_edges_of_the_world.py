"""Issue #22 case 7 on the STAC providers: tiles in Norway's UTM exception read the scenes of
their Sentinel-2 zone without a warp; a block across the anti-meridian groups scenes by its own
solar day; a same-day plane takes a scene's pixels only inside that scene's footprint.

The items are the synthetic Earth Search C1 items of the conftest (field for field as Earth
Search serves them); only times, ids and footprints are changed where a case needs it."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
import shapely.affinity
import shapely.geometry
from shapely.geometry import MultiPolygon, box

from rs_embed_pipeline.core.grid import Tile, bbox_aoi, build_tile_grid
from rs_embed_pipeline.providers import LocalStacProvider
from rs_embed_pipeline.providers.blocks import group_blocks
from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog
from rs_embed_pipeline.providers.stac.reads import block_longitude

from .conftest import earth_search_items, static_catalog

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]

KW = dict(s2_collection="sentinel-2-c1-l2a", s1_collection=None, cloudy_pct=None, max_workers=1)


def test_norway_tiles_read_the_32v_scenes_natively(tmp_path):
    bbox = (5.30, 60.38, 5.315, 60.39)  # Bergen: MGRS 32V, west of the standard zone 32 (6 E)
    cat = generate_synthetic_catalog(tmp_path / "bergen", bbox, "2024-06-01", "2024-06-11", s1=False,
                                     s2_revisit_days=5)
    items, _ = earth_search_items(cat)
    assert {d["properties"]["proj:epsg"] for d in items} == {32632}  # the scenes' own zone
    tiles = build_tile_grid(bbox_aoi(*bbox), 32, 10.0)
    assert set(tiles["utm_epsg"]) == {32632}
    patches = list(LocalStacProvider(cat).fetch_patches(tiles, "2024-06-01", "2024-06-11", "s2",
                                                         bands=["B2", "B5"]))
    assert patches and all(p.status == "ok" for p in patches)
    for p in patches:
        assert p.meta["crs"] == "EPSG:32632"
        assert p.meta["reader"] == "rasterio windows"  # nested grids: no warp
        assert p.meta["n_dates"] == 2


def _lonlat_footprint(x0: float, y0: float, x1: float, y1: float, epsg: int):
    """A UTM box as a GeoJSON footprint split at +-180 (RFC 7946), as catalogs write them."""
    ring = shapely.segmentize(box(x0, y0, x1, y1), 50.0)
    tr = pyproj.Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    ll = shapely.transform(ring, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    unwrapped = shapely.transform(ll, lambda xy: np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360, xy[:, 0]),
                                                                   xy[:, 1]]))
    west = unwrapped.intersection(box(0, -90, 180, 90))
    east = shapely.affinity.translate(unwrapped.intersection(box(180, -90, 360, 90)), xoff=-360)
    parts = [g for g in (west, east) if not g.is_empty]
    geom = MultiPolygon(parts) if len(parts) > 1 else parts[0]
    return shapely.geometry.mapping(geom), list(geom.bounds)


def test_a_block_across_the_antimeridian_gets_its_own_solar_day(tmp_path):
    """Two passes 2.5 h apart around 00:00 UTC at 180 E fall on one local day (11 Jan, about
    10:30 and 13:00 solar time): one plane. The old shift came from the centroid of the tile
    footprints split at +-180 (near 0 E: shift 0) and split them into 10 and 11 Jan."""
    aoi = box(179.990, -16.80, 179.99999, -16.797)
    cat = generate_synthetic_catalog(tmp_path / "fiji", (179.990, -16.80, 179.99999, -16.797),
                                     "2024-01-01", "2024-01-02", s1=False, pad_m=600)
    [src], _ = earth_search_items(cat)
    grid = build_tile_grid(aoi, 52, 10.0)  # 52 px: 180 E cuts these tiles about in half
    crossing = grid[grid.geometry.geom_type == "MultiPolygon"]
    assert len(crossing) >= 1 and set(grid["utm_epsg"]) == {32760}
    # the crossing tile with the most even split: its footprint's centroid lies near 0 E, so the
    # old shift, int(centroid / 15) hours, was 0
    tile = crossing.iloc[[int(np.argmin([abs(g.centroid.x) for g in crossing.geometry]))]]
    assert abs(tile.geometry.iloc[0].centroid.x) < 15
    [block] = group_blocks([Tile.from_row(tile.iloc[0])])
    assert abs(block_longitude(block)) == pytest.approx(180.0, abs=0.01)
    with rasterio.open(src["assets"]["blue"]["href"]) as ds:
        x0, y0, x1, y1 = ds.bounds
    geometry, bounds = _lonlat_footprint(x0, y0, x1, y1, 32760)
    items = []
    for i, when in enumerate(("2024-01-10T22:30:00Z", "2024-01-11T01:00:00Z")):
        d = copy.deepcopy(src)
        d["id"] = f"S2B_60KYF_20240111_{i}_L2A_pass{i}"
        d["properties"]["datetime"] = when
        d["geometry"], d["bbox"] = geometry, bounds
        items.append(d)
    cat2 = static_catalog(items, tmp_path / "fiji_items")
    [p] = LocalStacProvider(cat2, **KW).fetch_patches(tile, "2024-01-10", "2024-01-12", "s2", bands=["B2"])
    assert p.status == "ok" and p.meta["image_count"] == 2
    assert p.meta["n_dates"] == 1  # one solar day (11 Jan local), not two UTC days
    assert p.meta["dates"] == ["2024-01-10"]  # the plane's time: its first acquisition, in UTC


def test_a_same_day_scene_brings_no_pixels_where_its_footprint_misses_the_tile(synthetic_catalog, inner_tiles,
                                                                              tmp_path):
    """Two scenes of one solar day whose rasters both cover two tiles, each footprint over one
    tile: each tile takes the pixels of its own scene only, in a block read as alone."""
    items, _ = earth_search_items(synthetic_catalog)
    src = sorted(items, key=lambda d: d["properties"]["datetime"])[0]
    west, east = inner_tiles.iloc[0], inner_tiles.iloc[1]
    assert west.geometry.bounds[0] < east.geometry.bounds[0]

    def scene(i: int, tile, shift: int, when: str) -> dict:
        d = copy.deepcopy(src)
        d["id"] = f"{src['id']}_{i}"
        d["properties"]["datetime"] = when
        d["geometry"] = shapely.geometry.mapping(tile.geometry.buffer(-1e-5))  # a simplified footprint
        d["bbox"] = list(tile.geometry.bounds)
        with rasterio.open(d["assets"]["red"]["href"]) as ds:
            profile, arr = ds.profile, ds.read(1)
        profile.update(driver="GTiff")
        path = tmp_path / f"red_{i}.tif"
        with rasterio.open(path, "w", **profile) as out:
            out.write(np.where(arr > 0, arr + shift, 0).astype(arr.dtype), 1)
        d["assets"]["red"]["href"] = str(path)
        return d

    day = src["properties"]["datetime"][:10]
    a = scene(0, west, 0, f"{day}T10:00:00Z")
    b = scene(1, east, 7, f"{day}T10:00:05Z")  # the next granule of the same pass, other DN
    tiles = inner_tiles.iloc[[0, 1]]
    s, e = day, str(dt.date.fromisoformat(day) + dt.timedelta(days=1))
    both = static_catalog([a, b], tmp_path / "both")
    got = {p.tile_id: p for p in LocalStacProvider(both, **KW).fetch_patches(tiles, s, e, "s2", bands=["B4"],
                                                                              composite="mosaic")}
    alone = {}
    for d, t in ((a, west), (b, east)):
        [p] = LocalStacProvider(static_catalog([d], tmp_path / d["id"]), **KW).fetch_patches(
            inner_tiles.iloc[[int(np.flatnonzero(inner_tiles["tile_id"] == t["tile_id"])[0])]], s, e, "s2",
            bands=["B4"], composite="mosaic")
        alone[t["tile_id"]] = p
    assert got[west["tile_id"]].meta["scene_ids"] == [a["id"]]
    assert got[east["tile_id"]].meta["scene_ids"] == [b["id"]]
    for tid, p in got.items():
        assert p.status == "ok" and p.meta["n_dates"] == 1
        np.testing.assert_array_equal(p.data, alone[tid].data)  # the east tile: b's DN (+7), not a's
        np.testing.assert_array_equal(p.valid, alone[tid].valid)
