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
* ``cube``: the n-th block written into the cube (a row of tiles, or the pooled plane), before
  it is written.

Run it with ``start_new_session=True`` so that the kill stays within the run.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
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


def _hook_tile_writes(point: str, uri_part: str) -> None:
    """Kill once the n-th matching tile's arrays are written, before provenance and status (for a
    batch write: the batch's arrays are written, none of its statuses)."""
    n = _kill_spec(point)
    if n is None:
        return
    from rs_embed_pipeline.stores import TileStore

    write_tile, write_tiles = TileStore.write_tile, TileStore.write_tiles
    seen = {"count": 0}

    def hooked_tiles(self, indices, statuses, metas, **arrays):
        if uri_part in self.uri and arrays:
            seen["count"] += len(indices)
            if seen["count"] >= n:
                for name, value in arrays.items():
                    self.group[name].set_orthogonal_selection((np.sort(np.asarray(indices)),),
                                                              np.asarray(value)[np.argsort(indices)])
                _die()
        return write_tiles(self, indices, statuses, metas, **arrays)

    def hooked_tile(self, index, status, meta, **arrays):
        if uri_part in self.uri and arrays:
            seen["count"] += 1
            if seen["count"] >= n:
                for name, value in arrays.items():
                    self.group[name][index] = value
                _die()
        return write_tile(self, index, status, meta, **arrays)

    TileStore.write_tile, TileStore.write_tiles = hooked_tile, hooked_tiles


def _hook_cube_writes() -> None:
    n = _kill_spec("cube")
    if n is None:
        return
    from rs_embed_pipeline.stores import cube

    original = cube._write_block
    seen = {"count": 0}

    def write_block(array, selection, value):
        seen["count"] += 1
        if seen["count"] == n:
            _die()
        return original(array, selection, value)

    cube._write_block = write_block


def run_worker() -> None:
    _hook_tile_writes("embed", "/embeddings/")
    sys.argv = ["rs_embed_pipeline.worker.embed"]
    runpy.run_module("rs_embed_pipeline.worker.embed", run_name="__main__")


def build(tmp: Path, catalog: Path | None, worker_python: str, bbox: list[float], *, cadence: str = "monthly",
          batch_size: int = 2):
    """Definitions for one region; monthly windows by default."""
    import dagster as dg

    from rs_embed_pipeline.definitions import build_definitions
    from rs_embed_pipeline.resources import LocalStacImagery, PipelineStore, TerraFMAdapter
    from rs_embed_pipeline.settings import Settings
    from rs_embed_pipeline_tests.pipeline.conftest import reduced_model_resources, write_config
    from rs_embed_pipeline_tests.pipeline.fakes import SyntheticPixelsImagery

    tmp.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp / "pipeline.yaml", [{"name": REGION, "bbox": bbox}], cadence=cadence)
    store_root = tmp / "store"
    settings = Settings.from_env({"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": str(store_root)})
    models = reduced_model_resources(worker_python)
    terrafm = models["terrafm"]
    # Small batches, so that a kill can fall between two batches of a handful of tiles.
    models["terrafm"] = TerraFMAdapter(worker_python=worker_python, device="cpu", batch_size=batch_size,
                                       arch_json=terrafm.arch_json, checkpoint=terrafm.checkpoint)
    resources = {
        "store": PipelineStore(root=str(store_root)),
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
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
