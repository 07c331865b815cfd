"""Code-location load time and peak memory against the number of region x window partitions
(issue 19 point 3), and the budget's refusal of 100,001.

    .venv/bin/python benchmarks/bench_partitions.py [--sizes 1000 10000 50000] [--windows 10] [--split-km 10]

Each configuration is one split region (a lon/lat box grown until its ``split_km`` cells nearly
fill the region dimension) plus hand-written 1 km regions for the remainder, so the region
dimension holds exactly ``partitions / windows`` keys; ``windows`` quarterly windows complete
today. Each load runs in a fresh process and does what a code server does: ``build_definitions``
(reads the config, splits the AOI into cells for the plan's tile sizes, checks the budget, builds
the assets), then the repository and its snapshot (``RepositorySnap.from_def``, what the code
server serialises for the webserver and daemon). Printed: seconds and peak RSS (ru_maxrss) per
size, and their ratios to the baseline measured in the same run (the packaged one-region demo
config). The last row loads 100,001 partitions with the default budget and must be refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PLAN_SIZES = [(224, 10.0), (288, 10.0)]  # the default plan's tile sizes (TerraFM-B, THOR)

# Run in a fresh interpreter per configuration: peak RSS is the process's own.
_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.orchestration.settings import Settings
from dagster._core.remote_representation.external_data import RepositorySnap
t_import = time.perf_counter() - t0
out = {"import_s": round(t_import, 2)}
t1 = time.perf_counter()
try:
    defs = build_definitions(Settings.from_env())
    out["build_s"] = round(time.perf_counter() - t1, 2)
    repo = defs.get_repository_def()
    snap = RepositorySnap.from_def(repo)
    parts = repo.assets_defs_by_key
    pdef = next(iter(parts.values())).partitions_def
    out["partitions"] = pdef.get_num_partitions()
except Exception as exc:  # the budget's refusal is a result here
    out["refused"] = str(exc)
out["load_s"] = round(time.perf_counter() - t1, 2)
out["total_s"] = round(time.perf_counter() - t0, 2)
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def _quarters_ago(n: int) -> str:
    today = dt.date.today()
    index = today.year * 4 + (today.month - 1) // 3 - n
    return f"{index // 4}-{(index % 4) * 3 + 1:02d}-01"


def _config(path: Path, regions_wanted: int, windows: int, split_km: int) -> dict:
    """A config with exactly ``regions_wanted`` region partitions: a split box, padded with small regions."""
    from rs_embed_pipeline.core.grid import bbox_aoi, split_cells

    west, south, width = 2.0, 44.0, 2.0  # France / Switzerland / Italy: zones 31 and 32
    lo, hi = 0.0, 12.0  # box height in degrees: grown by bisection until the cells nearly fill the budget
    best, cells = 0.0, 0
    for _ in range(20):
        height = (lo + hi) / 2
        width = max(0.2, min(10.0, height * 1.4))
        n = len(split_cells(bbox_aoi(west, south, west + width, south + height), PLAN_SIZES, split_km))
        if n <= regions_wanted:
            lo, best, cells = height, height, n
        else:
            hi = height
    width = max(0.2, min(10.0, best * 1.4))
    regions = []
    if cells:
        regions.append({"name": "continent", "bbox": [west, south, round(west + width, 6), round(south + best, 6)],
                        "split_km": split_km})
    for k in range(regions_wanted - cells):  # 1 km boxes north of it, 0.02 degrees apart
        lon, lat = -5.0 + 0.02 * (k % 500), 55.0 + 0.02 * (k // 500)
        regions.append({"name": f"r{k:06d}", "bbox": [round(lon, 4), round(lat, 4), round(lon + 0.01, 4),
                                                      round(lat + 0.01, 4)]})
    path.write_text(yaml.safe_dump({"time_windows": {"cadence": "quarterly", "start": _quarters_ago(windows)},
                                    "regions": regions}, sort_keys=False))
    return {"cells": cells, "hand_written": regions_wanted - cells}


def _load(config: Path | None, store: str) -> dict:
    env = {**os.environ, "RS_EMBED_STORE": store}
    if config is not None:
        env["RS_EMBED_CONFIG"] = str(config)
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--windows", type=int, default=10, help="quarterly windows (complete today)")
    parser.add_argument("--split-km", type=int, default=10)
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        base = _load(None, tmp)
        print(f"baseline (packaged demo config, 1 region x all windows): load {base['load_s']} s, "
              f"import {base['import_s']} s, peak RSS {base['peak_rss_mib']} MiB")
        print(f"{'partitions':>10} {'cells':>6} {'hand':>6} {'build s':>8} {'load s':>7} {'x base':>7} "
              f"{'peak MiB':>9} {'x base':>7}")
        cases = [(n, args.windows) for n in args.sizes] + [(100_001, 11)]  # 100,001 = 9,091 x 11
        for n, windows in cases:
            if n % windows:
                raise SystemExit(f"{n} partitions are not a whole number of regions x {windows} windows")
            config = Path(tmp) / f"p{n}.yaml"
            made = _config(config, n // windows, windows, args.split_km)
            r = _load(config, tmp)
            if "refused" in r:
                print(f"{n:>10,} {made['cells']:>6} {made['hand_written']:>6} {'':>8} {r['load_s']:>7} "
                      f"{r['load_s'] / base['load_s']:>7.1f} {r['peak_rss_mib']:>9} "
                      f"{r['peak_rss_mib'] / base['peak_rss_mib']:>7.2f}  refused: {r['refused'][:150]}...")
                continue
            assert r["partitions"] == n, (r["partitions"], n)
            print(f"{n:>10,} {made['cells']:>6} {made['hand_written']:>6} {r['build_s']:>8} {r['load_s']:>7} "
                  f"{r['load_s'] / base['load_s']:>7.1f} {r['peak_rss_mib']:>9} "
                  f"{r['peak_rss_mib'] / base['peak_rss_mib']:>7.2f}")


if __name__ == "__main__":
    main()
