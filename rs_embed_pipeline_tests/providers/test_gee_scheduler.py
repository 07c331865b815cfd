"""Every slot busy (issue #26 point 2): the work queue of one fetch (``providers/gee/scheduler.py``)
and the process-wide limits per endpoint + project (``providers/gee/limits.py``).

Requests are held in the stand-in (barriers, events: hold hooks) and the provider runs on a fake
clock: what is asserted is which requests were in flight together and the delays asked, never
elapsed time. A hold that is never released times out (30 s) and fails the test."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials

from rs_embed_pipeline.providers.gee.limits import shared_limiter
from rs_embed_pipeline.providers.gee.scheduler import Context, RequestScheduler

from . import ee_standin as S
from .gee_fetch import Q1, fetch, fetch_b2

pytestmark = pytest.mark.usefixtures("gee_env")

HOLD_S = 30.0  # a safety net for a hold that never ends (a failure), not a measurement


def pixel_hook(seen: list[int], on_pixels: Callable[[int], S.Fault | None]) -> Callable[[S.Recorded], S.Fault | None]:
    """A fault hook of the pixel requests only (the others pass): each is counted in ``seen`` and
    ``on_pixels`` gets its number (1, 2, ...), called outside the count's lock (it may wait)."""
    lock = threading.Lock()

    def hook(rec: S.Recorded) -> S.Fault | None:
        if rec.kind != "pixels":
            return None
        with lock:
            seen.append(1)
            k = len(seen)
        return on_pixels(k)
    return hook


def test_a_backoff_holds_no_slot(standin, make_provider):
    # 2 slots, 3 single-tile requests; the first answer is a 429 and its backoff is held until the
    # two others have been in flight together: a backoff that held a slot (or a thread of a pool
    # as large as the slots) would leave one of them waiting, and the hold would never end
    seen: list[int] = []
    both_in_flight = threading.Barrier(2, timeout=HOLD_S)
    met = threading.Event()

    def on_pixels(k: int) -> S.Fault | None:
        if k == 1:
            return S.Fault(429, "Too many requests.")
        if k in (2, 3):
            both_in_flight.wait()
            met.set()
        return None

    standin.fault_hook = pixel_hook(seen, on_pixels)
    clock = S.FakeClock()
    held: list[bool] = []

    def sleep(seconds: float) -> None:  # the retry's backoff (rate 1000/s: no token waits)
        clock.sleep(seconds)
        held.append(met.wait(HOLD_S))

    provider = make_provider(max_concurrent_requests=2, max_requests_per_second=1000, clock=clock,
                             sleep=sleep, backoff_base_s=0.5, backoff_max_s=5.0, rng=S.MaxUpperRandom())
    rows = S.tile_rows(3, col_step=2)
    patches = fetch_b2(provider, rows)
    assert all(p.status == "ok" for p in patches.values())
    assert held == [True] and clock.sleeps == [0.5]  # one backoff, its delay exactly, released
    assert len(seen) == 4  # 3 requests + the retry
    st = provider.stats()
    assert st["retries"] == 1 and st["throttled"] == 1 and st["pixel_requests"] == 4
    assert st["max_in_flight"] == 2 and standin.max_in_flight == 2


def test_one_slow_request_does_not_hold_the_others(standin, make_provider):
    # 3 slots, 8 single-tile requests; the first is held in the stand-in until all 7 others have
    # arrived (so 6 of them were answered meanwhile, in the 2 other slots, two at a time)
    seen: list[int] = []
    others_arrived = threading.Event()
    pair = threading.Barrier(2, timeout=HOLD_S)

    def on_pixels(k: int) -> S.Fault | None:
        if k == 1:
            assert others_arrived.wait(HOLD_S)
        elif k in (2, 3):
            pair.wait()  # the two other slots are busy at once while the first is held
        if k == 8:
            others_arrived.set()
        return None

    standin.fault_hook = pixel_hook(seen, on_pixels)
    provider = make_provider(max_concurrent_requests=3, max_requests_per_second=1000)
    rows = S.tile_rows(8, col_step=2)
    patches = fetch_b2(provider, rows)
    assert all(p.status == "ok" for p in patches.values())
    for row in rows:
        np.testing.assert_array_equal(patches[row["tile_id"]].data[0], S.expected_band(row, S.S2_BASE["B2"]))
    assert others_arrived.is_set() and len(seen) == 8
    assert standin.max_in_flight == 3 and provider.stats()["max_in_flight"] == 3


def test_the_halves_of_a_split_run_in_parallel_slots(standin, make_provider):
    # one 16 x 16 tile of B2 (7 bytes per pixel by Earth Engine's count) where the server takes at
    # most half of it: its two halves meet in the stand-in (in two slots at once) and are stitched
    standin.max_request_bytes = 16 * 16 * 7 // 2
    halves = threading.Barrier(2, timeout=HOLD_S)

    def hook(rec: S.Recorded) -> S.Fault | None:
        if rec.kind == "pixels":
            dims = rec.grid["dimensions"]
            if dims["width"] * dims["height"] == 16 * 16 // 2:
                halves.wait()
        return None

    standin.fault_hook = hook
    provider = make_provider(max_concurrent_requests=2)
    rows = S.tile_rows(1)
    [p] = fetch_b2(provider, rows).values()
    assert p.status == "ok" and p.valid.all()
    np.testing.assert_array_equal(p.data[0], S.expected_band(rows[0], S.S2_BASE["B2"]))
    assert p.meta["request"] == {"tiles_in_request": 1, "pixel_splits": 1}
    assert [r.status for r in standin.pixel_requests] == [400, 200, 200]
    st = provider.stats()
    assert st["too_large"] == 1 and st["splits"] == 1 and st["max_in_flight"] == 2


def test_a_slow_consumer_bounds_what_is_fetched_ahead(standin, make_provider):
    # 4 slots: at most 2 x 4 = 8 blocks open (fetched or being fetched, not yet taken by the
    # consumer). The consumer takes one patch and stops: the slots go on until 8 requests were
    # made (before: slots + 2 = 6), never more than the patches taken + 8 (checked in the hook,
    # at every request)
    slots = 4
    arrived: list[int] = []
    received = [0]
    over: list[tuple[int, int]] = []
    lock = threading.Lock()
    reached = threading.Event()

    def hook(rec: S.Recorded) -> S.Fault | None:
        if rec.kind != "pixels":
            return None
        with lock:
            arrived.append(1)
            if len(arrived) > received[0] + 2 * slots:
                over.append((len(arrived), received[0]))
            if len(arrived) == 2 * slots:
                reached.set()
        return None

    standin.fault_hook = hook
    provider = make_provider(max_concurrent_requests=slots, max_requests_per_second=1000)
    rows = S.tile_rows(24, col_step=2)
    gen = provider.fetch_patches(rows, *Q1, "s2", bands=["B2"])
    got = [next(gen)]
    assert reached.wait(HOLD_S)  # 8 requests while the consumer held its first patch
    for _ in range(len(rows) - 1):
        with lock:
            received[0] = len(got)
        got.append(next(gen))
    assert next(gen, None) is None
    assert over == []
    assert sorted(p.tile_id for p in got) == sorted(r["tile_id"] for r in rows)
    assert all(p.status == "ok" for p in got) and len(arrived) == 24


def test_two_providers_of_one_project_share_the_slots(standin, make_provider):
    # an S2 and an S1 fetch in one process, 3 slots each: the first 3 requests meet in the
    # stand-in and stay a while; separate limits would let a 4th (and up to 6) join them. One
    # scene query per block: every request can be among the first 3 (a fetch's scene list, which
    # its pixel requests wait for, would leave the meeting one short)
    # (one credentials object: the ee client holds one configuration per process, and providers
    # with other credentials may not fetch at the same time)
    standin.fault_hook = S.hold_until_in_flight(standin, 3)
    creds = AnonymousCredentials()
    s2 = make_provider(max_concurrent_requests=3, max_requests_per_second=1000, scene_query="block",
                       credentials=creds)
    s1 = make_provider(max_concurrent_requests=3, max_requests_per_second=1000, scene_query="block",
                       credentials=creds)
    results: dict[str, int] = {}

    def run(name: str, provider: Any, modality: str, col0: int) -> None:
        rows = S.tile_rows(6, col_step=2, col0=col0)
        results[name] = sum(p.status == "ok" for p in fetch(provider, rows, modality).values())

    threads = [threading.Thread(target=run, args=("s2", s2, "s2", 2500)),
               threading.Thread(target=run, args=("s1", s1, "s1", 2600))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"s2": 6, "s1": 6}
    assert standin.max_in_flight == 3
    for provider in (s1, s2):
        shared = provider.stats()["shared_limits"]
        assert shared == {"max_concurrent_requests": 3, "max_requests_per_second": 1000.0, "max_in_flight": 3}


def test_two_providers_of_one_project_share_the_rate(standin, make_provider):
    # one token bucket for both: on a clock that stands still the k-th request of the two together
    # waits (k - burst) / rate, exactly as the single-provider rate test's requests do
    rate = 25.0
    clock = S.FakeClock(advance=False)
    creds = AnonymousCredentials()  # one ee configuration (see above)
    providers = [make_provider(max_concurrent_requests=40, max_requests_per_second=rate, clock=clock,
                               sleep=clock.sleep, scene_query="block", credentials=creds) for _ in range(2)]

    def run(provider: Any, col0: int) -> None:
        fetch_b2(provider, S.tile_rows(20, col_step=2, col0=col0))  # 20 + 20 requests

    threads = [threading.Thread(target=run, args=(p, 2500 + 100 * k)) for k, p in enumerate(providers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = len([r for r in standin.requests if r.kind in ("value", "pixels")])
    assert n == 80
    burst = 2.5
    assert sorted(clock.sleeps) == [(k - burst) / rate for k in range(3, n + 1)]


def test_the_shared_limiter_is_per_endpoint_and_project_and_takes_the_strictest():
    class Owner:
        pass

    a, b, c = Owner(), Owner(), Owner()
    clock = S.FakeClock()
    la = shared_limiter(a, "http://127.0.0.1:1/", "p", 40, 100.0, 10.0, clock, clock.sleep)
    lb = shared_limiter(b, "http://127.0.0.1:1", "p", 10, 50.0, 5.0, clock, clock.sleep)
    lc = shared_limiter(c, "http://127.0.0.1:1", "other", 40, 100.0, 10.0, clock, clock.sleep)
    assert la is lb and lc is not la
    assert (la.concurrency, la.rate, la.burst) == (10, 50.0, 5.0)  # b's, while b lives
    assert (lc.concurrency, lc.rate) == (40, 100.0)
    del b
    gc.collect()
    assert (la.concurrency, la.rate, la.burst) == (40, 100.0, 10.0)  # a's again, once b is gone
    other_clock = S.FakeClock()
    assert shared_limiter(c, "http://127.0.0.1:1", "p", 40, 100.0, 10.0, other_clock,
                          other_clock.sleep) is not la  # another time source: its own


def test_the_scheduler_runs_retries_after_their_delay_and_bounds_open_roots():
    # one worker, one root at a time: each retry waits its own delay on the timer, exactly
    clock = S.FakeClock()
    runs: list[tuple[str, int]] = []

    def root(name: str) -> Any:
        def attempt(k: int) -> Any:
            def task(ctx: Context) -> None:
                runs.append((name, k))
                if k < 2:  # two transient failures, then the answer
                    ctx.later(attempt(k + 1), 0.25 * (k + 1))
                else:
                    ctx.emit([name])
            return task
        return attempt(0)

    sched = RequestScheduler(workers=1, max_open=1, clock=clock, sleep=clock.sleep)
    assert list(sched.run(root(n) for n in "abc")) == list("abc")
    assert runs == [(n, k) for n in "abc" for k in range(3)]
    assert clock.sleeps == [0.25, 0.5] * 3

    # four workers, at most two roots open: pairs of roots meet, never three
    pair = threading.Barrier(2, timeout=HOLD_S)

    def meeting(name: str) -> Any:
        def task(ctx: Context) -> None:
            pair.wait()
            ctx.emit([name])
        return task

    sched = RequestScheduler(workers=4, max_open=2)
    assert sorted(sched.run(meeting(n) for n in "abcdef")) == list("abcdef")
    assert sched.max_open_seen == 2

    def broken(ctx: Context) -> None:
        raise RuntimeError("a bug in a task")

    with pytest.raises(RuntimeError, match="a bug in a task"):
        list(RequestScheduler(workers=2, max_open=2).run([broken]))
