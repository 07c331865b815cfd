"""Issue #22 case 6: a window whose scene count is far below the revisit expectation is reported
(``found_scenes``, ``scene_gap`` with ``expected_scenes``) and logged, naming a documented catalog gap."""

from __future__ import annotations

import logging

import pytest

from rs_embed_pipeline.providers import LocalStacProvider
from rs_embed_pipeline.providers.catalogs import scene_gap

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]


def test_gap_rule_names_the_documented_earth_search_c1_gaps():
    assert scene_gap("sentinel-2-c1-l2a", "s2", "2024-01-01", "2024-04-01", 91, 6) is None  # 6 >= 18 / 4
    assert scene_gap("sentinel-2-c1-l2a", "s2", "2022-04-01", "2022-07-01", 91, 0) == {
        "expected_scenes": 18, "found_scenes": 0, "reason": "Earth Search C1 lacks 2022 (its README, April 2024)"}
    gap = scene_gap("sentinel-2-c1-l2a", "s2", "2019-10-01", "2020-01-01", 92, 2)
    assert gap is not None and gap["reason"] == "Earth Search C1 lacks Nov 2016 - Nov 2019 (its README, April 2024)"
    assert scene_gap("sentinel-1-grd-sigma0", "s1", "2024-01-01", "2024-04-01", 91, 1) == {
        "expected_scenes": 7, "found_scenes": 1,
        "reason": "fewer than 25% of the 7 dates a 12-day revisit gives (catalog gap, cloud filter or orbit filter)"}


def test_a_sparse_window_is_recorded_and_logged(synthetic_catalog, inner_tiles, caplog):
    prov = LocalStacProvider(synthetic_catalog)
    tiles = inner_tiles.iloc[:2]
    [q1, _] = prov.fetch_patches(tiles, "2024-01-01", "2024-04-01", "s2", bands=["B4"])
    assert q1.meta["found_scenes"] == 6 and "scene_gap" not in q1.meta  # every 15 days: 6 of 18
    with caplog.at_level(logging.WARNING, logger="rs_embed_pipeline.providers.stac.fetch"):
        year = list(prov.fetch_patches(tiles, "2024-01-01", "2025-01-01", "s2", bands=["B4"]))
    for p in year:  # a year holds 73 five-day revisits; the catalog has Q1 only
        assert p.meta["found_scenes"] == 6
        assert p.meta["scene_gap"]["expected_scenes"] == 73
    gaps = [r.getMessage() for r in caplog.records if "scene dates" in r.getMessage()]
    assert len(gaps) == 1 and "6 scene dates in 2024-01-01 .. 2025-01-01, 73 expected" in gaps[0]
