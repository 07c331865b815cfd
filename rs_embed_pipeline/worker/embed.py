"""The model worker: turns patch stores into embedding stores, in the worker environment.

Launched by the embedding assets through Dagster Pipes (``python -m rs_embed_pipeline.worker.embed``;
a subprocess locally, a GPU pod or ECS task in production). It imports no Dagster beyond the
``dagster-pipes`` protocol package. The request (Pipes extras) and the messages it sends back are
the dataclasses of :mod:`rs_embed_pipeline.worker.protocol`: an :class:`EmbedRequest` in, one
:class:`PartitionResult` per partition out (counts, timings, store URIs), and progress while it
runs: every ``progress_every`` batches a Pipes log line (in the Dagster run's event log) and a
progress message (``tiles_done``, ``tiles_total``, ``tiles_per_s``, ``eta_s``, ...).

A store is embedded in three steps: :func:`open_store_work` (open the stores, record the tiles
without pixels, batch the rest), :class:`EmbedPipeline` (read / embed / write) and
:func:`store_result`.

The model is kept busy: tiles stream store -> model -> store ``batch_size`` at a time; the next
batches are read *and preprocessed* (``adapter.prepare``: validation, normalisation) on one
background thread and the previous ones written on another while the model runs
(``adapter.run``), each queue at most :data:`IO_DEPTH` batches deep, so memory is bounded by the
batch (a slow disk slows the run down, it never makes memory grow with the region). The result
reports ``model_busy_fraction`` = time in the forward pass / wall time of the store
(``benchmarks/bench_embed_loop.py`` measures it).

On a GPU (``adapter.prepares_on_device``, an integer-encoded store) the reader only reads: the
batch's codes go to the device as the store holds them, row differences included
(``TileStore.read_filtered``), and are summed back, decoded and normalised there
(``adapter.prepare_encoded``, ``models/device_prepare.py``). On a CPU device the host undoes the
filter (``TileStore.read_stored``), decodes and prepares in numpy: faster there than torch's CPU
kernels. :class:`EmbedPipeline` makes that choice (``on_device``).

Resume: a tile is embedded when its patch is ``ok`` and its embedding is not. Batches are aligned
on the list of ``ok`` patches (batch k is always the same tiles), and a batch with any missing
tile is embedded whole, only its missing tiles being written: a resumed store holds exactly the
numbers of an uninterrupted run even on devices whose kernels depend on the batch size.

New embedding stores hold pooled, status, tile_meta and a 16-bit grid (stored uncompressed) one
chunk per ``batch_size`` tiles (``TileStore`` ``tile_chunk``: one object per array and batch instead
of one per tile; a tile's grid reads back as a byte range of its chunk, ``stores/chunk_io.py``; a
float32 grid, compressed, keeps one tile per chunk), and batches
follow those chunks: the ``ok`` tiles of whole chunks, as many chunks as fit in ``batch_size`` (a
chunk with no_data tiles gives a smaller batch), so a batch writes whole chunks. Stores of one tile
per chunk (written before) batch as before: consecutive ``ok`` tiles.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import time
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np

from rs_embed_pipeline.core.fingerprint import embedding_fingerprint
from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore
from rs_embed_pipeline.stores import grid_dtype as G
from rs_embed_pipeline.stores.patch_encoding import undo_filter
from rs_embed_pipeline.core.vocabulary import STATUS_CODES, STATUS_OK
from rs_embed_pipeline.worker.protocol import (
    OUTPUTS, PROGRESS_EVERY, EmbedRequest, PartitionResult, StoreFailure, StoreResult, check_outputs,
    progress_message,
)

log = logging.getLogger("rs_embed_pipeline.worker")


IO_DEPTH = 2  # batches read ahead / waiting to be written, per I/O thread
RANDOM_WEIGHTS_SEED = 0
OUTPUT_DEFAULTS = {"outputs": "both", "grid_dtype": "float32"}  # not in the fingerprint: earlier stores' settings


def _batches(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _chunk_batches(indices: np.ndarray, size: int, tile_chunk: int) -> Iterator[np.ndarray]:
    """Batches of at most ``size`` of the sorted tile ``indices`` that never split a chunk of
    ``tile_chunk`` tiles unless one chunk holds more than ``size`` of them: whole chunks' tiles,
    as many chunks as fit. ``tile_chunk`` 1 gives :func:`_batches`'s batches; the same store and
    size always give the same batches (resume)."""
    if tile_chunk <= 1:
        yield from _batches(indices, size)
        return
    pending: list[np.ndarray] = []
    count = 0
    for group in np.split(indices, np.flatnonzero(np.diff(indices // tile_chunk)) + 1):
        if not group.size:
            continue
        if count and count + group.size > size:
            yield np.concatenate(pending)
            pending, count = [], 0
        if group.size > size:  # a chunk larger than a batch (another batch size than the store's)
            yield from _batches(group, size)
            continue
        pending.append(group)
        count += group.size
    if pending:
        yield np.concatenate(pending)


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
    io_threads: int = 1,
    outputs: str = "both",
    grid_dtype: str = "float32",
) -> StoreResult:
    """Embed every ok tile of one patch store that the embedding store does not hold yet.

    ``rebuild``: accept a store built with other settings (every tile redone); ``force``: redo
    every tile even though the settings match. ``progress_fn`` gets a progress dict every
    ``progress_every`` batches and after the last one. ``io_threads``: threads reading (and
    decoding) and as many writing (``models.knobs.io_threads``). ``outputs``: which arrays the
    embedding store holds (pooled | grid | both); ``grid_dtype``: the grid's stored type
    (float32 | float16 | bfloat16, ``stores/grid_dtype.py``); both are part of the store's settings.
    """
    if isinstance(io_threads, bool) or not isinstance(io_threads, int) or io_threads < 1:
        raise ValueError(f"io_threads must be a positive number of threads, got {io_threads!r}")
    check_outputs(outputs)
    G.check_grid_dtype(grid_dtype)
    if isinstance(progress_every, bool) or not isinstance(progress_every, int) or progress_every < 1:
        raise ValueError(f"progress_every must be a positive number of batches, got {progress_every!r}")
    t_start = time.perf_counter()
    work = open_store_work(adapter, modality, patches_uri, embeddings_uri, batch_size=batch_size,
                           code_version=code_version, rebuild=rebuild, force=force, storage_options=storage_options,
                           outputs=outputs, grid_dtype=grid_dtype)
    log_fn(f"{embeddings_uri}: {work.tiles_todo} tiles to embed, {work.tiles_skipped} already done")
    run = EmbedPipeline(adapter, modality, work, progress_fn, progress_every, io_threads).run()
    for index, reason in run.failures.items():
        work.embeddings.write_tile(index, "failed", {"reason": reason})
    return store_result(work, run, time.perf_counter() - t_start)


# ---------------------------------------------------------------------------------------- work
@dataclasses.dataclass
class StoreWork:
    """The work on one store pair: which tiles to embed, in which batches."""

    patches_uri: str
    embeddings_uri: str
    patches: TileStore
    embeddings: TileStore
    band_index: list[int]                               # the adapter's bands in the patch store
    batches: list[tuple[np.ndarray, np.ndarray]]        # (tile indices, which of them are missing)
    tiles_todo: int
    tiles_skipped: int                                  # ok tiles already embedded
    tiles_recomputed: int                               # embedded again to keep batches aligned
    fingerprint: str                                    # the embedding store's
    outputs: tuple[str, ...] = ("pooled", "grid")       # the arrays written
    grid_dtype: str = "float32"                         # the grid's stored type


def open_store_work(adapter: Any, modality: str, patches_uri: str, embeddings_uri: str, *, batch_size: int,
                    code_version: str, rebuild: bool = False, force: bool = False,
                    storage_options: dict[str, Any] | None = None, outputs: str = "both",
                    grid_dtype: str = "float32") -> StoreWork:
    """Open (or create) the stores, record the tiles without pixels, and batch the rest."""
    patches = TileStore.open(patches_uri, "patches", storage_options=storage_options)
    band_index = _band_index(adapter, modality, patches, patches_uri)
    # Other outputs or grid type: another store. The defaults add nothing, so stores written before
    # these settings keep their fingerprints.
    chosen = {k: v for k, v in {"outputs": outputs, "grid_dtype": grid_dtype}.items() if v != OUTPUT_DEFAULTS[k]}
    fingerprint = embedding_fingerprint(patches.fingerprint, {**fingerprint_settings(adapter), **chosen}, code_version)
    embeddings = _open_embeddings(adapter, modality, patches, patches_uri, embeddings_uri, fingerprint=fingerprint,
                                  code_version=code_version, rebuild=rebuild, force=force,
                                  storage_options=storage_options, outputs=OUTPUTS[outputs], grid_dtype=grid_dtype,
                                  tile_chunk=max(1, batch_size))
    if "grid" in OUTPUTS[outputs]:
        embeddings.stored_type("grid")  # the array against the settings: StoreError on a mismatch
    patch_status = patches.statuses()
    done = embeddings.statuses()
    # Tiles without pixels are recorded as such; they never reach the model.
    for name in ("no_data", "failed"):
        code = STATUS_CODES[name]
        for index in np.flatnonzero((patch_status == code) & (done != code)):
            reason = patches.tile_meta(int(index)).get("reason", f"patch status {name}")
            embeddings.write_tile(int(index), name, {"reason": f"patch {name}: {reason}"})
    ok_tiles = np.flatnonzero(patch_status == STATUS_OK)
    todo_mask = done[ok_tiles] != STATUS_OK
    # Aligned batches: the same tiles go through the model together whether or not the run was
    # interrupted; a batch is run whole when any of its tiles is missing.
    batches = [(batch, done[batch] != STATUS_OK)
               for batch in _chunk_batches(ok_tiles, max(1, batch_size), embeddings.tile_chunk)
               if (done[batch] != STATUS_OK).any()]
    return StoreWork(
        patches_uri=patches_uri, embeddings_uri=embeddings_uri, patches=patches, embeddings=embeddings,
        band_index=band_index, batches=batches, tiles_todo=int(todo_mask.sum()),
        tiles_skipped=int((~todo_mask).sum()),
        tiles_recomputed=int(sum(int((~m).sum()) for _, m in batches)), fingerprint=fingerprint,
        outputs=OUTPUTS[outputs], grid_dtype=grid_dtype,
    )


def _band_index(adapter: Any, modality: str, patches: TileStore, patches_uri: str) -> list[int]:
    """Where the adapter's input bands lie in the patch store (StoreError naming what is missing)."""
    store_bands = list(patches.settings["bands"])
    wanted = list(adapter.input_bands(modality))
    missing = [b for b in wanted if b not in store_bands]
    if missing:
        raise StoreError(
            f"Patch store {patches_uri} lacks bands {missing} that {adapter.model_id} needs "
            f"(store has {store_bands}); re-fetch the patches with those bands."
        )
    return [store_bands.index(b) for b in wanted]


def _open_embeddings(adapter: Any, modality: str, patches: TileStore, patches_uri: str, embeddings_uri: str, *,
                     fingerprint: str, code_version: str, rebuild: bool, force: bool,
                     storage_options: dict[str, Any] | None, outputs: tuple[str, ...] = ("pooled", "grid"),
                     grid_dtype: str = "float32", tile_chunk: int = 1) -> TileStore:
    """The embedding store for these patches and this adapter (refused when built otherwise); a new
    one holds pooled, status, tile_meta and an uncompressed (16-bit) grid ``tile_chunk`` tiles per
    chunk (a float32 grid: one per tile)."""
    patch_settings = patches.settings
    d, gh, gw = adapter.grid_shape(modality)
    specs = {
        "pooled": ArraySpec("pooled", (adapter.embed_dim,), ("feature",), fill_value=np.nan, batched=True),
        "grid": ArraySpec("grid", (d, gh, gw), ("feature", "gy", "gx"), fill_value=np.nan, stored_type=grid_dtype,
                          batched=grid_dtype in G.UNCOMPRESSED),
    }
    return TileStore.create_or_open(
        embeddings_uri,
        "embeddings",
        tile_ids=patches.tile_ids,
        arrays=[specs[k] for k in outputs],
        fingerprint=fingerprint,
        attrs={
            "model": adapter.model_id,
            "modality": modality,
            "bands": list(adapter.input_bands(modality)),
            "patches_uri": patches_uri,
            "patches_fingerprint": patches.fingerprint,
            "size_px": int(patch_settings["size_px"]),
            "scale_m": float(patch_settings["scale_m"]),
            "adapter": adapter.describe(),
            "code_version": code_version,
            "outputs": next(k for k, v in OUTPUTS.items() if v == outputs),
            "grid_dtype": grid_dtype,
        },
        rebuild=rebuild,
        force=force,
        storage_options=storage_options,
        tile_chunk=tile_chunk,
    )


# ------------------------------------------------------------------------------------ pipeline
@dataclasses.dataclass
class PipelineRun:
    """What the read / embed / write pipeline did (seconds; failures by tile index)."""

    timings: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"read_s": 0.0, "prepare_s": 0.0, "embed_s": 0.0, "write_s": 0.0})
    wait_read_s: float = 0.0
    wait_write_s: float = 0.0
    drain_s: float = 0.0
    failures: dict[int, str] = dataclasses.field(default_factory=dict)
    nonfinite: int = 0
    embed_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    tiles_done: int = 0


class EmbedPipeline:
    """Store -> model -> store, ``batch`` tiles at a time: the next batches are read and prepared
    (``adapter.prepare``) on one background thread and the previous ones written on another while
    the model runs (``adapter.run``) on this one; each queue is at most :data:`IO_DEPTH` batches deep."""

    def __init__(self, adapter: Any, modality: str, work: StoreWork,
                 progress_fn: Callable[[dict[str, Any]], None] | None = None, progress_every: int = PROGRESS_EVERY,
                 io_threads: int = 1, on_device: bool | None = None):
        self.adapter, self.modality, self.work = adapter, modality, work
        self.progress_fn, self.progress_every = progress_fn, progress_every
        self.io_threads = io_threads
        self.depth = IO_DEPTH * io_threads  # batches in flight each way
        self.prepare = getattr(adapter, "prepare", None)
        # Integer codes (S2) go to a GPU as they are and are decoded and normalised there
        # (adapter.prepare_encoded: equal to the numpy reference), so the host only reads and copies.
        # On a CPU device that work is the host's anyway, and numpy does it 3-10x faster than torch's
        # CPU kernels (benchmarks/bench_embed_loop.py): decoded and prepared on the host, as are float32
        # stores (S1, whose log1p differs from numpy's by an ulp on the device; earlier stores) and
        # adapters without prepare_encoded.
        # This is also where the patch filter's undo lives: on the device path the store's row
        # differences are read as stored (TileStore.read_filtered) and summed back on the device
        # (device_prepare.undo_filter: a cumulative sum there instead of ~0.4 ms of host CPU per
        # tile); on the host path TileStore.read_stored undoes them in numpy, as for every other reader.
        # ``on_device`` (tests, benchmarks): force either path; None: chosen as above.
        self.encoding = work.patches.encoding("data")
        self.filter = work.patches.stored_filter("data")  # an unknown one: StoreError, before any batch
        device = getattr(getattr(adapter, "device", None), "type", "cpu")
        can = bool(getattr(adapter, "prepares_on_device", False)) and not self.encoding.is_identity
        if on_device and not can:
            raise ValueError(f"on_device=True needs an adapter with prepare_encoded and an integer-encoded store "
                             f"(this one: {self.encoding.name})")
        self.on_device = can and device != "cpu" if on_device is None else bool(on_device)
        self.output = next(k for k, v in OUTPUTS.items() if v == work.outputs)
        self.out_dtypes = {"grid": work.grid_dtype}  # cast on the model's device (adapters.run)
        self.stats = PipelineRun()
        self.t_loop = time.perf_counter()

    def run(self) -> PipelineRun:
        batches, stats = self.work.batches, self.stats
        self.t_loop = time.perf_counter()
        depth = self.depth
        with cf.ThreadPoolExecutor(self.io_threads, thread_name_prefix="embed-read") as reader, \
                cf.ThreadPoolExecutor(self.io_threads, thread_name_prefix="embed-write") as writer:
            reads: list[cf.Future] = [reader.submit(self.read, b) for b, _ in batches[:depth]]
            writes: list[cf.Future] = []
            for i, (batch, missing_mask) in enumerate(batches):
                t_wait = time.perf_counter()
                raw, prepared, read_s, prepare_s = reads.pop(0).result()
                stats.wait_read_s += time.perf_counter() - t_wait
                stats.timings["read_s"] += read_s
                stats.timings["prepare_s"] += prepare_s
                if i + depth < len(batches):
                    reads.append(reader.submit(self.read, batches[i + depth][0]))
                results = self.embed(batch, missing_mask, raw, prepared)
                del raw, prepared
                for b, out in results:
                    stats.embed_meta = out.meta
                    keep = np.isin(b, batch[missing_mask])  # tiles already done are not rewritten
                    if not keep.any():
                        continue
                    # a whole batch (the usual case) is written without a copy
                    arrays = {k: getattr(out, k) if keep.all() else getattr(out, k)[keep] for k in self.work.outputs}
                    stats.nonfinite += int(np.asarray(out.nonfinite)[keep].sum())
                    # Back-pressure: at most `depth` batches wait to be written.
                    t_wait = time.perf_counter()
                    while len(writes) >= depth:
                        stats.timings["write_s"] += writes.pop(0).result()
                    stats.wait_write_s += time.perf_counter() - t_wait
                    writes.append(writer.submit(self.write, b[keep], arrays))
                    stats.tiles_done += int(keep.sum())
                if (i + 1) % self.progress_every == 0 or i + 1 == len(batches):
                    self.report(i)
            t_wait = time.perf_counter()
            for future in writes:
                stats.timings["write_s"] += future.result()
            stats.drain_s = time.perf_counter() - t_wait
        return stats

    def read(self, batch: np.ndarray) -> tuple[np.ndarray, Any, float, float]:
        """Read a batch and preprocess it (background thread): ``(what was read: the stored codes
        of every band on the device path (still filtered: undone on the device), else the adapter's
        bands in float32; prepared or the
        ValueError that preprocessing raised; read_s (the store's codes), prepare_s (decoding,
        band selection and preparation))``."""
        t0 = time.perf_counter()
        prepared: Any = None
        if self.on_device:
            source, _ = self.work.patches.read_filtered("data", batch)  # the filter (self.filter) undone there
            t1 = time.perf_counter()
            enc = self.encoding
            try:
                prepared = self.adapter.prepare_encoded(source, self.modality, scale_factor=enc.scale_factor,
                                                        add_offset=enc.add_offset, channels=self.work.band_index,
                                                        filter=self.filter)
            except ValueError as exc:  # a bad tile: the main loop retries tile by tile
                prepared = exc
            return source, prepared, t1 - t0, time.perf_counter() - t1
        stored = self.work.patches.read_stored("data", batch)
        t1 = time.perf_counter()
        index = self.work.band_index
        if index != list(range(stored.shape[1])):  # the bands picked on the codes: fewer, smaller values
            stored = stored[:, index]
        source = np.ascontiguousarray(self.encoding.decode(stored), dtype=np.float32)
        if self.prepare is not None:
            try:
                prepared = self.prepare(source, self.modality)
            except ValueError as exc:  # a bad tile: the main loop retries tile by tile
                prepared = exc
        return source, prepared, t1 - t0, time.perf_counter() - t1

    def values(self, source: np.ndarray) -> np.ndarray:
        """The adapter's bands in provider units (float32) of what :meth:`read` read."""
        if not self.on_device:
            return source
        return self.encoding.decode(undo_filter(source[:, self.work.band_index], self.filter))

    def embed(self, batch: np.ndarray, missing_mask: np.ndarray, raw: np.ndarray, prepared: Any
              ) -> list[tuple[np.ndarray, Any]]:
        """The model on one batch: ``[(tile indices, EmbeddingOutput)]`` (the store's outputs, the
        grid in its stored type); one bad tile must not sink its batch, so a ValueError retries the
        batch tile by tile to name the culprit."""
        t0 = time.perf_counter()
        try:
            results = [(batch, self._forward(raw, prepared))]
        except ValueError:
            results = []
            raw = self.values(raw)
            for j, index in enumerate(batch):
                try:
                    results.append((batch[j : j + 1], self.adapter.embed(raw[j : j + 1], self.modality,
                                                                         self.output, self.out_dtypes)))
                except ValueError as exc:
                    if missing_mask[j]:
                        self.stats.failures[int(index)] = f"{type(exc).__name__}: {exc}"
        self.stats.timings["embed_s"] += time.perf_counter() - t0
        return results

    def _forward(self, raw: np.ndarray, prepared: Any) -> Any:
        if prepared is None:  # an adapter without the two-step API
            return self.adapter.embed(raw, self.modality, self.output, self.out_dtypes)
        if isinstance(prepared, ValueError):
            raise prepared
        return self.adapter.run(prepared, self.output, self.out_dtypes)

    def write(self, batch: np.ndarray, arrays: dict[str, np.ndarray]) -> float:
        """One call per array for the batch: arrays, then provenance, then (last) the statuses."""
        t0 = time.perf_counter()
        self.work.embeddings.write_tiles([int(i) for i in batch], ["ok"] * len(batch), [{}] * len(batch), **arrays)
        return time.perf_counter() - t0

    def report(self, i: int) -> None:
        if self.progress_fn is None:
            return
        stats, work = self.stats, self.work
        elapsed = time.perf_counter() - self.t_loop
        rate = stats.tiles_done / elapsed if elapsed > 0 else 0.0
        left = work.tiles_todo - stats.tiles_done - len(stats.failures)
        self.progress_fn({
            "embeddings_uri": work.embeddings_uri,
            "batches_done": i + 1,
            "batches_total": len(work.batches),
            "tiles_done": stats.tiles_done,
            "tiles_total": work.tiles_todo,
            "tiles_failed": len(stats.failures),
            "tiles_per_s": round(rate, 3),
            "eta_s": left / rate if rate > 0 else None,  # unrounded: tiny test stores finish in ms
            "elapsed_s": round(elapsed, 3),
        })


# -------------------------------------------------------------------------------------- result
def store_result(work: StoreWork, run: PipelineRun, wall: float) -> StoreResult:
    """The store's counts, timings and throughput, as reported to the orchestrator."""
    embedded_now = int(work.tiles_todo - len(run.failures))
    timings = {k: round(v, 3) for k, v in run.timings.items()}
    return StoreResult(
        embeddings_uri=work.embeddings_uri,
        patches_uri=work.patches_uri,
        size_px=int(work.patches.settings["size_px"]),
        tiles_total=len(work.patches.tile_ids),
        tiles_embedded_now=embedded_now,
        tiles_skipped_done=work.tiles_skipped,
        tiles_recomputed_for_alignment=work.tiles_recomputed,
        counts=work.embeddings.status_counts(),
        timings={**timings, "wall_s": round(wall, 3),
                 "embed_waiting_on_io_s": round(run.wait_read_s + run.wait_write_s, 3),
                 "embed_waiting_on_read_s": round(run.wait_read_s, 3),
                 "embed_waiting_on_write_s": round(run.wait_write_s, 3),
                 "write_drain_s": round(run.drain_s, 3)},
        # The forward pass's share of the store's wall time (the rest: setup, pipeline fill, drain).
        model_busy_fraction=round(run.timings["embed_s"] / wall, 4) if wall > 0 else 0.0,
        tiles_per_s=round(embedded_now / wall, 3) if wall > 0 and embedded_now else 0.0,
        nonfinite_values=run.nonfinite,
        embed_meta=run.embed_meta,
        fingerprint=work.fingerprint,
    )


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

    from rs_embed_pipeline.models import knobs

    with open_dagster_pipes() as pipes:
        request = EmbedRequest.from_extras(pipes.extras)
        options = dict(request.adapter_options)
        pipes.log.info(f"loading {request.model} with {json.dumps(options, default=str)}")
        adapter = load_pretrained_or_random(request.model, options, pipes.log.warning)
        settings = adapter.describe()
        if settings.get("random_weights"):
            pipes.log.warning(
                f"{request.model}: RANDOM WEIGHTS (allow_random_weights=True) - embeddings are NOT "
                "from the pretrained model"
            )
        batch_size = int(settings.get("batch_size") or options.get("batch_size") or 8)
        # the model resource's io_threads (the request); RS_EMBED_IO_THREADS when it gives none
        io_threads = request.io_threads if request.io_threads is not None else knobs.io_threads()

        def progress_to(key: str) -> Callable[[dict[str, Any]], None]:
            def progress(p: dict[str, Any]) -> None:
                eta = "n/a" if p["eta_s"] is None else f"{p['eta_s']:.0f} s"
                pipes.log.info(f"progress {key}: {p['tiles_done']}/{p['tiles_total']} tiles, "
                               f"{p['tiles_per_s']:.2f} tiles/s, ETA {eta} ({p['embeddings_uri']})")
                pipes.report_custom_message(progress_message(key, p))
            return progress

        for part in request.partitions:
            try:
                result = embed_store(
                    adapter, request.modality, part.patches_uri, part.embeddings_uri,
                    batch_size=batch_size, code_version=request.code_version, rebuild=request.rebuild,
                    force=request.force,
                    storage_options=dict(request.storage_options) if request.storage_options else None,
                    log_fn=pipes.log.info, progress_fn=progress_to(part.key), progress_every=request.progress_every,
                    io_threads=io_threads, outputs=request.outputs, grid_dtype=request.grid_dtype,
                )
            except StoreError as exc:
                # A store that is not ours or was built with other settings: a clear message
                # for the orchestrator (which fails the step without retrying), nothing touched.
                pipes.report_custom_message(StoreFailure(part.key, str(exc)).to_message())
                return
            pipes.report_custom_message(PartitionResult(part.key, settings, result).to_message())


if __name__ == "__main__":
    main()
