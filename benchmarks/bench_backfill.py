"""A backfill of 1,000+ region x window partitions launched through the real daemon (issue 19 point 3):
seconds until every run of the backfill is created, with the run coordinator's limits in place.

    .venv/bin/python benchmarks/bench_backfill.py [--partitions 1000] [--windows 10] [--split-km 10]
        [--assets tile_grid] [--timeout 900]

Starts ``dagster dev`` (webserver and daemon: backfill daemon and the queued run coordinator) on a
free 127.0.0.1 port, in a fresh ``DAGSTER_HOME`` holding the project's ``dagster.yaml`` (8 runs at a
time, 4 from backfills, one per partition tag), over a config of exactly ``--partitions`` region x
window partitions (bench_partitions.py's split box). Launches one backfill of every partition of
``--assets`` with GraphQL ``launchPartitionBackfill`` (what the UI sends) and polls the instance
until the backfill's runs cover every partition. Printed: seconds from the mutation to the first
and to the last run, the run count, the partitions per run (each run's keys are the keys Dagster
resolves from its range tags: for region x window a *rectangle* of regions x windows, not a slice
of the flat key order), the runs Dagster would request for the same keys computed offline
(``partition_plan.backfill_runs``), and the runs' statuses then (the runs are left to the
coordinator: this measures the orchestration, not the models). Then cancels the backfill and stops
the servers (by process group).

Dagster (1.9.12 and later) builds a multi-partition backfill's ranges by grouping the keys on the
dimension with fewer distinct values (dagster-io/dagster#27746) and chunks each group by
``max_partitions_per_run``: 100 regions x 10 windows -> 10 groups (one per window) of 25 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from rs_embed_pipeline.orchestration.partitions import BACKFILL_POLICY
from rs_embed_pipeline.products.build_plan import backfill_runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_partitions import _config  # noqa: E402  (the split box of bench_partitions.py)

LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
CANCEL = """mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", method="POST",
                                 data=json.dumps({"query": query, "variables": variables}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dagster dev exited with {proc.returncode}")
        try:
            out = _graphql(port, "{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name } } } }", {})
            if out.get("data", {}).get("repositoriesOrError", {}).get("nodes"):
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"dagster dev not ready after {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--split-km", type=int, default=10)
    ap.add_argument("--assets", nargs="+", default=["tile_grid"],
                    help="assets of the backfill (default: the root, whose runs are all requested at once)")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    if args.partitions % args.windows:
        raise SystemExit(f"{args.partitions} is not a whole number of regions x {args.windows} windows")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}, dagster {dg.__version__}")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the run coordinator's limits
        config = tmp / "pipeline.yaml"
        made = _config(config, args.partitions // args.windows, args.windows, args.split_km)
        port = _free_port()
        env = {**os.environ, "DAGSTER_HOME": str(home), "RS_EMBED_CONFIG": str(config),
               "RS_EMBED_STORE": str(tmp / "store"), "PYTHONPATH": str(REPO)}
        log = open(tmp / "dagster-dev.log", "wb")
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-m", "rs_embed_pipeline.definitions",
                                 "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t_start = time.monotonic()
            _wait_ready(port, proc, 300)
            print(f"dagster dev ready in {time.monotonic() - t_start:.1f} s; {made['cells']} cells + "
                  f"{made['hand_written']} hand-written regions x {args.windows} windows")
            with dg.DagsterInstance.from_config(str(home)) as instance:
                from rs_embed_pipeline.orchestration.definitions import build_definitions
                from rs_embed_pipeline.orchestration.settings import Settings

                pdef = build_definitions(Settings.from_env(env)).get_repository_def().assets_defs_by_key[
                    dg.AssetKey(args.assets[0])].partitions_def
                keys = [str(k) for k in pdef.get_partition_keys()]
                assert len(keys) == args.partitions, (len(keys), args.partitions)
                regions = pdef.get_partitions_def_for_dimension("region").get_num_partitions()
                expected_runs = backfill_runs(regions, len(keys) // regions, BACKFILL_POLICY.max_partitions_per_run or 1)
                t0 = time.monotonic()
                out = _graphql(port, LAUNCH, {"p": {"assetSelection": [{"path": [a]} for a in args.assets],
                                                    "partitionNames": keys, "fromFailure": False}})
                launched = out["data"]["launchPartitionBackfill"]
                if launched["__typename"] != "LaunchBackfillSuccess":
                    raise SystemExit(f"launch failed: {launched}")
                backfill_id = launched["backfillId"]
                t_launch = time.monotonic() - t0
                first = last = None
                count, stable_since = 0, time.monotonic()
                covered: set[str] = set()
                per_run: dict[str, int] = {}
                while time.monotonic() - t0 < args.timeout:
                    runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
                    if len(runs) != count:
                        count, stable_since = len(runs), time.monotonic()
                        first = first or stable_since - t0
                        last = stable_since - t0
                        for r in runs:  # a run's keys never change: resolve each once
                            if r.dagster_run.run_id not in per_run:
                                ks = _partitions_of(r.dagster_run.tags, pdef)
                                per_run[r.dagster_run.run_id] = len(ks)
                                covered.update(ks)
                    if count and len(covered) >= len(keys):
                        break
                    if count and time.monotonic() - stable_since > 120:
                        print(f"no new run for 120 s: {count} runs covering {len(covered)} partitions")
                        break
                    time.sleep(0.5)
                statuses: dict[str, int] = {}
                for r in runs:
                    statuses[r.dagster_run.status.value] = statuses.get(r.dagster_run.status.value, 0) + 1
                print(json.dumps({"partitions": len(keys), "assets": args.assets, "launch_mutation_s": round(t_launch, 2),
                                  "first_run_s": round(first or -1, 1), "all_runs_s": round(last or -1, 1),
                                  "runs": count, "runs_expected": expected_runs,
                                  "partitions_covered": len(covered & set(keys)),
                                  "partitions_in_runs": sum(per_run.values()),
                                  "partitions_per_run": dict(sorted(Counter(per_run.values()).items())),
                                  "run_statuses_then": statuses, "load_average": round(os.getloadavg()[0], 1)}))
                _graphql(port, CANCEL, {"id": backfill_id})
        finally:
            _stop_group(proc)
            log.close()


def _stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the process group started above (dagster dev, its daemon, code server and the
    run workers it launched), then SIGKILL to what is left after ``timeout``: the temporary
    directory is removed only once no run worker writes its logs there."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie still counts as a member
            os.killpg(pgid, 0)  # ProcessLookupError once every member has exited
            time.sleep(0.5)
        os.killpg(pgid, signal.SIGKILL)
        time.sleep(1)
    except ProcessLookupError:
        pass


def _partitions_of(tags: Mapping[str, str], pdef: dg.MultiPartitionsDefinition) -> list[str]:
    """The keys a run covers, as the run resolves them: its ``dagster/partition`` or its range.
    A multi-partition range is the product of each dimension's range (region a..b x window
    c..d), so its size is not the distance of its ends in the flat key order (the earlier count
    took that distance: about 30 per run and 1,023 partitions for 1,000)."""
    start = tags.get("dagster/asset_partition_range_start")
    if start is not None:
        rng = dg.PartitionKeyRange(start, tags["dagster/asset_partition_range_end"])
        return [str(k) for k in pdef.get_partition_keys_in_range(rng)]
    return [tags["dagster/partition"]] if "dagster/partition" in tags else []


if __name__ == "__main__":
    main()
