"""Where the Earth Engine client's CPU goes per tile: ``bench_gee.py --payload-only``'s fetch with
each step wrapped in per-thread CPU accounting (user + system, ``getrusage(RUSAGE_THREAD)``, page
faults), summed over every thread.

    python benchmarks/bench_gee_breakdown.py --tiles 10000 --latency-s 2            # this tree
    python benchmarks/bench_gee_breakdown.py --tiles 10000 --latency-s 2 --rev 149e3b8  # a revision

Steps: the HTTP receive (``ComputePixelsClient.compute_pixels``), the NPY header
(``read_npy`` as ``calls.py`` calls it; ``provider._read_npy`` in revisions before the provider's
split), the tile cut (``GEEProvider._cut``: bands, validity, patches), the
expression and its serialisation (``GEEProvider._pixels_call``); the rest of the process's CPU is
threads, scheduler, scene list and consumer. ``--rev`` runs a git revision's provider (``git
archive``, its own process) against its own stand-in. Linux only (RUSAGE_THREAD).
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import os
import resource
import subprocess
import sys
import tempfile
import threading
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = (("client:ComputePixelsClient.compute_pixels", "receive (HTTP)"),
         ("calls:read_npy|provider:_read_npy", "NPY header"),  # the first that the tree has
         ("provider:GEEProvider._cut", "tile cut"),
         ("provider:GEEProvider._pixels_call", "expression + serialisation"))


def _measure(tree: str, args: argparse.Namespace) -> None:
    """Wraps the steps of ``tree``'s provider, runs bench_gee's case there, prints the split."""
    sys.path[:0] = [tree, os.path.join(tree, "benchmarks")]
    import bench_gee  # noqa: PLC0415 - the tree's own copy, after its path is first

    totals: collections.defaultdict[str, float] = collections.defaultdict(float)
    lock = threading.Lock()
    depth = threading.local()
    for specs, label in STEPS:
        owner, name = _step_owner(specs)
        setattr(owner, name, _wrapped(getattr(owner, name), label, totals, lock, depth))

    server = subprocess.Popen(
        [sys.executable, "-m", "rs_embed_pipeline_tests.providers.ee_standin", "--port", "0",
         "--latency-s", str(args.latency_s), "--images", "1", "--payload-only"],
        cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = (server.stdout.readline() if server.stdout else "").strip().split(" ", 1)[1]
        bench_gee.ee_standin.patch_ee_offline()
        case = argparse.Namespace(tiles=args.tiles, size_px=224, bands=12, latency_s=args.latency_s, images=1,
                                  composite="median", payload_only=True, concurrency=40, rate=100.0)
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
        cpu0 = _process_cpu()
        bench_gee.run_case(case, url, server.pid, "rest", "partition")
        cpu = _process_cpu() - cpu0
        print(f"load average {os.getloadavg()[0]:.1f}")
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=30)
    n = args.tiles
    print("per tile, every thread (user + system CPU; the warm-up fetch of one tile included):")
    for _, label in STEPS:
        print(f"  {label:28s} {totals[label] / n * 1e3:6.2f} ms  (system {totals[label + ' sys'] / n * 1e3:.2f} ms, "
              f"{totals[label + ' faults'] / n:.0f} page faults)")
    rest = cpu - sum(totals[label] for _, label in STEPS)
    print(f"  {'the rest':28s} {rest / n * 1e3:6.2f} ms\n  {'the process':28s} {cpu / n * 1e3:6.2f} ms")


def _step_owner(specs: str) -> tuple[Any, str]:
    """(object, attribute) of the first ``module:attr.path`` of ``specs`` (``|``-separated) that
    the tree's ``rs_embed_pipeline.providers.gee`` has."""
    for spec in specs.split("|"):
        module, _, attr = spec.partition(":")
        try:
            owner: Any = importlib.import_module(f"rs_embed_pipeline.providers.gee.{module}")
        except ImportError:
            continue
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        if hasattr(owner, name):
            return owner, name
    raise SystemExit(f"none of {specs} in this tree")


def _process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _wrapped(fn: Any, label: str, totals: collections.defaultdict[str, float], lock: threading.Lock,
             depth: threading.local) -> Any:
    """``fn`` counting its thread's CPU into ``totals[label]`` (outermost wrapped call only)."""
    @functools.wraps(fn)
    def call(*a: Any, **k: Any) -> Any:
        level = getattr(depth, "n", 0)
        depth.n = level + 1
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        try:
            return fn(*a, **k)
        finally:
            depth.n = level
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            if level == 0:  # a step inside another (the cut's patches) counts in the outer one
                with lock:
                    totals[label] += (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                    totals[label + " sys"] += r1.ru_stime - r0.ru_stime
                    totals[label + " faults"] += r1.ru_minflt - r0.ru_minflt
    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiles", type=int, default=10000)
    p.add_argument("--latency-s", type=float, default=2.0)
    p.add_argument("--rev", help="git revision whose provider to measure (default: this tree)")
    args = p.parse_args()
    if not args.rev:
        _measure(ROOT, args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-gee-breakdown-") as tree:
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        code = (f"import argparse, sys; sys.path.insert(0, {ROOT!r} + '/benchmarks'); import bench_gee_breakdown as b; "
                f"b._measure({tree!r}, argparse.Namespace(**{vars(args)!r}))")
        print(f"[revision {args.rev}]", flush=True)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=tree)


if __name__ == "__main__":
    main()
