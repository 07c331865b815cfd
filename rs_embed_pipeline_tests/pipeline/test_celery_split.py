"""A split AOI built through the Celery executor (issue 19 point 6): real redis, two
`dagster-celery` workers (w1: the default queue, w2: the GPU queue), one run over both cells of the
demo AOI split in 5 km cells (a range of region partitions, as a backfill batches them), and the
cells' stores: each cell's tile grid, patches, embeddings and cube hold exactly the AOI's tiles
centred in that cell, each tile once over the cells, every tile ok.

The servers and the run launcher are the S3 / Celery test's (servers.py, s3_definitions.py),
here over a local store root (the workers share this machine's filesystem); stopped by process
group when the module ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from rs_embed_pipeline.core.grid import build_tile_grid, cell_ids_of_tiles
from rs_embed_pipeline.core.regions import load_pipeline_config
from rs_embed_pipeline.core.vocabulary import STATUS_OK
from rs_embed_pipeline_tests.pipeline.conftest import REPO, write_config
from rs_embed_pipeline_tests.pipeline.s3_definitions import ENV_VAR
from rs_embed_pipeline_tests.pipeline.servers import BIN, celery_workers, redis_server
from rs_embed_pipeline_tests.pipeline.test_s3_and_celery import CELERY_QUEUES, CUBES

DEMO_BBOX = [6.600, 46.500, 6.640, 46.528]
SPLIT_KM = 5
WINDOW = "2024-01-01"
SIZES = {"terrafm": (224, 10.0), "thor": (288, 10.0)}
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, worker_python):
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    tmp = tmp_path_factory.mktemp("celery-split")
    home, logs, store = tmp / "dagster_home", tmp / "logs", tmp / "store"
    for d in (home, logs):
        d.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    catalog = generate_synthetic_catalog(tmp / "catalog", tuple(DEMO_BBOX), WINDOW, "2024-04-01", seed=0, pad_m=3000.0)
    config = write_config(tmp / "pipeline.yaml", [{"name": "demo", "bbox": DEMO_BBOX, "split_km": SPLIT_KM}])
    cells = [p.key for p in load_pipeline_config(config).partitions(sorted(SIZES.values()))]
    with redis_server(logs) as broker:
        params = {"config": str(config), "catalog": str(catalog), "worker_python": worker_python,
                  "store_root": str(store), "celery_broker": broker}
        worker_yaml = tmp / "celery.yaml"
        worker_yaml.write_text(yaml.safe_dump({"execution": {"config": {"broker": broker, "backend": broker}}}))
        env = {**os.environ, "DAGSTER_HOME": str(home), ENV_VAR: json.dumps(params),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
        # The instance's SQLite schemas exist before any worker starts (servers.celery_workers).
        with dg.DagsterInstance.from_config(str(home)) as instance, \
                celery_workers(["w1", "w2"], worker_yaml, env, logs, broker, cwd=REPO, queues=CELERY_QUEUES):
            # Both cells in one run: the range a backfill run of this AOI carries (BackfillPolicy.multi_run).
            tags = {"dagster/asset_partition_range_start": f"{cells[0]}|{WINDOW}",
                    "dagster/asset_partition_range_end": f"{cells[-1]}|{WINDOW}"}
            out = tmp / "run.json"
            launch = subprocess.run(
                [sys.executable, "-m", "rs_embed_pipeline_tests.pipeline.s3_definitions", str(out), json.dumps(tags)],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
            worker_logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                                    for p in sorted(logs.glob("celery-*.log")))
            assert launch.returncode == 0, (launch.stderr[-3000:], worker_logs)
            result = json.loads(out.read_text())
            events = list(instance.all_logs(result["run_id"]))
            yield {"result": result, "events": events, "cells": cells, "store": store, "config": config,
                   "worker_logs": worker_logs}


def test_split_run_on_two_celery_workers_succeeds(split_run):
    assert len(split_run["cells"]) == 2
    events = split_run["events"]
    failures = [e.dagster_event.message for e in events if e.dagster_event and e.dagster_event.is_failure]
    assert split_run["result"]["success"], (failures, split_run["worker_logs"])
    hosts = {e.dagster_event.event_specific_data.metadata["Celery worker"].value.split("@")[0]
             for e in events if e.dagster_event and e.dagster_event.event_type_value == "ENGINE_EVENT"
             and "Celery worker" in (getattr(e.dagster_event.event_specific_data, "metadata", None) or {})}
    assert hosts == {"w1", "w2"}
    # every asset materialized once per cell, in the one run
    mats = [e.dagster_event.event_specific_data.materialization for e in events
            if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
    by_asset: dict[str, set[str]] = {}
    for m in mats:
        by_asset.setdefault(m.asset_key.to_user_string(), set()).add(m.partition.split("|")[0])  # region|window
    assert {"tile_grid", "s2_patches", *CUBES} <= set(by_asset)
    assert all(cells == set(split_run["cells"]) for cells in by_asset.values()), by_asset


def _tiles(group_path) -> tuple[list[str], np.ndarray]:
    group = zarr.open_group(str(group_path), mode="r")
    return [str(t) for t in group["tile_id"][:]], np.asarray(group["status"][:])


def test_each_cells_stores_hold_its_tiles_each_once(split_run):
    store, cells = split_run["store"], split_run["cells"]
    aoi = load_pipeline_config(split_run["config"]).region("demo").aoi
    for family, (size_px, scale) in SIZES.items():
        whole = build_tile_grid(aoi, size_px, scale)
        cell_of = dict(zip(whole["tile_id"], cell_ids_of_tiles(whole, SPLIT_KM), strict=True))
        seen: list[str] = []
        for cell in cells:
            cell_id = cell.removeprefix("demo-")
            expected = sorted(t for t, c in cell_of.items() if c == cell_id)
            assert expected, (family, cell)
            patch_ids, status = _tiles(store / "patches" / "s2" / cell / WINDOW / f"p{size_px}.zarr")
            assert sorted(patch_ids) == expected and (status == STATUS_OK).all(), (family, cell)
            for asset, model in CUBES.items():
                if not asset.startswith(family):
                    continue
                emb_ids, emb_status = _tiles(store / "embeddings" / model / cell / f"{WINDOW}.zarr")
                assert sorted(emb_ids) == expected and (emb_status == STATUS_OK).all(), (model, cell)
                pooled = xr.open_zarr(store / "cubes" / model / f"{cell}.zarr", group="EPSG32632/pooled")
                assert int(pooled["window_filled"].sel(time=WINDOW)) == 1
                values = pooled["embedding"].sel(time=WINDOW).values
                # one pooled cell per tile: as many finite vectors as the cell has tiles
                assert int(np.isfinite(values).all(axis=-1).sum()) == len(expected), (model, cell)
            seen += patch_ids
        assert sorted(seen) == sorted(whole["tile_id"]), family  # the cells partition the AOI's tiles
