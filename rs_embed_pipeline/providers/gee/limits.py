"""The process-wide Earth Engine limits: concurrency slots and a request rate per endpoint + project.

Earth Engine's quota (40 concurrent requests, 100 requests/s by default) is the project's, not a
provider's: every :class:`~rs_embed_pipeline.providers.gee.GEEProvider` of one process that talks
to the same endpoint for the same project takes its slots and tokens from one
:class:`RequestLimiter` (:func:`shared_limiter`), so an S1 and an S2 fetch running at once share
40 slots and 100 requests/s instead of doubling them. The limits in force are the strictest of
the providers alive for that key (a provider asking for fewer slots lowers them while it lives).
Several processes (steps in their own processes, several runs) do not see each other: the Dagster
pool ``earth_engine`` bounds them (README, Earth Engine section).

A limiter also belongs to a time source: providers with an injected clock (tests) share only with
providers on the same clock.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .client import TokenBucket


class RequestLimiter:
    """Concurrency slots (granted first come, first served) and a token bucket, thread-safe.

    ``slot()`` holds one slot and one token around one HTTP call; it yields the seconds waited
    for the token. ``in_flight`` / ``max_in_flight`` count the slots held (every provider of the
    key together).
    """

    def __init__(self, concurrency: int, rate: float, burst: float | None,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._cond = threading.Condition()
        self._bucket = TokenBucket(rate, burst, clock=clock, sleep=sleep)
        self._owners: dict[int, tuple[int, float, float]] = {}
        self._next_owner = 0
        self._waiting: collections.deque[int] = collections.deque()  # tickets, in arrival order
        self._next_ticket = 0
        self.concurrency = int(concurrency)
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def rate(self) -> float:
        return self._bucket.rate

    @property
    def burst(self) -> float:
        return self._bucket.burst

    def join(self, owner: object, concurrency: int, rate: float, burst: float) -> None:
        """Count ``owner``'s limits while it lives (the strictest of the owners' apply)."""
        with self._cond:
            token = self._next_owner
            self._next_owner += 1
            self._owners[token] = (int(concurrency), float(rate), float(burst))
            self._apply()
        weakref.finalize(owner, self._leave, token)

    def _leave(self, token: int) -> None:
        with self._cond:
            self._owners.pop(token, None)
            if self._owners:
                self._apply()

    def _apply(self) -> None:
        """Limits := the owners' strictest (called with the lock held); waiters see new slots."""
        self.concurrency = min(c for c, _, _ in self._owners.values())
        self._bucket.configure(min(r for _, r, _ in self._owners.values()),
                               min(b for _, _, b in self._owners.values()))
        self._cond.notify_all()

    @contextlib.contextmanager
    def slot(self) -> Iterator[float]:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting.append(ticket)
            # first come, first served: a fetch that arrives later does not overtake a waiting one
            while self._waiting[0] != ticket or self.in_flight >= self.concurrency:
                self._cond.wait()
            self._waiting.popleft()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()  # the next ticket may fit too
        try:
            yield self._bucket.acquire()
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()


# (endpoint, project, clock, sleep) -> its limiter while a provider holds it
_LIMITERS: weakref.WeakValueDictionary[tuple[Any, ...], RequestLimiter] = weakref.WeakValueDictionary()
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(owner: object, endpoint: str, project: str, concurrency: int, rate: float,
                   burst: float, clock: Callable[[], float],
                   sleep: Callable[[float], None]) -> RequestLimiter:
    """The process's limiter of ``endpoint`` + ``project`` (on this clock), joined by ``owner``
    with its limits; the caller keeps the returned object (the registry holds it weakly)."""
    key = (endpoint.rstrip("/"), project, clock, sleep)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = RequestLimiter(concurrency, rate, burst, clock, sleep)
            _LIMITERS[key] = limiter
        limiter.join(owner, concurrency, rate, burst)
    return limiter
