"""The model worker: turns patch stores into embedding stores, in the worker environment.

Launched by the embedding assets through Dagster Pipes (``python -m rs_embed_pipeline.worker.embed``;
a subprocess locally, a GPU pod or ECS task in production). It imports no Dagster beyond the
``dagster-pipes`` protocol package. The orchestrator sends, as Pipes extras::

    {"model": "terrafm_b", "modality": "s2", "adapter_options": {...}, "rebuild": false,
     "code_version": "...", "partitions": [{"key": "demo|2024-01-01",
         "stores": [{"patches_uri": ..., "embeddings_uri": ...}]}]}

and receives one custom message per partition with counts, timings and the store URIs.

Memory is bounded by the batch: tiles stream store -> model -> store ``batch_size`` at a time; the
next batch is read and the previous one written on background threads while the model runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import time
from typing import Any, Callable, Iterator

import numpy as np

from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore

log = logging.getLogger("rs_embed_pipeline.worker")


# Adapter settings that do not change the numbers (or only within float noise): a store may be
# resumed on another machine, device or batch size without being refused.
NON_NUMERIC_SETTINGS = ("device", "batch_size", "weights_path", "hf_cache_dir")


def embedding_fingerprint(patches_fingerprint: str, adapter_settings: dict[str, Any], code_version: str) -> str:
    numeric = {k: v for k, v in adapter_settings.items() if k not in NON_NUMERIC_SETTINGS}
    payload = json.dumps(
        {"patches": patches_fingerprint, "adapter": numeric, "code_version": code_version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _batches(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def embed_store(
    adapter: Any,
    modality: str,
    patches_uri: str,
    embeddings_uri: str,
    *,
    batch_size: int,
    code_version: str,
    rebuild: bool = False,
    storage_options: dict[str, Any] | None = None,
    log_fn: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Embed every ok tile of one patch store that the embedding store does not hold yet."""
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
    fingerprint = embedding_fingerprint(patches.fingerprint, adapter_settings, code_version)
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
        storage_options=storage_options,
    )

    patch_status = patches.statuses()
    done = embeddings.statuses()
    timings = {"read_s": 0.0, "embed_s": 0.0, "write_s": 0.0}
    # Tiles without pixels are recorded as such; they never reach the model.
    for name, code in (("no_data", 2), ("failed", 3)):
        for index in np.flatnonzero((patch_status == code) & (done != code)):
            reason = patches.tile_meta(int(index)).get("reason", f"patch status {name}")
            embeddings.write_tile(int(index), name, {"reason": f"patch {name}: {reason}"})
    todo = np.flatnonzero((patch_status == 1) & (done != 1))
    skipped = int(((patch_status == 1) & (done == 1)).sum())
    log_fn(f"{embeddings_uri}: {len(todo)} tiles to embed, {skipped} already done")

    def read(batch: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        raw = patches.read("data", batch)[:, band_index]
        return np.ascontiguousarray(raw, dtype=np.float32), time.perf_counter() - t0

    def write(batch: np.ndarray, pooled: np.ndarray, grid: np.ndarray, meta: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        for j, index in enumerate(batch):
            embeddings.write_tile(int(index), "ok", meta, pooled=pooled[j], grid=grid[j])
        return time.perf_counter() - t0

    failures: dict[int, str] = {}
    nonfinite = 0
    embed_meta: dict[str, Any] = {}
    wait_s = 0.0
    with cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="embed-io") as io:
        batches = list(_batches(todo, max(1, batch_size)))
        pending_read = io.submit(read, batches[0]) if batches else None
        pending_writes: list[cf.Future] = []
        for i, batch in enumerate(batches):
            t_wait = time.perf_counter()
            raw, read_s = pending_read.result()
            wait_s += time.perf_counter() - t_wait
            timings["read_s"] += read_s
            pending_read = io.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
            t0 = time.perf_counter()
            try:
                out = adapter.embed(raw, modality=modality, output="both")
                results = [(batch, out.pooled, out.grid, out.meta)]
            except ValueError:
                # One bad tile must not sink its batch: retry one by one to name the culprit.
                results = []
                for j, index in enumerate(batch):
                    try:
                        single = adapter.embed(raw[j : j + 1], modality=modality, output="both")
                        results.append((batch[j : j + 1], single.pooled, single.grid, single.meta))
                    except ValueError as exc:
                        failures[int(index)] = f"{type(exc).__name__}: {exc}"
            timings["embed_s"] += time.perf_counter() - t0
            for b, pooled, grid, meta in results:
                embed_meta = meta
                nonfinite += int((~np.isfinite(pooled)).sum() + (~np.isfinite(grid)).sum())
                pending_writes.append(io.submit(write, b, np.asarray(pooled), np.asarray(grid), {}))
        t_wait = time.perf_counter()
        for future in pending_writes:
            timings["write_s"] += future.result()
        wait_s += time.perf_counter() - t_wait
    for index, reason in failures.items():
        embeddings.write_tile(index, "failed", {"reason": reason})

    wall = time.perf_counter() - t_start
    counts = embeddings.status_counts()
    return {
        "embeddings_uri": embeddings_uri,
        "patches_uri": patches_uri,
        "size_px": int(patch_settings["size_px"]),
        "tiles_total": len(tile_ids),
        "tiles_embedded_now": int(len(todo) - len(failures)),
        "tiles_skipped_done": skipped,
        "counts": counts,
        "timings": {**{k: round(v, 3) for k, v in timings.items()}, "wall_s": round(wall, 3),
                    "embed_waiting_on_io_s": round(wait_s, 3)},
        "tiles_per_s": round(len(todo) / wall, 3) if wall > 0 and len(todo) else 0.0,
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
    from rs_embed_pipeline.models import load_adapter
    from rs_embed_pipeline.models.errors import WeightsNotFoundError

    if not options.get("allow_random_weights") or options.get("checkpoint"):
        return load_adapter(model, **options)
    try:
        return load_adapter(model, **{**options, "allow_random_weights": False})
    except WeightsNotFoundError as exc:
        warn(f"{model}: no pretrained weights found ({exc}); falling back to RANDOM WEIGHTS "
             "because allow_random_weights is set")
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
        for part in job["partitions"]:
            results = []
            for stores in part["stores"]:
                results.append(
                    embed_store(
                        adapter,
                        job["modality"],
                        stores["patches_uri"],
                        stores["embeddings_uri"],
                        batch_size=batch_size,
                        code_version=job.get("code_version", ""),
                        rebuild=bool(job.get("rebuild")),
                        storage_options=job.get("storage_options"),
                        log_fn=pipes.log.info,
                    )
                )
            pipes.report_custom_message({"partition": part["key"], "adapter": settings, "stores": results})


if __name__ == "__main__":
    main()
