"""``GEEProvider``: its settings and public API (``fetch_patches``, ``describe``, ``config``,
``stats``, ``reset_stats``, ``endpoint``) and the run of one fetch (``_generate``).

The rest comes from its mixins, one concern per module (why mixins: ``auth.py``): credentials and
initialisation (``auth.py``), retries (``retries.py``), scene and pixel calls (``calls.py``),
patches and their metadata (``patches.py``), the task graph of a fetch (``tasks.py``); NPY
decoding is ``npy.py``."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import random
import threading
import time
from collections import defaultdict
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Mapping

from rs_embed_pipeline.core.timeparse import parse_utc
from rs_embed_pipeline.core.vocabulary import COMPOSITES, DEFAULT_COMPOSITE

from ..base import Patch, ProviderError, Tile, tile_rows
from ..sensor_options import SensorOptions
from .client import (
    EE_CONFIG,
    EE_CONFIG_LOCK,
    HIGH_VOLUME_URL,
    STANDARD_URL,
    ComputePixelsClient,
    FetchStats,
    RequestFailed,
    TokenBucket,
    safe_url,
)
from .expressions import (
    S1_DB_COLLECTION,
    S1_FLOAT_COLLECTION,
    S2_CLOUD_SCORE_PLUS_COLLECTION,
    S2_COLLECTION,
    VALID_BAND,
    FetchRun,
    parse_sensor,
    Sensor,
)
from .limits import RequestLimiter
from .request_blocks import EE_MAX_REQUEST_BYTES, pack_requests
from .tasks import FetchTasks

log = logging.getLogger("rs_embed_pipeline.providers.gee")


#: Where tiles' scene lists come from: one list per fetch_patches call, or one query per block.
SCENE_QUERIES = ("partition", "block")


#: How computePixels answers are received: directly into one buffer, or through the ee client.
PIXEL_TRANSPORTS = ("rest", "ee")


class GEEProvider(FetchTasks):
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
        parse_sensor("s2", None, None, {}, self._sensor_defaults)

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
        sensor = parse_sensor(modality, bands, options, sensor_options, self._sensor_defaults)
        t0 = _parse_time(start, "start")
        t1 = _parse_time(end, "end")
        if not t0 < t1:
            raise ProviderError(f"GEE provider: start {start!r} must be before end {end!r} (end exclusive)")
        rows = tile_rows(tiles)
        if rows:
            self._ensure_ready()  # credentials / project / endpoint problems raise here
        return self._generate(rows, sensor, _ee_time(t0), _ee_time(t1))

    # ---- the run --------------------------------------------------------------------------------

    def _generate(self, rows: list[Any], sensor: Sensor, start: str, end: str) -> Iterator[Patch]:
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
