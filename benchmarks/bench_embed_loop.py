"""Does the worker's embed loop keep the model busy? Model-busy time / wall time of
``rs_embed_pipeline.worker.embed.embed_store`` with a full-size model over a local patch store.

    .venv-worker/bin/python benchmarks/bench_embed_loop.py                       # TerraFM-B bf16, 256 tiles
    .venv-worker/bin/python benchmarks/bench_embed_loop.py --model thor_1_0_base --precision fp32 --tiles 256

The store holds ``--tiles`` tiles of random S2 DN at the model's native size (TerraFM-B 224 px x 12
bands, THOR 288 px x 10 bands), written first (not timed). The loop then reads each batch and
preprocesses it (``adapter.prepare``) on a reader thread, runs the model (``adapter.run``) on the
main thread and writes the embeddings on a writer thread, at most two batches deep each way.

Printed, all from the same run: ``model_busy_fraction`` = time inside the forward pass / wall time
of the store (target >= 0.9); the loop's tiles/s and, as its baseline, the forward pass alone
(tiles / model time); the time the model waited for reads and for write back-pressure; the read,
preprocessing and write times that ran on the background threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = {
    "terrafm_b": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"],
    "thor_1_0_base": ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"],
}
SIDE = {"terrafm_b": 224, "thor_1_0_base": 288}


def make_store(uri: str, model: str, n: int) -> None:
    from rs_embed_pipeline.stores import ArraySpec, TileStore

    bands, side = BANDS[model], SIDE[model]
    store = TileStore.create_or_open(
        uri, "patches", tile_ids=[f"t{i:05d}" for i in range(n)],
        arrays=[ArraySpec("data", (len(bands), side, side), ("band", "y", "x")),
                ArraySpec("valid", (side, side), ("y", "x"), dtype="bool", fill_value=False)],
        fingerprint="bench-embed-loop", attrs={"modality": "s2", "bands": bands, "size_px": side, "scale_m": 10.0},
    )
    rng = np.random.default_rng(0)
    for start in range(0, n, 32):
        idx = list(range(start, min(n, start + 32)))
        data = rng.uniform(200, 6000, size=(len(idx), len(bands), side, side)).astype(np.float32)
        store.write_tiles(idx, ["ok"] * len(idx), [{}] * len(idx), data=data,
                          valid=np.ones((len(idx), side, side), dtype=bool))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="terrafm_b", choices=sorted(BANDS))
    ap.add_argument("--tiles", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from rs_embed_pipeline.models import load_adapter
    from rs_embed_pipeline.worker.embed import embed_store

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_embed_loop_"))
    root.mkdir(parents=True, exist_ok=True)
    patches, embeddings = str(root / "patches.zarr"), str(root / "embeddings.zarr")
    try:
        t = time.perf_counter()
        make_store(patches, args.model, args.tiles)
        store_s = time.perf_counter() - t
        torch.manual_seed(0)
        adapter = load_adapter(args.model, device=args.device, allow_random_weights=True, use_env=False,
                               precision=args.precision, batch_size=args.batch_size)
        progress = []
        result = embed_store(adapter, "s2", patches, embeddings, batch_size=args.batch_size, code_version="bench",
                             progress_fn=progress.append, progress_every=8).to_dict()
        tm = result["timings"]
        n = result["tiles_embedded_now"]
        summary = {
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "model": args.model, "precision": result["embed_meta"].get("precision"),
            "device": str(adapter.device), "tiles": n, "batch_size": args.batch_size,
            "model_busy_fraction": result["model_busy_fraction"],
            "wall_s": tm["wall_s"], "model_s": tm["embed_s"],
            "loop_tiles_per_s": round(n / tm["wall_s"], 3),
            "model_only_tiles_per_s": round(n / tm["embed_s"], 3),
            "loop_vs_model_only": round(tm["embed_s"] / tm["wall_s"], 3),
            "waiting_on_read_s": tm["embed_waiting_on_read_s"], "waiting_on_write_s": tm["embed_waiting_on_write_s"],
            "write_drain_s": tm["write_drain_s"],
            "background_read_s": tm["read_s"], "background_prepare_s": tm["prepare_s"],
            "background_write_s": tm["write_s"], "progress_reports": len(progress),
            "store_write_s_untimed": round(store_s, 1),
        }
        print(json.dumps(summary, indent=1))
        print(f"\nmodel busy {summary['model_busy_fraction']:.3f} of {tm['wall_s']:.1f} s wall "
              f"({n} tiles, {summary['loop_tiles_per_s']:.2f} tiles/s; the forward pass alone "
              f"{summary['model_only_tiles_per_s']:.2f} tiles/s); waited {tm['embed_waiting_on_read_s']:.2f} s "
              f"for reads, {tm['embed_waiting_on_write_s']:.2f} s for writes")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
