"""``GEEProvider``: authentication, retries and splitting, blocks to patches."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import json
import logging
import math
import os
import random
import threading
import time
from collections import defaultdict
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from rs_embed_pipeline.core.timeparse import parse_utc
from rs_embed_pipeline.core.vocabulary import COMPOSITES, DEFAULT_COMPOSITE

from ..base import Patch, ProviderError, Tile, tile_rows
from ..sensor_options import SensorOptions
from .client import (
    EE_CONFIG,
    EE_CONFIG_LOCK,
    EE_SCOPES,
    HIGH_VOLUME_URL,
    STANDARD_URL,
    TIMEOUTS_BEFORE_SPLIT,
    ComputePixelsClient,
    FetchStats,
    RequestFailed,
    SplitNeeded,
    TokenBucket,
    classify_failure,
    import_ee,
    redact,
    safe_url,
)
from .expressions import (
    S1_DB_COLLECTION,
    S1_FLOAT_COLLECTION,
    S2_CLOUD_SCORE_PLUS_COLLECTION,
    S2_COLLECTION,
    VALID_BAND,
    FetchRun,
    # private still: the sensor-options change (one SensorOptions parse, #23) rewrites these two
    _parse_sensor,
    _Sensor,
)
from .limits import RequestLimiter, shared_limiter
from .request_blocks import EE_MAX_GRID_PX, EE_MAX_REQUEST_BYTES, PixelBox, RequestBlock, pack_requests, request_bytes
from .scheduler import Context, RequestScheduler, Task
from . import scenes  # scenes.MAX_ROWS_PER_CHUNK read at call time (tests lower it)
from .scenes import Chunk, FootprintError, chunk_tiles, scene_lists

log = logging.getLogger("rs_embed_pipeline.providers.gee")


_MAX_PIXEL_SPLIT_DEPTH = 10


#: Where tiles' scene lists come from: one list per fetch_patches call, or one query per block.
SCENE_QUERIES = ("partition", "block")


#: How computePixels answers are received: directly into one buffer, or through the ee client.
PIXEL_TRANSPORTS = ("rest", "ee")


class GEEProvider:
    """Sentinel-2 / Sentinel-1 patches from Google Earth Engine (see the ``rs_embed_pipeline.providers.gee`` package docstring).

    Args:
        project: Google Cloud project for Earth Engine; None: the credentials' project. The
            provider reads no environment variable: the pipeline passes ``EE_PROJECT`` here
            (``orchestration/settings.py`` reads it; an explicit ``EarthEngineImagery.project`` wins).
        api_url: REST endpoint (``http://127.0.0.1:PORT`` for a stand-in); default the
            high-volume endpoint (``use_high_volume``) or the standard one.
        max_concurrent_requests: requests in flight at most (Earth Engine's default quota: 40).
        max_requests_per_second: token-bucket rate shared by every request (quota: 100/s).
        credentials_file: service-account JSON key file.
        use_high_volume: use ``https://earthengine-highvolume.googleapis.com`` when ``api_url`` is
            not given (recommended for automated batch work).
        credentials: a ``google.auth`` credentials object, or ``"anonymous"`` (no auth; stand-ins).
        max_retries: retries of one request on 429 / 5xx / connection errors.
        backoff_base_s, backoff_max_s: exponential backoff ``base * 2**attempt`` (with jitter),
            capped.
        request_timeout_s: client deadline of one request (``ee.data.setDeadline``); None: none.
        max_request_bytes: computePixels size limit (Earth Engine: 48 MiB).
        max_tiles_per_request: cap on tiles batched into one request (None: as many as fit and
            keep all concurrency slots busy).
        rate_burst: token-bucket capacity (default ``max_requests_per_second / 10``).
        cloud_score_plus, cs_threshold, cs_band: Sentinel-2 Cloud Score+ masking defaults
            (per-call sensor options override them).
        workload_tag: Earth Engine workload tag sent with every request.
        scene_query: ``"partition"`` (default): one scene-list query per ``fetch_patches`` call,
            each tile's scenes derived from the footprints (``providers/gee/scenes.py``);
            ``"block"``: one scene query per request block (the earlier behaviour: one more
            round trip per pixel request).
        pixel_transport: ``"rest"`` (default): computePixels posted directly with urllib3 and read
            into one buffer (``client.ComputePixelsClient``: the same REST call, credentials and
            project header); ``"ee"``: through ``ee.data.computePixels`` (the earlier path, kept
            for comparison: ``benchmarks/bench_gee.py --pixel-transport ee``).
        clock, sleep: the time source and sleep of the rate limiter, the retry backoff and the
            fetch timer (tests inject a fake clock: no test measures wall-clock time).
        rng: jitter source of the backoff (default: the ``random`` module).
    """

    name = "gee"

    def __init__(
        self,
        project: str | None = None,
        api_url: str | None = None,
        max_concurrent_requests: int = 40,
        max_requests_per_second: float = 100.0,
        credentials_file: str | os.PathLike | None = None,
        use_high_volume: bool = True,
        *,
        credentials: Any = None,
        max_retries: int = 8,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        request_timeout_s: float | None = 360.0,
        max_request_bytes: int = EE_MAX_REQUEST_BYTES,
        max_tiles_per_request: int | None = None,
        rate_burst: float | None = None,
        cloud_score_plus: bool = False,
        cs_threshold: float = 0.6,
        cs_band: str = "cs_cdf",
        workload_tag: str | None = None,
        scene_query: str = "partition",
        pixel_transport: str = "rest",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if int(max_concurrent_requests) < 1:
            raise ProviderError("max_concurrent_requests must be >= 1")
        if not float(max_requests_per_second) > 0:
            raise ProviderError("max_requests_per_second must be > 0")
        if int(max_retries) < 0:
            raise ProviderError("max_retries must be >= 0")
        if backoff_base_s < 0 or backoff_max_s < 0:
            raise ProviderError("backoff delays must be >= 0")
        if int(max_request_bytes) < 1024:
            raise ProviderError("max_request_bytes must be >= 1024")
        if max_tiles_per_request is not None and int(max_tiles_per_request) < 1:
            raise ProviderError("max_tiles_per_request must be >= 1 or None")
        if scene_query not in SCENE_QUERIES:
            raise ProviderError(f"scene_query must be one of {list(SCENE_QUERIES)}, got {scene_query!r}")
        if pixel_transport not in PIXEL_TRANSPORTS:
            raise ProviderError(f"pixel_transport must be one of {list(PIXEL_TRANSPORTS)}, got {pixel_transport!r}")
        if isinstance(credentials, str) and credentials != "anonymous":
            raise ProviderError("credentials must be a google.auth credentials object or 'anonymous'")

        self.project = project or None
        self.api_url = api_url.rstrip("/") if api_url else None
        self.use_high_volume = bool(use_high_volume)
        self.credentials_file = os.fspath(credentials_file) if credentials_file else None
        self._credentials_arg = credentials
        self.max_concurrent_requests = int(max_concurrent_requests)
        self.max_requests_per_second = float(max_requests_per_second)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.request_timeout_s = float(request_timeout_s) if request_timeout_s else None
        self.max_request_bytes = int(max_request_bytes)
        self.max_tiles_per_request = int(max_tiles_per_request) if max_tiles_per_request else None
        self.workload_tag = workload_tag
        self.scene_query = scene_query
        self.pixel_transport = pixel_transport
        self._rest: ComputePixelsClient | None = None
        self._sensor_defaults = {"cloud_score_plus": bool(cloud_score_plus),
                                 "cs_threshold": float(cs_threshold), "cs_band": str(cs_band)}
        # Validate the defaults once (the same checks as per-call options).
        _parse_sensor("s2", None, None, {}, self._sensor_defaults)

        self._clock = clock
        self._sleep = sleep
        self._uniform = (rng or random).uniform
        # the burst checked and defaulted as the token bucket does (a tenth of a second's worth)
        self.rate_burst = TokenBucket(self.max_requests_per_second, rate_burst, clock=clock).burst
        # slots and tokens: the process's, shared by every provider of this endpoint + project
        # (limits.py), joined on the first request (the project may come from the credentials)
        self._limiter: RequestLimiter | None = None
        self._stats = FetchStats()
        self._init_lock = threading.Lock()
        self._credentials: Any = None
        self._auth_kind: str | None = None
        self._ready = False

    # ---- public ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self.api_url:
            return self.api_url
        return HIGH_VOLUME_URL if self.use_high_volume else STANDARD_URL

    def describe(self) -> dict[str, Any]:
        """What shapes the pixels (feeds fingerprints). No endpoint, project or credentials."""
        return {
            "provider": self.name,
            "api": "image:computePixels",
            "file_format": "NPY",
            "collections": {"s2": S2_COLLECTION, "s2_cloud_score_plus": S2_CLOUD_SCORE_PLUS_COLLECTION,
                            "s1": S1_FLOAT_COLLECTION, "s1_db": S1_DB_COLLECTION},
            "grid": "each tile's UTM grid: crsCode EPSG:<utm_epsg>, affine [scale_m, 0, x0, 0, "
                    "-scale_m, y0], size_px x size_px (no Web Mercator, no reprojection of the grid)",
            "resampling": "Earth Engine default (nearest neighbour) for bands coarser than scale_m",
            "units": {"s2": "DN (reflectance x 10000)", "s1": "linear sigma0 power (VV, VH)"},
            "valid_mask": f"all asked bands unmasked in the composite (uint8 band {VALID_BAND})",
            "composites": list(COMPOSITES),
            "defaults": {
                "s2": {"composite": DEFAULT_COMPOSITE, "cloudy_pct": 30, **self._sensor_defaults,
                       "cloud_mask": "cloud_score_plus" if self._sensor_defaults["cloud_score_plus"] else "scl"},
                "s1": {"composite": DEFAULT_COMPOSITE, "orbit": None, "use_float_linear": True,
                       "require_iw": True, "relax_iw_on_empty": True},
            },
        }

    def config(self) -> dict[str, Any]:
        """Operational settings (no secrets): endpoint, project, auth kind, limits."""
        return {
            "endpoint": safe_url(self.endpoint),
            "high_volume": self.api_url is None and self.use_high_volume,
            "project": self.project,
            "auth": self._auth_kind or self._configured_auth_kind(),
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_requests_per_second": self.max_requests_per_second,
            "rate_burst": self.rate_burst,
            "max_retries": self.max_retries,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
            "request_timeout_s": self.request_timeout_s,
            "max_request_bytes": self.max_request_bytes,
            "max_tiles_per_request": self.max_tiles_per_request,
            "scene_query": self.scene_query,
            "pixel_transport": self.pixel_transport,
        }

    def stats(self) -> dict[str, Any]:
        """Counters since construction (or ``reset_stats()``), plus ``config``. JSON-friendly.

        ``requests`` counts every HTTP attempt (scene queries + pixel requests, retries
        included); ``bytes`` the NPY bytes received (``value_bytes``: JSON size of the scene
        answers); ``retries`` the retried attempts (``throttled``: 429 answers, ``server_errors``:
        5xx); ``too_large`` the "too large / memory / timed out" answers and ``splits`` the
        requests split because of them or of their packed size; ``failures`` the requests given
        up; ``tiles_*`` the yielded patches by status; ``shared_limits`` the limits in force for
        this endpoint + project in the process (every provider's requests together: ``limits.py``).
        """
        out = self._stats.snapshot()
        out["config"] = self.config()
        if self._limiter is not None:  # the process's limits of this endpoint + project, in force
            out["shared_limits"] = {"max_concurrent_requests": self._limiter.concurrency,
                                    "max_requests_per_second": self._limiter.rate,
                                    "max_in_flight": self._limiter.max_in_flight}
        return out

    def reset_stats(self) -> None:
        self._stats.reset()

    def fetch_patches(
        self,
        tiles: Any,
        start: str,
        end: str,
        modality: str,
        bands: Iterable[str] | None = None,
        *,
        options: SensorOptions | None = None,
        **sensor_options: Any,
    ) -> Iterator[Patch]:
        """Yield one :class:`Patch` per tile row, in completion order.

        Sensor options come parsed (``options``: an :class:`EarthEngineSensorOptions`, or a
        :class:`SensorOptions` whose Earth Engine fields then take this provider's defaults) or as
        keywords, parsed once here by the same parser. Options, Sentinel-2: ``composite`` (median | mosaic), ``cloudy_pct`` (default 30, None:
        off), ``cloud_mask`` (scl | cloud_score_plus | none; default scl, or cloud_score_plus when
        ``cloud_score_plus`` is true), ``cs_threshold`` (0.6), ``cs_band`` (cs_cdf | cs).
        Sentinel-1: ``composite``, ``orbit`` (ASCENDING | DESCENDING | None),
        ``use_float_linear`` (True), ``require_iw`` (True), ``relax_iw_on_empty`` (True).
        Both: ``fill_value`` (0.0): the data value of pixels without a valid observation.

        Misconfiguration (unknown option, band, composite, orbit, bad dates, no credentials)
        raises :class:`ProviderError` here, before any request; per-tile problems never raise.
        """
        sensor = _parse_sensor(modality, bands, options, sensor_options, self._sensor_defaults)
        t0 = _parse_time(start, "start")
        t1 = _parse_time(end, "end")
        if not t0 < t1:
            raise ProviderError(f"GEE provider: start {start!r} must be before end {end!r} (end exclusive)")
        rows = tile_rows(tiles)
        if rows:
            self._ensure_ready()  # credentials / project / endpoint problems raise here
        return self._generate(rows, sensor, _ee_time(t0), _ee_time(t1))

    # ---- setup ----------------------------------------------------------------------------------

    def _configured_auth_kind(self) -> str:
        if self._credentials_arg == "anonymous":
            return "anonymous"
        if self._credentials_arg is not None:
            return "credentials_object"
        if self.credentials_file:
            return "service_account_key_file"
        return "application_default"

    def _resolve_credentials(self) -> tuple[Any, str, str | None]:
        """(credentials, kind, project of the credentials)."""
        kind = self._configured_auth_kind()
        if kind == "anonymous":
            from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415

            return AnonymousCredentials(), kind, None
        if kind == "credentials_object":
            creds = self._credentials_arg
            return creds, kind, getattr(creds, "project_id", None)
        if kind == "service_account_key_file":
            path = str(self.credentials_file)  # set: that is what made the kind
            try:
                with open(path, encoding="utf-8") as fh:
                    info = json.load(fh)
            except (OSError, ValueError) as exc:
                raise ProviderError(
                    f"GEE provider: cannot read the service-account key file {path!r}: "
                    f"{type(exc).__name__}: {redact(exc)}"
                ) from None
            if not isinstance(info, dict) or info.get("type") != "service_account":
                raise ProviderError(f"GEE provider: {path!r} is not a service-account JSON key")
            try:
                creds = import_ee().ServiceAccountCredentials(None, key_file=path)
            except Exception as exc:
                raise ProviderError(
                    f"GEE provider: invalid service-account key {path!r}: {type(exc).__name__}: "
                    f"{redact(exc)}"
                ) from None
            return creds, kind, info.get("project_id")
        try:
            import google.auth  # noqa: PLC0415

            creds, adc_project = google.auth.default(scopes=list(EE_SCOPES))
        except Exception as exc:
            raise ProviderError(
                "GEE provider: no credentials: pass credentials_file= (service-account key) or set "
                "up Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth "
                f"application-default login`): {type(exc).__name__}: {redact(exc)}"
            ) from None
        return creds, kind, adc_project

    def _ensure_ready(self) -> None:
        with self._init_lock:
            if not self._ready:
                creds, kind, creds_project = self._resolve_credentials()
                if not self.project:
                    self.project = creds_project
                if not self.project:
                    raise ProviderError(
                        "GEE provider: no Earth Engine project: pass project= or set EE_PROJECT"
                    )
                self._credentials = creds
                self._auth_kind = kind
                self._ready = True
        ee = import_ee()
        key = (self.endpoint, self.project, id(self._credentials), self.request_timeout_s)
        with EE_CONFIG_LOCK:
            if EE_CONFIG["key"] == key:
                return
            if EE_CONFIG["active"] > 0:
                raise ProviderError(
                    "GEE provider: another GEEProvider with a different Earth Engine configuration "
                    "is fetching in this process (the ee client holds one configuration per process)"
                )
            try:
                ee.Initialize(credentials=self._credentials, url=self.endpoint, project=self.project)
                if self.request_timeout_s:  # (rebuilds the API resource: discovery, with retries)
                    ee.data.setDeadline(int(self.request_timeout_s * 1000))
                ee.data.setMaxRetries(0)  # this provider retries (with counters and backoff)
            except Exception as exc:
                EE_CONFIG["key"] = None
                raise ProviderError(
                    f"GEE provider: Earth Engine initialisation failed ({safe_url(self.endpoint)}, "
                    f"project {self.project!r}): {type(exc).__name__}: {self._redact(exc)}"
                ) from None
            self._widen_connection_pool(ee)
            EE_CONFIG["key"] = key
            log.info("Earth Engine initialised: endpoint %s, project %s, auth %s",
                     safe_url(self.endpoint), self.project, self._auth_kind)

    def _widen_connection_pool(self, ee: Any) -> None:
        """Best effort: let the client's requests session keep one connection per slot."""
        try:
            import requests.adapters  # noqa: PLC0415

            session = ee.data._get_state().requests_session  # private; absent in old clients
            adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                                    pool_maxsize=max(10, self.max_concurrent_requests))
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        except Exception:  # pragma: no cover - the client works without it, only slower
            log.debug("could not widen the Earth Engine connection pool", exc_info=True)

    def _redact(self, text: Any) -> str:
        token = getattr(self._credentials, "token", None)
        return redact(text, [token] if isinstance(token, str) else [])

    # ---- requests -------------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay = self._uniform(delay / 2.0, delay) if delay > 0 else 0.0
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    def _attempt(self, kind: str, fn: Callable[[], Any], tries: _Tries) -> Any:
        """One try of one API call, under a slot and a token of the shared limiter (held around
        the call only). Raises :class:`_Retry` (transient: try again after its delay),
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
            raise _Retry(delay)
        self._stats.add("failures")
        tries_text = f"after {attempt} attempt(s)" if transient else "(not retryable)"
        raise RequestFailed(f"{kind} request failed {tries_text}: {what}: {message}")

    def _call(self, kind: str, fn: Callable[[], Any]) -> Any:
        """:meth:`_attempt` until it succeeds, sleeping the backoffs in this thread (the scene
        list, which everything else waits for). Raises SplitNeeded or RequestFailed."""
        tries = _Tries()
        while True:
            try:
                return self._attempt(kind, fn, tries)
            except _Retry as retry:
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

    def _scene_ids(self, run: FetchRun, tiles: Sequence[Tile], tries: _Tries) -> list[list[list[str]]]:
        """One try of the per-block scene query (``scene_query="block"``); raises as :meth:`_attempt`."""
        ee = run.ee
        expr = run.scene_query(tiles)
        result = self._attempt("value", lambda: ee.data.computeValue(expr), tries)
        self._stats.add("value_bytes", len(json.dumps(result, default=str)))
        if not isinstance(result, list) or len(result) != len(tiles):
            raise RequestFailed(f"unexpected scene query answer ({type(result).__name__})")
        return [[[str(i) for i in (ids or [])] for ids in per_tile] for per_tile in result]

    def _list_scenes(self, run: FetchRun, tiles: Sequence[Tile]) -> dict[str, list[list[str]]] | None:
        """Each tile's scene lists (as ``_scene_ids``) from one list query of the whole area;
        None when a footprint cannot be intersected here (the caller queries per block).

        A group of chunks answered "too large" / "memory" is asked for again as two halves (two
        requests); a chunk with more than ``scenes.MAX_ROWS_PER_CHUNK`` rows is split in two chunks.
        Raises RequestFailed when the list cannot be had."""
        ee = run.ee
        out: dict[str, list[list[str]]] = {}
        pending: list[list[Chunk]] = [chunk_tiles(tiles)]
        while pending:
            group = pending.pop()
            try:
                answer = self._call("value", functools.partial(ee.data.computeValue,
                                                               run.scene_list_query(group)))
            except SplitNeeded as exc:
                if len(group) > 1:
                    pending += [group[: len(group) // 2], group[len(group) // 2:]]
                elif len(group[0].tiles) > 1:
                    pending += [[half] for half in group[0].halves()]
                else:
                    raise RequestFailed(f"scene list failed: {exc}") from None
                self._stats.add("splits")
                continue
            self._stats.add("value_bytes", len(json.dumps(answer, default=str)))
            if not isinstance(answer, list) or len(answer) != len(group):
                raise RequestFailed(f"unexpected scene list answer ({type(answer).__name__})")
            for chunk, per_collection in zip(group, answer):
                if any(len(rows or []) > scenes.MAX_ROWS_PER_CHUNK for rows in per_collection):
                    if len(chunk.tiles) < 2:
                        raise RequestFailed(f"more than {scenes.MAX_ROWS_PER_CHUNK} scenes for one tile")
                    self._stats.add("splits")
                    pending.append(list(chunk.halves()))
                    continue
                try:
                    out.update(scene_lists(chunk, [rows or [] for rows in per_collection]))
                except FootprintError as exc:
                    log.warning("GEE scene list: %s; querying scenes per request block", exc)
                    return None
        return out

    def _pixels_call(self, run: FetchRun, box: PixelBox, variant: str) -> Callable[[], Any]:
        """The computePixels call of one box, built once (its retries reuse it)."""
        ee = run.ee
        params: dict[str, Any] = {
            "expression": run.pixel_image(box, variant),
            "fileFormat": "NPY",
            "grid": box.grid(),
        }
        if self.workload_tag:
            params["workloadTag"] = self.workload_tag
        if self.pixel_transport == "rest":
            # the same REST call, serialized once here, answered into one buffer (client.py)
            params["expression"] = ee.serializer.encode(params["expression"])
            return functools.partial(self._pixels_client().compute_pixels, params, run.buffers)
        return lambda: ee.data.computePixels(params)

    def _request_pixels(self, run: FetchRun, box: PixelBox, call: Callable[[], Any],
                        tries: _Tries) -> tuple[np.ndarray, Any]:
        """One try of a box's computePixels, decoded (a view of the answer), and the answer
        (``run.buffers.give`` it once no array views it); raises as :meth:`_attempt`."""
        raw = self._attempt("pixel", call, tries)
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise RequestFailed(f"computePixels returned {type(raw).__name__}, expected NPY bytes")
        self._stats.add("bytes", len(raw))
        self._stats.add("pixel_bytes", len(raw))
        return _read_npy(raw, run.sensor.bands, box.height, box.width), raw

    def _pixels_client(self) -> ComputePixelsClient:
        """The direct computePixels client, made once (the ee client is initialised by then)."""
        with self._init_lock:
            if self._rest is None:
                creds = self._credentials
                if getattr(creds, "quota_project_id", None):  # as the ee client: the header names it
                    creds = creds.with_quota_project(None)
                if self._auth_kind == "anonymous":
                    creds = None
                version = getattr(import_ee(), "__version__", "")
                self._rest = ComputePixelsClient(self.endpoint, str(self.project), creds,
                                                 self.request_timeout_s, self.max_concurrent_requests,
                                                 client_version=f"ee-py/{version} rs-embed-pipeline")
            return self._rest

    # ---- the tasks of one fetch (scheduler.py runs them; each makes at most one request) -------

    def _guarded(self, fail: Callable[[str], None], n_tiles: int, body: Callable[[], None]) -> None:
        """``body``; a RequestFailed fails its tiles with its text, anything else (a bug, an
        unexpected answer) with the redacted error: these tiles, not the run."""
        try:
            body()
        except RequestFailed as exc:
            fail(str(exc))
        except Exception as exc:
            reason = self._redact(f"{type(exc).__name__}: {exc}")
            log.warning("GEE request of %d tile(s) failed: %s", n_tiles, reason)
            fail(reason)

    def _failed(self, ctx: Context, run: FetchRun, tiles: Sequence[Tile],
                info: Mapping[str, dict[str, Any]] | None = None) -> Callable[[str], None]:
        """Emits ``tiles`` as failed with a reason (their scene lists when ``info`` has them)."""
        return lambda reason: ctx.emit([self._patch(run, t, "failed", info[t.tile_id] if info else None,
                                                    reason=reason) for t in tiles])

    def _root_task(self, run: FetchRun, block: RequestBlock,
                   listed: Mapping[str, list[list[str]]] | None) -> Task:
        """A packed block: its tiles' scene lists (from the partition's list, or one scene query
        of the block), then its pixel requests."""
        if listed is None:
            return self._scene_task(run, block, _Tries())

        def task(ctx: Context) -> None:
            self._guarded(self._failed(ctx, run, block.tiles), len(block.cells),
                          lambda: self._plan_pixels(ctx, run, block, [listed[t.tile_id] for t in block.tiles]))
        return task

    def _scene_task(self, run: FetchRun, block: RequestBlock, tries: _Tries) -> Task:
        def task(ctx: Context) -> None:
            def body() -> None:
                try:
                    ids = self._scene_ids(run, block.tiles, tries)
                except _Retry as retry:
                    ctx.later(self._scene_task(run, block, tries), retry.delay)
                    return
                except SplitNeeded as exc:
                    if len(block.cells) < 2:
                        raise RequestFailed(f"scene query failed: {exc}") from None
                    self._stats.add("splits")
                    for half in block.split():
                        ctx.submit(self._scene_task(run, half, _Tries()))
                    return
                self._plan_pixels(ctx, run, block, ids)
            self._guarded(self._failed(ctx, run, block.tiles), len(block.cells), body)
        return task

    def _plan_pixels(self, ctx: Context, run: FetchRun, block: RequestBlock,
                     ids: Sequence[list[list[str]]]) -> None:
        """Tiles without images are no_data; the others go into one pixel task per packed
        request of each variant (S1: with / without the IW filter)."""
        sensor = run.sensor
        variants: dict[str, list[Tile]] = defaultdict(list)
        info: dict[str, dict[str, Any]] = {}
        for tile, lists in zip(block.tiles, ids):
            variant, scene_ids, relaxed = self._choose_variant(sensor, lists)
            info[tile.tile_id] = {"scene_ids": scene_ids, "iw_relaxed": relaxed, "variant": variant}
            variants[variant].append(tile)
        no_data = [self._patch(run, tile, "no_data", info[tile.tile_id],
                               reason="no image matches the filters for this tile and time window")
                   for tile in variants.pop("none", [])]
        tasks = [self._pixels_task(run, sub, variant, info)
                 for variant, vtiles in variants.items()
                 for sub in pack_requests(vtiles, band_bytes=sensor.band_bytes,
                                          max_request_bytes=self.max_request_bytes, max_tiles=run.max_tiles)]
        if no_data:
            ctx.emit(no_data)
        for t in tasks:
            ctx.submit(t)

    def _pixels_task(self, run: FetchRun, block: RequestBlock, variant: str,
                     info: Mapping[str, dict[str, Any]], tries: _Tries | None = None,
                     call: Callable[[], Any] | None = None) -> Task:
        """One computePixels request of a block of tiles; too large: two tasks (the halves, in
        two slots); one tile: :meth:`_piece_task`."""
        def task(ctx: Context) -> None:
            def body() -> None:
                n = len(block.cells)
                if n == 1:
                    job = _TileJob(block, variant, info[block.tiles[0].tile_id])
                    self._piece_task(run, job, _Piece(block.box, 0, None, 0))(ctx)
                    return
                split_reason: str | None = None
                if request_bytes(block.box.pixels, run.sensor.band_bytes) > self.max_request_bytes:
                    split_reason = "over the size limit"
                else:
                    c = call or self._pixels_call(run, block.box, variant)
                    t = tries or _Tries()
                    try:
                        pixels, raw = self._request_pixels(run, block.box, c, t)
                    except _Retry as retry:
                        ctx.later(self._pixels_task(run, block, variant, info, t, c), retry.delay)
                        return
                    except SplitNeeded as exc:
                        split_reason = str(exc)
                    except RequestFailed as exc:
                        self._failed(ctx, run, block.tiles, info)(str(exc))
                        return
                    else:
                        patches = self._cut(run, block, pixels, info, {"tiles_in_request": n, "pixel_splits": 0})
                        del pixels  # the patches hold copies: the answer's buffer is free
                        run.buffers.give(raw)
                        ctx.emit(patches)
                        return
                self._stats.add("splits")
                log.debug("splitting a %d-tile request: %s", n, split_reason)
                for half in block.split():
                    ctx.submit(self._pixels_task(run, half, variant, info))
            self._guarded(self._failed(ctx, run, block.tiles), len(block.cells), body)
        return task

    def _piece_task(self, run: FetchRun, job: _TileJob, piece: _Piece, tries: _Tries | None = None,
                    call: Callable[[], Any] | None = None) -> Task:
        """One tile's pixels, or a pixel box of it: split in halves (two tasks) while too large,
        the halves stitched when both have arrived (:meth:`_piece_done`)."""
        def task(ctx: Context) -> None:
            def body() -> None:
                if job.finished:  # another piece of this tile failed: nothing to ask for
                    return
                box = piece.box
                reason: str | None = None
                too_big = (request_bytes(box.pixels, run.sensor.band_bytes) > self.max_request_bytes
                           or max(box.width, box.height) > EE_MAX_GRID_PX)
                if not too_big:
                    c = call or self._pixels_call(run, box, job.variant)
                    t = tries or _Tries()
                    try:
                        pixels, raw = self._request_pixels(run, box, c, t)
                    except _Retry as retry:
                        ctx.later(self._piece_task(run, job, piece, t, c), retry.delay)
                        return
                    except SplitNeeded as exc:
                        reason = str(exc)
                    except RequestFailed as exc:
                        self._tile_failed(ctx, run, job, str(exc), job.info)
                        return
                    else:
                        self._piece_done(ctx, run, job, piece, pixels, 0)
                        if piece.parent is None:  # cut out (copies); a half waits as a view of its answer
                            del pixels
                            run.buffers.give(raw)
                        return
                if piece.depth >= _MAX_PIXEL_SPLIT_DEPTH or max(box.width, box.height) < 2:
                    self._tile_failed(ctx, run, job, f"request still too large after {piece.depth} split(s): "
                                                     f"{reason or 'over the size limit'}", job.info)
                    return
                self._stats.add("splits")
                a, b, axis = box.halves()
                piece.axis = axis
                for k, half in enumerate((a, b)):
                    ctx.submit(self._piece_task(run, job, _Piece(half, piece.depth + 1, piece, k)))
            self._guarded(lambda reason: self._tile_failed(ctx, run, job, reason, None), 1, body)
        return task

    def _piece_done(self, ctx: Context, run: FetchRun, job: _TileJob, piece: _Piece,
                    pixels: np.ndarray, splits: int) -> None:
        """A piece's pixels: joined with its sibling's once both are here, up to the tile."""
        with job.lock:
            while piece.parent is not None:
                parent = piece.parent
                parent.parts[piece.index] = (pixels, splits)
                if any(p is None for p in parent.parts):
                    return
                (pa, sa), (pb, sb) = parent.parts  # type: ignore[misc]
                pixels, splits = np.concatenate([pa, pb], axis=parent.axis), 1 + sa + sb
                parent.parts = [None, None]
                piece = parent
            if job.finished:
                return
            job.finished = True
        ctx.emit(self._cut(run, job.block, pixels, {job.block.tiles[0].tile_id: job.info},
                           {"tiles_in_request": 1, "pixel_splits": splits}))

    def _tile_failed(self, ctx: Context, run: FetchRun, job: _TileJob, reason: str,
                     info: dict[str, Any] | None) -> None:
        with job.lock:
            if job.finished:
                return
            job.finished = True
        self._failed(ctx, run, job.block.tiles, {job.block.tiles[0].tile_id: info} if info else None)(reason)

    def _cut(self, run: FetchRun, block: RequestBlock, pixels: np.ndarray,
             info: Mapping[str, dict[str, Any]], request: dict[str, Any]) -> list[Patch]:
        """The block's tiles out of one answer: ok, or no_data where every pixel is masked."""
        out: list[Patch] = []
        s = block.size
        for tile, c, r in block.cells:
            data, valid = _tile_arrays(pixels, run.sensor.bands, slice(r * s, (r + 1) * s),
                                       slice(c * s, (c + 1) * s))
            if not valid.any():
                out.append(self._patch(run, tile, "no_data", info[tile.tile_id], request=request,
                                       reason="every pixel is masked in the composite"))
            else:
                out.append(self._patch(run, tile, "ok", info[tile.tile_id], data=data, valid=valid,
                                       request=request))
        return out

    @staticmethod
    def _choose_variant(sensor: _Sensor, lists: list[list[str]]) -> tuple[str, list[str], bool]:
        """(variant, scene ids, iw relaxed) from the scene query lists of one tile."""
        if sensor.modality == "s2":
            ids = lists[0] if lists else []
            return ("ok" if ids else "none"), ids, False
        if not sensor.require_iw:
            ids = lists[0] if lists else []
            return ("any" if ids else "none"), ids, False
        iw_ids = lists[0] if lists else []
        if iw_ids:
            return "iw", iw_ids, False
        if sensor.relax_iw_on_empty and len(lists) > 1 and lists[1]:
            return "any", lists[1], True
        return "none", [], False

    def _patch(self, run: FetchRun, tile: Tile, status: str, info: dict[str, Any] | None, *,
               data: np.ndarray | None = None, valid: np.ndarray | None = None,
               request: dict | None = None, reason: str | None = None) -> Patch:
        s = run.sensor
        meta: dict[str, Any] = {
            "provider": self.name,
            "modality": s.modality,
            "collection": s.collection,
            "bands": list(s.bands),
            "composite": s.composite,
            "composite_rule": s.composite_description(),
            "start": run.start,
            "end": run.end,
            "crs": tile.crs,
            "transform": tile.transform,
            "size_px": tile.size_px,
            "scale_m": tile.scale_m,
            "resampling": "none (tile's own UTM grid); Earth Engine nearest neighbour for coarser bands",
            "fill_value": s.fill_value,
            "request_dtype": s.send_dtype,
        }
        if s.modality == "s2":
            meta["cloudy_pct"] = s.cloudy_pct
            meta["clamp"] = s.clamp
        relaxed = bool(info and info.get("iw_relaxed"))
        if info is not None:
            meta["scene_ids"] = list(info["scene_ids"])
            meta["image_count"] = len(info["scene_ids"])
            meta.update(scenes.scene_count(s.collection, s.modality, run.start, run.end, info["scene_ids"]))
            if "scene_gap" in meta and run.first_gap_warning():
                gap = meta["scene_gap"]
                log.warning("tile %s: %d scene dates in %s .. %s, %d expected: %s", tile.tile_id,
                            gap["found_scenes"], run.start, run.end, gap["expected_scenes"], gap["reason"])
            meta["filters"] = s.filters(run.start, run.end,
                                        iw=(s.require_iw and not relaxed) if s.modality == "s1" else None)
        if s.modality == "s1":
            meta.update({
                "iw_relaxed": relaxed,
                "s1_iw_requested": s.require_iw,
                "s1_iw_applied": s.require_iw and not relaxed,
                "s1_relax_iw_on_empty": s.relax_iw_on_empty,
                "s1_orbit_requested": s.orbit,
                "s1_orbit_applied": s.orbit,
                "s1_collection_used": s.collection,
                "s1_db_to_linear": not s.use_float_linear,
                "use_float_linear": s.use_float_linear,
            })
        if request is not None:
            meta["request"] = dict(request)
        if reason is not None:
            meta["reason"] = self._redact(reason)
        if status == "ok" and data is not None and valid is not None:
            if s.fill_value != 0.0:  # masked pixels arrive as 0 (unmask(0)); give them the fill value
                data = np.where(valid[None], data, np.float32(s.fill_value)).astype(np.float32)
            return Patch(tile.tile_id, data, valid, "ok", meta)
        return Patch(tile.tile_id, np.zeros((len(s.bands), tile.size_px, tile.size_px), np.float32),
                     np.zeros((tile.size_px, tile.size_px), bool), status, meta)  # type: ignore[arg-type]

    # ---- the run --------------------------------------------------------------------------------

    def _generate(self, rows: list[Any], sensor: _Sensor, start: str, end: str) -> Iterator[Patch]:
        t_start = self._clock()
        n_bands = len(sensor.bands)
        tiles: list[Tile] = []
        copies: dict[str, int] = defaultdict(int)
        bad: list[Patch] = []
        for i, row in enumerate(rows):
            try:
                tile = Tile.from_row(row)
            except Exception as exc:
                tid = str(row.get("tile_id", f"row{i}")) if isinstance(row, Mapping) else f"row{i}"
                try:
                    size = max(1, int(row.get("size_px", 1)))
                except Exception:
                    size = 1
                bad.append(Patch.empty(tid, n_bands, size, "failed", provider=self.name,
                                       reason=f"bad tile row: {type(exc).__name__}: {exc}"))
                continue
            copies[tile.tile_id] += 1
            if copies[tile.tile_id] == 1:
                tiles.append(tile)
        for patch in bad:
            self._count(patch)
            yield patch
        if not tiles:
            return

        self._ensure_ready()
        with EE_CONFIG_LOCK:
            EE_CONFIG["active"] += 1
        run: FetchRun | None = None
        try:
            fill_slots = math.ceil(len(tiles) / self.max_concurrent_requests)
            max_tiles = max(1, min(fill_slots, self.max_tiles_per_request or fill_slots))
            run = FetchRun(sensor, start, end, max_tiles)
            blocks = pack_requests(tiles, band_bytes=sensor.band_bytes,
                                   max_request_bytes=self.max_request_bytes, max_tiles=max_tiles)
            log.info("GEE %s: %d tile(s) in %d request block(s) (<= %d tiles each), %s .. %s",
                     sensor.modality, len(tiles), len(blocks), max_tiles, start, end)
            listed: dict[str, list[list[str]]] | None = None
            if self.scene_query == "partition":
                try:
                    listed = self._list_scenes(run, tiles)
                except RequestFailed as exc:
                    for tile in tiles:
                        yield from self._copies(self._patch(run, tile, "failed", None, reason=str(exc)), copies)
                    return
            yield from self._run_blocks(run, blocks, copies, listed)
        finally:
            with EE_CONFIG_LOCK:
                EE_CONFIG["active"] -= 1
            self._stats.add_fetch_time(self._clock() - t_start)
            if run is not None:  # counted once per fetch: its answers take buffers concurrently
                self._stats.add("answer_buffers", run.buffers.allocated)
            snap = self._stats.snapshot()
            log.info("GEE fetch: tiles ok %d / no_data %d / failed %d; requests %d, retries %d, "
                     "%.1f MB", snap["tiles_ok"], snap["tiles_no_data"], snap["tiles_failed"],
                     snap["requests"], snap["retries"], snap["bytes"] / 1e6)

    def _copies(self, patch: Patch, copies: Mapping[str, int]) -> Iterator[Patch]:
        """The patch once per row that asked for its tile (counted)."""
        for k in range(copies.get(patch.tile_id, 1)):
            out = patch if k == 0 else dataclasses.replace(patch, meta=dict(patch.meta))
            self._count(out)
            yield out

    def _run_blocks(self, run: FetchRun, blocks: list[RequestBlock], copies: Mapping[str, int],
                    listed: Mapping[str, list[list[str]]] | None = None) -> Iterator[Patch]:
        """The blocks' tasks on the scheduler (``scheduler.py``): twice as many threads as slots
        (a free slot finds a thread while others decode), at most twice as many blocks open as
        slots (the bound on what waits for the consumer)."""
        slots = self.max_concurrent_requests
        sched = RequestScheduler(workers=2 * slots, max_open=2 * slots, clock=self._clock,
                                 sleep=self._sleep)
        answered: set[str] = set()
        for patch in sched.run(self._root_task(run, b, listed) for b in blocks):
            answered.add(patch.tile_id)
            yield from self._copies(patch, copies)
        for block in blocks:  # a safety net: every tile is answered once, whatever happened
            for tile in block.tiles:
                if tile.tile_id not in answered:
                    yield from self._copies(self._patch(run, tile, "failed", None,
                                                        reason="no answer (internal error)"), copies)

    def _count(self, patch: Patch) -> None:
        self._stats.add("tiles")
        self._stats.add(f"tiles_{patch.status}")
        if patch.status == "failed":
            log.warning("GEE tile %s failed: %s", patch.tile_id, patch.meta.get("reason"))


class _Retry(Exception):
    """A transient failure: the same request again after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


@dataclasses.dataclass
class _Tries:
    """Attempts of one request so far, carried across its retries."""

    attempt: int = 0
    timeouts: int = 0  # client timeouts in a row


@dataclasses.dataclass(eq=False)
class _Piece:
    """A pixel box of one tile's request; ``parts``: its halves' (pixels, splits) once asked."""

    box: PixelBox
    depth: int
    parent: _Piece | None
    index: int  # 0: the first half of the parent, 1: the second
    axis: int = 0
    parts: list[tuple[np.ndarray, int] | None] = dataclasses.field(default_factory=lambda: [None, None])


@dataclasses.dataclass(eq=False)
class _TileJob:
    """One tile whose request may be split in pixel halves: answered once (``finished``)."""

    block: RequestBlock
    variant: str
    info: dict[str, Any]
    finished: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def _parse_time(value: Any, what: str) -> dt.datetime:
    """``start`` / ``end`` as a UTC datetime; a ProviderError naming which one is bad."""
    try:
        return parse_utc(value)
    except ValueError as exc:
        raise ProviderError(f"GEE provider: {what} {exc}") from None


def _ee_time(t: dt.datetime) -> str:
    """The date string ``filterDate`` gets: the day alone at midnight."""
    if t.time() == dt.time(0, 0):
        return t.strftime("%Y-%m-%d")
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _npy_header(raw: bytes | bytearray | memoryview) -> bytes:
    """The magic string and header of an NPY buffer (a copy of those bytes only: a BytesIO over a
    memoryview would copy the whole answer)."""
    head = bytes(raw[:12])
    if head[6:8] == b"\x01\x00":
        return bytes(raw[: 10 + int.from_bytes(head[8:10], "little")])
    if head[6:8] in (b"\x02\x00", b"\x03\x00"):
        return bytes(raw[: 12 + int.from_bytes(head[8:12], "little")])
    return bytes(raw)  # not NPY 1 / 2 / 3: the caller's np.load reports it


def _read_npy(raw: bytes | bytearray | memoryview, bands: Sequence[str], height: int, width: int) -> np.ndarray:
    """NPY bytes -> the structured array [H, W] (one field per band), a view of ``raw`` (no copy)."""
    try:
        buf = io.BytesIO(_npy_header(raw))
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            arr = np.load(io.BytesIO(bytes(raw)), allow_pickle=False)
            shape, fortran, dtype = arr.shape, False, arr.dtype
        if dtype.hasobject:
            raise ValueError("object fields")
        count = int(np.prod(shape)) if shape else 1
        if version in ((1, 0), (2, 0)):
            arr = np.frombuffer(raw, dtype=dtype, count=count, offset=buf.tell())
            arr = arr.reshape(shape, order="F" if fortran else "C")
    except Exception as exc:
        raise RequestFailed(f"undecodable NPY answer: {type(exc).__name__}: {exc}") from None
    names = arr.dtype.names or ()
    missing = [b for b in bands if b not in names]
    if missing:
        raise RequestFailed(f"NPY answer lacks band(s) {missing} (has {list(names)})")
    if arr.shape != (height, width):
        raise RequestFailed(f"NPY answer has shape {arr.shape}, expected {(height, width)}")
    return arr


def _tile_arrays(arr: np.ndarray, bands: Sequence[str], ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """float32 [C, h, w] and bool [h, w] of one pixel box of the structured array (copies).

    A fresh array per tile, not views of one per answer: measured under load (issue 26), one
    38 MB array's huge-page faults cost more kernel time (1.8-2.0 ms per tile) than the small
    pages of per-tile arrays, which the allocator mostly reuses (0.9-1.4 ms)."""
    part = arr[ys, xs]
    h, w = part.shape
    data = np.empty((len(bands), h, w), dtype=np.float32)
    for i, b in enumerate(bands):
        data[i] = part[b]
    names = arr.dtype.names or ()
    valid = part[VALID_BAND] > 0 if VALID_BAND in names else np.ones((h, w), dtype=bool)
    if all(arr.dtype[b].kind == "f" for b in bands):  # integer bands (uint16 S2 mosaic) are finite
        valid &= np.isfinite(data).all(axis=0)
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid
