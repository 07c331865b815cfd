"""Patches: provider pixels per tile, stored once so that no model run ever refetches.

Resume and faults: a run fetches only the tiles that are ``pending`` (never fetched, or killed
before their status was written) or ``failed``; ``ok`` and ``no_data`` tiles are done (``force``
refetches every tile, e.g. to pick up scenes published late). A tile that fails is retried in
the same run, ``tile_retries`` times with exponential backoff and jitter; what still fails is
recorded as ``failed`` with its reason and attempt count, and the partition fails only when more
than ``ImageryResource.max_failure_fraction`` of its tiles failed. The store fingerprint covers
the inputs (tile ids, region, window), the provider settings that shape pixels (not its thread
count or retry budget) and the code version.
"""


import collections
import concurrent.futures as cf
import hashlib
import threading
import time
from typing import Any
from collections.abc import Callable

import dagster as dg
import numpy as np

from rs_embed_pipeline.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.executors import STEP_RETRY_POLICY
from rs_embed_pipeline.fingerprint import fingerprint, numeric_provider_settings
from rs_embed_pipeline.inspection import inspect_patch, summarize
from rs_embed_pipeline.metadata import add_partition_metadata, json_value, path_value, status_table
from rs_embed_pipeline.partitions import BACKFILL_POLICY, region_windows
from rs_embed_pipeline.providers.base import backoff_s
from rs_embed_pipeline.resources import CODE_VERSION, ImageryResource, PipelineStore, TerraFMResource, ThorResource
from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore
from rs_embed_pipeline.vocabulary import MODALITY_BANDS, PATCH_STATUSES, PROVIDER_UNITS, S1_POLARISATIONS, TILE_STATUSES

BANDS = MODALITY_BANDS
UNITS = {"s2": PROVIDER_UNITS["s2"], "s1": f"{PROVIDER_UNITS['s1']}, {' and '.join(S1_POLARISATIONS)}"}


MAX_FAILED_TILES_IN_METADATA = 50
WRITE_BATCH = 8  # patches written per store call
WRITE_THREADS = 2  # batches inspected and written at the same time (different tiles: independent)
WRITE_DEPTH = 2  # batches waiting beyond those, while the provider fetches the next ones


class PatchesConfig(dg.Config):
    rebuild: bool = False
    """Accept an existing store built with other settings and refetch every tile."""
    force: bool = False
    """Refetch every tile even though the store's settings match (e.g. scenes published late)."""
    tile_retries: int = 3
    """Times a failed tile is requested again within the run (exponential backoff, jitter)."""
    retry_backoff_s: float = 2.0
    """Wait before the first retry round; doubles each round (x0.5-1.5 jitter)."""


def patches_fingerprint(settings: dict[str, Any]) -> str:
    """The digest of what shaped a patch store's pixels (operational provider settings left out)."""
    return fingerprint({**settings, "provider": numeric_provider_settings(settings.get("provider") or {})})


def tiles_sha256(tiles: Any) -> str:
    """Digest of the tiles a store holds (ids encode zone, size, scale and lattice position)."""
    return hashlib.sha256("\n".join(map(str, tiles["tile_id"])).encode()).hexdigest()


def patch_sizes(modality: str, terrafm: TerraFMResource, thor: ThorResource) -> list[int]:
    """Tile sizes of the models that embed ``modality`` (their ``modalities``; THOR: S2 by default)."""
    sizes = {a.tile_size_px for a in (terrafm, thor) if modality in a.modalities}
    return sorted(sizes or {terrafm.tile_size_px})


def fetch_workers(modality: str, terrafm: TerraFMResource, thor: ThorResource) -> int:
    """Fetch threads: the largest ``fetch_workers`` of the models that embed ``modality``."""
    return max([a.fetch_workers for a in (terrafm, thor) if modality in a.modalities] or [terrafm.fetch_workers])


class _PatchWriter:
    """Inspects and writes patches on a background thread, :data:`WRITE_BATCH` at a time (one
    store call per array per batch: arrays, then provenance, then statuses), while the provider
    fetches the next ones; at most :data:`WRITE_DEPTH` batches wait, so memory stays bounded."""

    def __init__(self, store: TileStore, modality: str, n_bands: int, inspect: bool, fill_value: float):
        self.store, self.modality, self.n_bands = store, modality, n_bands
        self.inspect, self.fill_value = inspect, fill_value
        self.synthetic = bool(store.group.attrs.get("synthetic_imagery", False))
        self.checks: list[dict[str, Any]] = []
        self._items: list[tuple[int, Any, dict[str, Any]]] = []
        self._futures: collections.deque = collections.deque()
        self._pool = cf.ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="patch-write")
        self._lock = threading.Lock()

    def add(self, index: int, patch: Any, meta: dict[str, Any]) -> None:
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

    def _write(self, items: list[tuple[int, Any, dict[str, Any]]]) -> None:
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
        self.store.write_tiles(
            [i for i, _, _ in items], [p.status for _, p, _ in items], [m for _, _, m in items],
            data=np.stack([p.data.astype(np.float32, copy=False) for _, p, _ in items]),
            valid=np.stack([p.valid for _, p, _ in items]),
        )


def fetch_into_stores(
    provider: Any,
    stores: dict[int, TileStore],
    tiles: Any,
    *,
    start: str,
    end: str,
    modality: str,
    bands: tuple[str, ...],
    sensor_options: dict[str, Any],
    inspect: bool = False,
    tile_retries: int = 0,
    retry_backoff_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Fetch the tiles not done yet (``pending``, ``failed``) of every tile size in ONE provider
    call per round (block-reading providers then read each scene pixel once for all sizes), and
    write each patch into the store of its size as it arrives (small batches, on background
    threads: :class:`_PatchWriter`).

    ``stores``: tile size -> store; ``tiles``: tile_grid rows of those sizes. A failed tile is not
    written until its last attempt: it is requested again, up to ``tile_retries`` more times,
    ``retry_backoff_s * 2**round`` (x0.5-1.5 jitter) apart. A tile the provider never answered for
    is recorded as failed (never left silently pending). ``inspect``: run the input inspection on
    every ok patch (``tile_meta["input_check"]``). Returns the totals and ``per_size`` stats."""
    run = _FetchRun(provider, stores, tiles, modality=modality, bands=bands, inspect=inspect,
                    fill_value=float(sensor_options.get("fill_value", 0.0)))
    t0 = time.perf_counter()
    try:
        run.rounds(start=start, end=end, sensor_options=sensor_options, tile_retries=tile_retries,
                   retry_backoff_s=retry_backoff_s, sleep=sleep)
    finally:
        run.close()
    run.record_unanswered()
    fetch_s = round(time.perf_counter() - t0, 3)
    per_size = {size: run.size_stats(size) for size in stores}
    return {"fetched": sum(p["fetched"] for p in per_size.values()), "fetch_s": fetch_s,
            "synthetic": any(p["synthetic"] for p in per_size.values()),
            "retries": run.retried, "recovered": run.recovered, "per_size": per_size}


class _FetchRun:
    """The state of one fetch over the stores of every tile size: what is to do, attempts and
    last failure reasons per tile, the tiles the provider answered, the writers."""

    def __init__(self, provider: Any, stores: dict[int, TileStore], tiles: Any, *, modality: str,
                 bands: tuple[str, ...], inspect: bool, fill_value: float):
        self.provider, self.stores, self.tiles = provider, stores, tiles
        self.modality, self.bands = modality, tuple(bands)
        self.where = {tid: (size, i) for size, st in stores.items() for i, tid in enumerate(st.tile_ids)}
        todo = {(size, int(i)) for size, st in stores.items()
                for i in st.indices_with_status("pending", "failed").tolist()}
        self.rows = tiles[tiles["tile_id"].map(self.where).isin(todo)]
        self.writers = {size: _PatchWriter(st, modality, len(bands), inspect, fill_value)
                        for size, st in stores.items()}
        self.attempts: dict[str, int] = {}
        self.reasons: dict[str, str] = {}
        self.answered: set[str] = set()
        self.retried = self.recovered = 0

    def rounds(self, *, start, end, sensor_options, tile_retries, retry_backoff_s, sleep) -> None:
        """The first request of every tile, then retry rounds for the failed ones (backoff, jitter)."""
        batch = self.rows
        last = max(0, int(tile_retries))
        for round_ in range(last + 1):
            failed_now: list[str] = []
            for patch in self.provider.fetch_patches(batch, start=start, end=end, modality=self.modality,
                                                     bands=list(self.bands), **sensor_options):
                tid = patch.tile_id
                self.attempts[tid] = self.attempts.get(tid, 0) + 1
                self.answered.add(tid)
                meta = dict(patch.meta)
                if patch.status == "failed":
                    self.reasons[tid] = str(meta.get("reason", "failed"))
                    if round_ < last:
                        failed_now.append(tid)  # retried below; its status stays as it was
                        continue
                    meta["attempts"] = self.attempts[tid]
                elif tid in self.reasons:
                    self.recovered += 1
                    meta["attempts"] = self.attempts[tid]
                    meta["earlier_failure"] = self.reasons.pop(tid)
                size, index = self.where[tid]
                self.writers[size].add(index, patch, meta)
            if not failed_now:
                return
            self.retried += len(failed_now)
            for w in self.writers.values():
                w.flush()
            sleep(backoff_s(retry_backoff_s, round_))
            batch = self.tiles[self.tiles["tile_id"].isin(failed_now)]

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
                self.reasons[tid] = "the provider returned no patch for this tile"
                size, index = self.where[tid]
                self.stores[size].write_tile(index, "failed", {"reason": self.reasons[tid],
                                                               "attempts": self.attempts.get(tid, 0)})

    def size_stats(self, size: int) -> dict[str, Any]:
        w = self.writers[size]
        mine = {tid for tid, (s, _) in self.where.items() if s == size}
        return {"fetched": int(self.rows["tile_id"].isin(mine).sum()), "synthetic": w.synthetic,
                "inspection": summarize(w.checks),
                "failed": [{"tile_id": tid, "reason": r, "attempts": self.attempts.get(tid, 0)}
                           for tid, r in self.reasons.items() if tid in mine]}


def build_patches_asset(
    modality: str, partitions_def: dg.PartitionsDefinition, pool: str | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """``pool="earth_engine"`` when the provider is Earth Engine: runs then share one project quota."""
    bands = BANDS[modality]
    name = f"{modality}_patches"
    coverage_check = dg.AssetCheckSpec(
        name="valid_coverage", asset=name,
        description="Share of tiles with pixels (status ok) is at least 50%.",
    )
    inspection_check = dg.AssetCheckSpec(
        name="input_inspection", asset=name, blocking=True,
        description="Every patch fetched is what the models expect: channel count, value range of the "
        "modality's units, fill / NaN fraction, not constant, no unit mismatch (dB where linear is "
        "expected, ...). Per-tile flags in tile_meta['input_check']. Warns, or fails with ERROR severity "
        "(blocking the embeddings) when the imagery resource's check_raise is set.",
    )

    @dg.asset(
        name=name,
        deps=["tile_grid"],
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        retry_policy=retry_policy or STEP_RETRY_POLICY,  # executors.step_retry_policy
        group_name="patches",
        kinds={"zarr", "earthengine" if pool == "earth_engine" else "stac"},
        pool=pool,
        owners=["team:embeddings"],
        code_version=CODE_VERSION,
        check_specs=[coverage_check, inspection_check],
        description=(
            f"Sentinel-{modality[1]} patches fetched through the configured provider, one Zarr store per "
            f"tile size: data [tile, band, y, x] in provider units ({UNITS[modality]}), valid mask "
            "[tile, y, x], per-tile status (ok / no_data / failed with reason) and provenance (scene "
            "ids, image count, composite, cloud filter)."
        ),
    )
    def patches(
        context: dg.AssetExecutionContext,
        config: PatchesConfig,
        store: PipelineStore,
        imagery: ImageryResource,
        terrafm: TerraFMResource,
        thor: ThorResource,
    ):
        provider = imagery.build(fetch_workers=fetch_workers(modality, terrafm, thor))
        sensor_options = imagery.sensor_options(modality)
        provider_settings = provider.describe()
        rows: list[dict[str, Any]] = []
        fetch_s = 0.0
        fetched = 0
        synthetic = False
        inspections: list[dict[str, Any]] = []
        retries = recovered = 0
        failed_tiles: list[dict[str, Any]] = []
        for part in region_windows(partitions_def, context.partition_keys):
            grid = read_tile_grid(store, part.region, part.window)
            sizes = patch_sizes(modality, terrafm, thor)
            tile_stores: dict[int, TileStore] = {}
            uris: dict[int, str] = {}
            for size in sizes:
                tiles = grid[grid["size_px"] == size].reset_index(drop=True)
                scale_m = float(tiles["scale_m"].iloc[0])
                settings = {
                    "modality": modality, "bands": list(bands), "size_px": size, "scale_m": scale_m,
                    "region": part.region, "window": part.window, "start": part.start, "end": part.end,
                    "tiles_sha256": tiles_sha256(tiles),
                    "provider": provider_settings, "sensor_options": sensor_options,
                    "code_version": CODE_VERSION,
                }
                uris[size] = store.layout.patches(modality, part.region, part.window, size)
                try:
                    tile_stores[size] = TileStore.create_or_open(
                        uris[size], "patches", tile_ids=list(tiles["tile_id"]),
                        arrays=[ArraySpec("data", (len(bands), size, size), ("band", "y", "x")),
                                ArraySpec("valid", (size, size), ("y", "x"), dtype="bool", fill_value=False)],
                        fingerprint=patches_fingerprint(settings), attrs=settings, rebuild=config.rebuild,
                        force=config.force, storage_options=store.storage_options,
                    )
                except StoreError as exc:
                    raise dg.Failure(str(exc), allow_retries=False) from exc
            # One fetch for every tile size: block-reading providers read each scene pixel once.
            stats = fetch_into_stores(provider, tile_stores, grid[grid["size_px"].isin(sizes)].reset_index(drop=True),
                                      start=part.start, end=part.end, modality=modality, bands=bands,
                                      sensor_options=sensor_options, inspect=imagery.check_input,
                                      tile_retries=config.tile_retries, retry_backoff_s=config.retry_backoff_s)
            retries += stats["retries"]
            recovered += stats["recovered"]
            fetch_s += stats["fetch_s"]
            fetched += stats["fetched"]
            synthetic = synthetic or stats["synthetic"]
            for size in sizes:
                per = stats["per_size"][size]
                inspections.append(per["inspection"])
                failed_tiles.extend({"partition": part.key, "size_px": size, **f} for f in per["failed"])
                counts = tile_stores[size].status_counts()
                rows.append({"partition": f"{part.key} p{size}", "key": part.key, "uri": uris[size], **counts})
                context.log.info(f"{part.key} p{size}: {counts} ({per['fetched']} fetched)")
            context.log.info(f"{part.key}: {stats['fetched']} tiles of sizes {sizes} fetched in one pass "
                             f"in {stats['fetch_s']} s")

        total = {k: sum(r[k] for r in rows) for k in TILE_STATUSES}
        n_tiles = sum(total.values())
        failed_fraction = total["failed"] / n_tiles if n_tiles else 0.0
        # The failure budget holds per partition (over its stores of every tile size).
        over_budget = {}
        for key in dict.fromkeys(r["key"] for r in rows):
            part_rows = [r for r in rows if r["key"] == key]
            part_failed = sum(r["failed"] for r in part_rows)
            part_total = sum(r[c] for r in part_rows for c in TILE_STATUSES)
            if part_total and part_failed / part_total > imagery.max_failure_fraction:
                over_budget[key] = (part_failed, part_total)
        provider_stats = provider.stats()
        metadata = {
            "tile_status": status_table(rows),
            "tiles_ok": total["ok"], "tiles_no_data": total["no_data"], "tiles_failed": total["failed"],
            "failed_fraction": failed_fraction,
            "tiles_fetched_now": fetched,
            "fetch_seconds": round(fetch_s, 3),
            "tiles_per_second": round(fetched / fetch_s, 3) if fetch_s else 0.0,
            "modality": modality,
            "bands": json_value(list(bands)),
            "provider": provider_settings.get("provider", imagery.provider_name),
            "provider_settings": json_value(provider_settings),
            "sensor_options": json_value(sensor_options),
            "synthetic_imagery": synthetic,
            "provider_stats": json_value(provider_stats),
            "tile_retries": retries,
            "tiles_recovered_by_retry": recovered,
            "failed_tiles": json_value(failed_tiles[:MAX_FAILED_TILES_IN_METADATA]),
            "store_uri": path_value(rows[0]["uri"]),
        }
        if over_budget:
            # No step retry: the tiles were already retried with backoff in this run. They are
            # recorded (status failed, reason, attempts) and the next run fetches only them.
            raise dg.Failure(
                "; ".join(f"{key}: {f} of {n} tiles failed ({f / n:.1%})" for key, (f, n) in over_budget.items())
                + f" > max_failure_fraction {imagery.max_failure_fraction:.1%} after "
                f"{config.tile_retries} retries per tile; they are recorded in the store with their reason "
                f"and the next run retries only them. First failures: "
                + "; ".join(f"{t['tile_id']}: {t['reason']}" for t in failed_tiles[:3]),
                metadata=metadata,
                allow_retries=False,
            )
        coverage = total["ok"] / n_tiles if n_tiles else 0.0
        # Per partition (a backfill run covers several), over its stores of every tile size.
        add_partition_metadata(context, {key: {
            **{f"tiles_{c}": sum(r[c] for r in rows if r["key"] == key) for c in PATCH_STATUSES},
            "store_uri": path_value(next(r["uri"] for r in rows if r["key"] == key)),
        } for key in dict.fromkeys(r["key"] for r in rows)})
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                _coverage_result(rows, coverage, n_tiles),
                _inspection_result(inspections, imagery.check_input, imagery.check_raise),
            ],
        )

    return patches


MIN_VALID_COVERAGE = 0.5


def _coverage_result(rows: list[dict[str, Any]], coverage: float, n_tiles: int) -> dg.AssetCheckResult:
    """valid_coverage per partition (a backfill run covers several): it fails when any partition
    of the run has fewer than half its tiles with imagery, and names those partitions."""
    per_partition: dict[str, dict[str, int]] = {}
    for r in rows:
        agg = per_partition.setdefault(r["key"], {"ok": 0, "tiles": 0})
        agg["ok"] += r["ok"]
        agg["tiles"] += sum(r[c] for c in TILE_STATUSES)
    cover = {key: (a["ok"] / a["tiles"] if a["tiles"] else 0.0) for key, a in per_partition.items()}
    failing = sorted(key for key, c in cover.items() if c < MIN_VALID_COVERAGE)
    return dg.AssetCheckResult(
        check_name="valid_coverage",
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failing_partitions": json_value(failing),
            "min_coverage": float(min(cover.values(), default=0.0)),
            "coverage_per_partition": json_value({k: round(c, 4) for k, c in cover.items()}),
            "coverage": coverage, "tiles": n_tiles,  # the whole run
        },
        description=None if not failing else
        f"Fewer than {MIN_VALID_COVERAGE:.0%} of the tiles have imagery in: {', '.join(failing)}.",
    )


def _inspection_result(summaries: list[dict[str, Any]], enabled: bool, raise_: bool) -> dg.AssetCheckResult:
    """The input_inspection check over the patches fetched in this run (resumed tiles were checked
    when they were fetched; their flags stay in tile_meta)."""
    inspected = sum(s["inspected"] for s in summaries)
    flagged = sum(s["flagged"] for s in summaries)
    kinds: dict[str, int] = {}
    for s in summaries:
        for k, v in s["issue_counts"].items():
            kinds[k] = kinds.get(k, 0) + v
    examples = [e for s in summaries for e in s["examples"]][:5]
    if not enabled:
        description = "input inspection disabled (imagery resource check_input: false)"
    elif flagged:
        description = "; ".join(f"{e['tile_id']}: {', '.join(e['issues'])}" for e in examples)
    else:
        description = f"{inspected} patches inspected, none flagged"
    return dg.AssetCheckResult(
        check_name="input_inspection",
        passed=flagged == 0,
        severity=dg.AssetCheckSeverity.ERROR if raise_ else dg.AssetCheckSeverity.WARN,
        metadata={"enabled": enabled, "check_raise": raise_, "inspected": inspected, "flagged": flagged,
                  "issue_counts": json_value(kinds), "examples": json_value(examples)},
        description=description,
    )
