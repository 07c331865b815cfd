"""One patches run: fetch the tiles of every tile size into their stores, then tally what happened.

:func:`fetch_into_stores` fetches one partition: the tiles not done yet (``pending``, ``failed``)
of every tile size in ONE provider call per round (block-reading providers then read each scene
pixel once for all sizes), retrying the failed ones in rounds with backoff
(:class:`FetchRun`), while :class:`PatchWriter` inspects and writes the patches on background
threads. :class:`PatchTally` adds up the partitions of a run (a backfill run covers several):
tile statuses per partition and store, the failure budget and the run's totals. The patches asset
(``assets/patches.py``) turns the tally into metadata and checks.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rs_embed_pipeline.core.inspection import inspect_patch, summarize
from rs_embed_pipeline.providers.base import Patch, PatchProvider, backoff_s
from rs_embed_pipeline.providers.sensor_options import SensorOptions
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline.core.vocabulary import TILE_STATUSES

WRITE_BATCH = 8  # patches written per store call
WRITE_THREADS = 2  # batches inspected and written at the same time (different tiles: independent)
WRITE_DEPTH = 2  # batches waiting beyond those, while the provider fetches the next ones
UNANSWERED = "the provider returned no patch for this tile"


class PatchWriter:
    """Inspects and writes patches on a background thread, :data:`WRITE_BATCH` at a time (one
    store call per array per batch: arrays, then provenance, then statuses), while the provider
    fetches the next ones; at most :data:`WRITE_DEPTH` batches wait, so memory stays bounded."""

    def __init__(self, store: TileStore, modality: str, n_bands: int, inspect: bool, fill_value: float):
        self.store, self.modality, self.n_bands = store, modality, n_bands
        self.inspect, self.fill_value = inspect, fill_value
        self.synthetic = bool(store.group.attrs.get("synthetic_imagery", False))
        self.encoding = store.encoding("data")  # uint16 codes for S2 DN (stores.patch_encoding)
        self.checks: list[dict[str, Any]] = []
        self._items: list[tuple[int, Patch, dict[str, Any]]] = []
        self._futures: collections.deque[cf.Future[None]] = collections.deque()
        self._pool = cf.ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="patch-write")
        self._lock = threading.Lock()

    def add(self, index: int, patch: Patch, meta: dict[str, Any]) -> None:
        self._items.append((index, patch, meta))
        if len(self._items) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._items:
            self._futures.append(self._pool.submit(self._write, self._items))
            self._items = []
        while len(self._futures) > WRITE_THREADS + WRITE_DEPTH:
            self._futures.popleft().result()

    def close(self) -> None:
        try:
            self.flush()
            while self._futures:
                self._futures.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _write(self, items: list[tuple[int, Patch, dict[str, Any]]]) -> None:
        for _, patch, meta in items:
            meta["valid_fraction"] = float(np.mean(patch.valid)) if patch.valid.size else 0.0
            if self.inspect and patch.status == "ok":
                meta["input_check"] = inspect_patch(patch.data, patch.valid, self.modality,
                                                    expected_channels=self.n_bands, fill_value=self.fill_value)
                with self._lock:
                    self.checks.append({"tile_id": patch.tile_id, **meta["input_check"]})
            if meta.get("synthetic"):
                with self._lock:
                    if not self.synthetic:
                        # Any synthetic pixel labels the whole store (and everything built from
                        # it) synthetic; the label is durable before a synthetic tile is marked.
                        self.store.group.attrs["synthetic_imagery"] = True
                        self.synthetic = True
        codes, adjusted = self.encoding.encode(np.stack([p.data.astype(np.float32, copy=False) for _, p, _ in items]))
        for (_, _, meta), n in zip(items, adjusted.tolist()):
            if n:  # clamped into the codes' range or rounded to a half DN (stores.patch_encoding)
                meta["encoding_adjusted_px"] = int(n)
        self.store.write_tiles(
            [i for i, _, _ in items], [p.status for _, p, _ in items], [m for _, _, m in items],
            data=codes,
            valid=np.stack([p.valid for _, p, _ in items]),
        )


@dataclasses.dataclass(frozen=True)
class SizeResult:
    """What one fetch did in the store of one tile size."""

    fetched: int                         # tiles requested (pending or failed before the fetch)
    synthetic: bool                      # the store holds synthetic pixels
    inspection: dict[str, Any]           # inspection.summarize of the patches fetched now
    failed: list[dict[str, Any]]         # {tile_id, reason, attempts} of the tiles failed for good


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_into_stores` did for one partition, in total and per tile size."""

    fetched: int
    fetch_s: float
    synthetic: bool
    retries: int     # tile requests repeated after a failure
    recovered: int   # tiles that failed, then succeeded on a retry
    per_size: dict[int, SizeResult]


def fetch_into_stores(
    provider: PatchProvider,
    stores: Mapping[int, TileStore],
    tiles: pd.DataFrame,
    *,
    start: str,
    end: str,
    modality: str,
    bands: Sequence[str],
    sensor_options: SensorOptions,
    inspect: bool = False,
    tile_retries: int = 0,
    retry_backoff_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Fetch the tiles not done yet (``pending``, ``failed``) of every tile size in ONE provider
    call per round, and write each patch into the store of its size as it arrives (small batches,
    on background threads: :class:`PatchWriter`).

    ``stores``: tile size -> store; ``tiles``: tile_grid rows of those sizes. A failed tile is not
    written until its last attempt: it is requested again, up to ``tile_retries`` more times,
    ``retry_backoff_s * 2**round`` (x0.5-1.5 jitter) apart. A tile the provider never answered for
    is recorded as failed (never left silently pending). ``inspect``: run the input inspection on
    every ok patch (``tile_meta["input_check"]``). ``sensor_options``: parsed (the imagery
    resource's), handed to the provider as they are (``fetch_patches(..., options=...)``)."""
    run = FetchRun(provider, stores, tiles, modality=modality, bands=bands, inspect=inspect,
                   fill_value=sensor_options.fill_value)
    t0 = time.perf_counter()
    try:
        run.rounds(start=start, end=end, sensor_options=sensor_options, tile_retries=tile_retries,
                   retry_backoff_s=retry_backoff_s, sleep=sleep)
    finally:
        run.close()
    run.record_unanswered()
    fetch_s = round(time.perf_counter() - t0, 3)
    per_size = {size: run.size_result(size) for size in stores}
    return FetchResult(fetched=sum(p.fetched for p in per_size.values()), fetch_s=fetch_s,
                       synthetic=any(p.synthetic for p in per_size.values()),
                       retries=run.retried, recovered=run.recovered, per_size=per_size)


class FetchRun:
    """The state of one fetch over the stores of every tile size: what is to do, attempts and
    last failure reasons per tile, the tiles the provider answered, the writers."""

    def __init__(self, provider: PatchProvider, stores: Mapping[int, TileStore], tiles: pd.DataFrame, *,
                 modality: str, bands: Sequence[str], inspect: bool, fill_value: float):
        self.provider, self.stores, self.tiles = provider, stores, tiles
        self.modality, self.bands = modality, tuple(bands)
        self.where = {tid: (size, i) for size, st in stores.items() for i, tid in enumerate(st.tile_ids)}
        todo = {(size, int(i)) for size, st in stores.items()
                for i in st.indices_with_status("pending", "failed").tolist()}
        self.rows = tiles[tiles["tile_id"].map(self.where).isin(todo)]
        self.writers = {size: PatchWriter(st, modality, len(self.bands), inspect, fill_value)
                        for size, st in stores.items()}
        self.attempts: dict[str, int] = {}
        self.reasons: dict[str, str] = {}
        self.answered: set[str] = set()
        self.retried = self.recovered = 0

    def rounds(self, *, start: str, end: str, sensor_options: SensorOptions, tile_retries: int,
               retry_backoff_s: float, sleep: Callable[[float], None]) -> None:
        """The first request of every tile, then retry rounds for the failed ones (backoff, jitter)."""
        batch = self.rows
        last = max(0, int(tile_retries))
        for round_ in range(last + 1):
            failed_now: list[str] = []
            for patch in self.provider.fetch_patches(batch, start=start, end=end, modality=self.modality,
                                                     bands=list(self.bands), options=sensor_options):
                if not self._take(patch, final=round_ == last):
                    failed_now.append(patch.tile_id)  # retried below; its status stays as it was
            if not failed_now:
                return
            self.retried += len(failed_now)
            for w in self.writers.values():
                w.flush()
            sleep(backoff_s(retry_backoff_s, round_))
            batch = self.tiles[self.tiles["tile_id"].isin(failed_now)]

    def _take(self, patch: Patch, *, final: bool) -> bool:
        """Hand the patch to its store's writer; False: a failure to request again (not written)."""
        tid = patch.tile_id
        self.attempts[tid] = self.attempts.get(tid, 0) + 1
        self.answered.add(tid)
        meta = dict(patch.meta)
        if patch.status == "failed":
            self.reasons[tid] = str(meta.get("reason", "failed"))
            if not final:
                return False
            meta["attempts"] = self.attempts[tid]
        elif tid in self.reasons:
            self.recovered += 1
            meta["attempts"] = self.attempts[tid]
            meta["earlier_failure"] = self.reasons.pop(tid)
        size, index = self.where[tid]
        self.writers[size].add(index, patch, meta)
        return True

    def close(self) -> None:
        errors = []
        for w in self.writers.values():
            try:
                w.close()
            except Exception as exc:  # close every writer, then raise the first error
                errors.append(exc)
        if errors:
            raise errors[0]

    def record_unanswered(self) -> None:
        for tid in self.rows["tile_id"]:
            if tid not in self.answered:
                self.reasons[tid] = UNANSWERED
                size, index = self.where[tid]
                self.stores[size].write_tile(index, "failed", {"reason": self.reasons[tid],
                                                               "attempts": self.attempts.get(tid, 0)})

    def size_result(self, size: int) -> SizeResult:
        w = self.writers[size]
        mine = {tid for tid, (s, _) in self.where.items() if s == size}
        return SizeResult(
            fetched=int(self.rows["tile_id"].isin(mine).sum()), synthetic=w.synthetic,
            inspection=summarize(w.checks),
            failed=[{"tile_id": tid, "reason": r, "attempts": self.attempts.get(tid, 0)}
                    for tid, r in self.reasons.items() if tid in mine])


# ------------------------------------------------------------------------------ the run's tally
@dataclasses.dataclass(frozen=True)
class StoreTally:
    """Tile statuses of one partition's store of one tile size, after its fetch."""

    partition: str          # partition key, e.g. "demo|2024-01-01"
    size_px: int
    uri: str
    counts: dict[str, int]  # every TILE_STATUSES name -> tiles

    @property
    def label(self) -> str:
        return f"{self.partition} p{self.size_px}"


@dataclasses.dataclass
class PatchTally:
    """What one patches run did over its partitions (and their stores of every tile size):
    the accumulators of the asset, in one place."""

    stores: list[StoreTally] = dataclasses.field(default_factory=list)
    fetched: int = 0
    fetch_s: float = 0.0
    synthetic: bool = False
    retries: int = 0
    recovered: int = 0
    inspections: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failed_tiles: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, partition: str, stores: Mapping[int, TileStore], result: FetchResult) -> list[StoreTally]:
        """Count one partition's fetch; returns its stores' tallies (in tile-size order)."""
        self.fetched += result.fetched
        self.fetch_s += result.fetch_s
        self.synthetic = self.synthetic or result.synthetic
        self.retries += result.retries
        self.recovered += result.recovered
        added = []
        for size, store in stores.items():
            per = result.per_size[size]
            self.inspections.append(per.inspection)
            self.failed_tiles.extend({"partition": partition, "size_px": size, **f} for f in per.failed)
            added.append(StoreTally(partition, size, store.uri, store.status_counts()))
        self.stores.extend(added)
        return added

    def totals(self) -> dict[str, int]:
        """Tiles per status (every TILE_STATUSES name) over the whole run."""
        return {k: sum(s.counts[k] for s in self.stores) for k in TILE_STATUSES}

    def per_partition(self) -> dict[str, dict[str, int]]:
        """Tiles per status of each partition over its stores of every tile size, in run order."""
        out: dict[str, dict[str, int]] = {}
        for s in self.stores:
            agg = out.setdefault(s.partition, dict.fromkeys(TILE_STATUSES, 0))
            for k in TILE_STATUSES:
                agg[k] += s.counts[k]
        return out

    def first_uri(self, partition: str) -> str:
        return next(s.uri for s in self.stores if s.partition == partition)

    def over_budget(self, max_failure_fraction: float) -> dict[str, tuple[int, int]]:
        """Partitions with more than ``max_failure_fraction`` of their tiles failed: key -> (failed,
        tiles). The budget holds per partition, over its stores of every tile size."""
        over = {}
        for key, counts in self.per_partition().items():
            failed, tiles = counts["failed"], sum(counts.values())
            if tiles and failed / tiles > max_failure_fraction:
                over[key] = (failed, tiles)
        return over

    def budget_error(self, max_failure_fraction: float, tile_retries: int) -> str | None:
        """Why the run exceeds the failure budget, naming the partitions and the first failures;
        None within budget."""
        over = self.over_budget(max_failure_fraction)
        if not over:
            return None
        return ("; ".join(f"{key}: {f} of {n} tiles failed ({f / n:.1%})" for key, (f, n) in over.items())
                + f" > max_failure_fraction {max_failure_fraction:.1%} after {tile_retries} retries per tile; "
                "they are recorded in the store with their reason and the next run retries only them. "
                "First failures: " + "; ".join(f"{t['tile_id']}: {t['reason']}" for t in self.failed_tiles[:3]))
