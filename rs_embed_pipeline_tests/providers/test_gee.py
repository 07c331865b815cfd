"""GEEProvider against the Earth Engine REST stand-in: grid, bands, NPY, masks, composites,
collections and filters (the real ``ee`` client builds and sends every request)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from rs_embed_pipeline.providers import ProviderError
from rs_embed_pipeline.providers.gee import (
    S1_DB_COLLECTION,
    S1_FLOAT_COLLECTION,
    S2_CLAMP,
    S2_CLOUD_SCORE_PLUS_COLLECTION,
    S2_COLLECTION,
    VALID_BAND,
)
from rs_embed_pipeline.providers.gee.scenes import scene_dates

from . import ee_standin as S
from .gee_fetch import Q1, fetch

pytestmark = pytest.mark.usefixtures("gee_env")


# ------------------------------------------------------------------------------------------ grid


def test_grid_crs_affine_and_tile_cut(standin, make_provider):
    rows = S.tile_rows(3, 2, size_px=16, epsg=32633)
    provider = make_provider(max_concurrent_requests=1)  # one slot: all six tiles in one request
    patches = fetch(provider, rows, bands=["B4"])

    [req] = standin.pixel_requests
    grid = req.grid
    assert grid["crsCode"] == "EPSG:32633"
    assert grid["dimensions"] == {"width": 48, "height": 32}
    assert grid["affineTransform"] == {
        "scaleX": 10.0, "shearX": 0.0, "translateX": min(r["x0"] for r in rows),
        "shearY": 0.0, "scaleY": -10.0, "translateY": max(r["y0"] for r in rows),
    }
    assert req.body["fileFormat"] == "NPY"
    for row in rows:  # each tile cut from the right place of the block, north-up
        p = patches[row["tile_id"]]
        assert p.status == "ok"
        assert p.data.shape == (1, 16, 16) and p.data.dtype == np.float32
        np.testing.assert_array_equal(p.data[0], S.expected_band(row, S.S2_BASE["B4"]))
        assert p.valid.all()
        assert p.meta["crs"] == "EPSG:32633"
        assert p.meta["transform"] == [10.0, 0.0, row["x0"], 0.0, -10.0, row["y0"]]
        assert p.meta["request"]["tiles_in_request"] == 6


def test_single_tile_grid_other_zone_and_scale(standin, make_provider):
    rows = S.tile_rows(1, size_px=12, scale_m=20.0, epsg=32718)
    patches = fetch(make_provider(), rows, bands=["B11"])
    [req] = standin.pixel_requests
    assert req.grid["crsCode"] == "EPSG:32718"
    a = req.grid["affineTransform"]
    assert (a["scaleX"], a["scaleY"], a["translateX"], a["translateY"]) == (20.0, -20.0, rows[0]["x0"], rows[0]["y0"])
    assert req.grid["dimensions"] == {"width": 12, "height": 12}
    np.testing.assert_array_equal(patches[rows[0]["tile_id"]].data[0],
                                  S.expected_band(rows[0], S.S2_BASE["B11"]))


def test_tiles_of_different_zones_are_never_batched(standin, make_provider):
    rows = S.tile_rows(2, epsg=32632) + S.tile_rows(2, epsg=32633)
    fetch(make_provider(max_concurrent_requests=1), rows, bands=["B2"])
    crs = sorted(r.grid["crsCode"] for r in standin.pixel_requests)
    assert crs == ["EPSG:32632", "EPSG:32633"]
    assert all(r.grid["dimensions"]["width"] == 32 for r in standin.pixel_requests)


# ---------------------------------------------------------------------------- bands and NPY


def test_band_order_and_npy_conversion(standin, make_provider):
    bands = ["B12", "B2", "B8A", "B1"]
    rows = S.tile_rows(2)
    patches = fetch(make_provider(), rows, bands=bands)
    for req in standin.pixel_requests:
        assert req.band_names == bands + [VALID_BAND]
        # Earth Engine's rule: (float32 + 1 mask byte) per band, (uint8 validity + 1 mask byte)
        w, h = req.grid["dimensions"]["width"], req.grid["dimensions"]["height"]
        assert req.request_bytes == w * h * ((4 + 1) * len(bands) + 1 + 1)
        assert S.find_calls(req.tree, "Image.toFloat")
    for row in rows:
        p = patches[row["tile_id"]]
        assert p.data.dtype == np.float32 and p.data.shape == (4, 16, 16)
        for k, band in enumerate(bands):
            np.testing.assert_array_equal(p.data[k], S.expected_band(row, S.S2_BASE[band]))
        assert p.meta["bands"] == bands


def test_all_twelve_bands_by_default(standin, make_provider):
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows).values()
    assert p.data.shape == (12, 16, 16)
    for k, band in enumerate(S.S2_BANDS):
        assert p.data[k, 0, 0] == S.expected_band(rows[0], S.S2_BASE[band])[0, 0]


# ---------------------------------------------------------------------------------- masks


def test_masked_pixels_are_invalid_and_zero(standin, make_provider):
    standin.catalog = S.Catalog({S2_COLLECTION: [
        S.s2_image("A", "2024-02-01", valid=lambda ix, iy: np.mod(ix, 5) != 0)]})
    rows = S.tile_rows(2)
    patches = fetch(make_provider(), rows, bands=["B3", "B4"])
    for row in rows:
        p = patches[row["tile_id"]]
        ix, iy = S.pixel_indices(row["x0"], row["y0"], 10.0, 16, 16)
        expect_valid = np.broadcast_to(np.mod(ix, 5) != 0, (16, 16))
        np.testing.assert_array_equal(p.valid, expect_valid)
        assert (p.data[:, ~p.valid] == 0).all()
        np.testing.assert_array_equal(p.data[1][p.valid], S.expected_band(row, S.S2_BASE["B4"])[p.valid])
        assert p.status == "ok"


def test_median_fills_from_unmasked_images_and_all_masked_is_no_data(standin, make_provider):
    standin.catalog = S.Catalog({S2_COLLECTION: [
        S.s2_image("A", "2024-02-01", offset=0, valid=lambda ix, iy: np.mod(ix, 2) == 0),
        S.s2_image("B", "2024-02-11", offset=10, valid=lambda ix, iy: np.mod(ix, 2) == 1),
    ]})
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, bands=["B2"]).values()
    ix, _ = S.pixel_indices(rows[0]["x0"], rows[0]["y0"], 10.0, 16, 16)
    offset = np.broadcast_to(np.where(np.mod(ix, 2) == 0, 0.0, 10.0), (16, 16))
    assert p.valid.all()
    np.testing.assert_array_equal(p.data[0], S.expected_band(rows[0], S.S2_BASE["B2"]) + offset)

    standin.catalog = S.Catalog({S2_COLLECTION: [
        S.s2_image("C", "2024-02-01", valid=lambda ix, iy: np.zeros(np.broadcast(ix, iy).shape, bool)),
    ]})
    [p] = fetch(make_provider(), rows, bands=["B2"]).values()
    assert p.status == "no_data" and not p.valid.any()
    assert "masked" in p.meta["reason"] and p.meta["image_count"] == 1


# ----------------------------------------------------------------------------- composites


def _two_scene_catalog() -> S.Catalog:
    # Catalog order newest first: the mosaic must sort by time, not trust the order.
    return S.Catalog({S2_COLLECTION: [
        S.s2_image("NEW", "2024-03-01", offset=10),
        S.s2_image("OLD", "2024-01-15", offset=0),
    ]})


def test_median_composite(standin, make_provider):
    standin.catalog = _two_scene_catalog()
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, bands=["B5"]).values()
    np.testing.assert_array_equal(p.data[0], S.expected_band(rows[0], S.S2_BASE["B5"], offset=5))
    assert p.meta["composite"] == "median"
    assert sorted(p.meta["scene_ids"]) == ["NEW", "OLD"] and p.meta["image_count"] == 2
    [req] = standin.pixel_requests
    assert S.find_calls(req.tree, "reduce.median") and not S.find_calls(req.tree, "ImageCollection.mosaic")


def test_mosaic_composite_latest_on_top(standin, make_provider):
    standin.catalog = _two_scene_catalog()
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, bands=["B5"], composite="mosaic").values()
    np.testing.assert_array_equal(p.data[0], S.expected_band(rows[0], S.S2_BASE["B5"], offset=10))
    [req] = standin.pixel_requests
    assert S.find_calls(req.tree, "ImageCollection.mosaic")
    assert [c["key"] for c in S.find_calls(req.tree, "Collection.limit")] == ["system:time_start"]
    assert "latest on top" in p.meta["composite_rule"]


def test_unknown_composite_lists_the_valid_ones(make_provider):
    with pytest.raises(ProviderError, match=r"median.*mosaic"):
        make_provider().fetch_patches(S.tile_rows(1), *Q1, "s2", composite="mean")


# ------------------------------------------------------------------- S2 collection and filters


def test_s2_collection_and_filters_in_the_graph(standin, make_provider):
    standin.catalog = S.Catalog({S2_COLLECTION: [
        S.s2_image("CLEAR", "2024-02-01", cloudy=12.5),
        S.s2_image("EDGE", "2024-02-02", cloudy=30.0),        # inclusive: kept
        S.s2_image("CLOUDY", "2024-02-03", cloudy=30.5),      # dropped
        S.s2_image("APRIL", "2024-04-01", cloudy=1.0),        # end exclusive: dropped
        S.s2_image("DECEMBER", "2023-12-31", cloudy=1.0),     # before start: dropped
    ]})
    rows = S.tile_rows(1)
    # the per-block scene query (aggregate_array); the partition's scene list: test_gee_scene_list.py
    [p] = fetch(make_provider(scene_query="block"), rows, bands=["B2"]).values()
    assert sorted(p.meta["scene_ids"]) == ["CLEAR", "EDGE"]
    assert p.meta["collection"] == S2_COLLECTION
    assert p.meta["filters"]["CLOUDY_PIXEL_PERCENTAGE_lte"] == 30
    assert p.meta["filters"]["date"] == list(Q1) and p.meta["filters"]["date_end_exclusive"]
    assert p.meta["filters"]["cloud_score_plus"] is None

    for req in standin.value_requests + standin.pixel_requests:
        tree = req.tree
        assert S.loaded_collections(tree) == [S2_COLLECTION]
        [dates] = S.find_calls(tree, "DateRange")
        assert (dates["start"], dates["end"]) == Q1
        # ee.Filter.lte(p, v) is serialized as not(greaterThan(p, v))
        [gt] = S.find_calls(tree, "Filter.greaterThan")
        assert (gt["leftField"], gt["rightValue"]) == ("CLOUDY_PIXEL_PERCENTAGE", 30)
        assert S.find_calls(tree, "Filter.not")
        rects = S.find_calls(tree, "GeometryConstructors.Rectangle")
        assert rects and all(r["crs"] == {"fn": "Projection", "args": {"crs": "EPSG:32633"}} for r in rects)
        assert all(r["geodesic"] is False for r in rects)
    [rect] = S.find_calls(standin.value_requests[0].tree, "GeometryConstructors.Rectangle")
    r = rows[0]
    assert rect["coordinates"] == [r["x0"], r["y0"] - 160.0, r["x0"] + 160.0, r["y0"]]
    [agg] = S.find_calls(standin.value_requests[0].tree, "AggregateFeatureCollection.array")
    assert agg["property"] == "system:index"


def test_cloudy_pct_none_disables_the_filter(standin, make_provider):
    standin.catalog = S.Catalog({S2_COLLECTION: [S.s2_image("CLOUDY", "2024-02-03", cloudy=95.0)]})
    [p] = fetch(make_provider(), S.tile_rows(1), bands=["B2"], cloudy_pct=None).values()
    assert p.status == "ok" and p.meta["scene_ids"] == ["CLOUDY"]
    assert not S.find_calls(standin.pixel_requests[0].tree, "Filter.greaterThan")
    assert p.meta["filters"]["CLOUDY_PIXEL_PERCENTAGE_lte"] is None


def test_cloud_score_plus_masking(standin, make_provider):
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, bands=["B4"], cloud_score_plus=True, cs_threshold=0.6).values()
    [req] = standin.pixel_requests
    [link] = S.find_calls(req.tree, "Image.linkCollection")
    assert link["imageCollection"] == {"fn": "ImageCollection.load", "args": {"id": S2_CLOUD_SCORE_PLUS_COLLECTION}}
    assert link["linkedBands"] == ["cs_cdf"]
    [gte] = S.find_calls(req.tree, "Image.gte")
    assert gte["image1"]["fn"] == "Image.select" and gte["image1"]["args"]["bandSelectors"] == ["cs_cdf"]
    assert gte["image2"] == {"fn": "Image.constant", "args": {"value": 0.6}}
    assert S.find_calls(req.tree, "Image.updateMask")
    ix, iy = S.pixel_indices(rows[0]["x0"], rows[0]["y0"], 10.0, 16, 16)
    expect_valid = np.mod(ix + iy, 4) != 0  # the stand-in's cs_cdf is 0.3 there, 0.9 elsewhere
    np.testing.assert_array_equal(p.valid, expect_valid)
    assert p.meta["filters"]["cloud_score_plus"] == {
        "collection": S2_CLOUD_SCORE_PLUS_COLLECTION, "band": "cs_cdf", "threshold": 0.6,
        "rule": "cs_cdf >= threshold"}
    # off by default: no link in the graph
    standin.reset_records()
    fetch(make_provider(), rows, bands=["B4"])
    assert not S.find_calls(standin.pixel_requests[0].tree, "Image.linkCollection")


def test_empty_collection_is_no_data_without_pixel_requests(standin, make_provider):
    rows = S.tile_rows(3)
    provider = make_provider()
    patches = fetch(provider, rows, window=("2023-01-01", "2023-04-01"))
    for p in patches.values():
        assert p.status == "no_data"
        assert p.data.shape == (12, 16, 16) and not p.valid.any() and not p.data.any()
        assert p.meta["image_count"] == 0 and p.meta["scene_ids"] == []
        assert "no image" in p.meta["reason"]
    assert standin.pixel_requests == []
    assert provider.stats()["tiles_no_data"] == 3


def test_tiles_outside_every_footprint_are_no_data_others_ok(standin, make_provider):
    rows = S.tile_rows(2, col_step=400)  # ~64 km apart in x
    lon0 = S._to_lonlat("EPSG:32633", (rows[0]["x0"], rows[0]["y0"] - 1, rows[0]["x0"] + 1, rows[0]["y0"]))
    fp = (lon0[0] - 0.05, lon0[1] - 0.05, lon0[0] + 0.05, lon0[1] + 0.05)
    standin.catalog = S.Catalog({S2_COLLECTION: [S.s2_image("LOCAL", "2024-02-01", footprint=fp)]})
    patches = fetch(make_provider(), rows, bands=["B2"])
    assert patches[rows[0]["tile_id"]].status == "ok"
    assert patches[rows[1]["tile_id"]].status == "no_data"


# ------------------------------------------------------------------------------- Sentinel-1


def test_s1_float_linear_iw_vv_vh(standin, make_provider):
    rows = S.tile_rows(2)
    patches = fetch(make_provider(), rows, modality="s1")
    for row in rows:
        p = patches[row["tile_id"]]
        assert p.status == "ok" and p.data.shape == (2, 16, 16)
        np.testing.assert_allclose(p.data[0], S.expected_band(row, 0.05, pattern_scale=1e-5), rtol=1e-6)
        np.testing.assert_allclose(p.data[1], S.expected_band(row, 0.01, pattern_scale=1e-5), rtol=1e-6)
        assert p.meta["collection"] == S1_FLOAT_COLLECTION
        assert p.meta["iw_relaxed"] is False and p.meta["s1_iw_applied"] is True
        assert p.meta["filters"]["instrumentMode"] == "IW"
    req = standin.pixel_requests[0]
    assert S.loaded_collections(req.tree) == [S1_FLOAT_COLLECTION]
    eq = {(c["leftField"], c["rightValue"]) for c in S.find_calls(req.tree, "Filter.equals")}
    assert ("instrumentMode", "IW") in eq
    lc = {(c["leftField"], c["rightValue"]) for c in S.find_calls(req.tree, "Filter.listContains")}
    assert lc == {("transmitterReceiverPolarisation", "VV"), ("transmitterReceiverPolarisation", "VH")}
    assert not S.find_calls(req.tree, "Filter.greaterThan")  # no cloud filter on S1


def test_s1_relaxed_iw_retry(standin, make_provider):
    standin.catalog = S.Catalog({S1_FLOAT_COLLECTION: [
        S.s1_image("EW1", "2024-02-01", mode="EW"),
        S.s1_image("IW_VV_ONLY", "2024-02-02", mode="IW", pols=("VV",)),
    ]})
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, modality="s1").values()
    assert p.status == "ok"
    assert p.meta["iw_relaxed"] is True and p.meta["s1_iw_applied"] is False
    assert p.meta["scene_ids"] == ["EW1"]
    assert p.meta["filters"]["instrumentMode"] is None
    [value_req] = standin.value_requests
    assert ("instrumentMode", "IW") in {(c["leftField"], c["rightValue"])
                                        for c in S.find_calls(value_req.tree, "Filter.equals")}
    [req] = standin.pixel_requests  # the relaxed pixel request has no IW filter
    assert not [c for c in S.find_calls(req.tree, "Filter.equals") if c["leftField"] == "instrumentMode"]

    standin.reset_records()
    [p] = fetch(make_provider(), rows, modality="s1", relax_iw_on_empty=False).values()
    assert p.status == "no_data" and standin.pixel_requests == []


def test_s1_mixed_block_iw_and_relaxed_tiles(standin, make_provider):
    rows = S.tile_rows(2)
    lon = S._to_lonlat("EPSG:32633", (rows[0]["x0"], rows[0]["y0"] - 160, rows[0]["x0"] + 1, rows[0]["y0"]))
    standin.catalog = S.Catalog({S1_FLOAT_COLLECTION: [
        S.s1_image("IW_WEST", "2024-02-01", footprint=(lon[0] - 0.01, lon[1] - 0.01, lon[0] + 1e-5, lon[3] + 0.01)),
        S.s1_image("EW_ALL", "2024-02-02", mode="EW"),
    ]})
    patches = fetch(make_provider(max_concurrent_requests=1), rows, modality="s1")
    west, east = patches[rows[0]["tile_id"]], patches[rows[1]["tile_id"]]
    assert (west.status, east.status) == ("ok", "ok")
    assert west.meta["iw_relaxed"] is False and west.meta["scene_ids"] == ["IW_WEST"]
    assert east.meta["iw_relaxed"] is True and east.meta["scene_ids"] == ["EW_ALL"]
    assert len(standin.value_requests) == 1 and len(standin.pixel_requests) == 2


def test_s1_db_converted_to_linear_before_compositing(standin, make_provider):
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, modality="s1", use_float_linear=False).values()
    db_vv = S.expected_band(rows[0], -13.0, pattern_scale=0.001)
    db_vh = S.expected_band(rows[0], -20.0, pattern_scale=0.001)
    np.testing.assert_allclose(p.data[0], 10 ** (db_vv / 10), rtol=1e-5)
    np.testing.assert_allclose(p.data[1], 10 ** (db_vh / 10), rtol=1e-5)
    assert p.meta["collection"] == S1_DB_COLLECTION and p.meta["s1_db_to_linear"] is True
    [req] = standin.pixel_requests
    assert S.loaded_collections(req.tree) == [S1_DB_COLLECTION]
    [mul] = S.find_calls(req.tree, "Image.multiply")
    assert mul["image2"]["args"]["value"] == pytest.approx(math.log(10) / 10)
    assert S.find_calls(req.tree, "Image.exp")


def test_s1_db_mosaic_sorts_before_conversion(standin, make_provider):
    # Image math drops properties (system:time_start): sorting after it would lose the order.
    # The stand-in's sort is stable: with properties gone, catalog order (newest first) would win.
    standin.catalog = S.Catalog({S1_DB_COLLECTION: [
        S.s1_image("NEW", "2024-03-01", db=True, offset=3.0),
        S.s1_image("OLD", "2024-01-10", db=True, offset=0.0),
    ]})
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, modality="s1", use_float_linear=False, composite="mosaic").values()
    db_vv = S.expected_band(rows[0], -13.0, offset=3.0, pattern_scale=0.001)
    np.testing.assert_allclose(p.data[0], 10 ** (db_vv / 10), rtol=1e-5)


def test_s1_orbit_filter_and_validation(standin, make_provider):
    rows = S.tile_rows(1)
    [p] = fetch(make_provider(), rows, modality="s1", orbit="descending").values()
    assert p.status == "no_data"  # the default catalog is ascending only
    [req] = standin.value_requests
    assert ("orbitProperties_pass", "DESCENDING") in {
        (c["leftField"], c["rightValue"]) for c in S.find_calls(req.tree, "Filter.equals")}
    [p] = fetch(make_provider(), rows, modality="s1", orbit="ASCENDING").values()
    assert p.status == "ok" and p.meta["s1_orbit_applied"] == "ASCENDING"
    with pytest.raises(ProviderError, match="ASCENDING.*DESCENDING"):
        make_provider().fetch_patches(rows, *Q1, "s1", orbit="north")


# ------------------------------------------------------------------------ input validation


@pytest.mark.parametrize("modality,bands,options,match", [
    ("s2", None, {"cloud_cover": 10}, "unknown s2 sensor option"),
    ("s2", ["B10"], {}, "not available"),
    ("s2", ["B2", "B2"], {}, "duplicate"),
    ("s1", ["HH"], {}, "not available"),
    ("s1", None, {"cloudy_pct": 10}, "unknown s1 sensor option"),
    ("s3", None, {}, "unknown modality"),
    ("s2", None, {"cs_threshold": 2}, r"cs_threshold"),
])
def test_bad_requests_raise_before_any_request(standin, make_provider, modality, bands, options, match):
    with pytest.raises(ProviderError, match=match):
        make_provider().fetch_patches(S.tile_rows(1), *Q1, modality, bands=bands, **options)
    assert standin.requests == []


def test_bad_dates_raise(make_provider):
    with pytest.raises(ProviderError, match="before end"):
        make_provider().fetch_patches(S.tile_rows(1), "2024-04-01", "2024-04-01", "s2")
    with pytest.raises(ProviderError, match="ISO date"):
        make_provider().fetch_patches(S.tile_rows(1), "yesterday", "2024-04-01", "s2")


def test_bad_tile_row_fails_alone_and_geodataframe_input(standin, make_provider):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    rows = S.tile_rows(2)
    gdf = gpd.GeoDataFrame(rows, geometry=[box(14, 41, 14.1, 41.1)] * 2, crs="EPSG:4326")
    patches = fetch(make_provider(), gdf, bands=["B2"])
    assert all(p.status == "ok" for p in patches.values())

    broken = dict(rows[0], tile_id="broken")
    del broken["x0"]
    out = list(make_provider().fetch_patches([broken, rows[1]], *Q1, "s2", bands=["B2"]))
    status = {p.tile_id: p.status for p in out}
    assert status == {"broken": "failed", rows[1]["tile_id"]: "ok"}
    assert "x0" in next(p for p in out if p.tile_id == "broken").meta["reason"]


def test_duplicate_rows_each_get_a_patch(standin, make_provider):
    rows = S.tile_rows(1)
    out = list(make_provider().fetch_patches(rows + rows, *Q1, "s2", bands=["B2"]))
    assert [p.tile_id for p in out] == [rows[0]["tile_id"]] * 2
    assert len(standin.pixel_requests) == 1


def test_describe_is_pixel_settings_only(make_provider):
    d = make_provider().describe()
    assert d["provider"] == "gee" and d["api"] == "image:computePixels" and d["file_format"] == "NPY"
    assert d["collections"]["s2"] == S2_COLLECTION and d["collections"]["s1"] == S1_FLOAT_COLLECTION
    assert "endpoint" not in d and "project" not in d  # operational settings are in stats()["config"]
    assert "EPSG:3857" not in str(d)


# -------------------------------------------------- real catalogs (#22): clamp and scene gaps


def test_s2_patches_record_that_the_collection_holds_no_negative_dn(standin, make_provider):
    # S2_SR_HARMONIZED's reflectance bands are UINT16 (the stand-in's too): DN >= 0 by the
    # collection, recorded as the STAC providers record their clamp
    assert {img.dtype for img in standin.catalog.get(S2_COLLECTION)} == {"uint16"}
    rows = S.tile_rows(2)
    for composite in ("median", "mosaic"):
        for p in fetch(make_provider(), rows, bands=["B2", "B4"], composite=composite).values():
            assert p.status == "ok" and p.data.min() >= 0.0
            assert p.meta["clamp"] == S2_CLAMP == (
                "harmonized S2 DN below 0 are 0 in the collection (S2_SR_HARMONIZED's bands are UINT16: "
                "DN >= 0 by the collection); nothing clamped here")
    [s1] = fetch(make_provider(), rows[:1], modality="s1").values()
    assert "clamp" not in s1.meta


def test_sparse_windows_record_found_and_expected_scenes_and_warn_once(standin, make_provider, caplog):
    rows = S.tile_rows(3)  # the stand-in's catalog: one scene (2024-01-05) per collection
    with caplog.at_level(logging.WARNING, logger="rs_embed_pipeline.providers.gee"):
        s2 = fetch(make_provider(), rows, bands=["B4"])  # Q1: 91 days, 18 five-day revisits
        s1 = fetch(make_provider(), rows, modality="s1")  # 7 twelve-day revisits
    for p in s2.values():
        assert p.status == "ok" and p.meta["found_scenes"] == 1
        assert p.meta["scene_gap"] == {
            "expected_scenes": 18, "found_scenes": 1,
            "reason": "fewer than 25% of the 18 dates a 5-day revisit gives (catalog gap, cloud filter or "
                      "orbit filter)"}
    for p in s1.values():
        assert p.meta["found_scenes"] == 1 and p.meta["scene_gap"]["expected_scenes"] == 7
    gaps = [r.getMessage() for r in caplog.records if "scene dates" in r.getMessage()]
    assert len(gaps) == 2  # one per fetch, not one per tile
    assert "1 scene dates in 2024-01-01 .. 2024-04-01, 18 expected" in gaps[0]
    assert "1 scene dates in 2024-01-01 .. 2024-04-01, 7 expected" in gaps[1]

    # ten days hold two revisits: one scene is a quarter or more, no gap
    [p] = fetch(make_provider(), rows[:1], bands=["B4"], window=("2024-01-01", "2024-01-11")).values()
    assert p.meta["found_scenes"] == 1 and "scene_gap" not in p.meta
    # an empty window: no_data, 0 found
    [p] = fetch(make_provider(), rows[:1], bands=["B4"], window=("2024-03-01", "2024-03-11")).values()
    assert p.status == "no_data" and p.meta["found_scenes"] == 0
    assert p.meta["scene_gap"]["expected_scenes"] == 2


def test_found_scenes_counts_acquisition_dates_as_the_stac_providers_do(standin, make_provider):
    # two granules of one datatake (same sensing start, two MGRS tiles) over the tile: one date
    day = "20240105T100000"
    standin.catalog = S.Catalog({S2_COLLECTION: [
        S.s2_image(f"{day}_{day}_T33TUG", "2024-01-05"), S.s2_image(f"{day}_{day}_T33TUF", "2024-01-05"),
        S.s2_image("20240110T100000_20240110T100000_T33TUG", "2024-01-10")]})
    [p] = fetch(make_provider(), S.tile_rows(1), bands=["B4"], window=("2024-01-01", "2024-01-16")).values()
    assert p.meta["image_count"] == 3 and p.meta["found_scenes"] == 2 and "scene_gap" not in p.meta
    assert scene_dates(["S1A_IW_GRDH_1SDV_20240105T050000_20240105T050025_051234_062F3A_1A2B", "NEW"]) == {
        "20240105", "NEW"}
