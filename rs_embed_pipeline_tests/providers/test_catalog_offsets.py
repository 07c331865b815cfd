"""Issue #22 cases 1-3 on the STAC providers: the legacy Earth Search ``false`` flag checked against
the pixels, one observation per legacy scene, harmonized DN clamped at 0.

The legacy items are laid out field for field as Earth Search v1 serves its legacy
``sentinel-2-l2a`` items (every property, link, asset key and asset field of
https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2A_39QTA_20230628_0_L2A,
whose ``raster:bands`` Element84/earth-search#66 quotes for the mis-tagged S2B_52SFA_20220126_0_L2A:
nodata 0, uint16, bits_per_sample 15, scale 0.0001, offset -0.1), built by
``earth_search_legacy.legacy_item`` from a local C1 scene, its hrefs on the test's local COGs."""

from __future__ import annotations

import copy
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rs_embed_pipeline.providers import LocalStacProvider
from rs_embed_pipeline.providers.catalogs import judge_legacy_offset, legacy_offset_suspect
from rs_embed_pipeline.providers.stac.legacy import latest_sequences

from .conftest import earth_search_items, static_catalog
from .earth_search_legacy import REFLECTANCE_RASTER_BANDS, legacy_item, mgrs_square

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]


def _rewrite(src_href, dst, fn) -> str:
    with rasterio.open(src_href) as src:
        profile, arr = src.profile, src.read(1)
    profile.update(driver="GTiff")
    with rasterio.open(dst, "w", **profile) as out:
        out.write(fn(arr), 1)
    return str(dst)


def _dark(a: np.ndarray) -> np.ndarray:
    """Realistic blue: the synthetic raw DN (harmonized ~1600) brought to ~530 harmonized DN, as
    clear vegetation and water are (blue reflectance < 0.1); still raw (+1000)."""
    return np.where(a > 0, (a.astype(np.int64) - 1000) // 3 + 1000, 0).astype(a.dtype)


@pytest.fixture
def scene(synthetic_catalog, tmp_path):
    """A clear C1 item with realistic blue DN (raw, offset -0.1) and its day."""
    items, _ = earth_search_items(synthetic_catalog)
    clear = sorted((d for d in items if d["properties"]["eo:cloud_cover"] == 0),
                   key=lambda d: d["properties"]["datetime"])[0]
    clear = copy.deepcopy(clear)
    clear["assets"]["blue"]["href"] = _rewrite(clear["assets"]["blue"]["href"], tmp_path / "raw_blue.tif", _dark)
    d = dt.date.fromisoformat(clear["properties"]["datetime"][:10])
    return clear, str(d), str(d + dt.timedelta(days=1))


def _legacy(c1: dict, tmp_path, seq: int, flag: bool, fn=None, baseline: str = "05.10") -> dict:
    """The legacy Earth Search item of a C1 scene (the documented layout: ``legacy_item``);
    ``fn`` rewrites its blue COG (raw -> stored)."""
    return legacy_item(c1, Path(tempfile.mkdtemp(dir=tmp_path)), seq=seq, applied=flag, baseline=baseline,
                       blue=fn)


def _fetch(items, tmp_path, name, tiles, s, e, **kw):
    cat = static_catalog(items, tmp_path / name, "sentinel-2-l2a")
    prov = LocalStacProvider(cat, s2_collection="sentinel-2-l2a", s1_collection=None, max_workers=1)
    return {p.tile_id: p for p in prov.fetch_patches(tiles, s, e, "s2", bands=["B2"], composite="mosaic", **kw)}


def _harmonized(a):
    return np.where(a > 0, a.astype(np.int64) - 1000, 0).astype(a.dtype)


# The documented example's asset keys and property keys, in the API's order
DOCUMENTED_ASSETS = [
    "aot", "blue", "coastal", "granule_metadata", "green", "nir", "nir08", "nir09", "red", "rededge1", "rededge2",
    "rededge3", "scl", "swir16", "swir22", "thumbnail", "tileinfo_metadata", "visual", "wvp", "aot-jp2", "blue-jp2",
    "coastal-jp2", "green-jp2", "nir-jp2", "nir08-jp2", "nir09-jp2", "red-jp2", "rededge1-jp2", "rededge2-jp2",
    "rededge3-jp2", "scl-jp2", "swir16-jp2", "swir22-jp2", "visual-jp2", "wvp-jp2",
]
DOCUMENTED_PROPERTIES = [
    "created", "platform", "constellation", "instruments", "eo:cloud_cover", "proj:epsg", "mgrs:utm_zone",
    "mgrs:latitude_band", "mgrs:grid_square", "grid:code", "view:sun_azimuth", "view:sun_elevation",
    "s2:degraded_msi_data_percentage", "s2:nodata_pixel_percentage", "s2:saturated_defective_pixel_percentage",
    "s2:dark_features_percentage", "s2:cloud_shadow_percentage", "s2:vegetation_percentage",
    "s2:not_vegetated_percentage", "s2:water_percentage", "s2:unclassified_percentage",
    "s2:medium_proba_clouds_percentage", "s2:high_proba_clouds_percentage", "s2:thin_cirrus_percentage",
    "s2:snow_ice_percentage", "s2:product_type", "s2:processing_baseline", "s2:product_uri", "s2:generation_time",
    "s2:datatake_id", "s2:datatake_type", "s2:datastrip_id", "s2:granule_id", "s2:reflectance_conversion_factor",
    "datetime", "s2:sequence", "earthsearch:s3_path", "earthsearch:payload_id", "earthsearch:boa_offset_applied",
    "processing:software", "updated",
]


def test_legacy_items_follow_the_documented_layout(scene, tmp_path):
    c1, _, _ = scene
    # the documented example: 39QTA, tile origin (199980, 2100000), 109.8 km a side, ~18.5 N
    assert mgrs_square(32639, 199980 + 54900, 2100000 - 54900, 18.48) == (39, "Q", "TA")
    it = _legacy(c1, tmp_path, 0, False, baseline="04.00")
    day = c1["properties"]["datetime"][:10].replace("-", "")
    sat = "S2" + c1["properties"]["platform"][-1].upper()
    assert it["id"] == f"{sat}_33TVK_{day}_0_L2A" and it["collection"] == "sentinel-2-l2a"
    assert list(it) == ["type", "stac_version", "id", "properties", "geometry", "links", "assets", "bbox",
                        "stac_extensions", "collection"]
    assert list(it["properties"]) == DOCUMENTED_PROPERTIES and list(it["assets"]) == DOCUMENTED_ASSETS
    p = it["properties"]
    assert (p["s2:processing_baseline"], p["earthsearch:boa_offset_applied"], p["s2:sequence"]) == ("04.00", False, "0")
    assert (p["mgrs:utm_zone"], p["mgrs:latitude_band"], p["mgrs:grid_square"], p["grid:code"]) == (
        33, "T", "VK", "MGRS-33TVK")
    assert p["earthsearch:s3_path"] == f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/33/T/VK/{day[:4]}/{int(day[4:6])}/{it['id']}"
    blue = it["assets"]["blue"]
    assert list(blue) == ["href", "type", "title", "eo:bands", "gsd", "proj:shape", "proj:transform",
                          "raster:bands", "roles"]
    assert blue["raster:bands"] == [REFLECTANCE_RASTER_BANDS] and blue["title"] == "Blue (band 2) - 10m"
    assert blue["href"].endswith(f"/{it['id']}/B02.tif") and it["assets"]["scl"]["href"].endswith("/SCL.tif")
    with rasterio.open(blue["href"]) as a, rasterio.open(c1["assets"]["blue"]["href"]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))  # the local COG, unchanged
        assert list(a.shape) == blue["proj:shape"]
    assert it["assets"]["wvp"]["raster:bands"] == [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                                                    "spatial_resolution": 20, "unit": "cm", "scale": 0.001,
                                                    "offset": 0}]


def test_false_flag_on_harmonized_cogs_is_corrected_from_the_pixels(scene, inner_tiles, tmp_path):
    c1, s, e = scene
    tiles = inner_tiles.iloc[:2]
    want = _fetch([c1], tmp_path, "c1", tiles, s, e)
    # earth-search#66 / #71: the COG holds harmonized DN, the flag says false
    wrong_flag = _legacy(c1, tmp_path, 0, False, _harmonized)
    got = _fetch([wrong_flag], tmp_path, "legacy", tiles, s, e)
    for tid, p in want.items():
        assert p.status == got[tid].status == "ok"
        np.testing.assert_array_equal(got[tid].data, p.data)  # not 1000 DN lower
        [check] = got[tid].meta["offset_checks"]
        assert (check["id"], check["field"], check["declared"], check["offset"]) == (
            wrong_flag["id"], "earthsearch:boa_offset_applied", False, 0.0)
        assert "have blue DN < 1000: harmonized, offset 0" in check["evidence"]
        assert got[tid].meta["harmonization"][0]["bands"]["B2"]["offset"] == 0.0
    # a legacy COG that really holds raw DN keeps its declared offset
    raw_flag = _legacy(c1, tmp_path, 0, False)
    got = _fetch([raw_flag], tmp_path, "legacy_raw", tiles, s, e)
    for tid, p in want.items():
        np.testing.assert_array_equal(got[tid].data, p.data)
        assert got[tid].meta["offset_checks"][0]["offset"] == "declared"
        assert got[tid].meta["harmonization"][0]["bands"]["B2"]["offset"] == -0.1


def test_undecidable_legacy_item_is_refused_naming_item_field_and_reason(scene, inner_tiles, tmp_path):
    c1, s, e = scene

    def mixed(a):  # raw DN, but every 10th pixel dark: 10 % below 1000, neither raw nor harmonized
        a = a.copy()
        a.reshape(-1)[::10] = np.where(a.reshape(-1)[::10] > 0, 500, 0)
        return a
    item = _legacy(c1, tmp_path, 0, False, mixed)
    got = _fetch([item], tmp_path, "mixed", inner_tiles.iloc[:1], s, e)
    [p] = got.values()
    assert p.status == "no_data" and p.meta["reason"] == "no item in the window"
    [d] = p.meta["dropped_items"]
    assert d["id"] == item["id"]
    assert d["reason"].startswith(f"item {item['id']}: earthsearch:boa_offset_applied is false with "
                                  "s2:processing_baseline >= 04.00 and 10.")
    assert d["reason"].endswith("(neither raw <= 2% nor harmonized >= 20%): refused")


def test_legacy_rules_from_the_item():
    class It:
        def __init__(self, **props):
            self.id, self.properties = "S2B_52SFA_20220126_0_L2A", props
    assert legacy_offset_suspect(It(**{"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": False}))
    assert not legacy_offset_suspect(It(**{"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True}))
    assert not legacy_offset_suspect(It(**{"s2:processing_baseline": "03.01", "earthsearch:boa_offset_applied": False}))
    assert not legacy_offset_suspect(It(**{"s2:processing_baseline": "05.10"}))  # C1 / Planetary Computer
    assert judge_legacy_offset("x", 300, 1000) is True
    assert judge_legacy_offset("x", 10, 1000) is False
    with pytest.raises(ValueError, match=r"item x: earthsearch:boa_offset_applied is false .* only 99 clear pixels"):
        judge_legacy_offset("x", 0, 99)


def test_one_observation_per_legacy_scene(scene, inner_tiles, tmp_path):
    c1, s, e = scene
    tiles = inner_tiles.iloc[:1]
    first = _legacy(c1, tmp_path, 0, True, _harmonized)
    # the reprocessed copy: other DN (+7), other flag
    second = _legacy(c1, tmp_path, 1, True, lambda a: np.where(a > 0, a - 993, 0).astype(a.dtype))
    [p] = _fetch([first, second], tmp_path, "dup", tiles, s, e).values()
    [only] = _fetch([second], tmp_path, "dup1", tiles, s, e).values()
    assert p.status == "ok" and p.meta["scene_ids"] == [second["id"]] and p.meta["image_count"] == 1
    np.testing.assert_array_equal(p.data, only.data)
    assert p.meta["dropped_items"] == [{"id": first["id"], "reason": f"same scene as {second['id']}: the "
                                        "highest sequence number is kept"}]

    class It:
        def __init__(self, i):
            self.id = i
    keep, dropped = latest_sequences([It("S2A_31UFU_20230101_2_L2A"), It("S2A_31UFU_20230101_10_L2A"),
                                      It("S2A_T31UFU_20230101T104441_L2A"), It("S2B_31UFU_20230101_0_L2A")])
    assert [k.id for k in keep] == ["S2A_31UFU_20230101_10_L2A", "S2A_T31UFU_20230101T104441_L2A",
                                    "S2B_31UFU_20230101_0_L2A"]
    assert [d["id"] for _, d in dropped] == ["S2A_31UFU_20230101_2_L2A"]


def test_negative_harmonized_dn_are_clamped_at_zero(scene, inner_tiles, tmp_path):
    c1, s, e = scene
    tiles = inner_tiles.iloc[:1]
    dark = copy.deepcopy(c1)

    def water(a):  # raw DN 400 (reflectance -0.06) on every other column: dark water under the -0.1 offset
        a = a.copy()
        a[:, ::2] = np.where(a[:, ::2] > 0, 400, 0)
        return a
    dark["assets"]["blue"]["href"] = _rewrite(c1["assets"]["blue"]["href"], tmp_path / "water.tif", water)
    cat = static_catalog([dark], tmp_path / "water", "sentinel-2-c1-l2a")
    for composite in ("mosaic", "median"):
        [p] = LocalStacProvider(cat, s2_collection="sentinel-2-c1-l2a", s1_collection=None).fetch_patches(
            tiles, s, e, "s2", bands=["B2"], composite=composite)
        assert p.status == "ok" and p.data.min() == 0.0, composite  # not -600
        with rasterio.open(dark["assets"]["blue"]["href"]) as src:
            assert (src.read(1) == 400).any()
        assert (p.data[0][p.valid] == 0).any() and (p.data[0][p.valid] > 0).any()
        assert p.meta["clamp"] == ("harmonized S2 DN below 0 set to 0 before compositing "
                                   "(as S2_SR_HARMONIZED's UINT16)")
