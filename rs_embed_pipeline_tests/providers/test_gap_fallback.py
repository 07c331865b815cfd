"""Issue #22 case 6 (fallback): inside Earth Search C1's documented gaps (2022; Nov 2016 - Nov
2019) the STAC provider reads the legacy ``sentinel-2-l2a`` collection when the user names it
(``fallback_collection``), records each scene taken from it, and takes none outside the gaps.

The C1 items are the conftest's synthetic Earth Search C1 items; the legacy items are their
copies laid out as Earth Search's ``sentinel-2-l2a`` (test_catalog_offsets._legacy: legacy ids,
``s2:processing_baseline``, ``earthsearch:boa_offset_applied`` true over harmonized COGs)."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pytest

from rs_embed_pipeline.providers import LocalStacProvider, ProviderError, StacProvider

from .test_catalog_offsets import _harmonized, _legacy
from .conftest import static_catalog

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]

GAP_REASON = "Earth Search C1 lacks 2022 (its README, April 2024)"


def _redated(item: dict, when: str) -> dict:
    d = copy.deepcopy(item)
    d["properties"]["datetime"] = when
    d["id"] = f"{item['id']}_{when[:10]}"
    return d


@pytest.fixture
def catalogs(es_items, tmp_path):
    """C1 scenes in January 2023 (after the gap); legacy scenes in December 2022 (in the gap) and
    one in January 2023 (after it, where C1 has the scene)."""
    c1, coll = es_items()
    clear = sorted((d for d in c1 if d["properties"]["eo:cloud_cover"] == 0), key=lambda d: d["properties"]["datetime"])
    after = [_redated(clear[0], "2023-01-10T10:00:00Z"), _redated(clear[1], "2023-01-20T10:00:00Z")]
    legacy = [_legacy(_redated(clear[0], "2022-12-10T10:00:00Z"), tmp_path, 0, True, _harmonized),
              _legacy(_redated(clear[1], "2022-12-20T10:00:00Z"), tmp_path, 1, True, _harmonized),
              _legacy(_redated(clear[0], "2023-01-10T10:00:00Z"), tmp_path, 0, True, _harmonized)]
    legacy_coll = {**coll, "id": "sentinel-2-l2a"}
    return after, legacy, coll, legacy_coll


def test_gap_falls_back_to_the_legacy_collection_recorded_per_scene(stac_api, catalogs, inner_tiles, tmp_path):
    after, legacy, coll, legacy_coll = catalogs
    api = stac_api(after + legacy, [coll, legacy_coll])
    tiles = inner_tiles.iloc[:2]
    s, e = "2022-12-01", "2023-02-01"
    plain = {p.tile_id: p for p in StacProvider(api_url=api.url, max_workers=1).fetch_patches(
        tiles, s, e, "s2", bands=["B2"], composite="mosaic")}
    for p in plain.values():  # C1 alone: January only, no fallback recorded
        assert p.meta["scene_ids"] == [d["id"] for d in after]
        assert "fallback_scenes" not in p.meta and "fallback_collection" not in p.meta
    seen = len(api.searches)
    prov = StacProvider(api_url=api.url, max_workers=1, fallback_collection="sentinel-2-l2a")
    got = {p.tile_id: p for p in prov.fetch_patches(tiles, s, e, "s2", bands=["B2"], composite="mosaic")}
    # one search of the legacy collection, over the part of the window inside the 2022 gap
    legacy_searches = [q for q in api.searches[seen:] if q["collections"] == ["sentinel-2-l2a"]]
    assert len(legacy_searches) == 1
    assert legacy_searches[0]["datetime"].startswith("2022-12-01T00:00:00")
    assert legacy_searches[0]["datetime"].split("/")[1].startswith("2022-12-31T23:59:59.999999")
    for p in got.values():
        assert p.status == "ok" and p.meta["fallback_collection"] == "sentinel-2-l2a"
        assert sorted(p.meta["scene_ids"]) == sorted([legacy[0]["id"], legacy[1]["id"], *(d["id"] for d in after)])
        assert legacy[2]["id"] not in p.meta["scene_ids"]  # after the gap: C1 only, no scene twice
        assert p.meta["fallback_scenes"] == [
            {"id": legacy[0]["id"], "collection": "sentinel-2-l2a", "reason": GAP_REASON},
            {"id": legacy[1]["id"], "collection": "sentinel-2-l2a", "reason": GAP_REASON}]
        assert p.meta["n_dates"] == 4 and p.meta["found_scenes"] == 4
    assert prov.describe()["fallback_collection"] == "sentinel-2-l2a"
    assert "fallback_collection" not in StacProvider(api_url=api.url).describe()  # fingerprints unchanged


def test_fallback_scene_gives_the_c1_numbers(stac_api, catalogs, inner_tiles, tmp_path):
    """A legacy scene (flag true, harmonized COG) in the gap gives the DN of the same pixels as a C1 item."""
    after, legacy, coll, legacy_coll = catalogs
    api = stac_api(after + legacy, [coll, legacy_coll])
    tiles = inner_tiles.iloc[:2]
    day = dt.date(2022, 12, 10)
    got = {p.tile_id: p for p in StacProvider(api_url=api.url, max_workers=1, fallback_collection="sentinel-2-l2a")
           .fetch_patches(tiles, str(day), str(day + dt.timedelta(days=1)), "s2", bands=["B2"])}
    same = _redated(after[0], "2022-12-10T10:00:00Z")  # the C1 layout of the same pixels
    want = {p.tile_id: p for p in LocalStacProvider(static_catalog([same], tmp_path / "c1"), s2_collection="sentinel-2-c1-l2a",
                                                    s1_collection=None, cloudy_pct=None)
            .fetch_patches(tiles, str(day), str(day + dt.timedelta(days=1)), "s2", bands=["B2"])}
    for tid, p in got.items():
        assert p.meta["scene_ids"] == [legacy[0]["id"]]
        np.testing.assert_array_equal(p.data, want[tid].data)
        np.testing.assert_array_equal(p.valid, want[tid].valid)


def test_fallback_collection_must_be_another_collection():
    with pytest.raises(ProviderError, match=r"fallback_collection 'sentinel-2-c1-l2a' is the S2 collection itself"):
        StacProvider(api_url="http://127.0.0.1:9", fallback_collection="sentinel-2-c1-l2a")


def test_the_stac_resource_passes_its_fallback_collection():
    from rs_embed_pipeline.orchestration.resources import StacImagery

    assert StacImagery(fallback_collection="sentinel-2-l2a").build().fallback_collection == "sentinel-2-l2a"
    assert StacImagery().build().fallback_collection is None
