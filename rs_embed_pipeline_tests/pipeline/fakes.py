"""Imagery resources for tests and benchmarks: a fast pixel synthesizer and a fault injector.

* :class:`SyntheticPixelsImagery` makes deterministic S2 / S1 pixels per tile and window without
  reading any file (a function of the tile id, the window and the band): thousands of tiles per
  minute, for the kill / concurrency tests and ``benchmarks/bench_pipeline.py``. Its metadata says
  ``synthetic: true`` like the synthetic catalog's.
* :class:`FaultyImagery` wraps the :class:`~rs_embed_pipeline.providers.LocalStacProvider` (a static
  catalog; or the synthesizer when no catalog is given) and fails requests on purpose: a share of
  attempts transiently (``transient_failure_rate``, decided by a hash of tile, window and attempt,
  so runs are reproducible), and some tiles on every attempt (``permanent_failures``). What it
  injected is in ``stats()``, which the patches asset records as ``provider_stats``.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import Any
from collections.abc import Iterable, Iterator

import numpy as np
from pydantic import Field

from rs_embed_pipeline.providers.base import S1_BANDS, S2_BANDS, Patch
from rs_embed_pipeline.providers.sensor_options import SensorOptions
from rs_embed_pipeline.orchestration.resources import ImageryResource


def _seed(*parts: Any) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _rows(tiles: Any) -> list[dict[str, Any]]:
    if hasattr(tiles, "to_dict"):
        return tiles.to_dict("records")
    return [dict(t) for t in tiles]


class SyntheticPixelsProvider:
    """Deterministic pixels, no I/O: integer DN about 300-4000 for S2 (a smooth field plus
    texture per band), linear power 0.01-0.5 for S1."""

    name = "synthetic_pixels"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = float(delay_s)

    def fetch_patches(self, tiles: Any, start: str, end: str, modality: str, bands: Iterable[str] | None = None,
                      *, options: SensorOptions | None = None, **sensor_options: Any) -> Iterator[Patch]:
        band_list = list(bands or (S2_BANDS if modality == "s2" else S1_BANDS))
        composite = SensorOptions.for_fetch(modality, options, sensor_options).composite
        for row in _rows(tiles):
            if self.delay_s:
                time.sleep(self.delay_s)
            tid, size = str(row["tile_id"]), int(row["size_px"])
            rng = np.random.default_rng(_seed(tid, start, modality))
            ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
            field = (ramp[None, :] + ramp[:, None]) * 0.5
            data = np.empty((len(band_list), size, size), dtype=np.float32)
            for b, band in enumerate(band_list):
                if modality == "s2":  # integer DN, like the real products: a field plus texture
                    noise = rng.integers(0, 256, size=(size, size), dtype=np.int16)
                    data[b] = np.round(300.0 + 2500.0 * field * (1 + (_seed(band) % 5) / 10)) + noise
                else:
                    data[b] = 0.01 + 0.3 * field + 0.2 * rng.random((size, size), dtype=np.float32)
            meta = {"provider": self.name, "synthetic": True, "start": start, "end": end,
                    "scene_ids": [f"synthetic-{modality}-{start}"], "image_count": 1,
                    "composite": composite}
            yield Patch(tid, np.clip(data, 0, 10000), np.ones((size, size), dtype=bool), "ok", meta)

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "collections": {"s2": "synthetic-pixels-s2", "s1": "synthetic-pixels-s1"},
                "units": {"s2": "DN (reflectance x 10000)", "s1": "linear sigma0 power"}}

    def stats(self) -> dict[str, Any]:
        return {}  # no threads, retries or requests to report (PatchProvider.stats)


class SyntheticPixelsImagery(ImageryResource):
    delay_s: float = Field(default=0.0, description="Sleep per tile (emulates a slow provider).")
    provider_name: str = "synthetic_pixels"

    def build(self, fetch_workers: int | None = None) -> SyntheticPixelsProvider:
        return SyntheticPixelsProvider(self.delay_s)


class FaultyProvider:
    """Wraps a provider; fails chosen attempts before they reach it."""

    def __init__(self, inner: Any, transient_failure_rate: float, permanent_failures: Iterable[str], seed: int):
        self.inner = inner
        self.name = getattr(inner, "name", "faulty")
        self.rate = float(transient_failure_rate)
        self.permanent = set(permanent_failures)
        self.seed = seed
        self._attempts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "transient_failures": 0, "permanent_failures": 0}

    def _fails(self, tid: str, start: str, modality: str) -> str | None:
        with self._lock:
            key = (tid, start, modality)
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            self.counts["requests"] += 1
            if tid in self.permanent:
                self.counts["permanent_failures"] += 1
                return "injected permanent failure: HTTP 400 tile outside the product footprint"
            u = _seed(self.seed, tid, start, modality, attempt) / 2**32
            if u < self.rate:
                self.counts["transient_failures"] += 1
                return f"injected transient failure: HTTP 429 quota exceeded (attempt {attempt + 1})"
            return None

    def fetch_patches(self, tiles: Any, start: str, end: str, modality: str, bands: Iterable[str] | None = None,
                      *, options: SensorOptions | None = None, **sensor_options: Any) -> Iterator[Patch]:
        band_list = list(bands or (S2_BANDS if modality == "s2" else S1_BANDS))
        passed = []
        rows = _rows(tiles)
        for i, row in enumerate(rows):
            reason = self._fails(str(row["tile_id"]), start, modality)
            if reason is None:
                passed.append(i)
            else:
                yield Patch.empty(str(row["tile_id"]), len(band_list), int(row["size_px"]), "failed",
                                  provider=self.name, reason=reason)
        if passed:
            subset = tiles.iloc[passed] if hasattr(tiles, "iloc") else [rows[i] for i in passed]
            yield from self.inner.fetch_patches(subset, start, end, modality, bands=band_list, options=options,
                                                **sensor_options)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()  # injected faults do not shape the pixels of the tiles that succeed

    def stats(self) -> dict[str, Any]:
        return dict(self.counts)


class FaultyImagery(ImageryResource):
    catalog_path: str | None = Field(default=None, description="LocalStac catalog; None: synthesized pixels.")
    transient_failure_rate: float = 0.0
    permanent_failures: list[str] = Field(default_factory=list)
    seed: int = 0
    provider_name: str = "local_stac"

    def build(self, fetch_workers: int | None = None) -> FaultyProvider:
        if self.catalog_path:
            from rs_embed_pipeline.providers import LocalStacProvider

            inner = LocalStacProvider(self.catalog_path, max_workers=fetch_workers or 4)
        else:
            inner = SyntheticPixelsProvider()
        return FaultyProvider(inner, self.transient_failure_rate, self.permanent_failures, self.seed)
