"""The model worker: turns patch stores into embedding stores, in the worker environment.

Launched by the embedding assets through Dagster Pipes (``python -m rs_embed_pipeline.worker.embed``;
a subprocess locally, a GPU pod or ECS task in production). It imports no Dagster beyond the
``dagster-pipes`` protocol package. The orchestrator sends, as Pipes extras::

    {"model": "terrafm_b", "modality": "s2", "adapter_options": {...}, "rebuild": false,
     "code_version": "...", "partitions": [{"key": "demo|2024-01-01",
         "stores": [{"patches_uri": ..., "embeddings_uri": ...}]}]}

and receives one custom message per partition with counts, timings and the store URIs, and
progress while it runs: every ``progress_every`` batches (extras, default
:data:`PROGRESS_EVERY`) a Pipes log line (in the Dagster run's event log) and a custom message
``{"progress": {"tiles_done", "tiles_total", "tiles_per_s", "eta_s", ...}}``.

The model is kept busy: tiles stream store -> model -> store ``batch_size`` at a time; the next
batches are read *and preprocessed* (``adapter.prepare``: validation, normalisation) on one
background thread and the previous ones written on another while the model runs
(``adapter.run``), each queue at most :data:`IO_DEPTH` batches deep, so memory is bounded by the
batch (a slow disk slows the run down, it never makes memory grow with the region). The result
reports ``model_busy_fraction`` = time in the forward pass / wall time of the store
(``benchmarks/bench_embed_loop.py`` measures it).

Resume: a tile is embedded when its patch is ``ok`` and its embedding is not. Batches are aligned
on the list of ``ok`` patches (batch k is always the same tiles), and a batch with any missing
tile is embedded whole, only its missing tiles being written: a resumed store holds exactly the
numbers of an uninterrupted run even on devices whose kernels depend on the batch size.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import time
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np

from rs_embed_pipeline.fingerprint import NON_NUMERIC_ADAPTER_SETTINGS, numeric_adapter_settings
from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore

log = logging.getLogger("rs_embed_pipeline.worker")


NON_NUMERIC_SETTINGS = NON_NUMERIC_ADAPTER_SETTINGS  # what the fingerprint leaves out (fingerprint.py)
IO_DEPTH = 2  # batches read ahead / waiting to be written
PROGRESS_EVERY = 10  # batches between progress reports
RANDOM_WEIGHTS_SEED = 0


def embedding_fingerprint(patches_fingerprint: str, adapter_settings: dict[str, Any], code_version: str) -> str:
    numeric = numeric_adapter_settings(adapter_settings)
    payload = json.dumps(
        {"patches": patches_fingerprint, "adapter": numeric, "code_version": code_version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _batches(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def model_state_sha256(adapter: Any) -> str | None:
    """sha256 of the loaded model's parameters: identifies random weights, which have no file."""
    import torch

    model = getattr(adapter, "model", None)
    if model is None or not hasattr(model, "state_dict"):
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        digest.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return digest.hexdigest()


def fingerprint_settings(adapter: Any) -> dict[str, Any]:
    """``adapter.describe()`` plus, for random weights, the sha256 of the random initialisation."""
    settings = dict(adapter.describe())
    if settings.get("random_weights") and not settings.get("weights_sha256"):
        cached = getattr(adapter, "_random_init_sha256", None)
        if cached is None:
            cached = model_state_sha256(adapter)
            try:
                adapter._random_init_sha256 = cached  # once per loaded model, not per store
            except AttributeError:
                pass
        settings["random_init_sha256"] = cached
    return settings


def embed_store(
    adapter: Any,
    modality: str,
    patches_uri: str,
    embeddings_uri: str,
    *,
    batch_size: int,
    code_version: str,
    rebuild: bool = False,
    force: bool = False,
    storage_options: dict[str, Any] | None = None,
    log_fn: Callable[[str], None] = log.info,
    progress_fn: Callable[[dict[str, Any]], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> dict[str, Any]:
    """Embed every ok tile of one patch store that the embedding store does not hold yet.

    ``rebuild``: accept a store built with other settings (every tile redone); ``force``: redo
    every tile even though the settings match. ``progress_fn`` gets a progress dict every
    ``progress_every`` batches and after the last one.
    """
    if isinstance(progress_every, bool) or not isinstance(progress_every, int) or progress_every < 1:
        raise ValueError(f"progress_every must be a positive number of batches, got {progress_every!r}")
    t_start = time.perf_counter()
    patches = TileStore.open(patches_uri, "patches", storage_options=storage_options)
    patch_settings = patches.settings
    store_bands = list(patch_settings["bands"])
    wanted = list(adapter.input_bands(modality))
    missing = [b for b in wanted if b not in store_bands]
    if missing:
        raise StoreError(
            f"Patch store {patches_uri} lacks bands {missing} that {adapter.model_id} needs "
            f"(store has {store_bands}); re-fetch the patches with those bands."
        )
    band_index = [store_bands.index(b) for b in wanted]
    adapter_settings = adapter.describe()
    d, gh, gw = adapter.grid_shape(modality)
    fingerprint = embedding_fingerprint(patches.fingerprint, fingerprint_settings(adapter), code_version)
    tile_ids = patches.tile_ids
    embeddings = TileStore.create_or_open(
        embeddings_uri,
        "embeddings",
        tile_ids=tile_ids,
        arrays=[
            ArraySpec("pooled", (adapter.embed_dim,), ("feature",), fill_value=np.nan),
            ArraySpec("grid", (d, gh, gw), ("feature", "gy", "gx"), fill_value=np.nan),
        ],
        fingerprint=fingerprint,
        attrs={
            "model": adapter.model_id,
            "modality": modality,
            "bands": wanted,
            "patches_uri": patches_uri,
            "patches_fingerprint": patches.fingerprint,
            "size_px": int(patch_settings["size_px"]),
            "scale_m": float(patch_settings["scale_m"]),
            "adapter": adapter_settings,
            "code_version": code_version,
        },
        rebuild=rebuild,
        force=force,
        storage_options=storage_options,
    )

    patch_status = patches.statuses()
    done = embeddings.statuses()
    timings = {"read_s": 0.0, "prepare_s": 0.0, "embed_s": 0.0, "write_s": 0.0}
    # Tiles without pixels are recorded as such; they never reach the model.
    for name, code in (("no_data", 2), ("failed", 3)):
        for index in np.flatnonzero((patch_status == code) & (done != code)):
            reason = patches.tile_meta(int(index)).get("reason", f"patch status {name}")
            embeddings.write_tile(int(index), name, {"reason": f"patch {name}: {reason}"})
    ok_tiles = np.flatnonzero(patch_status == 1)
    todo_mask = done[ok_tiles] != 1
    todo = ok_tiles[todo_mask]
    skipped = int((~todo_mask).sum())
    size = max(1, batch_size)
    # Aligned batches: the same tiles go through the model together whether or not the run was
    # interrupted; a batch is run whole when any of its tiles is missing.
    batches = [(batch, done[batch] != 1) for batch in _batches(ok_tiles, size) if (done[batch] != 1).any()]
    recomputed = int(sum(int((~m).sum()) for _, m in batches))
    log_fn(f"{embeddings_uri}: {len(todo)} tiles to embed, {skipped} already done")

    prepare = getattr(adapter, "prepare", None)

    def read(batch: np.ndarray) -> tuple[np.ndarray, Any, float, float]:
        """Read a batch and preprocess it (background thread): ``(raw, prepared or the
        ValueError that preprocessing raised, read_s, prepare_s)``."""
        t0 = time.perf_counter()
        raw = np.ascontiguousarray(patches.read("data", batch)[:, band_index], dtype=np.float32)
        t1 = time.perf_counter()
        prepared: Any = None
        if prepare is not None:
            try:
                prepared = prepare(raw, modality)
            except ValueError as exc:  # a bad tile: the main loop retries tile by tile
                prepared = exc
        return raw, prepared, t1 - t0, time.perf_counter() - t1

    def embed_batch(raw: np.ndarray, prepared: Any):
        if prepared is None:  # an adapter without the two-step API
            return adapter.embed(raw, modality=modality, output="both")
        if isinstance(prepared, ValueError):
            raise prepared
        return adapter.run(prepared, "both")

    def write(batch: np.ndarray, pooled: np.ndarray, grid: np.ndarray, meta: dict[str, Any]) -> float:
        # One call per array for the batch: arrays, then provenance, then (last) the statuses.
        t0 = time.perf_counter()
        embeddings.write_tiles([int(i) for i in batch], ["ok"] * len(batch), [meta] * len(batch),
                               pooled=pooled, grid=grid)
        return time.perf_counter() - t0

    failures: dict[int, str] = {}
    nonfinite = 0
    embed_meta: dict[str, Any] = {}
    wait_read_s = wait_write_s = drain_s = 0.0
    n_todo = len(todo)
    done_now = 0
    t_loop = time.perf_counter()

    def report(i: int) -> None:
        if progress_fn is None:
            return
        elapsed = time.perf_counter() - t_loop
        rate = done_now / elapsed if elapsed > 0 else 0.0
        left = n_todo - done_now - len(failures)
        progress_fn({
            "embeddings_uri": embeddings_uri,
            "batches_done": i + 1,
            "batches_total": len(batches),
            "tiles_done": done_now,
            "tiles_total": n_todo,
            "tiles_failed": len(failures),
            "tiles_per_s": round(rate, 3),
            "eta_s": left / rate if rate > 0 else None,  # unrounded: tiny test stores finish in ms
            "elapsed_s": round(elapsed, 3),
        })
    with cf.ThreadPoolExecutor(1, thread_name_prefix="embed-read") as reader, \
            cf.ThreadPoolExecutor(1, thread_name_prefix="embed-write") as writer:
        reads: list[cf.Future] = [reader.submit(read, b) for b, _ in batches[:IO_DEPTH]]
        writes: list[cf.Future] = []
        for i, (batch, missing_mask) in enumerate(batches):
            t_wait = time.perf_counter()
            raw, prepared, read_s, prepare_s = reads.pop(0).result()
            wait_read_s += time.perf_counter() - t_wait
            timings["read_s"] += read_s
            timings["prepare_s"] += prepare_s
            if i + IO_DEPTH < len(batches):
                reads.append(reader.submit(read, batches[i + IO_DEPTH][0]))
            t0 = time.perf_counter()
            try:
                out = embed_batch(raw, prepared)
                results = [(batch, out.pooled, out.grid, out.meta)]
            except ValueError:
                # One bad tile must not sink its batch: retry one by one to name the culprit.
                results = []
                for j, index in enumerate(batch):
                    try:
                        single = adapter.embed(raw[j : j + 1], modality=modality, output="both")
                        results.append((batch[j : j + 1], single.pooled, single.grid, single.meta))
                    except ValueError as exc:
                        if missing_mask[j]:
                            failures[int(index)] = f"{type(exc).__name__}: {exc}"
            timings["embed_s"] += time.perf_counter() - t0
            del raw, prepared
            for b, pooled, grid, meta in results:
                embed_meta = meta
                keep = np.isin(b, batch[missing_mask])  # tiles already done are not rewritten
                if not keep.any():
                    continue
                pooled, grid = np.asarray(pooled)[keep], np.asarray(grid)[keep]
                nonfinite += int((~np.isfinite(pooled)).sum() + (~np.isfinite(grid)).sum())
                # Back-pressure: at most IO_DEPTH batches wait to be written.
                t_wait = time.perf_counter()
                while len(writes) >= IO_DEPTH:
                    timings["write_s"] += writes.pop(0).result()
                wait_write_s += time.perf_counter() - t_wait
                writes.append(writer.submit(write, b[keep], pooled, grid, {}))
                done_now += int(keep.sum())
            if (i + 1) % progress_every == 0 or i + 1 == len(batches):
                report(i)
        t_wait = time.perf_counter()
        for future in writes:
            timings["write_s"] += future.result()
        drain_s = time.perf_counter() - t_wait
    for index, reason in failures.items():
        embeddings.write_tile(index, "failed", {"reason": reason})

    wall = time.perf_counter() - t_start
    counts = embeddings.status_counts()
    embedded_now = int(len(todo) - len(failures))
    return {
        "embeddings_uri": embeddings_uri,
        "patches_uri": patches_uri,
        "size_px": int(patch_settings["size_px"]),
        "tiles_total": len(tile_ids),
        "tiles_embedded_now": embedded_now,
        "tiles_skipped_done": skipped,
        "tiles_recomputed_for_alignment": recomputed,
        "counts": counts,
        "timings": {**{k: round(v, 3) for k, v in timings.items()}, "wall_s": round(wall, 3),
                    "embed_waiting_on_io_s": round(wait_read_s + wait_write_s, 3),
                    "embed_waiting_on_read_s": round(wait_read_s, 3),
                    "embed_waiting_on_write_s": round(wait_write_s, 3),
                    "write_drain_s": round(drain_s, 3)},
        # The forward pass's share of the store's wall time (the rest: setup, pipeline fill, drain).
        "model_busy_fraction": round(timings["embed_s"] / wall, 4) if wall > 0 else 0.0,
        "tiles_per_s": round(embedded_now / wall, 3) if wall > 0 and embedded_now else 0.0,
        "nonfinite_values": nonfinite,
        "embed_meta": embed_meta,
        "fingerprint": fingerprint,
    }


def load_pretrained_or_random(model: str, options: dict[str, Any], warn: Callable[[str], None]) -> Any:
    """Pretrained weights when they can be found; random ones only as the opted-in fallback.

    The pipeline's ``allow_random_weights`` means "fall back to random weights when no pretrained
    weights are found" (the Hugging Face cache, or the hub when online): the demo then runs
    offline, and every output says RANDOM WEIGHTS.
    """
    from rs_embed_pipeline.models.errors import WeightsNotFoundError

    if not options.get("allow_random_weights") or options.get("checkpoint"):
        return load_random(model, options)  # seeded, in case an option asks for a random init
    try:
        return load_random(model, {**options, "allow_random_weights": False})
    except WeightsNotFoundError as exc:
        warn(f"{model}: no pretrained weights found ({exc}); falling back to RANDOM WEIGHTS "
             "because allow_random_weights is set")
        return load_random(model, options)


def load_random(model: str, options: dict[str, Any]) -> Any:
    """``load_adapter`` with torch's RNG seeded first: random weights (when asked for) come from a
    fixed seed, so a resumed run continues with the same initialisation (the store fingerprint
    also records its sha256, so a different one is refused)."""
    import torch

    from rs_embed_pipeline.models import load_adapter

    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    return load_adapter(model, **options)


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        job = pipes.extras
        options = dict(job.get("adapter_options") or {})
        pipes.log.info(f"loading {job['model']} with {json.dumps(options, default=str)}")
        adapter = load_pretrained_or_random(job["model"], options, pipes.log.warning)
        settings = adapter.describe()
        if settings.get("random_weights"):
            pipes.log.warning(
                f"{job['model']}: RANDOM WEIGHTS (allow_random_weights=True) - embeddings are NOT "
                "from the pretrained model"
            )
        batch_size = int(settings.get("batch_size") or options.get("batch_size") or 8)
        progress_every = int(job.get("progress_every") or PROGRESS_EVERY)

        def progress(p: dict[str, Any]) -> None:
            eta = "n/a" if p["eta_s"] is None else f"{p['eta_s']:.0f} s"
            pipes.log.info(f"progress {part['key']}: {p['tiles_done']}/{p['tiles_total']} tiles, "
                           f"{p['tiles_per_s']:.2f} tiles/s, ETA {eta} ({p['embeddings_uri']})")
            pipes.report_custom_message({"progress": {"partition": part["key"], **p}})

        for part in job["partitions"]:
            results = []
            for stores in part["stores"]:
                try:
                    result = embed_store(
                        adapter,
                        job["modality"],
                        stores["patches_uri"],
                        stores["embeddings_uri"],
                        batch_size=batch_size,
                        code_version=job.get("code_version", ""),
                        rebuild=bool(job.get("rebuild")),
                        force=bool(job.get("force")),
                        storage_options=job.get("storage_options"),
                        log_fn=pipes.log.info,
                        progress_fn=progress,
                        progress_every=progress_every,
                    )
                except StoreError as exc:
                    # A store that is not ours or was built with other settings: a clear message
                    # for the orchestrator (which fails the step without retrying), nothing touched.
                    pipes.report_custom_message({"store_error": str(exc), "key": part["key"]})
                    return
                results.append(result)
            pipes.report_custom_message({"partition": part["key"], "adapter": settings, "stores": results})


if __name__ == "__main__":
    main()
