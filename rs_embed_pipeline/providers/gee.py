"""Google Earth Engine provider: Sentinel-2 / Sentinel-1 patches through ``image:computePixels``.

What it does, per ``fetch_patches`` call
----------------------------------------
1. **Plan.** Tiles (rows of the ``tile_grid`` GeoDataFrame) are grouped by UTM zone, pixel size
   and tile size, and adjacent tiles are packed into rectangular *blocks* (one larger grid, split
   into tiles afterwards). A block holds as many tiles as fit under Earth Engine's request limit
   (48 MiB = 50,331,648 bytes, counted as ``width * height * (bytes of every band + 1 mask
   byte)``), at most 32,768 px a side, and -- so that all ``max_concurrent_requests`` slots
   have work in small runs -- at most ``ceil(tiles / max_concurrent_requests)`` tiles. With the
   defaults, 224 px tiles with 12 float32 bands (+1 validity byte +1 mask byte = 50 B/px) go 20
   to a request.
2. **Scene query.** One ``ee.data.computeValue`` per block returns the image ids of every tile
   (``aggregate_array('system:index')`` after all filters; Sentinel-1 also the list without the
   IW filter for the relaxed retry). Tiles without images are ``no_data`` with no pixel request.
3. **Pixels.** One ``ee.data.computePixels`` (``fileFormat: NPY``) per block, on the tiles'
   own UTM grid: ``crsCode EPSG:<utm_epsg>``, ``affineTransform {scaleX: scale_m, shearX: 0,
   translateX: x0, shearY: 0, scaleY: -scale_m, translateY: y0}``, ``dimensions`` = block size.
   No Web Mercator reprojection (rs-embed 0.3.1 resampled to EPSG:3857 and sampled JSON through
   ``sampleRectangle``; this provider does neither). Bands coarser than ``scale_m`` (S2 20/60 m)
   are resampled by Earth Engine's default, nearest neighbour; nothing else is resampled.
   The image sent is ``composite.select(bands).toFloat()`` plus one uint8 band ``rsep_valid``
   (1 where every asked band is unmasked), then ``unmask(0)``: NPY carries no mask, so the mask
   travels as data; masked pixels are 0 and ``valid`` False.
4. **Too large / memory / timeout answers** split the block in two (along tile boundaries; a
   single tile is split in pixel halves and stitched), recursively.
5. **Retries.** 429 and 5xx (and connection errors) are retried with exponential backoff and
   jitter (``backoff_base_s * 2**attempt``, capped at ``backoff_max_s``, at least the server's
   ``Retry-After``), up to ``max_retries`` times; other errors are final. A tile whose request
   fails for good is yielded ``failed`` with ``meta["reason"]``; the other tiles go on.

Memory: a pixel request holds its NPY answer (up to 48 MiB) until its tiles are cut out (one
float32 copy per tile); with ``max_concurrent_requests`` requests in flight plus as many finished
blocks waiting for the consumer, peak memory is roughly ``2 x max_concurrent_requests x 48 MiB``
(about 4 GB at the defaults). Lower ``max_tiles_per_request`` or the concurrency on small machines.

Throughput limits are per provider instance and shared by every tile and every concurrent
``fetch_patches`` call of it: at most ``max_concurrent_requests`` requests in flight (a
semaphore; the thread pool has the same size) and a token bucket of ``max_requests_per_second``
(burst ``rate_burst``, default a tenth of a second's worth). ``stats()`` returns the counters.

Collections and filters
-----------------------
* Sentinel-2: ``COPERNICUS/S2_SR_HARMONIZED``, ``filterBounds`` (tile / block rectangle in its
  UTM CRS), ``filterDate(start, end)`` (end exclusive), ``CLOUDY_PIXEL_PERCENTAGE <= cloudy_pct``
  (default 30; ``None`` disables), optional Cloud Score+ masking (``cloud_score_plus=True``:
  ``linkCollection(GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED, [cs_band])`` and
  ``updateMask(cs_band >= cs_threshold)``, defaults ``cs_cdf`` / 0.6). Units: DN (reflectance
  x 10000), bands in the asked order.
* Sentinel-1: ``COPERNICUS/S1_GRD_FLOAT`` (linear sigma0), ``instrumentMode == IW``,
  ``transmitterReceiverPolarisation`` contains VV and VH, optional
  ``orbitProperties_pass == orbit`` (ASCENDING / DESCENDING). If no IW image exists for a tile
  and ``relax_iw_on_empty`` (default), the tile is fetched without the IW filter
  (``meta["iw_relaxed"]``). ``use_float_linear=False`` uses ``COPERNICUS/S1_GRD`` (dB) and
  converts every image to linear power, ``10 ** (dB / 10)``, before compositing.
* Composites: ``median`` (default) or ``mosaic`` (sorted by ``system:time_start``, latest on top).

Authentication and configuration
--------------------------------
Credentials, in order: ``credentials=`` (a ``google.auth`` credentials object, or
``"anonymous"`` for REST stand-ins), ``credentials_file=`` (a service-account JSON key, through
``ee.ServiceAccountCredentials``), else Application Default Credentials (``google.auth.default``).
The project is ``project=``, else the environment variable ``EE_PROJECT`` -- read in one place
only, :func:`_project_from_env`, when the provider is constructed --, else the project of the
credentials. The endpoint is ``api_url`` when given, else the high-volume endpoint
(``https://earthengine-highvolume.googleapis.com``, ``use_high_volume=True``, meant for batch
work) or the standard one. Earth Engine's client keeps one configuration per process: the
provider initialises it lazily on first use and refuses to re-point it while another provider
with a different configuration is fetching. It sets the client's own retries to 0 (this
provider retries, counted) and ``request_timeout_s`` as the client deadline.

Secrets (key material, access tokens) never reach logs, ``describe()``, ``stats()`` or patch
metadata: every error text goes through :func:`redact`. ``describe()`` holds only what shapes
the pixels (it feeds store fingerprints); the operational settings (endpoint, project, auth
kind, limits) are in ``stats()["config"]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from rs_embed_pipeline.timeparse import parse_utc

from .base import S1_BANDS, S2_BANDS, Patch, ProviderError

__all__ = [
    "COMPOSITES",
    "EE_MAX_GRID_PX",
    "EE_MAX_REQUEST_BYTES",
    "GEEProvider",
    "HIGH_VOLUME_URL",
    "S1_DB_COLLECTION",
    "S1_FLOAT_COLLECTION",
    "S2_CLOUD_SCORE_PLUS_COLLECTION",
    "S2_COLLECTION",
    "STANDARD_URL",
    "TokenBucket",
    "VALID_BAND",
    "plan_requests",
    "redact",
]

log = logging.getLogger(__name__)

S2_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
S2_CLOUD_SCORE_PLUS_COLLECTION = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
S1_FLOAT_COLLECTION = "COPERNICUS/S1_GRD_FLOAT"
S1_DB_COLLECTION = "COPERNICUS/S1_GRD"
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
STANDARD_URL = "https://earthengine.googleapis.com"

#: computePixels limits: 48 MiB of uncompressed data (bands' bytes + 1 mask byte per pixel),
#: 32K pixels a side.
EE_MAX_REQUEST_BYTES = 48 * 1024 * 1024
EE_MAX_GRID_PX = 32768
#: Bytes per pixel Earth Engine adds for the mask when it sizes a request.
EE_MASK_BYTES_PER_PIXEL = 1

COMPOSITES: tuple[str, ...] = ("median", "mosaic")
S1_ORBITS: tuple[str, ...] = ("ASCENDING", "DESCENDING")
CLOUD_SCORE_PLUS_BANDS: tuple[str, ...] = ("cs_cdf", "cs")
#: The uint8 band carrying the validity mask through NPY (which has no mask of its own).
VALID_BAND = "rsep_valid"
ENV_PROJECT = "EE_PROJECT"
EE_SCOPES: tuple[str, ...] = (
    "https://www.googleapis.com/auth/earthengine",
    "https://www.googleapis.com/auth/cloud-platform",
)

_FLOAT32_BYTES = 4
_VALID_BAND_BYTES = 1
_MAX_PIXEL_SPLIT_DEPTH = 10
_LN10_OVER_10 = math.log(10.0) / 10.0

# "too large" / "memory" / "timed out" answers: retry smaller.
_SPLIT_RE = re.compile(
    r"too large|too many pixels|must be less than or equal to|request size|payload size"
    r"|memory limit|memory capacity|out of memory|timed out|time out|deadline exceeded",
    re.IGNORECASE,
)

_S2_OPTIONS = ("composite", "cloudy_pct", "cloud_score_plus", "cs_threshold", "cs_band", "fill_value")
_S1_OPTIONS = ("composite", "orbit", "use_float_linear", "require_iw", "relax_iw_on_empty", "fill_value")


# --------------------------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------------------------

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


def _safe_url(url: str) -> str:
    """scheme://host[:port][/path] without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def _project_from_env() -> str | None:
    """The only place this module reads the environment: ``EE_PROJECT`` (empty = unset)."""
    value = os.environ.get(ENV_PROJECT, "").strip()
    return value or None


# --------------------------------------------------------------------------------------------
# rate limit and counters
# --------------------------------------------------------------------------------------------


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


class _Stats:
    """Thread-safe counters of one provider instance (``GEEProvider.stats()``)."""

    COUNTERS = (
        "requests", "value_requests", "pixel_requests", "bytes", "pixel_bytes", "value_bytes",
        "retries", "throttled", "server_errors", "too_large", "splits", "failures",
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


# --------------------------------------------------------------------------------------------
# tiles, blocks, windows
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tile:
    tile_id: str
    epsg: int
    x0: float
    y0: float
    size: int
    scale: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "_Tile":
        missing = [k for k in ("tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m") if k not in row]
        if missing:
            raise ValueError(f"tile row lacks column(s) {missing}")
        tile = cls(str(row["tile_id"]), int(row["utm_epsg"]), float(row["x0"]), float(row["y0"]),
                   int(row["size_px"]), float(row["scale_m"]))
        if tile.size <= 0 or not tile.scale > 0:
            raise ValueError(f"size_px ({tile.size}) and scale_m ({tile.scale}) must be > 0")
        if not (math.isfinite(tile.x0) and math.isfinite(tile.y0)):
            raise ValueError("x0 / y0 must be finite")
        return tile

    @property
    def transform(self) -> list[float]:
        return [self.scale, 0.0, self.x0, 0.0, -self.scale, self.y0]


@dataclasses.dataclass(frozen=True)
class _Window:
    """A pixel rectangle of one UTM lattice: upper-left (x0, y0), width x height pixels."""

    epsg: int
    scale: float
    x0: float
    y0: float
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def grid(self) -> dict[str, Any]:
        return {
            "dimensions": {"width": int(self.width), "height": int(self.height)},
            "affineTransform": {
                "scaleX": float(self.scale), "shearX": 0.0, "translateX": float(self.x0),
                "shearY": 0.0, "scaleY": -float(self.scale), "translateY": float(self.y0),
            },
            "crsCode": f"EPSG:{self.epsg}",
        }

    def bounds(self) -> list[float]:
        """[xmin, ymin, xmax, ymax] in the window's CRS."""
        return [self.x0, self.y0 - self.height * self.scale,
                self.x0 + self.width * self.scale, self.y0]

    def halves(self) -> tuple["_Window", "_Window", int]:
        """Two halves along the longer axis; the axis (1: columns, 0: rows) to concatenate on."""
        if self.width >= self.height:
            w1 = self.width // 2
            return (dataclasses.replace(self, width=w1),
                    dataclasses.replace(self, x0=self.x0 + w1 * self.scale, width=self.width - w1),
                    1)
        h1 = self.height // 2
        return (dataclasses.replace(self, height=h1),
                dataclasses.replace(self, y0=self.y0 - h1 * self.scale, height=self.height - h1),
                0)


@dataclasses.dataclass(frozen=True)
class _Block:
    """A full rectangle of ``nw x nh`` adjacent tiles of one lattice (one request)."""

    epsg: int
    scale: float
    size: int
    x0: float
    y0: float
    nw: int
    nh: int
    cells: tuple[tuple[_Tile, int, int], ...]  # (tile, column offset, row offset) in tiles

    @property
    def tiles(self) -> list[_Tile]:
        return [c[0] for c in self.cells]

    @property
    def window(self) -> _Window:
        return _Window(self.epsg, self.scale, self.x0, self.y0, self.nw * self.size, self.nh * self.size)

    def split(self) -> tuple["_Block", "_Block"]:
        """Two full rectangles along the longer side (in tiles). Needs at least 2 tiles."""
        step = self.size * self.scale
        if self.nw >= self.nh:
            k = self.nw // 2
            a = [(t, c, r) for t, c, r in self.cells if c < k]
            b = [(t, c - k, r) for t, c, r in self.cells if c >= k]
            return (dataclasses.replace(self, nw=k, cells=tuple(a)),
                    dataclasses.replace(self, x0=self.x0 + k * step, nw=self.nw - k, cells=tuple(b)))
        k = self.nh // 2
        a = [(t, c, r) for t, c, r in self.cells if r < k]
        b = [(t, c, r - k) for t, c, r in self.cells if r >= k]
        return (dataclasses.replace(self, nh=k, cells=tuple(a)),
                dataclasses.replace(self, y0=self.y0 - k * step, nh=self.nh - k, cells=tuple(b)))


def _request_bytes(pixels: int, band_bytes: int) -> int:
    """Earth Engine's size of a computePixels request: pixels x (band bytes + 1 mask byte)."""
    return pixels * (band_bytes + EE_MASK_BYTES_PER_PIXEL)


def plan_requests(
    tiles: Sequence[_Tile],
    *,
    band_bytes: int,
    max_request_bytes: int = EE_MAX_REQUEST_BYTES,
    max_tiles: int | None = None,
    max_grid_px: int = EE_MAX_GRID_PX,
) -> list[_Block]:
    """Pack tiles into rectangular blocks of adjacent tiles, one computePixels request each.

    ``band_bytes``: bytes per pixel of all bands sent (Earth Engine adds one mask byte). Tiles of
    one (zone, scale, tile size, lattice phase) are packed greedily row by row: a block grows
    east while tiles are adjacent, then south while whole rows of the same width are present,
    under ``max_request_bytes``, ``max_tiles`` and ``max_grid_px`` a side. Blocks are always full
    rectangles (never pixels outside the asked tiles). A tile too large on its own is a block of
    one (the fetch splits its pixels).
    """
    groups: dict[tuple, list[_Tile]] = defaultdict(list)
    for t in tiles:
        step = t.size * t.scale
        phase = (round((t.x0 % step) / t.scale, 3) % t.size, round((t.y0 % step) / t.scale, 3) % t.size)
        groups[(t.epsg, t.scale, t.size, phase)].append(t)

    blocks: list[_Block] = []
    for (epsg, scale, size, _phase), members in groups.items():
        step = size * scale
        ref_x = min(t.x0 for t in members)
        ref_y = max(t.y0 for t in members)
        cells: dict[tuple[int, int], _Tile] = {}
        overflow: list[_Tile] = []  # another tile id at an occupied place: planned separately
        for t in members:
            cell = (int(round((t.x0 - ref_x) / step)), int(round((ref_y - t.y0) / step)))
            if cell in cells:
                overflow.append(t)
            else:
                cells[cell] = t
        tile_bytes = _request_bytes(size * size, band_bytes)
        cap = max(1, max_request_bytes // tile_bytes)
        if max_tiles is not None:
            cap = max(1, min(cap, int(max_tiles)))
        max_side = max(1, max_grid_px // size)
        taken: set[tuple[int, int]] = set()
        for (ci, cj) in sorted(cells, key=lambda c: (c[1], c[0])):
            if (ci, cj) in taken:
                continue
            w = 1
            while (w < min(cap, max_side) and (ci + w, cj) in cells and (ci + w, cj) not in taken):
                w += 1
            h = 1
            while (h < max_side and (h + 1) * w <= cap
                   and all((ci + k, cj + h) in cells and (ci + k, cj + h) not in taken
                           for k in range(w))):
                h += 1
            block_cells = []
            for dj in range(h):
                for di in range(w):
                    taken.add((ci + di, cj + dj))
                    block_cells.append((cells[(ci + di, cj + dj)], di, dj))
            first = cells[(ci, cj)]
            blocks.append(_Block(epsg, scale, size, first.x0, first.y0, w, h, tuple(block_cells)))
        if overflow:
            blocks.extend(plan_requests(overflow, band_bytes=band_bytes, max_request_bytes=max_request_bytes,
                                        max_tiles=max_tiles, max_grid_px=max_grid_px))
    return blocks


# --------------------------------------------------------------------------------------------
# sensor options
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Sensor:
    modality: str
    bands: tuple[str, ...]
    composite: str
    fill_value: float = 0.0  # data value of pixels without a valid observation
    # S2
    cloudy_pct: float | None = None
    cloud_score_plus: bool = False
    cs_threshold: float = 0.6
    cs_band: str = "cs_cdf"
    # S1
    orbit: str | None = None
    use_float_linear: bool = True
    require_iw: bool = True
    relax_iw_on_empty: bool = True

    @property
    def collection(self) -> str:
        if self.modality == "s2":
            return S2_COLLECTION
        return S1_FLOAT_COLLECTION if self.use_float_linear else S1_DB_COLLECTION

    @property
    def band_bytes(self) -> int:
        return len(self.bands) * _FLOAT32_BYTES + _VALID_BAND_BYTES

    def composite_description(self) -> str:
        if self.composite == "mosaic":
            return "mosaic (sorted by system:time_start, latest on top)"
        return "median"

    def filters(self, start: str, end: str, *, iw: bool | None = None) -> dict[str, Any]:
        """The filters applied, for provenance (``iw``: the IW filter for this tile, S1)."""
        f: dict[str, Any] = {"bounds": "tile rectangle in its UTM CRS",
                             "date": [start, end], "date_end_exclusive": True}
        if self.modality == "s2":
            f["CLOUDY_PIXEL_PERCENTAGE_lte"] = self.cloudy_pct
            f["cloud_score_plus"] = (
                {"collection": S2_CLOUD_SCORE_PLUS_COLLECTION, "band": self.cs_band,
                 "threshold": self.cs_threshold, "rule": f"{self.cs_band} >= threshold"}
                if self.cloud_score_plus else None
            )
        else:
            f["transmitterReceiverPolarisation_contains"] = ["VV", "VH"]
            f["instrumentMode"] = "IW" if (self.require_iw if iw is None else iw) else None
            f["orbitProperties_pass"] = self.orbit
        return f


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ProviderError(f"sensor option {name!r} must be true or false, got {value!r}")


def _parse_sensor(modality: str, bands: Iterable[str] | None, options: Mapping[str, Any],
                  defaults: Mapping[str, Any]) -> _Sensor:
    modality = str(modality).lower().strip()
    if modality not in ("s2", "s1"):
        raise ProviderError(f"GEE provider: unknown modality {modality!r}; use 's2' or 's1'")
    valid_opts = _S2_OPTIONS if modality == "s2" else _S1_OPTIONS
    unknown = sorted(set(options) - set(valid_opts))
    if unknown:
        raise ProviderError(
            f"GEE provider: unknown {modality} sensor option(s) {unknown}; valid: {list(valid_opts)}"
        )
    opts = {k: v for k, v in defaults.items() if k in valid_opts}
    opts.update(options)

    allowed = S2_BANDS if modality == "s2" else S1_BANDS
    band_list = tuple(str(b) for b in (bands if bands is not None else allowed))
    if not band_list:
        raise ProviderError("GEE provider: empty band list")
    bad = [b for b in band_list if b not in allowed]
    if bad:
        raise ProviderError(f"GEE provider: band(s) {bad} not available for {modality}; "
                            f"valid: {list(allowed)}")
    if len(set(band_list)) != len(band_list):
        raise ProviderError(f"GEE provider: duplicate bands in {list(band_list)}")

    composite = str(opts.get("composite", "median") or "median").lower().strip()
    if composite not in COMPOSITES:
        raise ProviderError(f"GEE provider: unknown composite {opts.get('composite')!r}; "
                            f"valid: {list(COMPOSITES)}")
    try:
        fill = float(opts.get("fill_value", 0.0))
    except (TypeError, ValueError):
        raise ProviderError(f"GEE provider: fill_value must be a number, got {opts.get('fill_value')!r}") from None

    if modality == "s2":
        cloudy = opts.get("cloudy_pct", 30)
        if cloudy is not None:
            try:
                cloudy = float(cloudy)
            except (TypeError, ValueError):
                raise ProviderError(f"GEE provider: cloudy_pct must be a number or None, got {cloudy!r}") from None
            if not 0 <= cloudy <= 100:
                raise ProviderError(f"GEE provider: cloudy_pct must be within [0, 100], got {cloudy}")
            if cloudy == int(cloudy):
                cloudy = int(cloudy)
        csp = _as_bool("cloud_score_plus", opts.get("cloud_score_plus", False))
        thr = opts.get("cs_threshold", 0.6)
        try:
            thr = float(thr)
        except (TypeError, ValueError):
            raise ProviderError(f"GEE provider: cs_threshold must be a number, got {thr!r}") from None
        if not 0 <= thr <= 1:
            raise ProviderError(f"GEE provider: cs_threshold must be within [0, 1], got {thr}")
        cs_band = str(opts.get("cs_band", "cs_cdf"))
        if cs_band not in CLOUD_SCORE_PLUS_BANDS:
            raise ProviderError(f"GEE provider: cs_band {cs_band!r} is not one of "
                                f"{list(CLOUD_SCORE_PLUS_BANDS)}")
        return _Sensor("s2", band_list, composite, fill_value=fill, cloudy_pct=cloudy, cloud_score_plus=csp,
                       cs_threshold=thr, cs_band=cs_band)

    orbit = opts.get("orbit")
    if orbit is not None:
        orbit = str(orbit).upper().strip()
        if orbit not in S1_ORBITS:
            raise ProviderError(f"GEE provider: unknown S1 orbit {opts.get('orbit')!r}; "
                                f"use 'ASCENDING' or 'DESCENDING' (or None for both)")
    return _Sensor(
        "s1", band_list, composite, fill_value=fill, orbit=orbit,
        use_float_linear=_as_bool("use_float_linear", opts.get("use_float_linear", True)),
        require_iw=_as_bool("require_iw", opts.get("require_iw", True)),
        relax_iw_on_empty=_as_bool("relax_iw_on_empty", opts.get("relax_iw_on_empty", True)),
    )


def _parse_time(value: Any, what: str) -> dt.datetime:
    try:
        return parse_utc(value)
    except ValueError as exc:
        raise ProviderError(f"GEE provider: {what} {exc}") from None


def _ee_time(t: dt.datetime) -> str:
    if t.time() == dt.time(0, 0):
        return t.strftime("%Y-%m-%d")
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _tile_rows(tiles: Any) -> list[Any]:
    if tiles is None:
        return []
    if hasattr(tiles, "columns") and hasattr(tiles, "to_dict"):  # (Geo)DataFrame
        return list(tiles.to_dict("records"))
    if isinstance(tiles, Mapping):
        return [tiles]
    if hasattr(tiles, "to_dict") and hasattr(tiles, "index"):  # one pandas Series
        return [tiles.to_dict()]
    rows = []
    for row in tiles:
        if isinstance(row, Mapping):
            rows.append(row)
        elif hasattr(row, "_asdict"):
            rows.append(row._asdict())
        elif hasattr(row, "to_dict"):
            rows.append(row.to_dict())
        else:
            rows.append(vars(row))
    return rows


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


class _SplitNeeded(Exception):
    """Earth Engine answered "too large" / "memory limit" / "timed out": ask for less."""


class _RequestFailed(Exception):
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
        resp = getattr(e, "resp", None)
        status = getattr(resp, "status", None)
        if status is not None and type(e).__name__ == "HttpError":
            retry_after = None
            try:
                ra = resp.get("retry-after") if hasattr(resp, "get") else None
                retry_after = float(ra) if ra is not None else None
            except (TypeError, ValueError):
                retry_after = None
            try:
                return int(status), retry_after
            except (TypeError, ValueError):
                return None, retry_after
    return None, None


def _is_network_error(exc: BaseException) -> bool:
    for e in _error_chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        mod = type(e).__module__
        if mod.startswith(("requests", "urllib3", "http.client", "httplib2", "socket", "ssl")):
            return True
    return False


# --------------------------------------------------------------------------------------------
# the process-wide Earth Engine client configuration
# --------------------------------------------------------------------------------------------

_EE_LOCK = threading.Lock()
_EE_CONFIG: dict[str, Any] = {"key": None, "active": 0}


def _ee():
    try:
        import ee  # noqa: PLC0415 - lazy: the orchestrator environment has it, other code may not
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ProviderError("GEE provider needs earthengine-api (pip install earthengine-api)") from exc
    return ee


# --------------------------------------------------------------------------------------------
# the provider
# --------------------------------------------------------------------------------------------


class _Run:
    """Settings and ee expression builders of one ``fetch_patches`` call."""

    def __init__(self, sensor: _Sensor, start: str, end: str, max_tiles: int) -> None:
        self.ee = _ee()
        self.sensor = sensor
        self.start = start
        self.end = end
        self.max_tiles = max_tiles

    # ---- geometry -----------------------------------------------------------------------------
    def rect(self, window: _Window):
        return self.ee.Geometry.Rectangle(window.bounds(), f"EPSG:{window.epsg}", False)

    # ---- collections --------------------------------------------------------------------------
    def _s1_base(self, region):
        ee = self.ee
        s = self.sensor
        coll = ee.ImageCollection(s.collection).filterBounds(region).filterDate(self.start, self.end)
        if s.orbit:
            coll = coll.filter(ee.Filter.eq("orbitProperties_pass", s.orbit))
        coll = coll.filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VV"))
        coll = coll.filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VH"))
        return coll

    def scene_collections(self, region) -> list:
        """Collections whose ids the scene query returns (S1: [IW, without IW] as needed)."""
        ee = self.ee
        s = self.sensor
        if s.modality == "s2":
            coll = ee.ImageCollection(s.collection).filterBounds(region).filterDate(self.start, self.end)
            if s.cloudy_pct is not None:
                coll = coll.filter(ee.Filter.lte("CLOUDY_PIXEL_PERCENTAGE", s.cloudy_pct))
            return [coll]
        dual = self._s1_base(region)
        if not s.require_iw:
            return [dual]
        iw = dual.filter(ee.Filter.eq("instrumentMode", "IW"))
        return [iw, dual] if s.relax_iw_on_empty else [iw]

    def pixel_collection(self, region, variant: str):
        """The collection composited for a block; ``variant``: "ok" (S2), "iw" / "any" (S1)."""
        ee = self.ee
        s = self.sensor
        if s.modality == "s2":
            coll = self.scene_collections(region)[0]
        else:
            coll = self._s1_base(region)
            if variant == "iw":
                coll = coll.filter(ee.Filter.eq("instrumentMode", "IW"))
        if s.composite == "mosaic":
            # Sort before any per-image arithmetic (which drops image properties); map keeps order.
            coll = coll.sort("system:time_start")
        if s.modality == "s2":
            if s.cloud_score_plus:
                threshold = s.cs_threshold
                band = s.cs_band
                coll = coll.linkCollection(ee.ImageCollection(S2_CLOUD_SCORE_PLUS_COLLECTION), [band])
                coll = coll.map(lambda img: img.updateMask(img.select(band).gte(threshold)))
            coll = coll.select(list(s.bands))
        else:
            bands = list(s.bands)
            if s.use_float_linear:
                coll = coll.select(bands)
            else:
                # dB -> linear power per image, before compositing: 10 ** (dB / 10) = exp(dB * ln10 / 10).
                coll = coll.map(lambda img: img.select(bands).multiply(_LN10_OVER_10).exp())
        return coll

    def pixel_image(self, window: _Window, variant: str):
        ee = self.ee
        coll = self.pixel_collection(self.rect(window), variant)
        composite = coll.mosaic() if self.sensor.composite == "mosaic" else coll.median()
        img = composite.select(list(self.sensor.bands)).toFloat()
        valid = img.mask().reduce(ee.Reducer.min()).gt(0).toUint8().rename(VALID_BAND)
        return img.addBands(valid).unmask(0, False)

    def scene_query(self, tiles: Sequence[_Tile]):
        ee = self.ee
        per_tile = []
        for t in tiles:
            region = self.rect(_Window(t.epsg, t.scale, t.x0, t.y0, t.size, t.size))
            lists = [c.aggregate_array("system:index") for c in self.scene_collections(region)]
            per_tile.append(ee.List(lists))
        return ee.List(per_tile)


class GEEProvider:
    """Sentinel-2 / Sentinel-1 patches from Google Earth Engine (see the module docstring).

    Args:
        project: Google Cloud project for Earth Engine; default ``EE_PROJECT``, else the
            credentials' project.
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
        if isinstance(credentials, str) and credentials != "anonymous":
            raise ProviderError("credentials must be a google.auth credentials object or 'anonymous'")

        self.project = project or _project_from_env()
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
        self._sensor_defaults = {"cloud_score_plus": bool(cloud_score_plus),
                                 "cs_threshold": float(cs_threshold), "cs_band": str(cs_band)}
        # Validate the defaults once (the same checks as per-call options).
        _parse_sensor("s2", None, {}, self._sensor_defaults)

        self._bucket = TokenBucket(self.max_requests_per_second, rate_burst)
        self._slots = threading.BoundedSemaphore(self.max_concurrent_requests)
        self._stats = _Stats()
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
                "s2": {"composite": "median", "cloudy_pct": 30, **self._sensor_defaults},
                "s1": {"composite": "median", "orbit": None, "use_float_linear": True,
                       "require_iw": True, "relax_iw_on_empty": True},
            },
        }

    def config(self) -> dict[str, Any]:
        """Operational settings (no secrets): endpoint, project, auth kind, limits."""
        return {
            "endpoint": _safe_url(self.endpoint),
            "high_volume": self.api_url is None and self.use_high_volume,
            "project": self.project,
            "auth": self._auth_kind or self._planned_auth_kind(),
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_requests_per_second": self.max_requests_per_second,
            "rate_burst": self._bucket.burst,
            "max_retries": self.max_retries,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
            "request_timeout_s": self.request_timeout_s,
            "max_request_bytes": self.max_request_bytes,
            "max_tiles_per_request": self.max_tiles_per_request,
        }

    def stats(self) -> dict[str, Any]:
        """Counters since construction (or ``reset_stats()``), plus ``config``. JSON-friendly.

        ``requests`` counts every HTTP attempt (scene queries + pixel requests, retries
        included); ``bytes`` the NPY bytes received (``value_bytes``: JSON size of the scene
        answers); ``retries`` the retried attempts (``throttled``: 429 answers, ``server_errors``:
        5xx); ``too_large`` the "too large / memory / timed out" answers and ``splits`` the
        requests split because of them or of their planned size; ``failures`` the requests given
        up; ``tiles_*`` the yielded patches by status.
        """
        out = self._stats.snapshot()
        out["config"] = self.config()
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
        **sensor_options: Any,
    ) -> Iterator[Patch]:
        """Yield one :class:`Patch` per tile row, in completion order.

        Options, Sentinel-2: ``composite`` (median | mosaic), ``cloudy_pct`` (default 30, None:
        off), ``cloud_score_plus`` (bool), ``cs_threshold`` (0.6), ``cs_band`` (cs_cdf | cs).
        Sentinel-1: ``composite``, ``orbit`` (ASCENDING | DESCENDING | None),
        ``use_float_linear`` (True), ``require_iw`` (True), ``relax_iw_on_empty`` (True).
        Both: ``fill_value`` (0.0): the data value of pixels without a valid observation.

        Misconfiguration (unknown option, band, composite, orbit, bad dates, no credentials)
        raises :class:`ProviderError` here, before any request; per-tile problems never raise.
        """
        sensor = _parse_sensor(modality, bands, sensor_options, self._sensor_defaults)
        t0 = _parse_time(start, "start")
        t1 = _parse_time(end, "end")
        if not t0 < t1:
            raise ProviderError(f"GEE provider: start {start!r} must be before end {end!r} (end exclusive)")
        rows = _tile_rows(tiles)
        if rows:
            self._ensure_ready()  # credentials / project / endpoint problems raise here
        return self._generate(rows, sensor, _ee_time(t0), _ee_time(t1))

    # ---- setup ----------------------------------------------------------------------------------

    def _planned_auth_kind(self) -> str:
        if self._credentials_arg == "anonymous":
            return "anonymous"
        if self._credentials_arg is not None:
            return "credentials_object"
        if self.credentials_file:
            return "service_account_key_file"
        return "application_default"

    def _resolve_credentials(self) -> tuple[Any, str, str | None]:
        """(credentials, kind, project of the credentials)."""
        kind = self._planned_auth_kind()
        if kind == "anonymous":
            from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415

            return AnonymousCredentials(), kind, None
        if kind == "credentials_object":
            creds = self._credentials_arg
            return creds, kind, getattr(creds, "project_id", None)
        if kind == "service_account_key_file":
            path = self.credentials_file
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
                creds = _ee().ServiceAccountCredentials(None, key_file=path)
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
        ee = _ee()
        key = (self.endpoint, self.project, id(self._credentials), self.request_timeout_s)
        with _EE_LOCK:
            if _EE_CONFIG["key"] == key:
                return
            if _EE_CONFIG["active"] > 0:
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
                _EE_CONFIG["key"] = None
                raise ProviderError(
                    f"GEE provider: Earth Engine initialisation failed ({_safe_url(self.endpoint)}, "
                    f"project {self.project!r}): {type(exc).__name__}: {self._redact(exc)}"
                ) from None
            self._widen_connection_pool(ee)
            _EE_CONFIG["key"] = key
            log.info("Earth Engine initialised: endpoint %s, project %s, auth %s",
                     _safe_url(self.endpoint), self.project, self._auth_kind)

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
        delay = random.uniform(delay / 2.0, delay) if delay > 0 else 0.0
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    def _call(self, kind: str, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Run one API call under the concurrency and rate limits, retrying transient errors.

        Returns (result, attempts). Raises _SplitNeeded or _RequestFailed.
        """
        attempt = 0
        while True:
            attempt += 1
            with self._slots:
                waited = self._bucket.acquire()
                self._stats.enter(waited)
                self._stats.add("requests")
                self._stats.add(f"{kind}_requests")
                try:
                    return fn(), attempt
                except Exception as exc:  # classified below, outside the slot
                    error = exc
                finally:
                    self._stats.leave()
            status, retry_after = _http_details(error)
            message = self._redact(f"{type(error).__name__}: {error}")
            what = f"HTTP {status}" if status is not None else "no HTTP answer"
            transient = False
            if status == 429:
                self._stats.add("throttled")
                transient = True
            elif status is not None and _SPLIT_RE.search(message):
                self._stats.add("too_large")
                raise _SplitNeeded(f"{what}: {message}")
            elif status is not None and status >= 500:
                self._stats.add("server_errors")
                transient = True
            elif status is None and _is_network_error(error):
                transient = True
            if transient and attempt <= self.max_retries:
                self._stats.add("retries")
                delay = self._backoff(attempt, retry_after)
                log.debug("%s request: %s; retry %d/%d in %.3f s", kind, what, attempt,
                          self.max_retries, delay)
                if delay > 0:
                    time.sleep(delay)
                continue
            self._stats.add("failures")
            tries = f"after {attempt} attempt(s)" if transient else "(not retryable)"
            raise _RequestFailed(f"{kind} request failed {tries}: {what}: {message}")

    def _scene_ids(self, run: _Run, tiles: Sequence[_Tile]) -> list[list[list[str]]]:
        ee = run.ee
        expr = run.scene_query(tiles)
        result, _ = self._call("value", lambda: ee.data.computeValue(expr))
        self._stats.add("value_bytes", len(json.dumps(result, default=str)))
        if not isinstance(result, list) or len(result) != len(tiles):
            raise _RequestFailed(f"unexpected scene query answer ({type(result).__name__})")
        return [[[str(i) for i in (ids or [])] for ids in per_tile] for per_tile in result]

    def _request_pixels(self, run: _Run, window: _Window, variant: str) -> np.ndarray:
        ee = run.ee
        params: dict[str, Any] = {
            "expression": run.pixel_image(window, variant),
            "fileFormat": "NPY",
            "grid": window.grid(),
        }
        if self.workload_tag:
            params["workloadTag"] = self.workload_tag
        raw, _ = self._call("pixel", lambda: ee.data.computePixels(params))
        if not isinstance(raw, (bytes, bytearray)):
            raise _RequestFailed(f"computePixels returned {type(raw).__name__}, expected NPY bytes")
        self._stats.add("bytes", len(raw))
        self._stats.add("pixel_bytes", len(raw))
        return _read_npy(bytes(raw) if not isinstance(raw, bytes) else raw, run.sensor.bands,
                         window.height, window.width)

    def _window_pixels(self, run: _Run, window: _Window, variant: str, depth: int = 0,
                       reason: str | None = None) -> tuple[np.ndarray, int]:
        """Structured pixels of a window, split in halves while too large: (array, splits)."""
        too_big = (_request_bytes(window.pixels, run.sensor.band_bytes) > self.max_request_bytes
                   or max(window.width, window.height) > EE_MAX_GRID_PX)
        if not too_big and reason is None:
            try:
                return self._request_pixels(run, window, variant), 0
            except _SplitNeeded as exc:
                reason = str(exc)
        if depth >= _MAX_PIXEL_SPLIT_DEPTH or max(window.width, window.height) < 2:
            raise _RequestFailed(f"request still too large after {depth} split(s): "
                                 f"{reason or 'over the size limit'}")
        self._stats.add("splits")
        a, b, axis = window.halves()
        pa, sa = self._window_pixels(run, a, variant, depth + 1)
        pb, sb = self._window_pixels(run, b, variant, depth + 1)
        return np.concatenate([pa, pb], axis=axis), 1 + sa + sb

    # ---- blocks ---------------------------------------------------------------------------------

    def _block_pixels(self, run: _Run, block: _Block, variant: str) -> dict[str, Any]:
        """tile_id -> (data, valid, info) or a failure reason (str)."""
        n = len(block.cells)
        too_big = _request_bytes(block.window.pixels, run.sensor.band_bytes) > self.max_request_bytes
        split_reason: str | None = None
        if n > 1 and too_big:
            split_reason = "over the size limit"
        elif n > 1:
            try:
                pixels = self._request_pixels(run, block.window, variant)
            except _SplitNeeded as exc:
                split_reason = str(exc)
            except _RequestFailed as exc:
                return {t.tile_id: str(exc) for t in block.tiles}
            else:
                return self._cut(block, pixels, run.sensor.bands,
                                 {"tiles_in_request": n, "pixel_splits": 0})
        if split_reason is not None:
            self._stats.add("splits")
            a, b = block.split()
            log.debug("splitting a %d-tile request: %s", n, split_reason)
            return {**self._block_pixels(run, a, variant), **self._block_pixels(run, b, variant)}
        try:
            pixels, splits = self._window_pixels(run, block.window, variant)
        except (_RequestFailed, _SplitNeeded) as exc:
            return {block.tiles[0].tile_id: str(exc)}
        return self._cut(block, pixels, run.sensor.bands, {"tiles_in_request": 1, "pixel_splits": splits})

    @staticmethod
    def _cut(block: _Block, pixels: np.ndarray, bands: Sequence[str], info: dict) -> dict[str, Any]:
        out: dict[str, Any] = {}
        s = block.size
        for tile, c, r in block.cells:
            data, valid = _tile_arrays(pixels, bands, slice(r * s, (r + 1) * s), slice(c * s, (c + 1) * s))
            out[tile.tile_id] = (data, valid, info)
        return out

    def _process_block(self, run: _Run, block: _Block) -> list[Patch]:
        """Scene query, then pixels, for one planned block; never raises."""
        sensor = run.sensor
        results: dict[str, Patch] = {}
        try:
            try:
                ids = self._scene_ids(run, block.tiles)
            except _SplitNeeded as exc:
                if len(block.cells) < 2:
                    raise _RequestFailed(f"scene query failed: {exc}") from None
                self._stats.add("splits")
                a, b = block.split()
                return self._process_block(run, a) + self._process_block(run, b)
            variants: dict[str, list[_Tile]] = defaultdict(list)
            scene_info: dict[str, dict[str, Any]] = {}
            for tile, lists in zip(block.tiles, ids):
                variant, scene_ids, relaxed = self._choose_variant(sensor, lists)
                scene_info[tile.tile_id] = {"scene_ids": scene_ids, "iw_relaxed": relaxed,
                                            "variant": variant}
                variants[variant].append(tile)
            for tile in variants.pop("none", []):
                results[tile.tile_id] = self._patch(run, tile, "no_data", scene_info[tile.tile_id],
                                                    reason="no image matches the filters for this tile "
                                                           "and time window")
            for variant, vtiles in variants.items():
                for sub in plan_requests(vtiles, band_bytes=sensor.band_bytes,
                                         max_request_bytes=self.max_request_bytes,
                                         max_tiles=run.max_tiles):
                    for tid, res in self._block_pixels(run, sub, variant).items():
                        tile = next(t for t in sub.tiles if t.tile_id == tid)
                        info = scene_info[tid]
                        if isinstance(res, str):
                            results[tid] = self._patch(run, tile, "failed", info, reason=res)
                            continue
                        data, valid, req = res
                        if not valid.any():
                            results[tid] = self._patch(run, tile, "no_data", info, request=req,
                                                       reason="every pixel is masked in the composite")
                        else:
                            results[tid] = self._patch(run, tile, "ok", info, data=data, valid=valid,
                                                       request=req)
        except _RequestFailed as exc:
            reason = str(exc)
            for tile in block.tiles:
                results.setdefault(tile.tile_id, self._patch(run, tile, "failed", None, reason=reason))
        except Exception as exc:  # a bug or an unexpected answer: fail these tiles, not the run
            reason = self._redact(f"{type(exc).__name__}: {exc}")
            log.warning("GEE block of %d tile(s) failed: %s", len(block.cells), reason)
            for tile in block.tiles:
                results.setdefault(tile.tile_id, self._patch(run, tile, "failed", None, reason=reason))
        return [results[t.tile_id] for t in block.tiles]

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

    def _patch(self, run: _Run, tile: _Tile, status: str, info: dict[str, Any] | None, *,
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
            "crs": f"EPSG:{tile.epsg}",
            "transform": tile.transform,
            "size_px": tile.size,
            "scale_m": tile.scale,
            "resampling": "none (tile's own UTM grid); Earth Engine nearest neighbour for coarser bands",
            "fill_value": s.fill_value,
        }
        if s.modality == "s2":
            meta["cloudy_pct"] = s.cloudy_pct
        relaxed = bool(info and info.get("iw_relaxed"))
        if info is not None:
            meta["scene_ids"] = list(info["scene_ids"])
            meta["image_count"] = len(info["scene_ids"])
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
        return Patch(tile.tile_id, np.zeros((len(s.bands), tile.size, tile.size), np.float32),
                     np.zeros((tile.size, tile.size), bool), status, meta)  # type: ignore[arg-type]

    # ---- the run --------------------------------------------------------------------------------

    def _generate(self, rows: list[Any], sensor: _Sensor, start: str, end: str) -> Iterator[Patch]:
        t_start = time.perf_counter()
        n_bands = len(sensor.bands)
        tiles: list[_Tile] = []
        copies: dict[str, int] = defaultdict(int)
        bad: list[Patch] = []
        for i, row in enumerate(rows):
            try:
                tile = _Tile.from_row(row)
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
        with _EE_LOCK:
            _EE_CONFIG["active"] += 1
        try:
            fill_slots = math.ceil(len(tiles) / self.max_concurrent_requests)
            max_tiles = max(1, min(fill_slots, self.max_tiles_per_request or fill_slots))
            run = _Run(sensor, start, end, max_tiles)
            blocks = plan_requests(tiles, band_bytes=sensor.band_bytes,
                                   max_request_bytes=self.max_request_bytes, max_tiles=max_tiles)
            log.info("GEE %s: %d tile(s) in %d request block(s) (<= %d tiles each), %s .. %s",
                     sensor.modality, len(tiles), len(blocks), max_tiles, start, end)
            yield from self._run_blocks(run, blocks, copies)
        finally:
            with _EE_LOCK:
                _EE_CONFIG["active"] -= 1
            self._stats.add_fetch_time(time.perf_counter() - t_start)
            snap = self._stats.snapshot()
            log.info("GEE fetch: tiles ok %d / no_data %d / failed %d; requests %d, retries %d, "
                     "%.1f MB", snap["tiles_ok"], snap["tiles_no_data"], snap["tiles_failed"],
                     snap["requests"], snap["retries"], snap["bytes"] / 1e6)

    def _run_blocks(self, run: _Run, blocks: list[_Block], copies: Mapping[str, int]) -> Iterator[Patch]:
        pool = cf.ThreadPoolExecutor(max_workers=self.max_concurrent_requests,
                                     thread_name_prefix="gee-fetch")
        try:
            pending: dict[cf.Future, _Block] = {}
            queue = iter(blocks)
            # Bounded: finished blocks wait here for the consumer (memory ~ window x request).
            window = self.max_concurrent_requests + 2

            def fill() -> None:
                while len(pending) < window:
                    block = next(queue, None)
                    if block is None:
                        return
                    pending[pool.submit(self._process_block, run, block)] = block

            fill()
            while pending:
                done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    block = pending.pop(fut)
                    try:
                        patches = fut.result()
                    except Exception as exc:  # pragma: no cover - _process_block catches
                        reason = self._redact(f"{type(exc).__name__}: {exc}")
                        patches = [self._patch(run, t, "failed", None, reason=reason) for t in block.tiles]
                    for patch in patches:
                        for k in range(copies.get(patch.tile_id, 1)):
                            out = patch if k == 0 else dataclasses.replace(patch, meta=dict(patch.meta))
                            self._count(out)
                            yield out
                fill()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _count(self, patch: Patch) -> None:
        self._stats.add("tiles")
        self._stats.add(f"tiles_{patch.status}")
        if patch.status == "failed":
            log.warning("GEE tile %s failed: %s", patch.tile_id, patch.meta.get("reason"))


def _read_npy(raw: bytes, bands: Sequence[str], height: int, width: int) -> np.ndarray:
    """NPY bytes -> the structured array [H, W] (one field per band), a view of ``raw`` (no copy)."""
    try:
        buf = io.BytesIO(raw)
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
            shape, fortran, dtype = arr.shape, False, arr.dtype
        if dtype.hasobject:
            raise ValueError("object fields")
        count = int(np.prod(shape)) if shape else 1
        if version in ((1, 0), (2, 0)):
            arr = np.frombuffer(raw, dtype=dtype, count=count, offset=buf.tell())
            arr = arr.reshape(shape, order="F" if fortran else "C")
    except Exception as exc:
        raise _RequestFailed(f"undecodable NPY answer: {type(exc).__name__}: {exc}") from None
    names = arr.dtype.names or ()
    missing = [b for b in bands if b not in names]
    if missing:
        raise _RequestFailed(f"NPY answer lacks band(s) {missing} (has {list(names)})")
    if arr.shape != (height, width):
        raise _RequestFailed(f"NPY answer has shape {arr.shape}, expected {(height, width)}")
    return arr


def _tile_arrays(arr: np.ndarray, bands: Sequence[str], ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """float32 [C, h, w] and bool [h, w] of one window of the structured array (copies)."""
    part = arr[ys, xs]
    h, w = part.shape
    data = np.empty((len(bands), h, w), dtype=np.float32)
    for i, b in enumerate(bands):
        data[i] = part[b]
    names = arr.dtype.names or ()
    valid = part[VALID_BAND] > 0 if VALID_BAND in names else np.ones((h, w), dtype=bool)
    valid &= np.isfinite(data).all(axis=0)
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid
