"""Run the S2 / TerraFM chain for one partition in a process of its own, optionally SIGKILLed at a
chosen point (tests only: test_crash_resume.py).

    python -m rs_embed_pipeline_tests.pipeline.crash_harness --tmp DIR --window 2024-01-01 \\
        --worker-python WORKER_SHIM --bbox minlon minlat maxlon maxlat [--catalog CATALOG]

Imagery: the fast pixel synthesizer (fakes.py), or the static catalog given with ``--catalog``.

``RS_EMBED_TEST_KILL=<point>:<n>`` kills the whole process group (this process and the model
worker, as a node failure or an OOM kill would) at the n-th event of ``point``:

* ``fetch``: the write that reaches the n-th tile of a patch store, after its arrays and
  before its statuses (patches are written in batches);
* ``embed``: the same in the worker, for the embedding store (the worker shim runs this module
  with ``--worker``, which installs the hook and then runs ``rs_embed_pipeline.worker.embed``);
* ``cube``: the n-th block written into the cube (a shard, or in chunked cubes a row of tiles;
  or the pooled plane), before it is written;
* ``worker``: like ``embed``, but SIGKILLs the model worker process alone (an OOM kill of the
  worker): the step fails, its RetryPolicy retries it within the same run. Only once per
  ``RS_EMBED_TEST_KILL_ONCE=<file>``: the file records what the store held at the kill.

Run it with ``start_new_session=True`` so that the kill stays within the run. ``--result`` writes
the run's outcome (step retries, per-partition tile counts) as JSON.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
from pathlib import Path

import numpy as np

CHAIN = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube"]
REGION = "crash"


def _kill_spec(point: str) -> int | None:
    spec = os.environ.get("RS_EMBED_TEST_KILL", "")
    if not spec:
        return None
    name, _, n = spec.partition(":")
    return int(n) if name == point else None


def _die() -> None:
    sys.stdout.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _die_worker_once(store, indices) -> bool:
    """SIGKILL this process alone, the first time only; record the store's state at the kill."""
    import json

    marker = Path(os.environ["RS_EMBED_TEST_KILL_ONCE"])
    if marker.exists():
        return False
    counts = store.status_counts()
    marker.write_text(json.dumps({"pid": os.getpid(), "status_counts": counts,
                                  "arrays_written_unmarked": sorted(int(i) for i in indices)}))
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    return True


def _hook_tile_writes(point: str, uri_part: str) -> None:
    """Kill once the n-th matching tile's arrays are written, before provenance and status (for a
    batch write: the batch's arrays are written, none of its statuses)."""
    n = _kill_spec(point)
    if n is None:
        return
    from rs_embed_pipeline.stores import TileStore

    write_tile, write_tiles = TileStore.write_tile, TileStore.write_tiles
    seen = {"count": 0}
    # Patches are written by two threads at once. The kill models the n-th tile's write dying
    # midway while the writes that started before it finish (as they would on a node that dies a
    # moment later): the dying write waits for them, so what the store holds does not depend on
    # how the threads happen to be scheduled on a loaded machine.
    lock = threading.Condition()
    in_flight = {"writes": 0}

    def wait_for_earlier_writes() -> None:
        with lock:
            lock.wait_for(lambda: in_flight["writes"] == 0, timeout=60)

    def should_die(store, indices) -> bool:
        return point != "worker" or not Path(os.environ["RS_EMBED_TEST_KILL_ONCE"]).exists()

    def die(store, indices) -> None:
        if point == "worker":
            _die_worker_once(store, indices)
        else:
            _die()

    def hooked_tiles(self, indices, statuses, metas, **arrays):
        if uri_part in self.uri and arrays:
            with lock:
                seen["count"] += len(indices)
                dying = seen["count"] >= n and should_die(self, indices)
                if not dying:
                    in_flight["writes"] += 1
            if dying:
                wait_for_earlier_writes()
                for name, value in arrays.items():
                    self.group[name].set_orthogonal_selection((np.sort(np.asarray(indices)),),
                                                              np.asarray(value)[np.argsort(indices)])
                die(self, indices)
            try:
                return write_tiles(self, indices, statuses, metas, **arrays)
            finally:
                with lock:
                    in_flight["writes"] -= 1
                    lock.notify_all()
        return write_tiles(self, indices, statuses, metas, **arrays)

    def hooked_tile(self, index, status, meta, **arrays):
        if uri_part in self.uri and arrays:
            seen["count"] += 1
            if seen["count"] >= n and should_die(self, [index]):
                for name, value in arrays.items():
                    self.group[name][index] = value
                die(self, [index])
        return write_tile(self, index, status, meta, **arrays)

    TileStore.write_tile, TileStore.write_tiles = hooked_tile, hooked_tiles


def _hook_cube_writes() -> None:
    n = _kill_spec("cube")
    if n is None:
        return
    from rs_embed_pipeline.stores.cube import writer

    original = writer._write_block
    seen = {"count": 0}

    def write_block(array, selection, value):
        seen["count"] += 1
        if seen["count"] == n:
            _die()
        return original(array, selection, value)

    writer._write_block = write_block


def run_worker() -> None:
    _hook_tile_writes("embed", "/embeddings/")
    _hook_tile_writes("worker", "/embeddings/")
    sys.argv = ["rs_embed_pipeline.worker.embed"]
    runpy.run_module("rs_embed_pipeline.worker.embed", run_name="__main__")


def build(tmp: Path, catalog: Path | None, worker_python: str, bbox: list[float], *, cadence: str = "monthly",
          batch_size: int = 2):
    """Definitions for one region; monthly windows by default."""
    import dagster as dg

    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.resources import LocalStacImagery, PipelineStore, TerraFMResource
    from rs_embed_pipeline.orchestration.settings import Settings
    from rs_embed_pipeline_tests.pipeline.conftest import reduced_model_resources, write_config
    from rs_embed_pipeline_tests.pipeline.fakes import SyntheticPixelsImagery

    tmp.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp / "pipeline.yaml", [{"name": REGION, "bbox": bbox}], cadence=cadence)
    store_root = tmp / "store"
    # Step retries and leases as configured by the test (a fast retry; a killed run's lease lapses soon).
    settings = Settings.from_env({
        "RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": str(store_root),
        "RS_EMBED_STEP_RETRY_DELAY_S": os.environ.get("RS_EMBED_STEP_RETRY_DELAY_S", "1"),
        "RS_EMBED_LEASE_TTL_S": os.environ.get("RS_EMBED_LEASE_TTL_S", "5"),
        "RS_EMBED_LEASE_WAIT_S": os.environ.get("RS_EMBED_LEASE_WAIT_S", "600"),
    })
    models = reduced_model_resources(worker_python)
    terrafm = models["terrafm"]
    # Small batches, so that a kill can fall between two batches of a handful of tiles.
    # RS_EMBED_IO_THREADS=1 (the SIGKILLed-worker test): one writer thread, so the kill point is in write
    # order; the pipeline passes the resource's io_threads to the worker, so it goes on the resource.
    io = {"io_threads": int(os.environ["RS_EMBED_IO_THREADS"])} if os.environ.get("RS_EMBED_IO_THREADS") else {}
    models["terrafm"] = TerraFMResource(worker_python=worker_python, device="cpu", batch_size=batch_size,
                                       arch_json=terrafm.arch_json, checkpoint=terrafm.checkpoint, **io)
    resources = {
        "store": PipelineStore(root=str(store_root), lease_wait_s=settings.lease_wait_s,
                               lease_ttl_s=settings.lease_ttl_s),
        "imagery": LocalStacImagery(catalog_path=str(catalog)) if catalog else SyntheticPixelsImagery(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        **models,
    }
    defs = build_definitions(settings, resources=resources)
    job = dg.define_asset_job("crash_chain", selection=CHAIN)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])), store_root


def main() -> None:
    if "--worker" in sys.argv:
        run_worker()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmp", type=Path, required=True)
    parser.add_argument("--catalog", type=Path, default=None)
    parser.add_argument("--window", required=True)
    parser.add_argument("--worker-python", required=True)
    parser.add_argument("--bbox", type=float, nargs=4, required=True)
    parser.add_argument("--cadence", default="monthly")
    parser.add_argument("--result", type=Path, default=None)
    args = parser.parse_args()

    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore")
    _hook_tile_writes("fetch", "/patches/")
    _hook_cube_writes()
    defs, _ = build(args.tmp, args.catalog, args.worker_python, list(args.bbox), cadence=args.cadence)
    key = dg.MultiPartitionKey({"region": REGION, "window": args.window})
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("crash_chain").execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False)
    if args.result:
        _write_result(args.result, result)
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        sys.exit(1)
    print("OK")


def _write_result(path: Path, result) -> None:
    """The run's outcome: success, step retries, and each materialization's tile counts."""
    import json

    retries: dict[str, int] = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_UP_FOR_RETRY":
            retries[event.step_key] = retries.get(event.step_key, 0) + 1
    counts, work = {}, {}
    for event in result.get_asset_materialization_events():
        md = event.materialization.metadata
        counts[event.materialization.asset_key.to_user_string()] = {
            k: md[k].value for k in ("tiles_ok", "tiles_no_data", "tiles_failed", "tiles") if k in md}
        work[event.materialization.asset_key.to_user_string()] = {
            k: md[k].value for k in ("tiles_fetched_now", "tiles_embedded_now") if k in md}
    errors = [event.message for event in result.all_events if event.is_failure]
    # The errors themselves, causes included (a resource that fails to start wraps its error).
    errors += [event.event_specific_data.error.to_string() for event in result.all_events
               if getattr(event.event_specific_data, "error", None) is not None]
    path.write_text(json.dumps({"success": result.success, "run_id": result.run_id, "step_retries": retries,
                                "counts": counts, "work": work, "errors": errors}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
