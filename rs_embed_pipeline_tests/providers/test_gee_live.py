"""GEEProvider against the real Earth Engine API (``-m live_gee``).

Runs only with credentials in the environment: ``EE_PROJECT`` plus a service-account key in
``EE_SERVICE_ACCOUNT_KEY`` (a path) or Application Default Credentials through
``GOOGLE_APPLICATION_CREDENTIALS``. Skipped otherwise, with the reason. Uses the high-volume
endpoint and a handful of requests.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.live_gee

_KEY = os.environ.get("EE_SERVICE_ACCOUNT_KEY") or None
_ADC = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
_PROJECT = os.environ.get("EE_PROJECT") or None
_MISSING = [name for name, value in (("EE_PROJECT", _PROJECT),
                                     ("EE_SERVICE_ACCOUNT_KEY or GOOGLE_APPLICATION_CREDENTIALS",
                                      _KEY or _ADC)) if not value]
requires_credentials = pytest.mark.skipif(
    bool(_MISSING), reason=f"live Earth Engine test: no credentials ({', '.join(_MISSING)} not set)"
)


@pytest.fixture(scope="module")
def tiles():
    from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid

    # ~2 x 1 km of farmland south of Rome (UTM 33N), 224 px tiles at 10 m
    grid = build_tile_grid(bbox_aoi(12.60, 41.70, 12.625, 41.71), 224, 10.0)
    return grid.head(2)


@pytest.fixture(scope="module")
def provider():
    from rs_embed_pipeline.providers.gee import GEEProvider

    # The provider reads no environment variable: EE_PROJECT is passed, as the pipeline's settings pass it.
    return GEEProvider(project=_PROJECT, credentials_file=_KEY, max_concurrent_requests=4)


@requires_credentials
def test_live_s2_two_tiles(provider, tiles):
    patches = {p.tile_id: p for p in provider.fetch_patches(
        tiles, "2024-04-01", "2024-07-01", "s2",
        bands=["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"])}
    assert set(patches) == set(tiles["tile_id"])
    for p in patches.values():
        assert p.status == "ok", p.meta.get("reason")
        assert p.data.shape == (12, 224, 224) and p.data.dtype == np.float32
        assert p.valid.mean() > 0.9
        red = p.data[3][p.valid]
        assert 0 < np.median(red) < 10000  # DN reflectance x 10000
        assert p.meta["image_count"] > 0 and p.meta["crs"].startswith("EPSG:326")
    stats = provider.stats()
    assert stats["pixel_requests"] >= 1 and stats["failures"] == 0


@requires_credentials
def test_live_s1_one_tile(provider, tiles):
    [p] = provider.fetch_patches(tiles.head(1), "2024-04-01", "2024-07-01", "s1")
    assert p.status == "ok", p.meta.get("reason")
    assert p.data.shape == (2, 224, 224)
    vv = p.data[0][p.valid]
    assert 0 < np.median(vv) < 1  # linear sigma0 power
