"""computePixels through the direct REST client (``pixel_transport="rest"``, the default) and
through ``ee.data.computePixels`` (``"ee"``): the same request, the same numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rs_embed_pipeline.providers import ProviderError

from . import ee_standin as S
from .gee_fetch import fetch

pytestmark = pytest.mark.usefixtures("gee_env")


def test_rest_and_ee_transports_give_bit_identical_patches(standin, make_provider):
    standin.catalog = S.Catalog({"COPERNICUS/S2_SR_HARMONIZED": [
        S.s2_image("A", "2024-01-10", offset=0.0),
        S.s2_image("B", "2024-02-10", offset=3.0,
                   valid=lambda ix, iy: np.broadcast_to(np.mod(ix, 3) != 0, np.broadcast(ix, iy).shape)),
    ]})
    rows = S.tile_rows(5, 2, size_px=24)
    via_ee = fetch(make_provider(pixel_transport="ee"), rows, bands=S.S2_BANDS)
    ee_bodies = sorted(json.dumps(r.body, sort_keys=True) for r in standin.pixel_requests)
    standin.reset_records()
    via_rest = fetch(make_provider(), rows, bands=S.S2_BANDS)
    rest_requests = standin.pixel_requests
    # the same documented call and body (requests run concurrently: compared as sets)
    assert sorted(json.dumps(r.body, sort_keys=True) for r in rest_requests) == ee_bodies
    assert all(r.path == "/v1/projects/test-project/image:computePixels" for r in rest_requests)
    assert all(r.headers["x-goog-user-project"] == "test-project" for r in rest_requests)
    for tid, p in via_rest.items():
        q = via_ee[tid]
        assert p.status == q.status == "ok"
        assert p.data.dtype == np.float32 and p.data.tobytes() == q.data.tobytes()
        np.testing.assert_array_equal(p.valid, q.valid)
    row = rows[3]  # the median of the two scenes where B is valid, A alone elsewhere
    ix, _ = S.pixel_indices(row["x0"], row["y0"], 10.0, 24, 24)
    expect = S.expected_band(row, S.S2_BASE["B4"]) + np.where(np.mod(ix, 3) != 0, 1.5, 0.0)
    np.testing.assert_array_equal(via_rest[row["tile_id"]].data[3], expect.astype(np.float32))


def test_rest_transport_errors_are_classified_like_the_ee_client(standin, make_provider, fake_clock):
    standin.fault_hook = S.fail_first(2, status=429, kinds=("pixels",), headers={"Retry-After": "0.7"})
    provider = make_provider(backoff_max_s=5.0)
    [p] = fetch(provider, S.tile_rows(1), bands=["B2"]).values()
    assert p.status == "ok" and fake_clock.sleeps == [0.7, 0.7]
    assert provider.stats()["throttled"] == 2
    standin.fault_hook = S.fail_when(lambda r: r.kind == "pixels", status=403, message="Permission denied.")
    [p] = fetch(make_provider(), S.tile_rows(1), bands=["B2"]).values()
    assert p.status == "failed" and "HTTP 403" in p.meta["reason"] and "Permission denied." in p.meta["reason"]


def test_unknown_pixel_transport_is_refused(make_provider):
    with pytest.raises(ProviderError, match=r"pixel_transport must be one of \['rest', 'ee'\], got 'http2'"):
        make_provider(pixel_transport="http2")
