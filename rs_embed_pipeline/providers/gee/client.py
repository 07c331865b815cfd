"""The Earth Engine client side: secret redaction, the token bucket and counters, error
classification (retry / split / final) and the process-wide ee configuration.

Nothing here reads the environment: the Earth Engine project is an argument of
:class:`~rs_embed_pipeline.providers.gee.GEEProvider` (the pipeline passes ``EE_PROJECT``, read by
``orchestration/settings.py``)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import threading
import time
import weakref
from typing import Any, Literal
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..base import ProviderError

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"


STANDARD_URL = "https://earthengine.googleapis.com"


EE_SCOPES: tuple[str, ...] = (
    "https://www.googleapis.com/auth/earthengine",
    "https://www.googleapis.com/auth/cloud-platform",
)


# "too large" / "memory" / "timed out" answers: retry smaller.
_SPLIT_RE = re.compile(
    r"too large|too many pixels|must be less than or equal to|request size|payload size"
    r"|memory limit|memory capacity|out of memory|timed out|time out|deadline exceeded",
    re.IGNORECASE,
)


# Earth Engine's answers for a busy backend: transient whatever the HTTP status (often 400).
_RETRY_RE = re.compile(r"too many concurrent aggregations|capacity exceeded", re.IGNORECASE)


#: Client timeouts of one request in a row after which it is split instead of retried again.
TIMEOUTS_BEFORE_SPLIT = 2


_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
                re.DOTALL), "[REDACTED PRIVATE KEY]"),
    (re.compile(r"(?i)(\"?(?:private_key|private_key_id|client_secret|refresh_token|"
                r"access_token|id_token|assertion)\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,&}]+)"),
     r"\1[REDACTED]"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [REDACTED]"),
    (re.compile(r"\bya29\.[A-Za-z0-9._-]+"), "[REDACTED TOKEN]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[REDACTED JWT]"),
    (re.compile(r"(?i)([?&](?:key|api_key|access_token|token|sig|signature)=)[^&\s]+"),
     r"\1[REDACTED]"),
)


def redact(text: Any, extra_secrets: Iterable[str] = ()) -> str:
    """``str(text)`` without key material, bearer / access tokens, JWTs or key query parameters.

    ``extra_secrets``: literal strings (e.g. the current access token) to blank as well.
    """
    s = str(text)
    for secret in extra_secrets:
        if secret and len(secret) >= 8:
            s = s.replace(secret, "[REDACTED]")
    for pattern, repl in _REDACTIONS:
        s = pattern.sub(repl, s)
    return s


def safe_url(url: str) -> str:
    """scheme://host[:port][/path] without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class TokenBucket:
    """Thread-safe token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    ``acquire()`` reserves a token (the balance may go negative: later callers wait longer, in
    arrival order) and sleeps until it is due; it returns the seconds waited. Over any interval
    of ``T`` seconds at most ``burst + rate * T`` acquisitions return.
    """

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10.0)
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    def configure(self, rate: float, burst: float) -> None:
        """New rate and capacity (the shared limiter lowers them to its strictest provider's)."""
        if not rate > 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate!r}, {burst!r}")
        with self._lock:
            self.rate = float(rate)
            self.burst = float(burst)
            self._tokens = min(self._tokens, self.burst)

    def acquire(self) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class FetchStats:
    """Thread-safe counters of one provider instance (``GEEProvider.stats()``)."""

    COUNTERS = (
        "requests", "value_requests", "pixel_requests", "bytes", "pixel_bytes", "value_bytes",
        "retries", "throttled", "server_errors", "too_large", "splits", "failures", "answer_buffers",
        "tiles", "tiles_ok", "tiles_no_data", "tiles_failed",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._c: dict[str, float] = {k: 0 for k in self.COUNTERS}
            self._in_flight = 0
            self._max_in_flight = 0
            self._rate_wait_s = 0.0
            self._fetch_s = 0.0

    def add(self, name: str, n: float = 1) -> None:
        with self._lock:
            self._c[name] = self._c.get(name, 0) + n

    def enter(self, waited_s: float) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._rate_wait_s += waited_s

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def add_fetch_time(self, seconds: float) -> None:
        with self._lock:
            self._fetch_s += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {k: int(v) for k, v in self._c.items()}
            out["max_in_flight"] = self._max_in_flight
            out["rate_limit_wait_s"] = round(self._rate_wait_s, 4)
            out["fetch_seconds"] = round(self._fetch_s, 4)
        tiles = out["tiles"]
        out["requests_per_tile"] = round(out["requests"] / tiles, 4) if tiles else 0.0
        out["tiles_per_second"] = round(tiles / out["fetch_seconds"], 3) if out["fetch_seconds"] else 0.0
        return out


FailureKind = Literal["throttled", "busy", "client_timeout", "too_large", "server_error", "network", "final"]


@dataclasses.dataclass(frozen=True)
class RequestFailure:
    """A failed Earth Engine call, classified: ``kind`` says what the caller does with it (retry
    the same size: throttled, busy, server_error, network, and a client_timeout at first; ask for
    less: too_large, and a client_timeout in a row; give up: final)."""

    kind: FailureKind
    status: int | None            # HTTP status, None when no HTTP answer came
    retry_after: float | None     # the server's Retry-After, in seconds


def classify_failure(error: BaseException, message: str) -> RequestFailure:
    """What ``error`` (the exception of one call; ``message``: its text, redacted) means."""
    status, retry_after = _http_details(error)
    kind: FailureKind
    if status == 429:
        kind = "throttled"
    elif _RETRY_RE.search(message):  # busy backend, whatever the status
        kind = "busy"
    elif status is None and _is_timeout(error):
        kind = "client_timeout"
    elif status is not None and _SPLIT_RE.search(message):
        kind = "too_large"
    elif status is not None and status >= 500:
        kind = "server_error"
    elif status is None and _is_network_error(error):
        kind = "network"
    else:
        kind = "final"
    return RequestFailure(kind, status, retry_after)


class SplitNeeded(Exception):
    """Earth Engine answered "too large" / "memory limit" / "timed out": ask for less."""


class RequestFailed(Exception):
    """A request failed for good (permanent error, or retries exhausted)."""


def _error_chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _http_details(exc: BaseException) -> tuple[int | None, float | None]:
    """(HTTP status, Retry-After seconds) of the googleapiclient HttpError behind ``exc``."""
    for e in _error_chain(exc):
        if isinstance(e, RestHttpError):
            return e.status, e.retry_after
        resp = getattr(e, "resp", None)
        status = getattr(resp, "status", None)
        if status is not None and type(e).__name__ == "HttpError":
            retry_after = None
            try:
                ra = resp.get("retry-after") if resp is not None and hasattr(resp, "get") else None
                retry_after = float(ra) if ra is not None else None
            except (TypeError, ValueError):
                retry_after = None
            try:
                return int(status), retry_after
            except (TypeError, ValueError):
                return None, retry_after
    return None, None


def _is_timeout(exc: BaseException) -> bool:
    """A client-side deadline (socket / urllib3 / httplib2 timeout), not a server answer."""
    for e in _error_chain(exc):
        if isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower():
            return True
        if "timed out" in str(e).lower() and type(e).__module__.startswith(
                ("socket", "urllib3", "requests", "httplib2", "http.client", "ssl", "builtins")):
            return True
    return False


def _is_network_error(exc: BaseException) -> bool:
    for e in _error_chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        mod = type(e).__module__
        if mod.startswith(("requests", "urllib3", "http.client", "httplib2", "socket", "ssl")):
            return True
    return False


# The ee client holds one configuration per process: "key" is the (endpoint, project, credentials,
# deadline) it was initialised with, "active" the fetches using it now (GEEProvider reads and sets both
# under the lock).
EE_CONFIG_LOCK = threading.Lock()


EE_CONFIG: dict[str, Any] = {"key": None, "active": 0}


def import_ee() -> Any:
    """The ``ee`` module (earthengine-api), imported on first use."""
    try:
        import ee  # noqa: PLC0415 - lazy: the orchestrator environment has it, other code may not
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ProviderError("GEE provider needs earthengine-api (pip install earthengine-api)") from exc
    return ee


class RestHttpError(Exception):
    """A non-200 answer of the direct REST call: ``status``, ``retry_after`` (s), the server's
    error message (Earth Engine's JSON ``error.message``)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ComputePixelsClient:
    """``projects.image.computePixels`` posted directly (urllib3), the answer read into one
    buffer: the same documented REST call ``ee.data.computePixels`` makes
    (``POST {endpoint}/v1/projects/{project}/image:computePixels``, the expression serialized by
    the ee client, the same credentials and ``X-Goog-User-Project`` header), without its
    googleapiclient / httplib2 shim, which copies a 40 MB answer several times.

    ``credentials``: a ``google.auth`` credentials object (refreshed when stale, under a lock);
    ``timeout_s``: the read deadline of one request (None: none); ``maxsize``: connections kept.
    """

    def __init__(self, endpoint: str, project: str, credentials: Any, timeout_s: float | None,
                 maxsize: int, client_version: str = "") -> None:
        import urllib3  # noqa: PLC0415 - with the ee client (requests depends on it)

        self.url = f"{endpoint.rstrip('/')}/v1/projects/{project}/image:computePixels"
        self._credentials = credentials
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=max(1, maxsize), block=False,
                                         retries=False, timeout=urllib3.Timeout(connect=timeout_s,
                                                                                read=timeout_s))
        self._auth_request: Any = None
        self._auth_lock = threading.Lock()
        self._headers = {"Content-Type": "application/json", "X-Goog-User-Project": project,
                         "X-Goog-Api-Client": client_version or "rs-embed-pipeline"}

    def _auth_headers(self) -> dict[str, str]:
        headers = dict(self._headers)
        if self._credentials is not None:
            with self._auth_lock:  # one refresh at a time; before_request refreshes when stale
                if self._auth_request is None:
                    from google.auth.transport.urllib3 import Request  # noqa: PLC0415

                    self._auth_request = Request(self._pool)
                self._credentials.before_request(self._auth_request, "POST", self.url, headers)
        return headers

    def compute_pixels(self, body: dict[str, Any], buffers: AnswerBuffers | None = None) -> memoryview:
        """The answer's bytes (a view of one buffer sized by Content-Length, taken from
        ``buffers`` when given). Raises :class:`RestHttpError` on a non-200 answer, urllib3's
        errors on timeouts and broken connections (classified like the ee client's)."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        resp = self._pool.request("POST", self.url, body=payload, headers=self._auth_headers(),
                                  preload_content=False)
        try:
            if resp.status != 200:
                text = resp.read().decode("utf-8", "replace")
                try:
                    message = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = text[:500]
                ra = resp.headers.get("Retry-After")
                try:
                    retry_after = float(ra) if ra is not None else None
                except ValueError:
                    retry_after = None
                raise RestHttpError(resp.status, str(message), retry_after)
            length = resp.headers.get("Content-Length")
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if length is None or encoding != "identity":  # chunked or compressed: urllib3 decodes
                return memoryview(resp.read())
            n = int(length)
            # not zeroed: every byte is written below
            buf = buffers.take(n) if buffers is not None else np.empty(n, np.uint8)
            view = buf.data[:n]  # a memoryview of the uint8 buffer
            readinto = _raw_readinto(resp)
            got = 0
            while got < n:
                k = readinto(view[got:])
                if not k:
                    raise ConnectionError(f"computePixels answer ended after {got} of {n} bytes")
                got += k
            return view
        finally:
            resp.release_conn()


def _raw_readinto(resp: Any) -> Callable[[memoryview], int]:
    """The socket-to-buffer read of an undecoded urllib3 answer.

    urllib3 2's ``HTTPResponse.readinto`` reads ``len(b)`` bytes into a new ``bytes`` (http.client
    fills a bytearray, then copies it) and copies that into ``b``: two copies of a 40 MB answer
    holding the GIL, measured at 2.1 ms CPU per 224 px tile of a 16-tile float32 request against
    0.7 ms for the read below (issue 26). The ``http.client.HTTPResponse`` underneath
    (urllib3's ``_fp``) reads straight from the socket into ``b`` (the GIL released) and closes
    itself after Content-Length bytes, so the connection goes back to the pool as after
    urllib3's own read. Any other answer object: urllib3's ``readinto``.
    """
    fp = getattr(resp, "_fp", None)
    if isinstance(fp, http.client.HTTPResponse) and not fp.chunked:
        return fp.readinto
    return resp.readinto


class AnswerBuffers:
    """The receive buffers of one fetch: a buffer handed back (:meth:`give`) once its tiles are
    cut out (copies) is the next answer's (:meth:`take`).

    A fresh 40 MB buffer per answer cost its page faults in the kernel (numpy asks for huge
    pages, which the kernel zeroes, and compacts memory for, on first touch): part of the 3-4 ms
    of system time per tile the receive took under load (issue 26). The pool never holds more
    buffers than were in use at once (each given one was taken), so memory stays within the
    fetch's bound (``2 x max_concurrent_requests`` answers); it is garbage with its fetch.
    ``allocated``: the buffers made (the rest of the answers reused one).
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        # the buffers made here (weakly: one never given back is freed as usual); only those return
        self._mine: dict[int, weakref.ref[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.allocated = 0

    def take(self, n: int) -> np.ndarray:
        """A uint8 buffer of at least ``n`` bytes (its first ``n`` are the caller's to fill)."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.nbytes >= n:
                    return self._free.pop(i)
            self.allocated += 1
        buf = np.empty(n, np.uint8)
        with self._lock:
            self._mine[id(buf)] = weakref.ref(buf)
        return buf

    def give(self, raw: Any) -> None:
        """``raw`` (what :meth:`ComputePixelsClient.compute_pixels` returned) is free again: no
        array may view it any more. Answers that are not this pool's buffers are ignored."""
        buf = raw.obj if isinstance(raw, memoryview) else None
        if isinstance(buf, np.ndarray):
            with self._lock:
                ref = self._mine.get(id(buf))
                if ref is not None and ref() is buf and all(b is not buf for b in self._free):
                    self._free.append(buf)
