"""Throughput and peak memory of the full-size model adapters (random weights, no download).

Measures ``adapter.embed(raw, modality, output="both")`` end to end - numpy preprocessing, host to
device copy, the forward pass, grid assembly and the copy back - on native-size inputs (TerraFM 224 px,
THOR 288 px), for several batch sizes.

    python benchmarks/bench_models.py --device cpu --batch-sizes 1 4 8
    python benchmarks/bench_models.py --device cuda --batch-sizes 1 8 32 64 --precision bf16 --json out.json

Memory: on CUDA ``torch.cuda.max_memory_allocated`` per configuration; on CPU the peak resident set
size sampled every 5 ms while the configuration runs (``psutil`` when installed, else
``/proc/self/statm``), next to the RSS before it (weights included) and the process-wide ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1024 * 1024


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the RSS on a background thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def make_input(adapter, modality: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    c = len(adapter.input_bands(modality))
    side = adapter.image_size
    if modality == "s2":
        return rng.uniform(0, 6000, size=(batch, c, side, side)).astype(np.float32)
    return rng.gamma(1.0, 0.05, size=(batch, c, side, side)).astype(np.float32)


def bench_model(name: str, args, rng: np.random.Generator) -> list[dict]:
    import torch

    from rs_embed_pipeline.models import load_adapter

    options = {"allow_random_weights": True, "precision": args.precision}
    if name.startswith("thor"):
        options["patch_size"] = args.thor_patch_size
    t0 = time.perf_counter()
    adapter = load_adapter(name, device=args.device, **options)
    load_s = time.perf_counter() - t0
    cuda = adapter.device.type == "cuda"
    rows = []
    for bs in args.batch_sizes:
        adapter.batch_size = bs
        x = make_input(adapter, args.modality, bs, rng)
        adapter.embed(x, args.modality, "both")  # warm-up (kernels, caches)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_before = rss_bytes()
        with PeakRSS() as peak:
            t = time.perf_counter()
            for _ in range(args.repeats):
                out = adapter.embed(x, args.modality, "both")
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t
        row = {
            "model": adapter.model_id,
            "modality": args.modality,
            "device": str(adapter.device),
            "precision": adapter.precision,
            "batch_size": bs,
            "input": list(x.shape),
            "grid": list(out.grid.shape[1:]),
            "images_per_s": round(bs * args.repeats / elapsed, 3),
            "s_per_batch": round(elapsed / args.repeats, 4),
            "load_s": round(load_s, 2),
            "rss_before_mib": round(rss_before / MiB, 1),
            "peak_rss_mib": round(peak.peak / MiB, 1),
        }
        if name.startswith("thor"):
            row["patch_size"] = args.thor_patch_size
            row["tokens_per_image"] = out.meta["tokens_per_item"]
        if cuda:
            row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    del adapter
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["terrafm_b", "thor_1_0_base"])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per batch size (after one warm-up)")
    ap.add_argument("--modality", default="s2", choices=["s2", "s1"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--thor-patch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", type=Path, default=None, help="write all rows and the environment here")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    print(json.dumps({"env": env}), flush=True)
    rng = np.random.default_rng(0)
    rows = []
    for name in args.models:
        rows += bench_model(name, args, rng)
    env["ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    print()
    print(f"{'model':<16}{'bs':>4}{'img/s':>9}{'s/batch':>9}{'peak RSS MiB':>14}{'CUDA MiB':>10}")
    for r in rows:
        print(f"{r['model']:<16}{r['batch_size']:>4}{r['images_per_s']:>9.2f}{r['s_per_batch']:>9.3f}"
              f"{r['peak_rss_mib']:>14.0f}{r.get('cuda_max_allocated_mib', float('nan')):>10.0f}")
    print(f"process ru_maxrss: {env['ru_maxrss_mib']:.0f} MiB, torch threads: {env['threads']}")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
