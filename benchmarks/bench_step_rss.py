"""Peak RSS of every step of one split cell's partition, for a small and a large AOI with the same
``split_km`` (issue 19 point 6): a partition's memory must depend on its cell, not on the AOI.

    .venv/bin/python benchmarks/bench_step_rss.py [--split-km 3] [--sizes-km 6 15] [--json out.json]

Both AOIs are squares (lon / lat boxes about that many km wide) centred on one point of the demo
area; the cell holding that point lies inside both, so the measured partition has the same tiles
in both builds and any difference comes from the AOI's size (its cells, the code location's
split, the products over a region's cells). One synthetic catalog covers the larger AOI and
serves both (one quarter). Each AOI is built for that one partition with every asset, by
``dg.execute_job`` under the multiprocess executor: every step in its own process. The step
process resets its peak RSS when it rebuilds the job (``/proc/self/clear_refs`` 5, Linux) and a
success hook records, at the step's end, its ``VmHWM`` (the step: code location load, fetch,
stores) and ``ru_maxrss`` of its children (the largest: the model worker Dagster Pipes starts).
Not ``ru_maxrss`` of the step itself: Linux carries it over fork and exec, so every step read the
parent's 644 MiB. The children's figure has the same carry-over (at exec the child keeps the
spawning process's peak), so it is an upper bound of the worker's own peak.
Models: the reduced test fixtures of ``$RS_EMBED_REFERENCE_DIR`` (full-size models add a constant).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
CENTRE = (6.62, 46.514)  # the demo AOI's centre (zone 32N)
WINDOW, WINDOW_END = "2024-01-01", "2024-04-01"
PARAMS_ENV = "RS_EMBED_BENCH_RSS"  # JSON: config, catalog, store_root, worker_python, out


@dg.success_hook
def record_rss(context: dg.HookContext) -> None:
    """Peak RSS of this step's process and of its largest waited-for child, appended as JSON."""
    params = json.loads(os.environ[PARAMS_ENV])
    status = Path("/proc/self/status").read_text()
    own = int(status.split("VmHWM:")[1].split()[0]) / 1024  # KiB: the peak since rss_job's reset
    # ru_maxrss is KiB on Linux; RUSAGE_CHILDREN holds the largest terminated child's peak
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with open(params["out"], "a") as f:
        f.write(json.dumps({"step": context.step_key, "pid": os.getpid(), "self_mib": round(own, 1),
                            "children_mib": round(child, 1)}) + "\n")


def rss_job() -> dg.JobDefinition:
    """Every asset of the definitions described by ``$RS_EMBED_BENCH_RSS``, with the hook (a
    module-level function: the multiprocess executor rebuilds the job in each step process)."""
    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.resources import LocalStacImagery, PipelineStore
    from rs_embed_pipeline.orchestration.settings import Settings
    from rs_embed_pipeline_tests.pipeline.conftest import reduced_model_resources

    # The step process's peak from here on: a forked step starts with its parent's high-water mark.
    Path("/proc/self/clear_refs").write_text("5")
    params = json.loads(os.environ[PARAMS_ENV])
    settings = Settings.from_env({"RS_EMBED_CONFIG": params["config"], "RS_EMBED_STORE": params["store_root"]})
    resources = {"store": PipelineStore(root=params["store_root"]),
                 "imagery": LocalStacImagery(catalog_path=params["catalog"]),
                 "pipes_subprocess_client": dg.PipesSubprocessClient(),
                 **reduced_model_resources(params["worker_python"])}
    defs = build_definitions(settings, resources=resources)
    job = dg.define_asset_job("rss_every_asset", selection=dg.AssetSelection.all(), hooks={record_rss})
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("rss_every_asset")


def _box(km: float) -> list[float]:
    half_lat = km / 2 / 111.32
    half_lon = km / 2 / (111.32 * math.cos(math.radians(CENTRE[1])))
    return [CENTRE[0] - half_lon, CENTRE[1] - half_lat, CENTRE[0] + half_lon, CENTRE[1] + half_lat]


def _measure(tmp: Path, km: float, split_km: int, catalog: Path, worker_python: str) -> dict:
    import yaml

    from pyproj import Transformer

    from rs_embed_pipeline.core.grid import utm_epsg_for
    from rs_embed_pipeline.core.regions import load_pipeline_config

    run_dir = tmp / f"aoi-{km:g}km"
    run_dir.mkdir()
    config = run_dir / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"time_windows": {"cadence": "quarterly", "start": WINDOW},
                                      "regions": [{"name": "aoi", "bbox": _box(km), "split_km": split_km}]}))
    parts = load_pipeline_config(config).partitions([(224, 10.0), (288, 10.0)])
    epsg = utm_epsg_for(*CENTRE)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(*CENTRE)
    (part,) = [p for p in parts if p.cell is not None and p.cell.utm_epsg == epsg
               and p.cell.bounds[0] <= x < p.cell.bounds[2] and p.cell.bounds[1] <= y < p.cell.bounds[3]]
    out = run_dir / "rss.jsonl"
    params = {"config": str(config), "catalog": str(catalog), "store_root": str(run_dir / "store"),
              "worker_python": worker_python, "out": str(out)}
    os.environ[PARAMS_ENV] = json.dumps(params)  # inherited by the step processes
    home = run_dir / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    t0 = time.monotonic()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        key = dg.MultiPartitionKey({"region": part.key, "window": WINDOW})
        result = dg.execute_job(dg.reconstructable(rss_job), instance=instance,
                                tags={"dagster/partition": str(key), "dagster/partition/region": part.key,
                                      "dagster/partition/window": WINDOW},
                                run_config={"execution": {"config": {"max_concurrent": 2}}})
        if not result.success:
            raise SystemExit(f"{km} km build failed; see {home}")
    steps = {r["step"]: r for r in map(json.loads, out.read_text().splitlines())}
    tiles = sum(len(part.tile_grid(s, 10.0)) for s in (224, 288))
    return {"aoi_km": km, "cells": len(parts), "partition": part.key, "partition_tiles": tiles,
            "seconds": round(time.monotonic() - t0, 1), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split-km", type=int, default=3)
    ap.add_argument("--sizes-km", type=float, nargs=2, default=[6.0, 15.0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    worker_python = os.environ.get("RS_EMBED_WORKER_PYTHON", str(REPO / ".venv-worker" / "bin" / "python"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"dagster {dg.__version__}; split_km {args.split_km}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        catalog = generate_synthetic_catalog(tmp / "catalog", _box(max(args.sizes_km)), WINDOW, WINDOW_END, seed=0,
                                             pad_m=3000.0, s2_revisit_days=30, s1_revisit_days=30)
        runs = [_measure(tmp, km, args.split_km, catalog, worker_python) for km in args.sizes_km]
    small, large = runs
    print(f"AOI {small['aoi_km']:g} km: {small['cells']} cells; AOI {large['aoi_km']:g} km: {large['cells']} cells; "
          f"measured partition {small['partition']} ({small['partition_tiles']} tiles) in both")
    print(f"{'step':34s} {'small MiB':>10s} {'large MiB':>10s} {'ratio':>6s} {'worker small':>12s} {'worker large':>12s}")
    for step in sorted(small["steps"]):
        a, b = small["steps"][step], large["steps"].get(step)
        if b is None:
            continue
        print(f"{step:34s} {a['self_mib']:10.0f} {b['self_mib']:10.0f} {b['self_mib'] / a['self_mib']:6.2f} "
              f"{a['children_mib']:12.0f} {b['children_mib']:12.0f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # rs_embed_pipeline_tests (the reduced models' resources)
    main()
