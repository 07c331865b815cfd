"""Retries of one Earth Engine call: one try under a slot and a token of the process's shared
limiter (``limits.py``), its failure classified (``client.classify_failure``), the backoff.

A mixin of :class:`GEEProvider` (why mixins: ``auth.py``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from collections.abc import Callable

from .client import TIMEOUTS_BEFORE_SPLIT, RequestFailed, SplitNeeded, classify_failure
from .limits import RequestLimiter, shared_limiter
from .auth import EarthEngineAuth

log = logging.getLogger("rs_embed_pipeline.providers.gee")  # one logger for the package


class Retry(Exception):
    """A transient failure: the same request again after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


@dataclasses.dataclass
class Tries:
    """Attempts of one request so far, carried across its retries."""

    attempt: int = 0
    timeouts: int = 0  # client timeouts in a row



class RequestRetries(EarthEngineAuth):
    """One try of a call (:meth:`_attempt`), the backoff, the retry loop of the scene list."""

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay = self._uniform(delay / 2.0, delay) if delay > 0 else 0.0
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    def _attempt(self, kind: str, fn: Callable[[], Any], tries: Tries) -> Any:
        """One try of one API call, under a slot and a token of the shared limiter (held around
        the call only). Raises :class:`Retry` (transient: try again after its delay),
        SplitNeeded or RequestFailed; ``tries`` carries the attempts across retries."""
        tries.attempt += 1
        with self._limits().slot() as waited:
            self._stats.enter(waited)
            self._stats.add("requests")
            self._stats.add(f"{kind}_requests")
            try:
                return fn()
            except Exception as exc:  # classified below, outside the slot
                error = exc
            finally:
                self._stats.leave()
        attempt = tries.attempt
        message = self._redact(f"{type(error).__name__}: {error}")
        failure = classify_failure(error, message)
        what = f"HTTP {failure.status}" if failure.status is not None else "no HTTP answer"
        transient = False
        if failure.kind in ("throttled", "busy"):  # busy: retry the same size
            self._stats.add("throttled")
            transient = True
        elif failure.kind == "client_timeout":
            # the same size timed out again on our side: smaller requests, not more retries
            tries.timeouts += 1
            if tries.timeouts >= TIMEOUTS_BEFORE_SPLIT:
                self._stats.add("too_large")
                raise SplitNeeded(f"client timeout {tries.timeouts} times in a row: {message}")
            transient = True
        elif failure.kind == "too_large":
            self._stats.add("too_large")
            raise SplitNeeded(f"{what}: {message}")
        elif failure.kind == "server_error":
            self._stats.add("server_errors")
            transient = True
        elif failure.kind == "network":
            transient = True
        if transient and attempt <= self.max_retries:
            self._stats.add("retries")
            delay = self._backoff(attempt, failure.retry_after)
            log.debug("%s request: %s; retry %d/%d in %.3f s", kind, what, attempt,
                      self.max_retries, delay)
            raise Retry(delay)
        self._stats.add("failures")
        tries_text = f"after {attempt} attempt(s)" if transient else "(not retryable)"
        raise RequestFailed(f"{kind} request failed {tries_text}: {what}: {message}")

    def _call(self, kind: str, fn: Callable[[], Any]) -> Any:
        """:meth:`_attempt` until it succeeds, sleeping the backoffs in this thread (the scene
        list, which everything else waits for). Raises SplitNeeded or RequestFailed."""
        tries = Tries()
        while True:
            try:
                return self._attempt(kind, fn, tries)
            except Retry as retry:
                if retry.delay > 0:
                    self._sleep(retry.delay)

    def _limits(self) -> RequestLimiter:
        """The process-wide limiter of this endpoint + project (``limits.py``), joined once."""
        limiter = self._limiter
        if limiter is None:
            with self._init_lock:
                if self._limiter is None:
                    self._limiter = shared_limiter(
                        self, self.endpoint, str(self.project), self.max_concurrent_requests,
                        self.max_requests_per_second, self.rate_burst, self._clock, self._sleep)
                limiter = self._limiter
        return limiter
