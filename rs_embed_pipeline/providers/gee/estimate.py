"""An estimate of the Earth Engine requests and time of a fetch, for build plans.

The figures follow the provider's own request planning (:func:`request_bytes` and the packing cap
of :func:`pack_requests`: as many whole tiles per computePixels request as Earth Engine's 48 MiB
rule allows) and a steady-state model of the client: ``min(concurrency / latency, rate limit)``
requests per second, plus one scene-list query per partition (and at least its round trip and one
pixel request's). Latency is an assumption (Earth
Engine's compute time per request varies with the composite, the scenes and the load), so the
answer is labelled an estimate; the benchmark (``benchmarks/bench_gee.py``) measures how close the
client comes to the ceiling on a given machine (``efficiency``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..base import ProviderError
from .request_blocks import EE_MAX_REQUEST_BYTES, request_bytes

#: The validity band the provider adds to every request (uint8).
_VALID_BAND_BYTES = 1


@dataclasses.dataclass(frozen=True)
class EarthEngineEstimate:
    """Requests and time of fetching ``tiles`` tiles; ``label`` says it is an estimate."""

    tiles: int
    tiles_per_request: int
    pixel_requests: int
    scene_queries: int
    requests: int
    requests_per_tile: float
    requests_per_second: float
    tiles_per_second: float
    seconds: float
    label: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fetch_seconds(requests: float, *, concurrency: int, rate_per_s: float, latency_s: float,
                  efficiency: float = 1.0) -> float:
    """Wall time of ``requests`` Earth Engine requests at steady state, ``min(concurrency / latency,
    rate) x efficiency`` requests per second, and at least two round trips (a partition's scene list
    comes before its pixels); 0 for no request. The build plan's Earth Engine time is this."""
    if requests <= 0:
        return 0.0
    req_per_s = min(concurrency / latency_s, rate_per_s) * efficiency
    return max(requests / req_per_s, 2 * latency_s)


def estimate_fetch(tiles: int, *, size_px: int, bands: int, dtype: str = "float32",
                   concurrency: int = 40, rate_per_s: float = 100.0, latency_s: float = 2.0,
                   partitions: int = 1, efficiency: float = 1.0,
                   max_request_bytes: int = EE_MAX_REQUEST_BYTES) -> EarthEngineEstimate:
    """Earth Engine requests and seconds for ``tiles`` tiles of ``size_px`` px and ``bands`` bands.

    ``dtype``: how the bands travel (the provider sends an S2 mosaic as ``uint16``, an S2 median
    and S1 as ``float32``); ``concurrency`` / ``rate_per_s``: the project's quota (Earth Engine's
    defaults: 40 concurrent requests, 100 requests/s); ``latency_s``: Earth Engine's time per
    request (an assumption); ``partitions``: region x window partitions (one scene-list query
    each); ``efficiency``: the fraction of the ceiling the client reaches (1.0: the ceiling; the
    README gives the measured fraction).
    """
    if tiles < 0:
        raise ProviderError(f"tiles must be >= 0, got {tiles}")
    if size_px < 1 or bands < 1:
        raise ProviderError(f"size_px and bands must be >= 1, got {size_px} and {bands}")
    if dtype not in ("float32", "uint16"):
        raise ProviderError(f"dtype must be one of ['float32', 'uint16'], got {dtype!r}")
    if concurrency < 1 or not rate_per_s > 0 or not latency_s > 0:
        raise ProviderError("concurrency must be >= 1, rate_per_s and latency_s > 0")
    if not 0 < efficiency <= 1:
        raise ProviderError(f"efficiency must be within (0, 1], got {efficiency}")
    band_bytes = (np.dtype(dtype).itemsize,) * bands + (_VALID_BAND_BYTES,)
    per_request = max(1, max_request_bytes // request_bytes(size_px * size_px, band_bytes))
    # the provider's cap for small fetches: every slot gets a block
    per_request = min(per_request, max(1, math.ceil(tiles / concurrency)))
    pixel_requests = math.ceil(tiles / per_request) if tiles else 0
    scene_queries = partitions if tiles else 0
    requests = pixel_requests + scene_queries
    req_per_s = min(concurrency / latency_s, rate_per_s) * efficiency
    seconds = fetch_seconds(requests, concurrency=concurrency, rate_per_s=rate_per_s, latency_s=latency_s,
                            efficiency=efficiency) if tiles else 0.0
    return EarthEngineEstimate(
        tiles=tiles, tiles_per_request=per_request, pixel_requests=pixel_requests,
        scene_queries=scene_queries, requests=requests,
        requests_per_tile=round(requests / tiles, 4) if tiles else 0.0,
        requests_per_second=round(req_per_s, 3),
        tiles_per_second=round(tiles / seconds, 3) if seconds else 0.0,
        seconds=round(seconds, 3),
        label=(f"estimate: {latency_s:g} s per request assumed, {concurrency} concurrent, "
               f"{rate_per_s:g} requests/s, client at {efficiency:.0%} of the ceiling"),
    )
