"""Throughput, peak memory and bf16 accuracy of the full-size model adapters (random weights, no
download), with ratios measured in the same run:

* bf16 vs fp32: the same adapter code, weights and inputs, ``precision="bf16"`` (autocast on CUDA
  and on CPUs with native bf16) against ``"fp32"``; pooled cosine of every image to its fp32 embedding.
* the yardstick: a timm ViT-B/16 (224 px, 3 bands, 197 tokens; timm comes with terratorch) run the
  same way (same device, precision, batch size, compile setting, host-to-device path) in the same process.
* ``--compile on``: ``torch.compile`` of the transformer blocks (adapter option ``compile=True``)
  against the eager run.

What is timed: ``adapter.run(prepared)`` - host batch -> device (CUDA: pinned memory, copied on a
side stream one chunk ahead, overlapping the forward pass), forward, grid assembly, copy back -
over ``--images`` images in chunks of the batch size. The numpy preprocessing (``adapter.prepare``) is
timed separately (img/s): in the worker it runs on a reader thread, overlapped with the model.

    python benchmarks/bench_models.py --device cpu                         # CPU: fp32 vs bf16, 4 models
    python benchmarks/bench_models.py --device cpu --models thor:p16 --batch-sizes 1 --images 1 --repeats 1
    python benchmarks/bench_models.py --device cuda --batch-sizes 32 128 256 --compile off on --json gpu.json
    python benchmarks/bench_models.py --device cuda --conformance ../shared/reference ...   # fixtures first

Models: ``terrafm`` (TerraFM-B S2, 224 px), ``terrafm:s1``, ``thor:p16`` (THOR 1.0 base S2, 288 px,
405 tokens), ``thor:p8`` (1620 tokens), ``thor:s1`` (S1, p16); ``--yardstick none`` skips ViT-B/16.

Baseline: rs-embed 0.3.1 itself needs Python >= 3.12 (PyPI), the worker environment is 3.11, so the
fp32 baseline is this project's fp32 path, which measured 1.00-1.05x rs-embed 0.3.1's on this
machine's class (issue 12) and matches its outputs within 1e-4 (the conformance tests).

Shared machines: ``img/cpu-s`` divides by the process CPU time instead of the wall time; with
``--threads 1`` it is the least noisy ratio when other jobs compete for the cores.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` per configuration; on CPU the peak RSS sampled
every 5 ms while the configuration runs (psutil when installed, else /proc/self/statm).
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
MODELS = {  # name -> (model id, modality, adapter options)
    "terrafm": ("terrafm_b", "s2", {}),
    "terrafm:s1": ("terrafm_b", "s1", {}),
    "thor:p16": ("thor_1_0_base", "s2", {"patch_size": 16}),
    "thor:p8": ("thor_1_0_base", "s2", {"patch_size": 8}),
    "thor:s1": ("thor_1_0_base", "s1", {"patch_size": 16}),
}


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

    def __enter__(self) -> PeakRSS:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def make_input(c: int, side: int, n: int, modality: str, rng: np.random.Generator) -> np.ndarray:
    if modality == "s2":
        return rng.uniform(0, 6000, size=(n, c, side, side)).astype(np.float32)
    return rng.gamma(1.0, 0.05, size=(n, c, side, side)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class Timer:
    """Times ``fn`` (after one warm-up call) on ``repeats`` runs; records peak memory."""

    def __init__(self, device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeats: int) -> tuple[float, float, float, object]:
        """``(wall s, process CPU s, peak memory bytes, last output)`` per run."""
        import torch

        fn()  # warm-up: kernels, oneDNN primitives, caches, compilation
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        with PeakRSS() as peak:
            t, c = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                out = fn()
            if self.cuda:
                torch.cuda.synchronize(self.device)
            elapsed = (time.perf_counter() - t) / repeats
            cpu = (time.process_time() - c) / repeats
        mem = torch.cuda.max_memory_allocated(self.device) if self.cuda else peak.peak
        return elapsed, cpu, mem, out


def bench_adapter(spec: str, precision: str, compile_: bool, bs: int, args, timer: Timer) -> dict:
    import torch

    from rs_embed_pipeline.models import load_adapter

    model_id, modality, options = MODELS[spec]
    torch.manual_seed(0)  # same random weights for every precision / compile setting
    t0 = time.perf_counter()
    adapter = load_adapter(model_id, device=args.device, allow_random_weights=True, use_env=False,
                           precision=precision, batch_size=bs, compile=compile_, **options)
    load_s = time.perf_counter() - t0
    c, side = len(adapter.input_bands(modality)), adapter.image_size
    raw = make_input(c, side, args.images, modality, np.random.default_rng(0))
    t = time.perf_counter()
    prepared = adapter.prepare(raw, modality)
    prepare_s = time.perf_counter() - t
    elapsed, cpu, mem, out = timer(lambda: adapter.run(prepared, args.output), args.repeats)
    row = {
        "model": spec, "model_id": model_id, "modality": modality, "device": str(adapter.device),
        "precision": out.meta["precision"], "precision_requested": precision, "autocast": out.meta["autocast"],
        "compile": compile_,
        "batch_size": bs, "images": args.images, "input": [c, side, side], "output": args.output,
        "grid": None if out.grid is None else list(out.grid.shape[1:]),
        "images_per_s": round(args.images / elapsed, 3), "s_per_image": round(elapsed / args.images, 4),
        "images_per_cpu_s": round(args.images / cpu, 3), "prepare_images_per_s": round(args.images / prepare_s, 1), "load_s": round(load_s, 2),
        "peak_memory_mib": round(mem / MiB, 1), "memory_kind": "cuda_max_allocated" if timer.cuda else "peak_rss",
        "tokens_per_image": out.meta.get("tokens_per_item"), "pooled": out.pooled,
    }
    return row


def bench_yardstick(name: str, precision: str, compile_: bool, bs: int, args, timer: Timer) -> dict:
    """timm's ViT-B/16 through the same device feeder, autocast and output copy as the adapters."""
    import timm
    import torch

    from rs_embed_pipeline.models import runtime
    from rs_embed_pipeline.models.adapters import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().requires_grad_(False).to(device)
    prec, autocast_spec, _ = runtime.resolve_precision(precision, device, name)
    runtime.cast_linear_weights(model, autocast_spec)
    if compile_:
        runtime.compile_blocks(model)
    x = np.random.default_rng(0).standard_normal((args.images, 3, 224, 224)).astype(np.float32)
    feeder = runtime.DeviceFeeder(device)

    def run():
        outs = []
        for xb in feeder.feed(x[s : s + bs] for s in range(0, len(x), bs)):
            with torch.inference_mode(), runtime.autocast(autocast_spec):
                outs.append(model.forward_features(xb).float().cpu())
        return outs

    elapsed, cpu, mem, _ = timer(run, args.repeats)
    return {"model": f"timm:{name}", "precision": prec, "precision_requested": precision,
            "autocast": autocast_spec, "compile": compile_,
            "batch_size": bs, "images": args.images, "images_per_s": round(args.images / elapsed, 3),
            "s_per_image": round(elapsed / args.images, 4), "images_per_cpu_s": round(args.images / cpu, 3),
            "peak_memory_mib": round(mem / MiB, 1)}


def conformance(args) -> bool:
    """The reference fixtures (reduced models, seeded weights, expected float32 outputs) on
    ``--device``: fp32 (TF32 off) must match within each case's tolerance; bf16 pooled cosine >= 0.999.
    One line per case; True when every case passes. The first thing to run on a new device."""
    from rs_embed_pipeline.models import load_adapter

    ok_all = True
    for case_dir in sorted(p for p in args.conformance.iterdir() if (p / "case.json").is_file()):
        case = json.loads((case_dir / "case.json").read_text())
        o = case["options"]
        if case["model"] == "terrafm_b":
            opts = {"image_size": o["image_size"], **({"s2_branch": o["s2_branch"]} if "s2_branch" in o else {})}
            files = {"pooled": "pooled.npy", "grid": "grid.npy"}
        else:
            opts = {k: o[k] for k in ("normalization", "patch_size", "image_size", "scale_m")}
            opts.update(resize_mode="native_snap" if o.get("resize_mode") == "native_snap" else "fixed",
                        shape_adjust=o.get("shape_adjust", "crop"), fill_value=o.get("fill_value", 0.0))
            files = {"pooled": "pooled.npy", "tokens": "tokens.npy", "grid": "grid_mean.npy"}
        raw = np.load(case_dir / case["input"]["file"])
        atol, rtol = case["tolerance"]["atol"], case["tolerance"]["rtol"]
        line = {"case": case_dir.name}
        for prec in ("fp32", "bf16"):
            adapter = load_adapter(case["model"], checkpoint=str(case_dir / case["weights"]["file"]), arch=case["arch"],
                                   device=args.device, use_env=False, precision=prec, **opts)
            out = adapter.embed(raw, case["modality"], "all" if "tokens" in files else "both")
            if prec == "fp32":
                worst = {}
                for kind, file in files.items():
                    exp = np.load(case_dir / file)
                    got = getattr(out, kind)
                    worst[kind] = float((np.abs(got - exp) - (atol + rtol * np.abs(exp))).max())
                line["fp32_max_excess_over_tolerance"] = {k: round(v, 8) for k, v in worst.items()}
                line["fp32_ok"] = all(v <= 0 for v in worst.values())
            else:
                line["bf16_ran"] = out.meta["precision"]
                line["bf16_pooled_cosine_min"] = round(float(cosine(out.pooled, np.load(case_dir / "pooled.npy")).min()), 6)
                line["bf16_ok"] = line["bf16_pooled_cosine_min"] >= 0.999
        ok_all &= line["fp32_ok"] and line["bf16_ok"]
        print(json.dumps(line), flush=True)
    print(f"conformance on {args.device}: {'PASS' if ok_all else 'FAIL'}", flush=True)
    return ok_all


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["terrafm", "terrafm:s1", "thor:p16", "thor:p8"],
                    choices=sorted(MODELS))
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                    help="default: 4 on CPU, 32 128 256 on CUDA")
    ap.add_argument("--images", type=int, default=None,
                    help="images per timed run (default: the largest batch size, at least 4)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (after one warm-up)")
    ap.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                    help="torch.compile of the transformer blocks: off, on or both")
    ap.add_argument("--yardstick", default="vit_base_patch16_224", help="timm model, or 'none'")
    ap.add_argument("--output", default="both", choices=["both", "pooled"],
                    help="both: pooled + grid copied back to the host (what the worker stores); pooled: "
                         "the grid stays on the device (on CUDA its copy back can dominate at large batches)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", type=Path, default=None, help="write all rows and the environment here")
    ap.add_argument("--conformance", type=Path, default=None, metavar="REFERENCE_DIR",
                    help="first check the reference fixtures on --device (e.g. ../shared/reference); "
                         "exit 1 on a mismatch")
    args = ap.parse_args(argv)

    import torch

    from rs_embed_pipeline.models import runtime
    from rs_embed_pipeline.models.adapters import resolve_device

    device = resolve_device(args.device)
    args.device = str(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_sizes is None:
        args.batch_sizes = [32, 128, 256] if device.type == "cuda" else [4]
    if args.images is None:
        args.images = max(4, max(args.batch_sizes))
    if device.type == "cuda":  # fp32 = true fp32 (the conformance setting), bf16 = autocast
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpu_bf16": runtime.cpu_bf16_support(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device), "images_per_run": args.images, "repeats": args.repeats,
        "baseline": "this project's fp32 path (rs-embed 0.3.1 needs Python >= 3.12; see the docstring)",
        "load_average_at_start": os.getloadavg(),
    }
    print(json.dumps({"env": env}), flush=True)
    if args.conformance is not None and not conformance(args):
        return 1
    timer = Timer(device)
    rows, yard = [], {}
    # The configurations compared with each other run back to back (a shared machine drifts).
    for bs in args.batch_sizes:
        for comp in args.compile:
            for spec in ([] if args.yardstick == "none" else [None]) + args.models:
                for prec in args.precisions:
                    if spec is None:
                        y = bench_yardstick(args.yardstick, prec, comp == "on", bs, args, timer)
                        yard[(bs, comp, prec)] = y
                        print(json.dumps(y), flush=True)
                        continue
                    row = bench_adapter(spec, prec, comp == "on", bs, args, timer)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "pooled"}), flush=True)
    # Ratios within this run.
    fp32 = {(r["model"], r["batch_size"], r["compile"]): r for r in rows if r["precision_requested"] == "fp32"}
    eager = {(r["model"], r["batch_size"], r["precision_requested"]): r for r in rows if not r["compile"]}
    for r in rows:
        base = fp32.get((r["model"], r["batch_size"], r["compile"]))
        if base is not None and base is not r:
            r["x_vs_fp32"] = round(r["images_per_s"] / base["images_per_s"], 3)
            r["x_vs_fp32_cpu_time"] = round(r["images_per_cpu_s"] / base["images_per_cpu_s"], 3)
            r["cosine_to_fp32_min"] = round(float(cosine(r["pooled"], base["pooled"]).min()), 6)
        e = eager.get((r["model"], r["batch_size"], r["precision_requested"]))
        if r["compile"] and e is not None:
            r["x_vs_eager"] = round(r["images_per_s"] / e["images_per_s"], 3)
        y = yard.get((r["batch_size"], "on" if r["compile"] else "off", r["precision_requested"]))
        if y is not None:
            r["x_vs_vit_b16"] = round(r["images_per_s"] / y["images_per_s"], 3)
    for y in yard.values():
        base = yard.get((y["batch_size"], "on" if y["compile"] else "off", "fp32"))
        if base is not None and base is not y:
            y["x_vs_fp32"] = round(y["images_per_s"] / base["images_per_s"], 3)
            y["x_vs_fp32_cpu_time"] = round(y["images_per_cpu_s"] / base["images_per_cpu_s"], 3)
    env["load_average_at_end"] = os.getloadavg()
    env["ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    print()
    mem_label = "CUDA MiB" if device.type == "cuda" else "RSS MiB"
    print(f"{'model':<26}{'prec':>5}{'comp':>5}{'bs':>5}{'img/s':>9}{'img/cpu-s':>10}{'x fp32':>8}{'(cpu)':>7}"
          f"{'cos min':>10}{'x ViT-B':>9}{'x eager':>9}{mem_label:>10}")
    for r in list(yard.values()) + rows:
        print(f"{r['model']:<26}{r['precision']:>5}{('on' if r['compile'] else 'off'):>5}{r['batch_size']:>5}"
              f"{r['images_per_s']:>9.2f}{r['images_per_cpu_s']:>10.2f}{r.get('x_vs_fp32', float('nan')):>8.2f}"
              f"{r.get('x_vs_fp32_cpu_time', float('nan')):>7.2f}"
              f"{r.get('cosine_to_fp32_min', float('nan')):>10.5f}{r.get('x_vs_vit_b16', float('nan')):>9.2f}"
              f"{r.get('x_vs_eager', float('nan')):>9.2f}{r['peak_memory_mib']:>10.0f}")
    print(f"device {env['device']} ({env['cuda_device'] or env['cpu']}), torch threads {env['threads']}, "
          f"{args.images} images per timed run, load average {env['load_average_at_start'][0]:.1f} -> "
          f"{env['load_average_at_end'][0]:.1f}, baseline: {env['baseline']}")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "yardstick": list(yard.values()),
                                         "rows": [{k: v for k, v in r.items() if k != "pooled"} for r in rows]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
