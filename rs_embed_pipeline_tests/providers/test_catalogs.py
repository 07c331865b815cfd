"""Real catalog rules: S2 offsets (boa_offset_applied / raster:bands / processing baseline),
Planetary Computer asset keys, SCL class 1, missing assets, undeclared float nodata, S1 gamma0."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pytest
import rasterio

from rs_embed_pipeline.providers import LocalStacProvider, ProviderError, StacProvider
from rs_embed_pipeline.providers.catalogs import (
    CATALOG_PRESETS,
    PLANETARY_COMPUTER_S2_ASSETS,
    check_s1_collection,
    s2_offset,
)

from .conftest import earth_search_items, static_catalog

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]


class _Item:
    def __init__(self, **props):
        self.id, self.properties = "x", props


@pytest.mark.parametrize("props, declared, expected", [
    ({"earthsearch:boa_offset_applied": True}, -0.1, (0.0, "earthsearch:boa_offset_applied")),
    ({"earthsearch:boa_offset_applied": False}, -0.1, (-0.1, "raster:bands")),
    ({"s2:processing_baseline": "05.10"}, 0.0, (0.0, "raster:bands")),
    ({"s2:processing_baseline": "05.10"}, None, (-0.1, "s2:processing_baseline >= 04.00")),
    ({"s2:processing_baseline": "04.00"}, None, (-0.1, "s2:processing_baseline >= 04.00")),
    ({"s2:processing_baseline": "02.14"}, None, (0.0, "s2:processing_baseline < 04.00")),
    ({}, None, (0.0, "none declared")),
])
def test_s2_offset_rule(props, declared, expected):
    assert s2_offset(_Item(**props), declared) == expected


def test_bad_baseline_and_uncalibrated_s1_are_refused():
    with pytest.raises(ValueError, match=r"s2:processing_baseline 'v4' is not 'MM.mm'"):
        s2_offset(_Item(**{"s2:processing_baseline": "v4"}), None)
    # #22 case 5: Planetary Computer's RTC gamma0 is accepted, recorded as its own quantity
    check_s1_collection("sentinel-1-rtc")
    assert StacProvider(api_url="http://127.0.0.1:9", s1_collection="sentinel-1-rtc").describe()[
        "collections"]["s1"]["s1_backscatter"] == "gamma0_rtc"
    with pytest.raises(ProviderError, match=r"sentinel-1-grd.*uncalibrated"):
        LocalStacProvider("catalog.json", s1_collection="sentinel-1-grd")
    with pytest.raises(ProviderError, match=r"no collection configured for modality 's1'.*Earth Engine"):
        StacProvider(api_url="http://127.0.0.1:9").fetch_patches([], "2024-01-01", "2024-04-01", "s1")
    assert CATALOG_PRESETS["planetary-computer"]["s2_assets"]["B8A"] == "B8A"


@pytest.mark.filterwarnings("ignore:Support for class-based `config` is deprecated")  # planetary-computer 1.0
def test_planetary_computer_signing_by_name():
    import planetary_computer

    prov = StacProvider(api_url="http://127.0.0.1:9", patch_url=CATALOG_PRESETS["planetary-computer"]["sign"])
    assert prov.patch_url is planetary_computer.sign
    with pytest.raises(ProviderError, match=r"patch_url must be a callable or one of \['planetary_computer'\]"):
        StacProvider(api_url="http://127.0.0.1:9", patch_url="sas")


def _day(item_dict):
    d = dt.date.fromisoformat(item_dict["properties"]["datetime"][:10])
    return str(d), str(d + dt.timedelta(days=1))


def _rewrite(src_href, dst, fn):
    with rasterio.open(src_href) as src:
        profile = src.profile
        arr = fn(src.read(1))
    profile.update(driver="GTiff")
    with rasterio.open(dst, "w", **profile) as out:
        out.write(arr, 1)
    return str(dst)


def test_same_scene_same_dn_from_c1_old_earth_search_and_planetary_computer(
        synthetic_catalog, inner_tiles, tmp_path):
    items, _ = earth_search_items(synthetic_catalog)
    clear = sorted((d for d in items if d["properties"]["eo:cloud_cover"] == 0),
                   key=lambda d: d["properties"]["datetime"])[0]
    s, e = _day(clear)
    bands = ["B2", "B11"]
    tiles = inner_tiles.iloc[:2]

    def fetch(item, collection, **kw):
        cat = static_catalog([item], tmp_path / collection, collection)
        prov = LocalStacProvider(cat, s2_collection=collection, s1_collection=None, max_workers=1, **kw)
        return {p.tile_id: p for p in prov.fetch_patches(tiles, s, e, "s2", bands=bands, composite="mosaic")}

    c1 = fetch(clear, "sentinel-2-c1-l2a")
    # older Earth Search: the COGs hold harmonized DN, the -0.1 offset is still declared
    old = copy.deepcopy(clear)
    old["properties"]["earthsearch:boa_offset_applied"] = True
    for key in ("blue", "swir16"):
        old["assets"][key]["href"] = _rewrite(clear["assets"][key]["href"], tmp_path / f"old_{key}.tif",
                                              lambda a: np.where(a > 0, a - 1000, 0).astype(a.dtype))
    old_es = fetch(old, "sentinel-2-l2a")
    # Planetary Computer: B02.. keys, SCL, no raster:bands, baseline >= 04.00, not harmonized
    pc = copy.deepcopy(clear)
    keymap = {"blue": "B02", "swir16": "B11", "scl": "SCL"}
    pc["assets"] = {keymap[k]: a for k, a in pc["assets"].items() if k in keymap}
    for a in pc["assets"].values():
        a.pop("raster:bands", None)
    pc["properties"]["s2:processing_baseline"] = "05.10"
    pcp = fetch(pc, "sentinel-2-l2a-pc", s2_assets=PLANETARY_COMPUTER_S2_ASSETS, mask_asset="SCL")
    for tid, p in c1.items():
        assert p.status == old_es[tid].status == pcp[tid].status == "ok"
        np.testing.assert_array_equal(p.data, old_es[tid].data)
        np.testing.assert_array_equal(p.data, pcp[tid].data)
        np.testing.assert_array_equal(p.valid, pcp[tid].valid)
    assert c1[tid].meta["harmonization"][0]["bands"]["B2"]["offset"] == -0.1
    assert old_es[tid].meta["harmonization"][0]["bands"]["B2"]["offset"] == 0.0
    assert pcp[tid].meta["harmonization"][0]["bands"]["B2"]["offset"] == -0.1


def test_scl_class_1_missing_asset_and_undeclared_float_nodata(synthetic_catalog, inner_tiles, tmp_path):
    items, _ = earth_search_items(synthetic_catalog)
    clear = sorted((d for d in items if d["properties"]["eo:cloud_cover"] == 0),
                   key=lambda d: d["properties"]["datetime"])
    s, e = _day(clear[0])
    tiles = inner_tiles.iloc[:1]
    # SCL class 1 (saturated / defective) on the top-left quarter of the raster
    sat = copy.deepcopy(clear[0])

    def defect(a):
        a = a.copy()
        a[: a.shape[0] // 2, : a.shape[1] // 2] = 1
        return a

    sat["assets"]["scl"]["href"] = _rewrite(clear[0]["assets"]["scl"]["href"], tmp_path / "scl1.tif", defect)
    cat = static_catalog([sat], tmp_path / "sat", "s2")
    got = {q.tile_id: q for q in LocalStacProvider(cat, s2_collection="s2", s1_collection=None)
           .fetch_patches(inner_tiles, s, e, "s2", bands=["B4"], composite="mosaic")}
    with rasterio.open(sat["assets"]["scl"]["href"]) as src:
        ones = src.read(1) == 1
    assert ones.any()
    masked = [q for q in got.values() if q.status == "no_data" or not q.valid.all()]
    assert masked, "class 1 masks nothing over the test tiles"
    assert got[next(iter(got))].meta["mask"] == "scl not in [0, 1, 3, 8, 9, 10]"

    # an item without one asked asset is dropped (logged), the tile comes from the others
    a, b = copy.deepcopy(clear[0]), copy.deepcopy(clear[1])
    del b["assets"]["red"]
    cat = static_catalog([a, b], tmp_path / "drop", "s2")
    (p,) = LocalStacProvider(cat, s2_collection="s2", s1_collection=None).fetch_patches(
        tiles, "2024-01-01", "2024-04-01", "s2", bands=["B4"])
    assert p.status == "ok" and p.meta["scene_ids"] == [a["id"]]
    assert p.meta["dropped_items"] == [{"id": b["id"], "reason": "no asset(s) ['red']"}]

    # a float asset without a declared nodata: the tiles fail, naming the item and the field
    f = copy.deepcopy(clear[0])
    f["assets"]["red"]["raster:bands"][0].pop("nodata")
    f["assets"]["red"]["raster:bands"][0]["data_type"] = "float32"
    cat = static_catalog([f], tmp_path / "float", "s2")
    (p,) = LocalStacProvider(cat, s2_collection="s2", s1_collection=None).fetch_patches(
        tiles, s, e, "s2", bands=["B4"])
    assert p.status == "failed"
    assert f"item {f['id']} asset 'red'" in p.meta["reason"] and "declared nodata" in p.meta["reason"]
