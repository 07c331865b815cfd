"""GEEProvider throughput behaviour against the stand-in: batching under the 48 MiB limit,
splitting on "too large" answers, concurrency and rate caps, backoff on 429 / 5xx, failures.

The provider runs on a fake clock (``fake_clock``: its rate-limit and backoff sleeps return at
once and are recorded), so rates and backoff sequences are asserted exactly, never timed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rs_embed_pipeline.core.grid import Tile
from rs_embed_pipeline.providers.gee import EE_MAX_REQUEST_BYTES, TokenBucket, pack_requests

from . import ee_standin as S
from .gee_fetch import Q1, fetch_b2

pytestmark = pytest.mark.usefixtures("gee_env")


def _tiles(rows):
    return [Tile.from_row(r) for r in rows]


# ----------------------------------------------------------------------- the 48 MiB limit


def test_packing_puts_sixteen_224px_12band_tiles_under_48mib():
    # Earth Engine's rule (google/Xee#50): one mask byte per band per pixel:
    # 12 float32 bands x (4 + 1) + the uint8 validity band x (1 + 1) = 62 bytes per pixel
    band_bytes = (4,) * 12 + (1,)
    per_tile = 224 * 224 * 62
    assert 16 * per_tile <= EE_MAX_REQUEST_BYTES < 17 * per_tile
    blocks = pack_requests(_tiles(S.tile_rows(40, size_px=224)), band_bytes=band_bytes)
    assert [len(b.cells) for b in blocks] == [16, 16, 8]
    for b in blocks:
        assert b.box.pixels * 62 <= EE_MAX_REQUEST_BYTES
        assert b.box.height == 224 and b.box.width == 224 * len(b.cells)
    # a 4-wide region: 4 x 4 blocks (full rectangles, no pixels outside the tiles)
    blocks = pack_requests(_tiles(S.tile_rows(4, 9, size_px=224)), band_bytes=band_bytes)
    assert [(b.nw, b.nh) for b in blocks] == [(4, 4), (4, 4), (4, 1)]
    # a mosaic travels as uint16: 12 x 3 + 2 = 38 B/px -> 26 tiles
    blocks = pack_requests(_tiles(S.tile_rows(30, size_px=224)), band_bytes=(2,) * 12 + (1,))
    assert [len(b.cells) for b in blocks] == [26, 4]
    # THOR: 288 px, 10 float32 bands -> 52 B/px -> 11 tiles
    blocks = pack_requests(_tiles(S.tile_rows(30, size_px=288)), band_bytes=(4,) * 10 + (1,))
    assert [len(b.cells) for b in blocks] == [11, 11, 8]
    with pytest.raises(TypeError, match="each band"):
        pack_requests(_tiles(S.tile_rows(2)), band_bytes=49)


def test_packing_never_bridges_gaps_or_lattices():
    rows = S.tile_rows(3, col0=2500) + S.tile_rows(2, col0=2510)
    blocks = pack_requests(_tiles(rows), band_bytes=(4, 4, 1))
    assert sorted(len(b.cells) for b in blocks) == [2, 3]
    shifted = [dict(r, x0=r["x0"] + 5.0, tile_id=r["tile_id"] + "s") for r in S.tile_rows(2)]
    blocks = pack_requests(_tiles(S.tile_rows(2) + shifted), band_bytes=(4, 4, 1))
    assert sorted(len(b.cells) for b in blocks) == [2, 2]
    assert len({(b.x0 % 160) for b in blocks}) == 2


def test_distinct_tiles_at_the_same_place_are_all_fetched(standin, make_provider):
    rows = S.tile_rows(3)
    twin = dict(rows[1], tile_id="twin-of-" + rows[1]["tile_id"])
    patches = fetch_b2(make_provider(max_concurrent_requests=1), rows + [twin])
    assert all(p.status == "ok" for p in patches.values())
    np.testing.assert_array_equal(patches[twin["tile_id"]].data, patches[rows[1]["tile_id"]].data)


def test_batched_224px_tiles_under_the_real_limit(standin, make_provider):
    rows = S.tile_rows(17, size_px=224)
    # batching is limited by bytes only; one scene query per block (the partition's list: 1 query,
    # test_gee_scene_list.py)
    provider = make_provider(max_concurrent_requests=1, scene_query="block")
    patches = fetch_b2(provider, rows, bands=S.S2_BANDS)
    sizes = sorted(r.request_bytes for r in standin.pixel_requests)
    assert len(sizes) == 2 and all(s <= EE_MAX_REQUEST_BYTES for s in sizes)
    assert sizes[-1] == 16 * 224 * 224 * 62  # the stand-in counts as Earth Engine does
    assert all(r.status == 200 for r in standin.pixel_requests)
    for row in (rows[0], rows[15], rows[16]):
        p = patches[row["tile_id"]]
        assert p.status == "ok" and p.data.shape == (12, 224, 224)
        np.testing.assert_array_equal(p.data[11], S.expected_band(row, S.S2_BASE["B12"]))
    st = provider.stats()
    assert st["pixel_requests"] == 2 and st["value_requests"] == 2 and st["too_large"] == 0


def test_too_large_answer_splits_the_block(standin, make_provider):
    rows = S.tile_rows(4)
    per_tile = 16 * 16 * (12 * (4 + 1) + 1 + 1)
    standin.max_request_bytes = 2 * per_tile  # the server is stricter than the client's packing
    provider = make_provider(max_concurrent_requests=1)
    patches = fetch_b2(provider, rows, bands=S.S2_BANDS)
    widths = [r.grid["dimensions"]["width"] for r in standin.pixel_requests]
    assert widths == [64, 32, 32]
    assert [r.status for r in standin.pixel_requests] == [400, 200, 200]
    assert "must be less than or equal to" in standin.pixel_requests[0].error
    for row in rows:
        assert patches[row["tile_id"]].status == "ok"
        np.testing.assert_array_equal(patches[row["tile_id"]].data[3], S.expected_band(row, S.S2_BASE["B4"]))
    st = provider.stats()
    assert st["too_large"] == 1 and st["splits"] == 1 and st["failures"] == 0 and st["retries"] == 0


def test_single_tile_too_large_is_split_in_pixels_and_stitched(standin, make_provider):
    rows = S.tile_rows(1, size_px=24)
    standin.max_request_bytes = 24 * 24 * (3 * 5 + 2) // 3  # a third of the tile fits
    provider = make_provider()
    [p] = fetch_b2(provider, rows, bands=("B8", "B9", "B1")).values()
    assert p.status == "ok" and p.valid.all()
    for k, band in enumerate(("B8", "B9", "B1")):
        np.testing.assert_array_equal(p.data[k], S.expected_band(rows[0], S.S2_BASE[band]))
    ok = [r for r in standin.pixel_requests if r.status == 200]
    assert sum(r.grid["dimensions"]["width"] * r.grid["dimensions"]["height"] for r in ok) == 24 * 24
    assert p.meta["request"]["pixel_splits"] >= 2


def test_client_limit_presplits_without_asking(standin, make_provider):
    rows = S.tile_rows(1, size_px=32)
    provider = make_provider(max_request_bytes=32 * 32 * 17 // 2)  # half a tile of 3 bands
    [p] = fetch_b2(provider, rows, bands=("B2", "B3", "B4")).values()
    assert p.status == "ok"
    assert all(r.status == 200 for r in standin.pixel_requests)
    assert [r.grid["dimensions"] for r in standin.pixel_requests] == [{"width": 16, "height": 32}] * 2
    np.testing.assert_array_equal(p.data[2], S.expected_band(rows[0], S.S2_BASE["B4"]))


@pytest.mark.parametrize("message", ["User memory limit exceeded.", "Computation timed out."])
def test_memory_and_timeout_answers_split(standin, make_provider, message):
    standin.fault_hook = S.fail_when(
        lambda r: r.kind == "pixels" and r.grid["dimensions"]["width"] > 16, status=400, message=message)
    rows = S.tile_rows(4)
    patches = fetch_b2(make_provider(max_concurrent_requests=1), rows)
    assert all(p.status == "ok" for p in patches.values())
    assert [r.grid["dimensions"]["width"] for r in standin.pixel_requests if r.status == 200] == [16] * 4


# ------------------------------------------------------------------ concurrency and rate


def test_concurrency_cap_is_respected_server_side(standin, make_provider):
    # the first 4 requests meet in the stand-in: the cap is reached, and a 5th would show
    standin.fault_hook = S.hold_until_in_flight(standin, 4)
    rows = S.tile_rows(24, col_step=2)  # no two tiles adjacent: one request pair per tile
    # per-block scene queries: every request is one of a pair (the partition's list comes alone
    # first: test_gee_scene_list.py holds pixel requests only)
    provider = make_provider(max_concurrent_requests=4, max_requests_per_second=1000, scene_query="block")
    fetch_b2(provider, rows)
    assert len(standin.pixel_requests) == 24
    assert standin.max_in_flight == 4
    assert provider.stats()["max_in_flight"] == 4


def test_concurrency_cap_is_shared_by_concurrent_fetches(standin, make_provider):
    # three fetches with three pool threads each share 3 slots: 3 requests meet, no 4th joins
    standin.fault_hook = S.hold_until_in_flight(standin, 3)
    provider = make_provider(max_concurrent_requests=3, max_requests_per_second=1000)
    results: list[int] = []

    def run(col0: int) -> None:
        rows = S.tile_rows(8, col_step=2, col0=col0)
        results.append(len(fetch_b2(provider, rows)))

    threads = [threading.Thread(target=run, args=(2500 + 100 * k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [8, 8, 8]
    assert standin.max_in_flight == 3
    assert provider.stats()["max_in_flight"] == 3


def test_rate_limit(standin, make_provider):
    assert make_provider().max_requests_per_second == 100.0  # the default (the per-project quota)
    rate = 25.0
    rows = S.tile_rows(40, col_step=2)  # 80 requests, 40 at once: the bucket alone orders them
    clock = S.FakeClock(advance=False)  # time stands still: every token is reserved ahead
    provider = make_provider(max_concurrent_requests=40, max_requests_per_second=rate,
                             clock=clock, sleep=clock.sleep, scene_query="block")  # 40 + 40 requests
    fetch_b2(provider, rows)
    n = len([r for r in standin.requests if r.kind in ("value", "pixels")])
    assert n == 80
    burst = provider.stats()["config"]["rate_burst"]
    assert burst == 2.5  # default: a tenth of a second of the rate
    # Token bucket: the k-th request (1-based) waits until (k - burst) / rate after the start,
    # i.e. by time t at most burst + rate * t requests have started; the burst goes at once.
    expected = [(k - burst) / rate for k in range(3, n + 1)]
    assert sorted(clock.sleeps) == expected
    assert provider.stats()["rate_limit_wait_s"] == round(sum(expected), 4)
    # every request but the burst waited: 78 / 25 s = 3.12 s for the last one
    assert max(clock.sleeps) == (n - burst) / rate == 3.1


def test_token_bucket_unit():
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)

    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0], sleep=sleep)
    assert bucket.acquire() == 0 and bucket.acquire() == 0  # the burst
    assert bucket.acquire() == pytest.approx(0.1)           # then one per 1/rate
    assert bucket.acquire() == pytest.approx(0.2)           # reservations queue up
    now[0] = 10.0
    assert bucket.acquire() == 0                            # refilled, capped at burst
    assert bucket.acquire() == 0
    assert bucket.acquire() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


# --------------------------------------------------------------------------- retries


def test_429_storm_ends_in_success(standin, make_provider):
    standin.fault_hook = S.fail_first(25, status=429, message="Too many concurrent aggregations.")
    rows = S.tile_rows(6, col_step=2)
    provider = make_provider(max_retries=30, max_concurrent_requests=6, scene_query="block")  # 6 + 6 requests
    patches = fetch_b2(provider, rows)
    assert all(p.status == "ok" for p in patches.values())
    st = provider.stats()
    assert st["throttled"] == 25 and st["retries"] == 25 and st["failures"] == 0
    assert st["requests"] == 12 + 25
    assert sum(1 for r in standin.requests if r.status == 429) == 25


def test_retry_after_is_honoured(standin, make_provider, fake_clock):
    standin.fault_hook = S.fail_first(1, status=429, kinds=("value",), headers={"Retry-After": "0.3"})
    provider = make_provider(backoff_max_s=5.0)
    fetch_b2(provider, S.tile_rows(1))
    assert fake_clock.sleeps == [0.3]  # the server's delay, not the (1 ms) backoff
    # capped by backoff_max_s
    standin.fault_hook = S.fail_first(1, status=429, kinds=("value",), headers={"Retry-After": "30"})
    fetch_b2(make_provider(backoff_max_s=5.0), S.tile_rows(1))
    assert fake_clock.sleeps == [0.3, 5.0]


def test_backoff_sequence_is_exponential_and_capped(standin, make_provider, fake_clock):
    standin.fault_hook = S.fail_first(6, status=503, kinds=("value",))
    provider = make_provider(backoff_base_s=1.0, backoff_max_s=8.0, max_retries=6,
                             rng=S.MaxUpperRandom())
    [p] = fetch_b2(provider, S.tile_rows(1)).values()
    assert p.status == "ok"
    assert fake_clock.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # base * 2**(attempt-1), capped
    st = provider.stats()
    assert st["retries"] == 6 and st["server_errors"] == 6 and st["failures"] == 0
    # the jitter draws from [delay / 2, delay]
    class Low:
        @staticmethod
        def uniform(a: float, b: float) -> float:
            return a

    fake_clock.sleeps.clear()
    standin.fault_hook = S.fail_first(3, status=503, kinds=("value",))
    fetch_b2(make_provider(backoff_base_s=1.0, backoff_max_s=8.0, rng=Low()), S.tile_rows(1))
    assert fake_clock.sleeps == [0.5, 1.0, 2.0]


def test_transient_5xx_are_retried(standin, make_provider):
    standin.fault_hook = S.fail_first(3, status=503, kinds=("pixels",))
    provider = make_provider(max_retries=5)
    patches = fetch_b2(provider, S.tile_rows(2, col_step=2))
    assert all(p.status == "ok" for p in patches.values())
    assert provider.stats()["server_errors"] == 3 and provider.stats()["retries"] == 3


def test_persistent_5xx_fails_those_tiles_only(standin, make_provider):
    rows = S.tile_rows(5, col_step=2)
    bad = rows[2]
    standin.fault_hook = S.fail_when(
        lambda r: r.kind == "pixels" and S.grid_contains(r, bad["x0"] + 1, bad["y0"] - 1),
        status=500, message="An internal error has occurred")
    provider = make_provider(max_retries=2)
    patches = fetch_b2(provider, rows)
    assert patches[bad["tile_id"]].status == "failed"
    reason = patches[bad["tile_id"]].meta["reason"]
    assert "HTTP 500" in reason and "after 3 attempt(s)" in reason and "internal error" in reason
    assert not patches[bad["tile_id"]].valid.any()
    assert all(patches[r["tile_id"]].status == "ok" for r in rows if r is not bad)
    st = provider.stats()
    assert st["tiles_failed"] == 1 and st["tiles_ok"] == 4 and st["failures"] == 1 and st["retries"] == 2


def test_persistent_failure_of_a_batch_and_of_the_scene_query(standin, make_provider):
    rows = S.tile_rows(3)
    standin.fault_hook = S.fail_when(lambda r: r.kind == "value", status=503)
    provider = make_provider(max_retries=1, max_concurrent_requests=1)
    patches = fetch_b2(provider, rows)
    assert all(p.status == "failed" and "value request failed" in p.meta["reason"] for p in patches.values())
    assert standin.pixel_requests == []


def test_permanent_errors_are_not_retried(standin, make_provider):
    standin.fault_hook = S.fail_when(lambda r: r.kind == "pixels", status=403,
                                     message="Permission denied for this project.")
    provider = make_provider(max_retries=5)
    [p] = fetch_b2(provider, S.tile_rows(1)).values()
    assert p.status == "failed" and "not retryable" in p.meta["reason"] and "HTTP 403" in p.meta["reason"]
    assert provider.stats()["retries"] == 0 and len(standin.pixel_requests) == 1


def test_stats_counters(standin, make_provider):
    rows = S.tile_rows(3) + S.tile_rows(1, col0=9000)
    provider = make_provider(max_concurrent_requests=2)
    fetch_b2(provider, rows, bands=("B2", "B3"))
    st = provider.stats()
    assert st["requests"] == st["value_requests"] + st["pixel_requests"]
    assert st["requests"] == len(standin.value_requests) + len(standin.pixel_requests)
    assert st["bytes"] == sum(r.response_bytes for r in standin.pixel_requests)
    assert st["tiles"] == 4 and st["tiles_ok"] == 4
    assert st["requests_per_tile"] == pytest.approx(st["requests"] / 4)
    provider.reset_stats()
    assert provider.stats()["requests"] == 0


def test_closing_the_generator_early_does_not_hang(standin, make_provider):
    standin.latency_s = 0.02
    gen = make_provider(max_concurrent_requests=2).fetch_patches(
        S.tile_rows(10, col_step=2), *Q1, "s2", bands=["B2"])
    first = next(gen)
    assert first.status == "ok"
    closer = threading.Thread(target=gen.close)
    closer.start()
    closer.join(timeout=60)  # a safety net, not a measurement: a hang fails here
    assert not closer.is_alive()
    # the blocks not started were cancelled: at most max_pending (2 slots + 2) ran
    assert len(standin.pixel_requests) <= 2 + 2 < 10


# ----------------------------------------------------------------------- the benchmark's stand-in mode


def test_payload_only_standin_serves_one_precomputed_payload_per_grid_shape(gee_env):
    # benchmarks/bench_gee.py --payload-only: the figure must be the client's, so the stand-in does its
    # pixel work once per grid shape and band layout; the size rule and the answers' layout stay real
    from rs_embed_pipeline.providers.gee import GEEProvider

    with S.EEStandIn(payload_only=True) as standin:
        provider = GEEProvider(project="p", api_url=standin.url, credentials="anonymous",
                               max_tiles_per_request=1)
        first = fetch_b2(provider, S.tile_rows(3, size_px=16))
        assert len(standin._payloads) == 1  # one shape (16 x 16, B2 + validity): computed once
        answers = [r for r in standin.pixel_requests if r.status == 200]
        assert len(answers) == 3 and len({r.response_bytes for r in answers}) == 1
        # every tile got the first grid's pixels: right shape and dtype, not its own values
        tiles = sorted(first)
        np.testing.assert_array_equal(first[tiles[1]].data, first[tiles[0]].data)
        assert first[tiles[0]].data.shape == (1, 16, 16) and first[tiles[0]].data.dtype == np.float32
        with S.EEStandIn() as exact:  # the normal mode computes each grid's own pixels
            normal = fetch_b2(GEEProvider(project="p", api_url=exact.url, credentials="anonymous",
                                          max_tiles_per_request=1), S.tile_rows(3, size_px=16))
        # the payload holds the pixels of whichever grid came first (requests run concurrently)
        assert sum(np.array_equal(first[tiles[0]].data, normal[t].data) for t in tiles) == 1
        assert not np.array_equal(normal[tiles[1]].data, normal[tiles[0]].data)
        # a second band layout is a second payload
        fetch_b2(provider, S.tile_rows(2, size_px=16), bands=("B2", "B3"))
        assert len(standin._payloads) == 2
    # the size rule is checked before any payload is looked up: the 16 x 16 request is refused
    # ("too large"), the provider splits it, and only the smaller boxes get payloads
    with S.EEStandIn(payload_only=True, max_request_bytes=16 * 16 * (4 + 1 + 1 + 1) - 1) as small:
        provider = GEEProvider(project="p", api_url=small.url, credentials="anonymous",
                               max_tiles_per_request=1, max_request_bytes=1 << 20)
        patches = list(provider.fetch_patches(S.tile_rows(1, size_px=16), *Q1, "s2", bands=["B2"]))
        assert [p.status for p in patches] == ["ok"]
        assert small.stats()["size_errors"] >= 1
        assert small._payloads and all(w * h < 16 * 16 for w, h, _ in small._payloads)
