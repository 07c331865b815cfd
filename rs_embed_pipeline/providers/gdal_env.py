"""GDAL settings for reading COGs over HTTP, in one place (applied by the STAC providers, recorded
in their ``stats()`` and so in every patches materialization's ``provider_stats``).

Why each one:

* ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: no directory listing (one request per sidecar
  probe otherwise) when a COG is opened.
* ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``: only ``.tif`` files are fetched through /vsicurl/, so no
  request for ``.aux.xml`` / ``.ovr`` sidecars.
* ``GDAL_HTTP_MULTIPLEX=YES`` + ``GDAL_HTTP_VERSION=2``: the ranged requests of one file share an
  HTTP/2 connection (servers without HTTP/2 fall back to 1.1 keep-alive).
* ``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES=YES``: adjacent internal tiles of one row are fetched in one
  request (a block read touches whole rows of COG tiles); under ``GDAL_HTTP_MULTIRANGE=SERIAL``
  (below) the cached reader merges them the same way.
* ``CPL_VSIL_CURL_CACHE_SIZE`` / ``VSI_CACHE``: downloaded ranges stay cached, so neighbouring
  reads of one block never fetch the same COG tile twice; ``GDAL_CACHEMAX`` the decoded block cache.
* ``GDAL_NUM_THREADS=1`` and ``GDAL_HTTP_MULTIRANGE=SERIAL``: the provider's own thread pool
  (``max_workers``) already reads many assets at once. GDAL's in-read threads and its parallel
  multi-range fetch both download the COG tiles of a read *past* the curl cache, so the next block
  that touches the same COG tiles downloaded them again (measured with
  ``benchmarks/bench_fetch.py --http``: 182 requests and 1.33x the minimum bytes with
  ``ALL_CPUS`` / the parallel default, 150 and 1.13x with these two). Serial ranges go through
  the cache, and consecutive tiles still merge into one request.
* ``CPL_VSIL_CURL_USE_HEAD`` stays at GDAL's default (YES) on purpose: GDAL 3.10 checks that a
  file exists when it opens it, with a body-less HEAD; with ``NO`` it sends a GET *without* a
  Range instead and drops the connection after the headers, by which time the server has already
  sent part of the file (measured with ``benchmarks/bench_fetch.py --http``: the same 182
  requests, 2.60x the minimum bytes instead of 1.33x). The HEAD costs a request, not bytes.
* ``GDAL_HTTP_MAX_RETRY`` / ``GDAL_HTTP_RETRY_DELAY``: transient HTTP errors (429, 5xx) are
  retried by GDAL itself, below the provider's block retries.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

__all__ = ["GDAL_HTTP_OPTIONS", "gdal_options"]

GDAL_HTTP_OPTIONS: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "CPL_VSIL_CURL_CACHE_SIZE": str(256 * 1024 * 1024),
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_CACHEMAX": 512,  # MB; rasterio sets this one through GDALSetCacheMax64 (an int)
    "GDAL_NUM_THREADS": "1",
    "GDAL_HTTP_MULTIRANGE": "SERIAL",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
}


def gdal_options(overrides: Mapping[str, Any] | None = None) -> dict[str, str | int]:
    """The options above with the caller's overrides (strings as GDAL takes them; GDAL_CACHEMAX
    an int)."""
    out = dict(GDAL_HTTP_OPTIONS)
    for k, v in (overrides or {}).items():
        if not isinstance(k, str) or not k.isupper():
            raise ValueError(f"GDAL option names are upper-case config keys, got {k!r}")
        if k == "GDAL_CACHEMAX":
            out[k] = int(v)
        else:
            out[k] = "YES" if v is True else "NO" if v is False else str(v)
    return out
