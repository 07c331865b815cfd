"""The embed step's host path: what one CPU core spends per tile outside the forward pass, today's
path against the new one in the same run; and, with a real model, whether the loop keeps it busy.

    .venv-worker/bin/python benchmarks/bench_embed_loop.py --null-model                 # host path, both models
    .venv-worker/bin/python benchmarks/bench_embed_loop.py --device cuda --batch-size 256 # model busy (GPU)
    .venv-worker/bin/python benchmarks/bench_embed_loop.py --models terrafm_b --precision bf16 --tiles 256
    .venv-worker/bin/python benchmarks/bench_embed_loop.py --grid-error 8 --precision fp32   # grid float16/bf16 error

Patch stores: the real fetch (``LocalStacProvider`` through ``orchestration.patch_fetch.fetch_into_stores``
and its ``PatchWriter``, as the patches asset runs them) over the demo's synthetic catalog
(``providers/local_catalogs/synthetic.py``), one store per tile size (TerraFM-B 224 px, THOR 288 px; 12
S2 bands, median). It runs in the orchestrator environment (``--orchestrator-python``; the worker
environment has no STAC stack), once per ``--workdir``. The region gives fewer tiles than ``--tiles``,
so the fetched tiles are repeated (stored bytes copied as they are) up to ``--tiles`` per model: the
host path's cost per tile depends on the tile's size and content statistics, not on which tile it is.
Three stores per size hold the same values: today's layout (float32, Blosc zstd-1), the landed one
(uint16 codes, zstd-5 byte shuffle) and the new one (uint16 codes as row differences, zstd-6 no
shuffle, one Blosc block per tile: ``stores/patch_encoding.py``).

Paths compared in one run, each through the real ``worker.embed.embed_store``:

* ``today``: float32 store read and written through zarr's own chunk I/O (``stores.chunk_io.ENABLED``
  off), preparation in numpy on the host (``adapter.prepare``), grid written float32;
* ``landed``: uint16 store, local chunks read and written by ``stores/chunk_io.py``, preparation on the
  model's device when it is a GPU (``adapter.prepare_encoded``; on a CPU device numpy on the host),
  grid written ``--grid-dtype`` (float16 by default), cast on the device, zstd-1; every embedding
  array one tile per chunk (the embed path as #21's first commits left it);
* ``new``: as ``landed``, the patch codes stored as row differences (Blosc zstd-6, one block per
  tile), the embedding store's pooled, status, tile_meta and 16-bit grid (uncompressed) one chunk per
  batch.

``--null-model`` replaces the forward pass by one that returns precomputed outputs of the right shapes
(random normal values, so the writes compress as real embeddings do) at no cost. Printed per model x
path x io threads: host CPU ms per tile (the process's user + system time: every thread, zarr's and
Blosc's included) and wall-clock tiles/s of the real loop, and tiles/s per core = tiles / CPU seconds;
then a breakdown from a serial pass over the same batches with the loop's own steps, each timed by the
process CPU clock (each figure the lowest of ``--repeat`` passes: others' load only adds): read (zarr + Blosc), decode (codes or float32 to the model's float32 input; band
selection), prepare (checks, normalisation, resizing), copy (to the device and back: the null forward,
the output cast, counting non-finite values, the copy to host numpy; with the CPU as the device the
cast and the count are the CPU's work, on a GPU the device's), write (embedding store). For a
store of row differences also ``read_filtered``: the read as the worker does it on a GPU (the
differences as stored, ``TileStore.read_filtered``; the running sum is the device's
``device_undo``), and "host on a GPU" = read_filtered + copy + write, what a GPU box's host keeps.
The device steps (``device_upload`` / ``device_undo`` / ``device_decode`` / ``device_prepare``) run
on ``--device`` (the CPU here: torch's CPU kernels, not a GPU's; no pinned memory off CUDA).

With a real model (no ``--null-model``; ``--device cuda`` on a GPU box) it prints what the worker reports:
``model_busy_fraction`` (forward pass / wall) and tiles/s, for the new path only unless ``--paths``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = "2024-01-01", "2024-04-01"
LON, LAT = 14.90, 45.00  # UTM 33N
SIDE = {"terrafm_b": 224, "thor_1_0_base": 288}
STAGES = ("read", "decode", "prepare", "copy", "write")
LAYOUTS = 3  # the stores' layouts (1: today + uint16; 2: + row differences; 3: their zstd-6 blocks): others are remade
PATHS = ("today", "landed", "new")


@contextlib.contextmanager
def path_setup(path: str) -> Iterator[None]:
    """The path's chunk I/O, embedding-store chunking and 16-bit grid codec (module docstring)."""
    from rs_embed_pipeline.stores import chunk_io
    from rs_embed_pipeline.stores import grid_dtype as G
    from rs_embed_pipeline.worker import embed

    saved = chunk_io.ENABLED, G.UNCOMPRESSED, embed._open_embeddings
    chunk_io.ENABLED = path != "today"  # today's path: zarr's own chunk reads and writes
    if path != "new":  # embedding stores as before: one tile per chunk, a 16-bit grid zstd-1
        G.UNCOMPRESSED = ()
        embed._open_embeddings = functools.partial(saved[2], tile_chunk=1)  # type: ignore[assignment]
    try:
        yield
    finally:
        chunk_io.ENABLED, G.UNCOMPRESSED, embed._open_embeddings = saved


# ------------------------------------------------------------------ stores (orchestrator environment)
def make_stores(workdir: Path, km: float, tiles: int) -> None:
    """The fetched stores (``src_<side>.zarr``) and, per side, ``today_<side>.zarr`` (float32),
    ``landed_<side>.zarr`` (uint16 codes) and ``new_<side>.zarr`` (row differences) of ``tiles`` tiles each."""
    from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
    from rs_embed_pipeline.core.vocabulary import S2_BANDS
    from rs_embed_pipeline.orchestration.patch_fetch import fetch_into_stores
    from rs_embed_pipeline.providers import LocalStacProvider
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog
    from rs_embed_pipeline.providers.sensor_options import SensorOptions
    from rs_embed_pipeline.stores import ArraySpec, TileStore
    from rs_embed_pipeline.stores.patch_encoding import FLOAT32, encoding_for

    bbox = (LON, LAT, LON + km / (111.32 * math.cos(math.radians(LAT))), LAT + km / 111.32)
    catalog = workdir / "catalog"
    if not (catalog / "catalog.json").exists():
        generate_synthetic_catalog(catalog, bbox, START, END, seed=0, s2_revisit_days=10, s1=False, pad_m=600.0)
    provider = LocalStacProvider(catalog / "catalog.json", max_workers=2)
    bands = list(S2_BANDS)
    for side in sorted(set(SIDE.values())):
        grid = build_tile_grid(bbox_aoi(*bbox), side, 10.0).reset_index(drop=True)
        encoding = encoding_for("s2")

        def create(uri: str, ids: list[str], enc: Any, side: int = side, filter: str | None = None) -> Any:
            settings = {"modality": "s2", "bands": bands, "size_px": side, "scale_m": 10.0, "data_encoding": enc.name}
            return TileStore.create_or_open(
                uri, "patches", tile_ids=ids,
                arrays=[ArraySpec("data", (len(bands), side, side), ("band", "y", "x"), encoding=enc, filter=filter),
                        ArraySpec("valid", (side, side), ("y", "x"), dtype="bool", fill_value=False)],
                fingerprint=f"bench-embed-loop-{enc.name}", attrs=settings, rebuild=True)

        src = create(str(workdir / f"src_{side}.zarr"), list(grid["tile_id"]), encoding)
        fetch_into_stores(provider, {side: src}, grid, start=START, end=END, modality="s2", bands=bands,
                          sensor_options=SensorOptions.parse("s2", {"composite": "median", "cloudy_pct": 30,
                                                                    "fill_value": 0.0}))
        ok = src.indices_with_status("ok")
        codes, valid = src.read_stored("data", ok), src.read("valid", ok)
        print(f"{side} px: fetched {len(ok)} ok tiles of {len(grid)} from the synthetic catalog; repeated to {tiles}")
        reps = np.resize(np.arange(len(ok)), tiles)
        ids = [f"{src.tile_ids[ok[r]]}-{k}" for k, r in enumerate(reps)]
        for name, enc, filt in (("new", encoding, encoding.store_filter), ("landed", encoding, None),
                                ("today", FLOAT32, None)):
            store = create(str(workdir / f"{name}_{side}.zarr"), ids, enc, filter=filt)
            for s in range(0, tiles, 32):
                r = reps[s : s + 32]
                data = codes[r] if enc is encoding else encoding.decode(codes[r])
                store.write_tiles(list(range(s, s + len(r))), ["ok"] * len(r), [{}] * len(r), data=data, valid=valid[r])
    (workdir / "stores.json").write_text(json.dumps({"tiles": tiles, "km": km, "layouts": LAYOUTS}))


def ensure_stores(args: argparse.Namespace) -> None:
    marker = args.workdir / "stores.json"
    if marker.exists() and json.loads(marker.read_text()) == {"tiles": args.tiles, "km": args.km, "layouts": LAYOUTS}:
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cmd = [str(args.orchestrator_python), str(Path(__file__).resolve()), "--make-stores", "--workdir",
           str(args.workdir), "--tiles", str(args.tiles), "--km", str(args.km)]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"stores made in {time.perf_counter() - t:.0f} s (not timed below)")


# ------------------------------------------------------------------------- the loop (worker environment)
def cpu_s() -> float:
    """The process's CPU seconds (user + system, every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def null_forward(adapter: Any, batch_size: int) -> None:
    """Replace the adapter's forward pass by one returning precomputed outputs of its shapes."""
    import torch

    d, gh, gw = adapter.grid_shape("s2")
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(batch_size, adapter.embed_dim, generator=g).to(adapter.device)
    grid = torch.randn(batch_size, d, gh, gw, generator=g).to(adapter.device)

    def forward(batch: Any, modality: str, wanted: Any, forward_args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        n = batch.shape[0]
        outs = {"pooled": pooled[:n], "grid": grid[:n]}
        return {k: outs[k] for k in wanted}, {"null_model": True}

    adapter._forward = forward


def loop_run(adapter: Any, patches: str, out: str, *, batch_size: int, io_threads: int,
             grid_dtype: str) -> dict[str, Any]:
    """``embed_store`` over ``patches`` (a float32 store is prepared on the host, as today; a
    uint16 one on a GPU, or on the host for a CPU device), its CPU and wall time."""
    from rs_embed_pipeline.worker.embed import embed_store

    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = cpu_s(), time.perf_counter()
    result = embed_store(adapter, "s2", patches, out, batch_size=batch_size, code_version="bench",
                         io_threads=io_threads, grid_dtype=grid_dtype)
    cpu, wall = cpu_s() - c0, time.perf_counter() - t0
    n = result.tiles_embedded_now
    return {"tiles": n, "cpu_ms_per_tile": round(1e3 * cpu / n, 3), "wall_tiles_per_s": round(n / wall, 1),
            "tiles_per_s_per_core": round(n / cpu, 1), "model_busy_fraction": result.model_busy_fraction,
            "worker_tiles_per_s": result.tiles_per_s, "timings": result.timings,
            "nonfinite": result.nonfinite_values}


def breakdown(adapter: Any, patches: str, out: str, *, batch_size: int, grid_dtype: str) -> dict[str, float]:
    """CPU ms per tile of each step, the loop's own calls one after the other on this thread: read,
    decode and prepare on the host (what the worker does on a CPU device and for float32 stores),
    copy (the null forward's output cast, counted and copied to host numpy: ``adapter.run``), write;
    for an integer-coded store also ``prepare_encoded``'s steps on this device (``device_*``: a
    GPU's work on CUDA, only the launches are the host's)."""
    from rs_embed_pipeline.models import device_prepare as D
    from rs_embed_pipeline.worker.embed import EmbedPipeline, open_store_work

    shutil.rmtree(out, ignore_errors=True)
    work = open_store_work(adapter, "s2", patches, out, batch_size=batch_size, code_version="bench",
                           grid_dtype=grid_dtype)
    pipe = EmbedPipeline(adapter, "s2", work, io_threads=1)
    enc = pipe.encoding
    spent: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    n = 0

    def timed(stage: str, fn: Any, *a: Any, **kw: Any) -> Any:
        c = cpu_s()
        value = fn(*a, **kw)
        spent[stage] = spent.get(stage, 0.0) + cpu_s() - c
        return value

    for batch, _ in work.batches:
        stored = timed("read", work.patches.read_stored, "data", batch)
        # On a GPU the worker reads the row differences as stored and sums them there: the host's read
        filtered = stored
        if pipe.filter is not None:
            filtered, _ = timed("read_filtered", work.patches.read_filtered, "data", batch)
        codes = stored if work.band_index == list(range(stored.shape[1])) else None
        raw = timed("decode", lambda s, c=codes: np.ascontiguousarray(
            enc.decode(c if c is not None else s[:, work.band_index]), dtype=np.float32), stored)
        prepared = timed("prepare", adapter.prepare, raw, "s2")
        del raw
        if not enc.is_identity:  # the device path's steps, on this device
            t = timed("device_upload", D.upload, filtered, adapter.device, work.band_index)
            t = timed("device_undo", D.undo_filter, t, pipe.filter)
            x = timed("device_decode", D.decode, t, enc.scale_factor, enc.add_offset,
                      unsigned16=stored.dtype == np.uint16)
            timed("device_prepare", D.input_flags, x, "s2")
            timed("device_prepare", adapter._prepare, x, "s2", ops=D.TORCH_OPS)
            del t, x
        del filtered
        out_ = timed("copy", adapter.run, prepared, pipe.output, pipe.out_dtypes)
        timed("write", pipe.write, batch, {k: getattr(out_, k) for k in work.outputs})
        n += len(batch)
    return {k: round(1e3 * v / n, 3) for k, v in spent.items()}


def grid_error(adapter: Any, patches: str, tiles: int) -> dict[str, dict[str, float]]:
    """The real model's grid on ``tiles`` tiles (float32, its ``out_dtypes`` cast on the device) stored
    as float16 / bfloat16 against float32: the largest error relative to the tile's largest |value|,
    the relative RMS error, the lowest cosine of a cell's feature vector and the largest |value|."""
    from rs_embed_pipeline.stores import TileStore
    from rs_embed_pipeline.stores import grid_dtype as G

    store = TileStore.open(patches, "patches")
    bands = [list(store.settings["bands"]).index(b) for b in adapter.input_bands("s2")]
    raw = store.read("data", range(tiles))[:, bands]
    ref = adapter.embed(raw, "s2", "grid").grid
    out: dict[str, dict[str, float]] = {}
    for dtype in ("float16", "bfloat16"):
        got = G.to_float32(adapter.embed(raw, "s2", "grid", {"grid": dtype}).grid, dtype)
        err = got - ref
        a, b = np.moveaxis(ref, 1, -1).reshape(-1, ref.shape[1]), np.moveaxis(got, 1, -1).reshape(-1, ref.shape[1])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out[dtype] = {"max_err_rel_to_tile_max": float((np.abs(err).reshape(tiles, -1).max(1)
                                                        / np.abs(ref).reshape(tiles, -1).max(1)).max()),
                      "rms_err_rel": float(np.sqrt((err ** 2).mean() / (ref ** 2).mean())),
                      "min_cell_cosine": float(cos.min()), "max_abs_value": float(np.abs(ref).max())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["terrafm_b", "thor_1_0_base"], choices=sorted(SIDE))
    ap.add_argument("--tiles", type=int, default=256, help="tiles per model (fetched tiles repeated)")
    ap.add_argument("--km", type=float, default=6.0, help="side of the synthetic region fetched")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--io-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                    help="default: both with --null-model, new only with a real model")
    ap.add_argument("--grid-dtype", default="float16", choices=["float32", "float16", "bfloat16"],
                    help="the new path's stored grid type (today's is float32)")
    ap.add_argument("--null-model", action="store_true", help="outputs of the right shapes at no cost")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="passes per figure; the lowest CPU time is kept")
    ap.add_argument("--grid-error", type=int, default=0, metavar="N",
                    help="only: the real model's fp32 grid of N tiles stored as float16 / bfloat16 against float32")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (host path: one core)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rs_embed_bench_embed_loop")
    ap.add_argument("--orchestrator-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    ap.add_argument("--make-stores", action="store_true", help=argparse.SUPPRESS)  # the orchestrator side
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.make_stores:
        make_stores(args.workdir, args.km, args.tiles)
        return 0
    ensure_stores(args)

    import numcodecs.blosc
    import torch
    import zarr

    from rs_embed_pipeline.models import load_adapter

    # One core's work: Blosc and torch single-threaded; zarr's pool only overlaps I/O.
    numcodecs.blosc.set_nthreads(1)
    torch.set_num_threads(args.torch_threads)
    paths = args.paths or (list(PATHS) if args.null_model else ["new"])
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "device": args.device, "null_model": args.null_model, "batch_size": args.batch_size,
        "zarr_threads": zarr.config.get("threading.max_workers"), "runs": []}
    for model in args.models:
        side = SIDE[model]
        torch.manual_seed(0)
        adapter = load_adapter(model, device=args.device, allow_random_weights=True, use_env=False,
                               precision=args.precision, batch_size=args.batch_size)
        if args.grid_error:
            report["grid_error"] = {**report.get("grid_error", {}), model: grid_error(
                adapter, str(args.workdir / f"new_{side}.zarr"), args.grid_error)}
            print(model, json.dumps(report["grid_error"][model]))
            continue
        if args.null_model:
            null_forward(adapter, args.batch_size)
        for path in paths:
            patches = str(args.workdir / f"{path}_{side}.zarr")
            out = str(args.workdir / f"emb_{model}_{path}.zarr")
            grid_dtype = "float32" if path == "today" else args.grid_dtype
            row: dict[str, Any] = {"model": model, "path": path, "grid_dtype": grid_dtype}
            # The machine is shared: each figure is the lowest of --repeat passes (CPU time only grows
            # with others' load), per step for the breakdown.
            with path_setup(path):
                if not args.no_breakdown and args.null_model:
                    passes = [breakdown(adapter, patches, out, batch_size=args.batch_size, grid_dtype=grid_dtype)
                              for _ in range(args.repeat)]
                    row["breakdown_cpu_ms_per_tile"] = {k: min(p[k] for p in passes) for k in passes[0]}
                for threads in args.io_threads:
                    runs = [loop_run(adapter, patches, out, batch_size=args.batch_size, io_threads=threads,
                                     grid_dtype=grid_dtype) for _ in range(args.repeat)]
                    row[f"io_threads_{threads}"] = min(runs, key=lambda r: r["cpu_ms_per_tile"])
            report["runs"].append(row)
            print_row(row, args.io_threads)
        del adapter
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    return 0


def print_row(row: dict[str, Any], threads: list[int]) -> None:
    b = row.get("breakdown_cpu_ms_per_tile")
    parts = [f"{row['model']:<14} {row['path']:<5} grid {row['grid_dtype']:<8}"]
    if b:
        host = sum(b[k] for k in STAGES)
        parts.append(" ".join(f"{k} {b[k]:6.2f}" for k in STAGES) + f" = {host:6.2f} CPU ms/tile (serial pass)")
        if "device_decode" in b:  # on CUDA the host keeps read, write and the copies; decode/prepare: the GPU's
            parts.append(f"read+copy+write {b['read'] + b['copy'] + b['write']:6.2f}; device steps here: upload "
                         f"{b['device_upload']:.2f} undo {b.get('device_undo', 0.0):.2f} decode "
                         f"{b['device_decode']:.2f} prepare {b['device_prepare']:.2f}")
        if "read_filtered" in b:  # the worker on a GPU: row differences read as stored, summed on the device
            parts.append(f"host on a GPU (read without the running sum {b['read_filtered']:.2f} + copy + write) "
                         f"{b['read_filtered'] + b['copy'] + b['write']:6.2f}")
    print(" | ".join(parts))
    for t in threads:
        r = row[f"io_threads_{t}"]
        print(f"    io_threads {t}: loop {r['cpu_ms_per_tile']:6.2f} CPU ms/tile, {r['tiles_per_s_per_core']:7.1f} "
              f"tiles/s per core, {r['wall_tiles_per_s']:7.1f} tiles/s wall, model busy {r['model_busy_fraction']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
