"""Catalog layouts as configuration of the imagery resources: presets (Earth Search C1, the older
Earth Search collection, Planetary Computer), per-field overrides (S2 collection, band -> asset map,
SCL key, S1 collection, URL signing), validation at code-location load naming the field and the
valid values, and the same DN from a Planetary Computer layout as from the C1 layout."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

from rs_embed_pipeline.orchestration.definitions import validate_resources
from rs_embed_pipeline.providers.catalogs import CATALOG_PRESETS, PLANETARY_COMPUTER_S2_ASSETS
from rs_embed_pipeline.providers.stac import EARTH_SEARCH_S2_ASSETS
from rs_embed_pipeline.orchestration.resources import LocalStacImagery, StacImagery

from .conftest import earth_search_items, static_catalog
from .test_catalogs import _day

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:Support for class-based `config` is deprecated"),  # planetary-computer 1.0
]

PRESETS = "earth-search-c1, earth-search-l2a, planetary-computer"


def test_default_resource_is_earth_search_c1_as_before():
    prov = StacImagery().build(fetch_workers=3)
    spec = prov.specs["s2"]
    assert prov.api_url == "https://earth-search.aws.element84.com/v1"
    assert spec.collection == "sentinel-2-c1-l2a" and spec.mask_asset == "scl"
    assert dict(spec.assets) == EARTH_SEARCH_S2_ASSETS
    assert prov.patch_url is None and "s1" not in prov.specs and prov.max_workers == 3


def test_planetary_computer_preset_and_overrides():
    import planetary_computer

    prov = StacImagery(catalog_preset="planetary-computer").build()
    spec = prov.specs["s2"]
    assert prov.api_url == "https://planetarycomputer.microsoft.com/api/stac/v1"
    assert spec.collection == "sentinel-2-l2a" and spec.mask_asset == "SCL"
    assert dict(spec.assets) == PLANETARY_COMPUTER_S2_ASSETS
    assert prov.patch_url is planetary_computer.sign
    assert prov.describe()["patch_url"] == "sign"
    # each field set wins over the preset's; s2_assets entries are laid over the preset's map
    prov = StacImagery(catalog_preset="planetary-computer", api_url="http://127.0.0.1:9/stac", collection="s2-mirror",
                       s2_assets={"B8A": "nir_narrow"}, mask_asset="none", patch_url="none").build()
    spec = prov.specs["s2"]
    assert prov.api_url == "http://127.0.0.1:9/stac" and spec.collection == "s2-mirror"
    assert spec.assets["B8A"] == "nir_narrow" and spec.assets["B2"] == "B02"
    assert spec.mask_asset is None and prov.patch_url is None
    # the older Earth Search collection: C1's keys, another collection id
    spec = StacImagery(catalog_preset="earth-search-l2a").build().specs["s2"]
    assert spec.collection == "sentinel-2-l2a" and dict(spec.assets) == EARTH_SEARCH_S2_ASSETS
    assert set(CATALOG_PRESETS) == set(PRESETS.split(", "))


@pytest.mark.parametrize("resource, field, needle", [
    (StacImagery(catalog_preset="planetary_computer_v2"), "catalog_preset",
     f"catalog_preset 'planetary_computer_v2' is not a known catalog; valid: {PRESETS}"),
    (StacImagery(patch_url="sas"), "patch_url",
     "patch_url 'sas' is not a known URL signing; valid: none, planetary_computer"),
    (StacImagery(s2_assets={"B13": "x", "B2": "blue"}), "s2_assets",
     "s2_assets maps unknown band(s) ['B13']; valid bands: B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B11, B12"),
    (StacImagery(s2_assets={"B2": ""}), "s2_assets", "s2_assets gives no asset key for band(s) ['B2']"),
    (StacImagery(s1_collection="sentinel-1-grd"), "s1_collection",
     "S1 collection 'sentinel-1-grd' holds uncalibrated GRD digital numbers"),
    (StacImagery(api_url="earth-search.aws.element84.com/v1"), "api_url", "is not an http(s) URL of a STAC API"),
    (StacImagery(mask_asset=" "), "mask_asset", "mask_asset is empty"),
    (LocalStacImagery(catalog_path="x", catalog_preset="pc"), "catalog_preset",
     f"catalog_preset 'pc' is not a known catalog; valid: {PRESETS}"),
    (LocalStacImagery(catalog_path="x", s1_collection="sentinel-1-grd"), "s1_collection",
     "'sentinel-1-grd' holds uncalibrated GRD digital numbers"),
])
def test_invalid_catalog_settings_fail_the_load_naming_the_field(resource, field, needle):
    with pytest.raises(ValueError) as err:
        validate_resources({"imagery": resource})
    msg = str(err.value)
    assert msg.startswith(f"Invalid resource field imagery.{field}: "), msg
    assert needle in msg
    with pytest.raises(ValueError, match=re.escape(needle)):  # and again when a run builds the provider
        resource.build()


def test_invalid_preset_fails_build_definitions(tmp_path):
    from rs_embed_pipeline.orchestration.definitions import build_definitions, resources_for
    from rs_embed_pipeline.orchestration.settings import Settings

    settings = Settings.from_env({"RS_EMBED_STORE": str(tmp_path / "store"), "RS_EMBED_PROVIDER": "stac"})
    resources = resources_for(settings)
    assert resources["imagery"].catalog()["api_url"] == "https://earth-search.aws.element84.com/v1"
    with pytest.raises(ValueError, match=r"Invalid resource field imagery.catalog_preset: .*valid: earth-search-c1"):
        build_definitions(settings, {**resources, "imagery": StacImagery(catalog_preset="usgs")})
    # RS_EMBED_STAC_URL wins over the preset's URL
    own = Settings.from_env({"RS_EMBED_STORE": str(tmp_path / "store"), "RS_EMBED_PROVIDER": "stac",
                             "RS_EMBED_STAC_URL": "http://127.0.0.1:9/v1"})
    assert resources_for(own)["imagery"].build().api_url == "http://127.0.0.1:9/v1"


def _clear_item(synthetic_catalog):
    items, _ = earth_search_items(synthetic_catalog)
    return sorted((d for d in items if d["properties"]["eo:cloud_cover"] == 0),
                  key=lambda d: d["properties"]["datetime"])[0]


def _planetary_computer_layout(item):
    """The same scene laid out like Planetary Computer sentinel-2-l2a: B01.. / SCL keys, no
    raster:bands, processing baseline >= 04.00 (not harmonized: the offset comes from it)."""
    pc = copy.deepcopy(item)
    keymap = {v: PLANETARY_COMPUTER_S2_ASSETS[b] for b, v in EARTH_SEARCH_S2_ASSETS.items()} | {"scl": "SCL"}
    pc["assets"] = {keymap[k]: a for k, a in pc["assets"].items() if k in keymap}
    for a in pc["assets"].values():
        a.pop("raster:bands", None)
    pc["properties"]["s2:processing_baseline"] = "05.10"
    pc["collection"] = "sentinel-2-l2a"
    return pc


def test_local_resource_with_planetary_computer_preset_gives_c1_dn(synthetic_catalog, inner_tiles, tmp_path):
    clear = _clear_item(synthetic_catalog)
    s, e = _day(clear)
    tiles = inner_tiles.iloc[:2]
    bands = ["B1", "B2", "B8A", "B11"]  # 60, 10, 20, 20 m

    def fetch(resource):
        return {p.tile_id: p for p in resource.build(fetch_workers=2).fetch_patches(
            tiles, s, e, "s2", bands=bands, composite="mosaic")}

    c1_cat = static_catalog([clear], tmp_path / "c1", "sentinel-2-c1-l2a")
    pc_cat = static_catalog([_planetary_computer_layout(clear)], tmp_path / "pc", "sentinel-2-l2a")
    c1 = fetch(LocalStacImagery(catalog_path=str(c1_cat), catalog_preset="earth-search-c1"))
    pc = fetch(LocalStacImagery(catalog_path=str(pc_cat), catalog_preset="planetary-computer"))
    # without the preset the Planetary Computer layout has none of the C1 asset keys: nothing read
    bare = fetch(LocalStacImagery(catalog_path=str(pc_cat), s2_collection="sentinel-2-l2a"))
    for tid, p in c1.items():
        assert p.status == pc[tid].status == "ok"
        np.testing.assert_array_equal(p.data, pc[tid].data)
        np.testing.assert_array_equal(p.valid, pc[tid].valid)
        assert pc[tid].meta["assets"] == ["B01", "B02", "B8A", "B11"]
        assert pc[tid].meta["mask"] == "SCL not in [0, 1, 3, 8, 9, 10]"
        assert pc[tid].meta["harmonization"][0]["bands"]["B2"]["offset"] == -0.1
        assert bare[tid].status == "no_data"
        assert bare[tid].meta["dropped_items"][0]["id"] == clear["id"]


def test_stac_resource_with_planetary_computer_preset_over_http(synthetic_catalog, inner_tiles, stac_api):
    """The resource as configured for Planetary Computer (signing on) against a STAC API serving the
    Planetary Computer layout: the same DN as the C1 layout from the default resource."""
    clear = _clear_item(synthetic_catalog)
    s, e = _day(clear)
    tiles = inner_tiles.iloc[:2]
    _, coll = earth_search_items(synthetic_catalog)
    c1_api = stac_api([clear], [coll])
    pc_api = stac_api([_planetary_computer_layout(clear)], [{**coll, "id": "sentinel-2-l2a"}])
    got = {}
    for name, res in {"c1": StacImagery(api_url=c1_api.url),
                      "pc": StacImagery(catalog_preset="planetary-computer", api_url=pc_api.url)}.items():
        prov = res.build(fetch_workers=2)
        got[name] = {p.tile_id: p for p in prov.fetch_patches(tiles, s, e, "s2", bands=["B4", "B12"],
                                                              composite="median")}
    assert pc_api.searches and pc_api.searches[0]["collections"] == ["sentinel-2-l2a"]
    for tid, p in got["c1"].items():
        assert p.status == got["pc"][tid].status == "ok"
        np.testing.assert_array_equal(p.data, got["pc"][tid].data)
        assert got["pc"][tid].meta["collection"] == "sentinel-2-l2a"
