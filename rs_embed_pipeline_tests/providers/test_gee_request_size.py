"""Earth Engine's request size rule (pixels x sum over bands of (bytes + 1 mask byte)), the
smallest exact dtype, busy-backend texts retried, repeated client timeouts split."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rs_embed_pipeline.core.grid import Tile
from rs_embed_pipeline.providers.gee import EE_MAX_REQUEST_BYTES, pack_requests
from rs_embed_pipeline.providers.gee.request_blocks import request_bytes

from . import ee_standin as S
from .gee_fetch import fetch_b2

pytestmark = pytest.mark.usefixtures("gee_env")


def test_rule_matches_the_real_error_text():
    # google/Xee#50: 48 float64 bands of 512 x 256 px -> "Total request size (56623104 bytes)"
    assert request_bytes(512 * 256, (8,) * 48) == 56623104 > EE_MAX_REQUEST_BYTES == 50331648


@pytest.mark.parametrize("composite, dtype_bytes, per_request", [("median", 4, 16), ("mosaic", 2, 26)])
def test_no_packed_request_exceeds_the_limit(composite, dtype_bytes, per_request):
    """Every block packed for 224 px S2 tiles of 12 bands, whatever the region's shape, is under
    48 MiB by Earth Engine's count, and holds at least 16 tiles when the region allows."""
    band_bytes = (dtype_bytes,) * 12 + (1,)
    for ncol, nrow in [(40, 1), (7, 7), (3, 11), (16, 2)]:
        rows = S.tile_rows(ncol, nrow, size_px=224)
        blocks = pack_requests([Tile.from_row(r) for r in rows], band_bytes=band_bytes)
        assert sum(len(b.cells) for b in blocks) == len(rows)
        for b in blocks:
            assert request_bytes(b.box.pixels, band_bytes) <= EE_MAX_REQUEST_BYTES
        assert max(len(b.cells) for b in blocks) >= min(16, len(rows))
    blocks = pack_requests([Tile.from_row(r) for r in S.tile_rows(60, size_px=224)], band_bytes=band_bytes)
    assert max(len(b.cells) for b in blocks) == per_request


def test_mosaic_travels_as_uint16_exactly(standin, make_provider):
    rows = S.tile_rows(3)
    patches = fetch_b2(make_provider(), rows, bands=S.S2_BANDS, composite="mosaic")
    for req in standin.pixel_requests:
        w, h = req.grid["dimensions"]["width"], req.grid["dimensions"]["height"]
        assert req.request_bytes == w * h * (12 * (2 + 1) + (1 + 1))
        assert S.find_calls(req.tree, "Image.toUint16") and not S.find_calls(req.tree, "Image.toFloat")
    for row in rows:
        p = patches[row["tile_id"]]
        assert p.status == "ok" and p.meta["request_dtype"] == "uint16" and p.data.dtype == np.float32
        np.testing.assert_array_equal(p.data[11], S.expected_band(row, S.S2_BASE["B12"]))
    # the median keeps float32 (half DN), a non-integer fill value too
    fetch_b2(make_provider(), rows[:1], composite="mosaic", fill_value=-1.5)
    assert S.find_calls(standin.pixel_requests[-1].tree, "Image.toFloat")


@pytest.mark.parametrize("message", ["Too many concurrent aggregations.",
                                     "Computation capacity exceeded. Please try again later."])
def test_busy_backend_texts_are_retried_whatever_the_status(standin, make_provider, message):
    seen: list[int] = []

    def hook(rec):
        if rec.kind == "pixels":
            seen.append(1)
            if len(seen) == 1:
                return S.Fault(400, message)
        return None

    standin.fault_hook = hook
    provider = make_provider(max_concurrent_requests=1)
    patches = fetch_b2(provider, S.tile_rows(2))
    assert all(p.status == "ok" for p in patches.values())
    st = provider.stats()
    assert st["retries"] == 1 and st["splits"] == 0 and st["failures"] == 0


def test_repeated_client_timeout_splits_the_request(standin, make_provider):
    def slow_when_wide(rec):
        if rec.kind == "pixels" and rec.grid["dimensions"]["width"] > 16:
            time.sleep(2.5)
        return None

    standin.fault_hook = slow_when_wide
    provider = make_provider(max_concurrent_requests=1, request_timeout_s=1, max_retries=8)
    patches = fetch_b2(provider, S.tile_rows(2))
    assert all(p.status == "ok" for p in patches.values())
    st = provider.stats()
    # two timeouts of the 2-tile request (not nine), then one split into single tiles
    assert st["splits"] == 1 and st["retries"] == 1
    assert [r.grid["dimensions"]["width"] for r in standin.pixel_requests].count(32) == 2
