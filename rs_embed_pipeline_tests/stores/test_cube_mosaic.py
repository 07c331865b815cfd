"""The mosaic reader over the cubes of a split region (stores/cube/mosaic.py): values equal to
each cell's cube (float32 exactly, int8 de-quantized like open_cube), windows filled in some
cells only, two UTM zones, a bbox that reads only the chunks under it, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from zarr.storage import LocalStore

from rs_embed_pipeline.stores.cube.mosaic import list_cubes, open_mosaic, open_mosaics
from rs_embed_pipeline.stores.cube.reader import CubeReadError, open_cube
from rs_embed_pipeline_tests.stores import cells as C


INSIDE_ONE_TILE = (101_460, 161_300, 101_740, 161_580)  # UTM 32N metres: inside tile (317, 505)


def lonlat(epsg: int, x: float, y: float) -> tuple[float, float]:
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    return float(lon), float(lat)


def zone_bbox(epsg: int, xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, ...]:
    """A lon / lat bbox inside the UTM rectangle (its corners' inner envelope)."""
    corners = [lonlat(epsg, x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    lons, lats = sorted(c[0] for c in corners), sorted(c[1] for c in corners)
    return lons[1], lats[1], lons[2], lats[2]


def assert_matches_cubes(mosaic, uris: dict[str, str], kind: str, epsg: int) -> None:
    """Every cube of the zone reads the same values through the mosaic as through open_cube, and
    an unfilled window of a cube reads NaN there."""
    for name, uri in uris.items():
        if f"-{epsg % 100}N-" not in name:
            continue
        cube = open_cube(uri, kind=kind)
        part = mosaic["embedding"].sel(x=cube["x"], y=cube["y"])
        for t in mosaic["time"].values:
            got = part.sel(time=t).values
            if t in cube["time"].values:
                want = cube["embedding"].sel(time=t).values
                assert got.dtype == np.float32 and np.array_equal(got, want, equal_nan=True), (name, t)
                assert np.isfinite(want).any() and np.isnan(want).any()  # real values and the missing tile
            else:
                assert np.isnan(got).all(), (name, t)


@pytest.mark.parametrize("quantization", ["none", "int8_per_cell", "int8_per_feature"])
def test_mosaic_equals_every_cells_cube(tmp_path: Path, quantization: str) -> None:
    """Four cells of zone 32N as one mosaic: one lattice (160 m grid cells, 320 m pooled cells), the
    union of the cells' extents, each cell's values exactly as open_cube gives them (int8:
    de-quantized the same way), window 1 filled in three cells of four (NaN in the fourth)."""
    uris = C.write_build(tmp_path, quantization=quantization)
    for kind, cell_m in (("grid", 160.0), ("pooled", 320.0)):
        ds = open_mosaic(str(tmp_path), region="demo", kind=kind, zone=32632)
        assert [str(t)[:10] for t in ds["time"].values] == C.STARTS[:2]
        assert ds["cells_filled"].values.tolist() == [4, 3]
        assert ds.attrs["zone"] == "EPSG32632" and ds.attrs["cube_kind"] == kind
        assert ds.attrs["mosaic_cubes"] == sorted(n for n in uris if "-32N-" in n)
        assert ds["embedding"].dims == ("time", "y", "x", "feature") and ds["embedding"].dtype == np.float32
        assert np.allclose(np.diff(ds["x"].values), cell_m) and np.allclose(np.diff(ds["y"].values), -cell_m)
        # The four cells' tiles: columns 312..318 and rows 501..506 of the 320 m lattice.
        assert ds["x"].values[0] == 312 * 320 + cell_m / 2 and ds["y"].values[0] == 506 * 320 - cell_m / 2
        assert (ds.sizes["x"], ds.sizes["y"]) == (7 * 320 / cell_m, 6 * 320 / cell_m)
        first = open_cube(uris["demo-32N-E0100-N00161"], kind=kind)
        assert ds["spatial_ref"].attrs["crs_wkt"] == first["spatial_ref"].attrs["crs_wkt"]
        assert ds["spatial_ref"].attrs["GeoTransform"] == f"{312 * 320.0} {cell_m} 0.0 {506 * 320.0} 0.0 {-cell_m}"
        assert_matches_cubes(ds, uris, kind, 32632)
        if quantization != "none":
            assert ds["embedding"].attrs["dequantized_from"] == quantization


def test_two_zones_and_the_area(tmp_path: Path) -> None:
    """An area across the zone 32/33 boundary: open_mosaic names both zones, open_mosaics returns
    both; a bbox in one cell gives that cell's tiles only; a window filled nowhere is refused
    naming the filled windows."""
    uris = C.write_build(tmp_path)
    west = lonlat(32632, 100_500, 160_500)
    east = lonlat(32633, 100_500, 160_500)
    wide = (west[0] - 0.01, west[1] - 0.01, east[0] + 0.01, east[1] + 0.01)
    with pytest.raises(CubeReadError, match=r"^The area spans several UTM zones \(EPSG32632, EPSG32633\); pass zone="):
        open_mosaic(str(tmp_path), bbox=wide)
    both = open_mosaics(str(tmp_path), region="demo", kind="pooled", bbox=wide)
    assert list(both) == ["EPSG32632", "EPSG32633"]
    assert both["EPSG32633"].attrs["mosaic_cubes"] == ["demo-33N-E0100-N00160"]
    assert_matches_cubes(both["EPSG32633"], uris, "pooled", 32633)
    # A bbox inside one tile (317, 505) of cell (101, 161) (tiles 316-318 x 504-506), cropped to the area.
    small = zone_bbox(32632, *INSIDE_ONE_TILE)
    ds = open_mosaic(str(tmp_path), bbox=small, kind="pooled")
    assert ds.attrs["mosaic_cubes"] == ["demo-32N-E0101-N00161"]
    assert ds["x"].values.tolist() == [317 * 320 + 160] and ds["y"].values.tolist() == [505 * 320 - 160]
    polygon = shapely.box(*small).buffer(0.0001)
    assert open_mosaic(str(tmp_path), geometry=polygon, kind="pooled").attrs["mosaic_cubes"] == ["demo-32N-E0101-N00161"]
    with pytest.raises(CubeReadError, match=r"^Window\(s\) 2024-07-01 are filled in no cube of the area; filled "
                                            r"windows: 2024-01-01$"):
        open_mosaic(str(tmp_path), bbox=small, windows=["2024-01-01", "2024-07-01"])


def test_bad_arguments_name_the_valid_choices(tmp_path: Path) -> None:
    C.write_build(tmp_path)
    with pytest.raises(CubeReadError, match=r"^kind 'tiles' is not a cube group kind; valid kinds: grid, pooled$"):
        open_mosaic(str(tmp_path), kind="tiles")
    with pytest.raises(CubeReadError, match=r"^bbox must be \(min lon, min lat, max lon, max lat\) with min < max"):
        open_mosaic(str(tmp_path), bbox=(6.0, 46.0, 5.0, 47.0))
    with pytest.raises(CubeReadError, match=r"^The mosaic has no zone 'EPSG32631' in this area; its zones: "
                                            r"EPSG32632, EPSG32633$"):
        open_mosaic(str(tmp_path), zone=32631)
    with pytest.raises(CubeReadError, match=r"^No cube of region 'alps' in "):
        open_mosaic(str(tmp_path), region="alps")
    with pytest.raises(CubeReadError, match=r"^window '2024-13-01' is not a window start YYYY-MM-DD$"):
        open_mosaic(str(tmp_path), windows="2024-13-01")
    assert [u.rsplit("/", 1)[-1] for u in list_cubes(str(tmp_path), region="demo")][:2] == [
        "demo-32N-E0100-N00160.zarr", "demo-32N-E0100-N00161.zarr"]


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(key, bytes) of every read LocalStore answers."""
    reads: list[tuple[str, int]] = []
    original = LocalStore.get

    async def recording_get(self, key, prototype=None, byte_range=None):
        out = await original(self, key, prototype, byte_range)
        reads.append((key, 0 if out is None else len(out)))
        return out

    monkeypatch.setattr(LocalStore, "get", recording_get)
    return reads


@pytest.mark.parametrize("layout", ["chunked", "sharded"])
def test_a_bbox_reads_only_the_chunks_under_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """Computing a one-window mosaic of a bbox inside one tile reads that tile's grid chunk of
    that window and no other embedding data: chunked, the tile's object; sharded, the shard's
    index and the tile's inner chunk (two byte ranges of the window's one object)."""
    uris = C.write_build(tmp_path, layout=layout)
    small = zone_bbox(32632, *INSIDE_ONE_TILE)
    ds = open_mosaic(str(tmp_path), bbox=small, windows="2024-01-01")
    reads = record_reads(monkeypatch)
    values = ds["embedding"].values
    assert values.shape == (1, 2, 2, C.D_GRID) and np.isfinite(values).all()
    data = [(k, n) for k, n in reads if "/embedding/" in k and "/c/" in k]
    if layout == "chunked":
        assert [k for k, _ in data] == ["EPSG32632/grid/embedding/c/0/1/1/0"], data
    else:
        shard = tmp_path / "demo-32N-E0101-N00161.zarr/EPSG32632/grid/embedding/c/0/0/0/0"
        index_bytes = 16 * 3 * 3 + 4  # 3 x 3 tiles: (offset, length) per inner chunk + crc32c
        assert [k for k, _ in data] == ["EPSG32632/grid/embedding/c/0/0/0/0"] * 2, data
        assert data[0][1] == index_bytes and data[1][1] < (shard.stat().st_size - index_bytes) / 4
    cube = open_cube(uris["demo-32N-E0101-N00161"])
    want = cube["embedding"].sel(time="2024-01-01", x=ds["x"], y=ds["y"]).values
    assert np.array_equal(values[0], want)
