"""The partition's scene list (``scene_query="partition"``): one list query per fetch, each tile's
scenes derived from the footprints, the same provenance as one scene query per block."""

from __future__ import annotations

import pytest

from rs_embed_pipeline.core.grid import Tile
from rs_embed_pipeline.providers.gee import S1_FLOAT_COLLECTION, S2_COLLECTION
from rs_embed_pipeline.providers.gee import scenes as scene_module
from rs_embed_pipeline.providers.gee.estimate import estimate_fetch
from rs_embed_pipeline.providers.gee.scenes import Chunk, chunk_tiles, scene_lists

from . import ee_standin as S
from .gee_fetch import fetch

pytestmark = pytest.mark.usefixtures("gee_env")

# an 8 x 6 grid of 160 m tiles near (13.80 E, 41.54 N), UTM 33N
ROWS = S.tile_rows(8, 6)
LON0, LAT0, LON1, LAT1 = S._to_lonlat("EPSG:32633", (ROWS[0]["x0"], ROWS[-1]["y0"] - 160.0,
                                                     ROWS[7]["x0"] + 160.0, ROWS[0]["y0"]))
DLON, DLAT = LON1 - LON0, LAT1 - LAT0


def _at(fx: float, fy: float) -> tuple[float, float]:
    """A lon/lat point at fractions (fx, fy) of the grid's lon/lat box."""
    return (LON0 + fx * DLON, LAT0 + fy * DLAT)


def _provenance(patches: dict) -> dict:
    keys = ("scene_ids", "image_count", "filters", "iw_relaxed", "s1_iw_applied")
    return {tid: (p.status, {k: p.meta.get(k) for k in keys}) for tid, p in patches.items()}


def _s2_catalog() -> S.Catalog:
    return S.Catalog({S2_COLLECTION: [
        S.s2_image("ALL", "2024-01-10"),                                             # no footprint
        S.s2_image("WEST", "2024-01-20", footprint=(LON0 - 1, LAT0 - 1, LON0 + 0.3 * DLON, LAT1 + 1)),
        S.s2_image("TRIANGLE", "2024-02-01", footprint=[_at(0.2, 0.1), _at(0.9, 0.2), _at(0.5, 0.9)]),
        S.s2_image("DIAMOND", "2024-02-11", footprint=[_at(0.7, 0.5), _at(0.85, 0.3), _at(1.0, 0.5),
                                                       _at(0.85, 0.7)]),
        S.s2_image("FAR", "2024-02-21", footprint=(LON0 + 1, LAT0 + 1, LON0 + 2, LAT0 + 2)),
        S.s2_image("CLOUDY", "2024-03-01", cloudy=80.0, footprint=(LON0 - 1, LAT0 - 1, LON1 + 1, LAT1 + 1)),
    ]})


def test_partition_list_gives_the_per_block_provenance_s2(standin, make_provider):
    standin.catalog = _s2_catalog()
    old = fetch(make_provider(scene_query="block"), ROWS, bands=["B2"])
    old_values = len(standin.value_requests)
    standin.reset_records()
    provider = make_provider()
    new = fetch(provider, ROWS, bands=["B2"])
    assert _provenance(new) == _provenance(old)
    assert len(standin.value_requests) == 1 < old_values
    assert provider.stats()["value_requests"] == 1
    # the catalog's footprints make distinct lists (the comparison is not vacuous)
    lists = {tuple(p.meta["scene_ids"]) for p in new.values()}
    assert ("ALL", "WEST") in lists and ("ALL", "TRIANGLE") in lists and ("ALL",) in lists
    assert any("DIAMOND" in ids for ids in lists) and not any("FAR" in ids or "CLOUDY" in ids for ids in lists)
    # one tile by hand: the north-west corner is in WEST only (besides ALL)
    assert new[ROWS[0]["tile_id"]].meta["scene_ids"] == ["ALL", "WEST"]


def test_partition_list_gives_the_per_block_provenance_s1(standin, make_provider):
    standin.catalog = S.Catalog({S1_FLOAT_COLLECTION: [
        S.s1_image("IW_WEST", "2024-01-10", footprint=(LON0 - 1, LAT0 - 1, LON0 + 0.4 * DLON, LAT1 + 1)),
        S.s1_image("EW_ALL", "2024-01-12", mode="EW"),
        S.s1_image("EW_SOUTH", "2024-01-14", mode="EW", footprint=[_at(-0.1, -0.1), _at(1.1, -0.1),
                                                                   _at(1.1, 0.45), _at(-0.1, 0.45)]),
        S.s1_image("IW_VV", "2024-01-16", pols=("VV",)),   # not dual-pol: never listed
        S.s1_image("IW_EAST_DESC", "2024-01-18", orbit="DESCENDING",
                   footprint=(LON0 + 0.8 * DLON, LAT0 - 1, LON1 + 1, LAT1 + 1)),
    ]})
    for options in ({}, {"orbit": "ASCENDING"}, {"relax_iw_on_empty": False}, {"require_iw": False}):
        standin.reset_records()
        old = fetch(make_provider(scene_query="block"), ROWS, modality="s1", **options)
        standin.reset_records()
        new = fetch(make_provider(), ROWS, modality="s1", **options)
        assert _provenance(new) == _provenance(old), options
        assert len(standin.value_requests) == 1
    # the default options: IW tiles west, relaxed (EW) tiles east, IW_EAST_DESC on the east edge
    new = fetch(make_provider(), ROWS, modality="s1")
    west, east = new[ROWS[0]["tile_id"]].meta, new[ROWS[-1]["tile_id"]].meta
    assert west["iw_relaxed"] is False and west["scene_ids"] == ["IW_WEST"]
    assert east["iw_relaxed"] is False and east["scene_ids"] == ["IW_EAST_DESC"]
    middle = new[ROWS[8 * 5 + 5]["tile_id"]].meta  # south row, column 5: only EW scenes
    assert middle["iw_relaxed"] is True and middle["scene_ids"] == ["EW_ALL", "EW_SOUTH"]


def test_footprint_edges_are_geodesic(standin, make_provider):
    # a footprint whose northern edge runs 2 degrees east-west, its straight lon/lat line 110 m
    # south of the tile: the great circle bows ~480 m north, into the tile (Earth Engine's rule)
    row = S.tile_rows(1)[0]
    lon_a, lat_a, lon_b, _ = S._to_lonlat("EPSG:32633", (row["x0"], row["y0"] - 160.0, row["x0"] + 160.0, row["y0"]))
    mid, top = (lon_a + lon_b) / 2, lat_a - 0.001
    ring = [(mid - 1, top - 0.5), (mid + 1, top - 0.5), (mid + 1, top), (mid - 1, top)]
    standin.catalog = S.Catalog({S2_COLLECTION: [S.s2_image("ARC", "2024-02-01", footprint=ring)]})
    old = fetch(make_provider(scene_query="block"), [row], bands=["B2"])
    new = fetch(make_provider(), [row], bands=["B2"])
    assert old[row["tile_id"]].meta["scene_ids"] == ["ARC"]  # the stand-in, as Earth Engine
    assert _provenance(new) == _provenance(old)
    # with straight lon/lat edges the tile would be outside
    planar = {"type": "Polygon", "coordinates": [[list(p) for p in ring + ring[:1]]], "geodesic": False}
    tile = Tile.from_row(row)
    assert scene_lists(Chunk(32633, (tile,)), [[["ARC", planar]]]) == {row["tile_id"]: [[]]}


def test_partition_list_graph(standin, make_provider):
    standin.catalog = _s2_catalog()
    rows = S.tile_rows(3, 2)
    fetch(make_provider(), rows, bands=["B2"])
    [req] = standin.value_requests
    tree = req.tree
    [rect] = S.find_calls(tree, "GeometryConstructors.Rectangle")
    assert rect["coordinates"] == [rows[0]["x0"], rows[-1]["y0"] - 160.0, rows[2]["x0"] + 160.0, rows[0]["y0"]]
    assert rect["crs"] == {"fn": "Projection", "args": {"crs": "EPSG:32633"}} and rect["geodesic"] is False
    [cols] = S.find_calls(tree, "Collection.reduceColumns")
    assert cols["selectors"] == ["system:index", "system:footprint"]
    assert cols["reducer"] == {"fn": "Reducer.toList", "args": {"tupleSize": 2, "numOptional": 1}}
    [gt] = S.find_calls(tree, "Filter.greaterThan")
    assert (gt["leftField"], gt["rightValue"]) == ("CLOUDY_PIXEL_PERCENTAGE", 30)
    [limit] = S.find_calls(tree, "Collection.limit")
    assert limit == {"collection": limit["collection"], "limit": scene_module.MAX_ROWS_PER_CHUNK + 1}


def test_chunks_split_by_zone_and_size_and_when_the_list_is_too_long(standin, make_provider, monkeypatch):
    tiles = [Tile.from_row(r) for r in S.tile_rows(3) + S.tile_rows(2, epsg=32634)]
    chunks = chunk_tiles(tiles, chunk_km=0.32)  # 320 m squares: 2 tiles of 160 m each
    assert [(c.epsg, len(c.tiles)) for c in chunks] == [(32633, 2), (32633, 1), (32634, 2)]
    assert chunks[0].bounds() == [400000.0, 4599840.0, 400320.0, 4600000.0]
    # more rows than a chunk may hold: the chunk is asked again as two halves
    standin.catalog = _s2_catalog()
    monkeypatch.setattr(scene_module, "MAX_ROWS_PER_CHUNK", 3)
    old = fetch(make_provider(scene_query="block"), ROWS, bands=["B2"])
    standin.reset_records()
    provider = make_provider()
    new = fetch(provider, ROWS, bands=["B2"])
    assert _provenance(new) == _provenance(old)
    assert len(standin.value_requests) > 1 and provider.stats()["splits"] >= 1


def test_a_too_large_list_answer_is_asked_in_halves(standin, make_provider):
    standin.catalog = _s2_catalog()
    old = fetch(make_provider(scene_query="block"), ROWS, bands=["B2"])
    standin.reset_records()
    first = [True]

    def hook(rec: S.Recorded) -> S.Fault | None:
        if rec.kind == "value" and first[0]:
            first[0] = False
            return S.Fault(400, "User memory limit exceeded.")
        return None
    standin.fault_hook = hook
    new = fetch(make_provider(), ROWS, bands=["B2"])
    assert _provenance(new) == _provenance(old)
    assert [r.status for r in standin.value_requests] == [400, 200, 200]


def test_unknown_footprint_falls_back_to_per_block_queries(standin, make_provider, monkeypatch):
    standin.catalog = _s2_catalog()
    old = fetch(make_provider(scene_query="block"), ROWS, bands=["B2"])
    standin.reset_records()
    monkeypatch.setattr(S.FakeImage, "footprint_geojson",
                        lambda self: None if self.footprint is None else {"type": "Point", "coordinates": [0, 0]})
    with pytest.raises(scene_module.FootprintError, match="Point"):
        scene_module.footprint_rings({"type": "Point", "coordinates": [0, 0]})
    # the stand-in's own filter cannot read a Point either: compare request counts only
    monkeypatch.setattr(S, "_intersects", lambda ev, **kw: S.SFilter(lambda im: True, "any"))
    monkeypatch.setitem(S.ALGORITHMS, "Filter.intersects", lambda ev, **kw: S.SFilter(lambda im: True, "any"))
    new = fetch(make_provider(), ROWS, bands=["B2"])
    n_blocks = len(standin.pixel_requests)
    assert len(standin.value_requests) == 1 + n_blocks  # the list, then one query per block
    assert set(new) == set(old)


def test_provider_refuses_an_unknown_scene_query(make_provider):
    from rs_embed_pipeline.providers import ProviderError

    with pytest.raises(ProviderError, match=r"scene_query must be one of \['partition', 'block'\], got 'tile'"):
        make_provider(scene_query="tile")


def test_estimate_for_a_build_plan():
    est = estimate_fetch(10_000, size_px=224, bands=12, concurrency=40, rate_per_s=100, latency_s=2.0)
    assert est.tiles_per_request == 16 and est.pixel_requests == 625 and est.scene_queries == 1
    assert est.requests_per_tile == 0.0626 <= 0.07
    assert est.requests_per_second == 20.0 and est.seconds == pytest.approx(626 / 20.0)
    assert est.label.startswith("estimate: 2 s per request assumed")
    mosaic = estimate_fetch(10_000, size_px=224, bands=12, dtype="uint16", partitions=4, efficiency=0.5)
    assert mosaic.tiles_per_request == 26 and mosaic.pixel_requests == 385 and mosaic.scene_queries == 4
    assert mosaic.requests_per_second == 10.0 and mosaic.seconds == pytest.approx(389 / 10.0)
    small = estimate_fetch(100, size_px=224, bands=12, rate_per_s=5, latency_s=1.0)
    assert small.tiles_per_request == 3 and small.requests_per_second == 5.0  # ceil(100 / 40): every slot
    assert small.seconds == pytest.approx(35 / 5.0)
    with pytest.raises(Exception, match=r"dtype must be one of \['float32', 'uint16'\], got 'int8'"):
        estimate_fetch(10, size_px=224, bands=12, dtype="int8")
