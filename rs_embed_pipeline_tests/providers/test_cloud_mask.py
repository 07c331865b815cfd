"""Issue #22 case 4: one ``cloud_mask`` option (scl | cloud_score_plus | none) with the same meaning
in every provider; the STAC providers and Earth Engine (its stand-in evaluates ``SCL.remap`` the
way Earth Engine documents it) give the same per-pixel validity on the same scenes."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pytest
import rasterio

from rs_embed_pipeline.providers import LocalStacProvider, ProviderError
from rs_embed_pipeline.providers.gee import S2_COLLECTION
from rs_embed_pipeline.providers.sensor_options import EarthEngineSensorOptions, SensorOptions

from . import ee_standin as S
from .conftest import earth_search_items, static_catalog

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]

# SCL classes laid over the 20 m grid: every class of the Scene Classification, the invalid ones
# (0, 1, 3, 8, 9, 10) among them
CLASSES = np.array([4, 8, 5, 3, 6, 9, 4, 10, 1, 5, 11, 2, 7, 0, 4, 6])


def scl_of(col20: np.ndarray, row20: np.ndarray) -> np.ndarray:
    """The SCL class of the 20 m pixel (floor(x / 20), floor(y / 20)) in world coordinates."""
    return CLASSES[np.mod(col20 * 3 + row20 * 5, len(CLASSES)).astype(np.int64)]


def _scl_cog(src_href: str, dst) -> str:
    with rasterio.open(src_href) as src:
        profile, tf = src.profile, src.transform
        h, w = src.height, src.width
    assert tf.a == 20 and tf.c % 20 == 0 and tf.f % 20 == 0  # the 20 m lattice of world coordinates
    col20 = (tf.c // 20 + np.arange(w))[None, :]
    row20 = (np.floor((tf.f - 10) / 20) - np.arange(h))[:, None]  # centre y = f - 10 - 20 r
    profile.update(driver="GTiff")
    with rasterio.open(dst, "w", **profile) as out:
        out.write(scl_of(col20, row20).astype(np.uint8), 1)
    return str(dst)


@pytest.fixture
def same_scene(synthetic_catalog, tmp_path):
    """One clear C1 item with the SCL pattern, and the same scene as an S2_SR_HARMONIZED image."""
    items, _ = earth_search_items(synthetic_catalog)
    clear = copy.deepcopy(sorted((d for d in items if d["properties"]["eo:cloud_cover"] == 0),
                                 key=lambda d: d["properties"]["datetime"])[0])
    clear["assets"]["scl"]["href"] = _scl_cog(clear["assets"]["scl"]["href"], tmp_path / "scl.tif")
    day = dt.date.fromisoformat(clear["properties"]["datetime"][:10])
    image = S.s2_image("20240101T100000_20240101T100000_T33TVL", str(day),
                       scl=lambda ix, iy: scl_of(np.floor_divide(ix, 2), np.floor_divide(iy, 2)).astype(np.float64))
    cat = static_catalog([clear], tmp_path / "cat", "sentinel-2-c1-l2a")
    return cat, S.Catalog().add(S2_COLLECTION, image), str(day), str(day + dt.timedelta(days=1))


def _gee(standin: S.EEStandIn, **kw):
    from rs_embed_pipeline.providers.gee import GEEProvider

    return GEEProvider(project="test-project", api_url=standin.url, credentials="anonymous",
                       backoff_base_s=0.001, backoff_max_s=0.01, request_timeout_s=30, **kw)


@pytest.mark.usefixtures("gee_env")
@pytest.mark.parametrize("mask", ["scl", "none"])
def test_stac_and_earth_engine_give_the_same_validity(same_scene, inner_tiles, mask):
    cat, ee_catalog, s, e = same_scene
    tiles = inner_tiles.iloc[:3]
    stac = {p.tile_id: p for p in LocalStacProvider(cat, s2_collection="sentinel-2-c1-l2a", s1_collection=None)
            .fetch_patches(tiles, s, e, "s2", bands=["B2", "B4"], cloud_mask=mask)}
    with S.EEStandIn(ee_catalog) as standin:
        ee = {p.tile_id: p for p in _gee(standin).fetch_patches(tiles, s, e, "s2", bands=["B2", "B4"],
                                                                 cloud_mask=mask)}
        requests = standin.pixel_requests
    assert requests and all(len(S.find_calls(r.tree, "Image.remap")) == (1 if mask == "scl" else 0)
                            for r in requests)
    n_invalid = 0
    for tid, p in stac.items():
        q = ee[tid]
        assert p.status == q.status == "ok"
        np.testing.assert_array_equal(p.valid, q.valid)
        n_invalid += int((~p.valid).sum())
        assert p.meta["cloud_mask"] == mask and q.meta["filters"]["cloud_mask"] == mask
    # 6 of the 16 classes are invalid under scl (0, 1, 3, 8, 9, 10): 3 / 8 of the pixels
    frac = n_invalid / sum(p.valid.size for p in stac.values())
    assert (0.3 < frac < 0.5) if mask == "scl" else frac == 0.0


@pytest.mark.usefixtures("gee_env")
def test_earth_engine_scl_mask_is_the_default_and_none_reproduces_the_scene_filter_only(same_scene, inner_tiles):
    _, ee_catalog, s, e = same_scene
    tiles = inner_tiles.iloc[:1]
    with S.EEStandIn(ee_catalog) as standin:
        provider = _gee(standin)
        [default] = provider.fetch_patches(tiles, s, e, "s2", bands=["B4"])
        [none] = provider.fetch_patches(tiles, s, e, "s2", bands=["B4"], cloud_mask="none")
        [csp_default] = _gee(standin, cloud_score_plus=True).fetch_patches(tiles, s, e, "s2", bands=["B4"],
                                                                          cloud_mask="none")
    assert default.meta["filters"]["cloud_mask"] == "scl"
    assert default.meta["filters"]["scl"] == {"band": "SCL", "invalid_classes": [0, 1, 3, 8, 9, 10]}
    assert not default.valid.all() and none.valid.all() and csp_default.valid.all()
    row = {k: tiles.iloc[0][k] for k in ("x0", "y0", "scale_m", "size_px")}
    np.testing.assert_array_equal(none.data[0], S.expected_band(row, S.S2_BASE["B4"]))
    np.testing.assert_array_equal(default.data[0][default.valid], none.data[0][default.valid])
    assert (default.data[0][~default.valid] == 0).all()


def test_cloud_mask_option_parse_and_refusals():
    assert SensorOptions.parse("s2", {}).cloud_mask == "scl"
    assert SensorOptions.parse("s2", {"cloud_mask": "None"}).as_dict()["cloud_mask"] == "none"
    assert SensorOptions.parse("s1", {}).cloud_mask is None
    with pytest.raises(ProviderError, match=r"unknown cloud_mask 'qa60'; valid: \['scl', 'cloud_score_plus', 'none'\]"):
        SensorOptions.parse("s2", {"cloud_mask": "qa60"})
    with pytest.raises(ProviderError, match=r"unknown s1 sensor option\(s\) \['cloud_mask'\]"):
        SensorOptions.parse("s1", {"cloud_mask": "scl"})
    # Earth Engine: cloud_score_plus=True is the older spelling of cloud_mask="cloud_score_plus"
    defaults = {"cloud_score_plus": False, "cs_threshold": 0.6, "cs_band": "cs_cdf"}
    assert EarthEngineSensorOptions.for_fetch("s2", None, {"cloud_score_plus": True}, defaults=defaults).cloud_mask \
        == "cloud_score_plus"
    assert EarthEngineSensorOptions.for_fetch("s2", None, {}, defaults=defaults).cloud_mask == "scl"
    assert EarthEngineSensorOptions.for_fetch("s2", None, {}, defaults={**defaults, "cloud_score_plus": True}
                                              ).cloud_mask == "cloud_score_plus"
    with pytest.raises(ProviderError, match=r"cloud_mask 'none' contradicts cloud_score_plus=True"):
        EarthEngineSensorOptions.parse("s2", {"cloud_mask": "none", "cloud_score_plus": True})
    with pytest.raises(ProviderError, match=r"cloud_mask 'cloud_score_plus' is Earth Engine's Cloud Score\+ .*"
                                            r"valid for the STAC providers: 'scl', 'none'"):
        LocalStacProvider("catalog.json").fetch_patches([], "2024-01-01", "2024-02-01", "s2",
                                                        cloud_mask="cloud_score_plus")
