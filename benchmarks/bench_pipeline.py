"""Throughput, time split and peak memory of the whole chain for one partition, by region size.

Runs tile_grid -> s2_patches -> terrafm_s2_embeddings -> terrafm_s2_cube (Dagster, in process; the
model in the worker environment through Pipes, as in production) for a region of about N tiles of
224 px, each N in a fresh process:

    .venv/bin/python benchmarks/bench_pipeline.py --tiles 1000 5000
    .venv/bin/python benchmarks/bench_pipeline.py --tiles 200 --json out.json --keep

* Pixels: ``rs_embed_pipeline_tests/pipeline/fakes.py:SyntheticPixelsProvider``, a stub that
  synthesizes S2 DN per tile (smooth field + noise, a function of the tile id) without reading
  anything, so that the figures are the pipeline's own (stores, model, cube), not a catalog's.
* Model: TerraFM-B at the reference fixture's reduced size (its ``arch`` and weights), CPU, batch 8.
  THOR is switched off for S2 (``modalities: [s1]``), so only 224 px patches are fetched.
* Time split: fetch = the patches step's fetch loop (provider + input inspection + patch store
  writes); embed = the worker's model time; read / write = the worker's patch reads and embedding
  writes (background threads, overlapped with the model); ``embed_waiting_on_io_s`` = time the
  model loop waited for a read or for write back-pressure (pipeline fill included);
  ``write_drain_s`` = waiting for the last writes after the last batch; cube = the cube step.
* Peak RSS: sampled every 50 ms with psutil, for the orchestrator (the process that runs the
  Dagster job) and for the worker (its child processes), plus the orchestrator's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MiB = 1024 * 1024
LON0, LAT0 = 6.6, 46.5
CHAIN = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube"]


class Peaks:
    """Peak RSS of this process and of its children, sampled on a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.orchestrator = 0
        self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.orchestrator = max(self.orchestrator, self.proc.memory_info().rss)
                kids = 0
                for child in self.proc.children(recursive=True):
                    try:
                        kids += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.worker = max(self.worker, kids)
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bbox_for(n_tiles: int) -> tuple[list[float], int]:
    """A square bbox whose 224 px tile grid holds about ``n_tiles`` tiles (and that count)."""
    from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid

    side_m = math.sqrt(n_tiles) * 2240.0
    best = None
    for factor in (0.9, 0.94, 0.97, 1.0, 1.03):
        w = side_m * factor - 2240.0
        dlat = w / 110_540.0
        dlon = w / (111_320.0 * math.cos(math.radians(LAT0 + dlat / 2)))
        bbox = [LON0, LAT0, LON0 + dlon, LAT0 + dlat]
        count = len(build_tile_grid(bbox_aoi(*bbox), 224, 10.0))
        if best is None or abs(count - n_tiles) < abs(best[1] - n_tiles):
            best = (bbox, count)
    return best


def run_one(n_tiles: int, root: Path, batch_size: int) -> dict:
    import warnings

    import dagster as dg

    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.resources import PipelineStore, TerraFMResource, ThorResource
    from rs_embed_pipeline.orchestration.settings import Settings
    from rs_embed_pipeline_tests.pipeline.conftest import reference_dir, write_config
    from rs_embed_pipeline_tests.pipeline.fakes import SyntheticPixelsImagery

    warnings.filterwarnings("ignore")
    bbox, count = bbox_for(n_tiles)
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root / "pipeline.yaml", [{"name": "bench", "bbox": bbox}])
    settings = Settings.from_env({"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": str(root / "store")})
    ref = reference_dir()
    case = json.loads((ref / "terrafm_s2_l2a" / "case.json").read_text())
    worker_python = os.environ.get("RS_EMBED_WORKER_PYTHON", str(REPO / ".venv-worker" / "bin" / "python"))
    resources = {
        "store": PipelineStore(root=str(root / "store")),
        "imagery": SyntheticPixelsImagery(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "terrafm": TerraFMResource(worker_python=worker_python, device="cpu", batch_size=batch_size,
                                  arch_json=json.dumps(case["arch"]),
                                  checkpoint=str(ref / "terrafm_s2_l2a" / "weights.pth")),
        "thor": ThorResource(worker_python=worker_python, device="cpu", modalities=["s1"]),
    }
    defs = build_definitions(settings, resources=resources)
    job = dg.define_asset_job("bench_chain", selection=CHAIN)
    job_def = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("bench_chain")
    key = dg.MultiPartitionKey({"region": "bench", "window": "2024-01-01"})
    t0 = time.perf_counter()
    with dg.instance_for_test() as instance, Peaks() as peaks:
        result = job_def.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
    wall = time.perf_counter() - t0
    if not result.success:
        raise SystemExit("\n".join(e.message or "" for e in result.all_events if e.is_failure))
    md = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
          for e in result.get_asset_materialization_events()}
    steps = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            steps[event.step_key] = round(event.event_specific_data.duration_ms / 1000, 2)
    timings = md["terrafm_s2_embeddings"]["timings_s"].value
    embedded = md["terrafm_s2_embeddings"]["tiles_embedded_now"].value
    return {
        "tiles": count,
        "wall_s": round(wall, 1),
        "tiles_per_s": round(count / wall, 2),
        "steps_s": steps,
        "fetch_s": md["s2_patches"]["fetch_seconds"].value,
        "worker": timings,
        "embed_wait_fraction": round(timings["embed_waiting_on_io_s"] / timings["wall_s"], 4),
        "embed_tiles_per_s": round(embedded / timings["wall_s"], 2),
        "cube_s": steps.get("terrafm_s2_cube"),
        "peak_rss_mib": {"orchestrator": round(peaks.orchestrator / MiB), "worker": round(peaks.worker / MiB)},
        # The kernel's high-water mark of this process. (Not the children's: a child forked from this
        # process counts this process's pages until it execs, so its ru_maxrss says nothing.)
        "ru_maxrss_mib": {"orchestrator": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--root", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one is not None:  # a child: one region size, result as JSON on the last line
        print(json.dumps(run_one(args.one, args.root, args.batch_size)))
        return

    import psutil

    base = args.root or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
               "load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()}
    print(f"machine: {machine}")
    results = []
    for n in args.tiles:
        root = base / f"n{n}"
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--root", str(root),
                               "--batch-size", str(args.batch_size)],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.exit(f"N={n} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        w = res["worker"]
        print(f"\n{res['tiles']} tiles: {res['wall_s']} s, {res['tiles_per_s']} tiles/s end to end")
        print(f"  steps (s): {res['steps_s']}")
        print(f"  fetch {res['fetch_s']} s | worker wall {w['wall_s']} s: embed {w['embed_s']}, read {w['read_s']}, "
              f"write {w['write_s']} (threads), waiting on io {w['embed_waiting_on_io_s']} "
              f"({100 * res['embed_wait_fraction']:.1f}% of the worker's wall; read "
              f"{w.get('embed_waiting_on_read_s')}, write back-pressure {w.get('embed_waiting_on_write_s')}, "
              f"final drain {w.get('write_drain_s')}) -> {res['embed_tiles_per_s']} tiles/s | cube {res['cube_s']} s")
        print(f"  peak RSS (MiB): orchestrator {res['peak_rss_mib']['orchestrator']}, worker "
              f"{res['peak_rss_mib']['worker']} (orchestrator ru_maxrss {res['ru_maxrss_mib']['orchestrator']})")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        for who in ("orchestrator", "worker"):
            ratio = last["peak_rss_mib"][who] / max(1, first["peak_rss_mib"][who])
            print(f"peak RSS {who}: {last['tiles']} tiles / {first['tiles']} tiles = {ratio:.2f}x "
                  f"({'ok' if ratio <= 1.2 else 'ABOVE 1.2x'})")
    worst = max(r["embed_wait_fraction"] for r in results)
    print(f"embed waiting on io: at most {100 * worst:.1f}% of the worker's wall "
          f"({'ok' if worst <= 0.10 else 'ABOVE 10%'})")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    if args.root is None and not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
