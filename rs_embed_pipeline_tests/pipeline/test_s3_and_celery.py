"""The whole pipeline with every store on S3 (a moto server), in one process and spread over
Celery workers (redis broker), and the two runs' cubes compared value for value.

Servers (moto, redis, two `dagster-celery` workers) are started here on free 127.0.0.1 ports and
stopped by process group when the module ends, pass or fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import threading

import dagster as dg
import numpy as np
import pytest
import xarray as xr
import yaml
from pyproj import CRS

from rs_embed_pipeline.stores.remote import AWS_ENV_NAMES
from rs_embed_pipeline_tests.pipeline.conftest import REPO, TINY_BBOX, WINDOW, write_config
from rs_embed_pipeline_tests.pipeline.s3_definitions import ENV_VAR, s3_test_definitions
from rs_embed_pipeline_tests.pipeline.servers import (
    BIN,
    celery_workers,
    close_s3_filesystems,
    moto_server,
    redis_server,
    tail,
)

CUBES = {"terrafm_s2_cube": "terrafm_b_s2", "terrafm_s1_cube": "terrafm_b_s1", "thor_s2_cube": "thor_1_0_base_s2"}
KEY = dg.MultiPartitionKey({"region": "tiny", "window": WINDOW})
KEY_TAGS = dg.MultiPartitionsDefinition({  # run tags of that partition, for dg.execute_job
    "region": dg.StaticPartitionsDefinition(["tiny"]),
    "window": dg.StaticPartitionsDefinition([WINDOW]),
}).get_tags_for_partition_key(KEY)
# Fresh per session, so that finding them anywhere they must not be is meaningful.
ACCESS_KEY = "AKIA" + secrets.token_hex(8).upper()
SECRET_KEY = "rs-embed-" + secrets.token_urlsafe(24)
CELERY_RUN_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class CeleryRunResult:
    """What the launcher process reports of the Celery run (its events are read from the instance)."""

    run_id: str
    success: bool
# w1 takes the CPU steps (dagster-celery's default queue), w2 the GPU steps (executors.GPU_QUEUE).
CELERY_QUEUES = {"w1": ["dagster"], "w2": ["gpu"]}


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """A moto S3 server, and the standard AWS environment pointing at it (nothing else)."""
    import boto3

    logs = tmp_path_factory.mktemp("moto")
    with moto_server(logs) as endpoint, pytest.MonkeyPatch.context() as mp:
        for name in AWS_ENV_NAMES:
            mp.delenv(name, raising=False)
        env = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint,
            # No ~/.aws files or instance metadata from the machine running the tests.
            "AWS_CONFIG_FILE": str(logs / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(logs / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for name, value in env.items():
            mp.setenv(name, value)
        client = boto3.client("s3")
        try:
            yield {"endpoint": endpoint, "client": client, "logs": logs}
        finally:
            close_s3_filesystems()


def _bucket(aws, name: str) -> str:
    aws["client"].create_bucket(Bucket=name)
    return f"s3://{name}/pipeline"


def _keys(aws, root: str) -> list[str]:
    bucket, prefix = root[len("s3://"):].split("/", 1)
    keys: list[str] = []
    for page in aws["client"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"][len(prefix) + 1:] for obj in page.get("Contents", []))
    return keys


def _checks(events) -> dict[str, bool]:
    return {(e.asset_check_evaluation_data.asset_check_key.asset_key.to_user_string(),
             e.asset_check_evaluation_data.asset_check_key.name): e.asset_check_evaluation_data.passed
            for e in events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def _params(tmp, aws, bucket: str, catalog, worker_python, **extra) -> dict:
    return {
        "config": str(write_config(tmp / "pipeline.yaml", [{"name": "tiny", "bbox": list(TINY_BBOX)}])),
        "catalog": str(catalog), "worker_python": worker_python, "store_root": _bucket(aws, bucket), **extra,
    }


@pytest.fixture(scope="module")
def runs(aws, tmp_path_factory, synthetic_catalog, worker_python):
    """The same partition twice, at the same time (2 cores: the runs overlap instead of queueing):

    - celery: ``build_embeddings_celery``, each step on one of two Celery workers (redis broker),
      a persistent sqlite instance in its own DAGSTER_HOME, stores in s3://rs-embed-celery;
    - inprocess: ``build_embeddings`` executed in this process, stores in s3://rs-embed-inprocess,
      run from an empty working directory (where the default local store root ./data would be).
    """
    tmp_c = tmp_path_factory.mktemp("s3-celery")
    tmp_i = tmp_path_factory.mktemp("s3-inprocess")
    home, logs, cwd = tmp_c / "dagster_home", tmp_c / "logs", tmp_i / "cwd"
    for d in (home, logs, cwd, tmp_i / "dagster_home"):
        d.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with redis_server(logs) as broker, pytest.MonkeyPatch.context() as mp:
        params_c = _params(tmp_c, aws, "rs-embed-celery", synthetic_catalog, worker_python, celery_broker=broker)
        params_i = _params(tmp_i, aws, "rs-embed-inprocess", synthetic_catalog, worker_python)
        worker_yaml = tmp_c / "celery.yaml"
        worker_yaml.write_text(yaml.safe_dump({"execution": {"config": {"broker": broker, "backend": broker}}}))
        mp.setenv(ENV_VAR, json.dumps(params_c))
        env = {**os.environ, "DAGSTER_HOME": str(home),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
        # The instance (its SQLite schemas) exists before any worker process starts: the workers
        # and this process must never create it at the same time (alembic "more than one head").
        with dg.DagsterInstance.from_config(str(home)) as instance_c, \
                celery_workers(["w1", "w2"], worker_yaml, env, logs, broker, cwd=REPO, wait=False,
                               queues=CELERY_QUEUES) as workers:
            outcome: dict = {}

            def run_celery() -> None:
                # The Celery run is launched from its own process, not from a thread of this one:
                # two runs in one process can deadlock in `logging` (s3_definitions.main).
                try:
                    workers.wait_ready()
                    out = tmp_c / "celery-run.json"
                    launch = subprocess.run(
                        [sys.executable, "-m", "rs_embed_pipeline_tests.pipeline.s3_definitions", str(out),
                         json.dumps(dict(KEY_TAGS))], env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=CELERY_RUN_TIMEOUT_S)
                    if launch.returncode != 0:
                        raise RuntimeError(f"Celery run launcher exited {launch.returncode}: {launch.stderr[-3000:]}")
                    outcome["result"] = CeleryRunResult(**json.loads(out.read_text()))
                except BaseException as exc:  # noqa: BLE001 - reported by the tests
                    outcome["error"] = exc

            thread = threading.Thread(target=run_celery, name="celery-run", daemon=True)
            thread.start()

            mp.chdir(cwd)
            defs = s3_test_definitions(**params_i)
            with dg.instance_for_test(temp_dir=str(tmp_i / "dagster_home")) as instance_i:
                result_i = defs.resolve_job_def("build_embeddings").execute_in_process(
                    partition_key=KEY, instance=instance_i, raise_on_error=False)
                # A lost Celery task would leave the executor polling forever: bound the wait.
                thread.join(CELERY_RUN_TIMEOUT_S + 30)
                worker_logs = "\n".join(f"--- {p.name}\n{tail(p, 3000)}" for p in sorted(logs.glob("celery-*.log")))
                if thread.is_alive():
                    outcome["error"] = TimeoutError(f"Celery run not finished after {CELERY_RUN_TIMEOUT_S} s")
                result_c = outcome.get("result")
                yield {
                    "inprocess": {"result": result_i, "instance": instance_i, "root": params_i["store_root"],
                                  "tmp": tmp_i, "cwd": cwd},
                    "celery": {"result": result_c, "error": outcome.get("error"), "instance": instance_c,
                               "root": params_c["store_root"], "worker_logs": worker_logs, "home": home, "logs": logs,
                               "events": instance_c.all_logs(result_c.run_id) if result_c else []},
                }


@pytest.fixture(scope="module")
def inprocess(runs):
    return runs["inprocess"]


@pytest.fixture(scope="module")
def celery_run(runs):
    run = runs["celery"]
    if run["error"] is not None:
        raise AssertionError(f"Celery run failed: {run['error']!r}\n{run['worker_logs']}") from run["error"]
    return run


# ------------------------------------------------------------------------------ in-process on S3
def test_inprocess_run_on_s3_succeeds(inprocess):
    result = inprocess["result"]
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    checks = _checks(result.all_events)
    assert all(checks[(name, "dims_and_crs")] for name in CUBES), checks
    assert all(passed for (_, check), passed in checks.items() if check == "all_values_finite"), checks


def test_every_store_is_on_s3_and_no_local_root(inprocess, aws):
    keys = set(_keys(aws, inprocess["root"]))
    expected = [
        f"tile_grid/tiny/{WINDOW}.parquet",
        f"patches/s2/tiny/{WINDOW}/p224.zarr/zarr.json",
        f"patches/s2/tiny/{WINDOW}/p288.zarr/zarr.json",
        f"patches/s1/tiny/{WINDOW}/p224.zarr/zarr.json",
        *(f"embeddings/{name}/tiny/{WINDOW}.zarr/zarr.json" for name in CUBES.values()),
        *(f"cubes/{name}/tiny.zarr/zarr.json" for name in CUBES.values()),
    ]
    missing = [k for k in expected if k not in keys]
    assert not missing, f"not on S3: {missing}"
    assert any(k.startswith("embeddings/terrafm_b_s2/") and "/grid/c/" in k for k in keys), "no embedding chunk"
    # Nothing under the default local store root (./data), nor anywhere in the test's directory.
    assert not (inprocess["cwd"] / "data").exists()
    local = [p for p in inprocess["tmp"].rglob("*") if p.suffix in {".zarr", ".parquet"} or p.name == "zarr.json"]
    assert not local, f"written locally: {local}"
    instance = inprocess["instance"]
    for asset in ["tile_grid", "s2_patches", "s1_patches", *CUBES, *(c.replace("_cube", "_embeddings") for c in CUBES)]:
        md = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata
        assert md["store_uri"].value.startswith(inprocess["root"] + "/"), (asset, md["store_uri"])


@pytest.mark.parametrize("asset_name", sorted(CUBES))
def test_cube_opens_from_s3_with_xarray(inprocess, asset_name):
    uri = f"{inprocess['root']}/cubes/{CUBES[asset_name]}/tiny.zarr"
    for group in ("EPSG32632/grid", "EPSG32632/pooled"):
        ds = xr.open_zarr(uri, group=group)  # s3fs, credentials and endpoint from the AWS environment
        emb = ds["embedding"]
        assert emb.dims == ("time", "y", "x", "feature")
        assert emb.sizes["feature"] == 64
        window = emb.sel(time=WINDOW)
        assert int(ds["window_filled"].sel(time=WINDOW)) == 1
        assert CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_epsg() == 32632
        assert emb.attrs["grid_mapping"] == "spatial_ref"
        assert window.size and np.isfinite(window.values).all()


def test_credentials_never_in_metadata_logs_or_stores(runs, aws):
    """The run event logs (metadata, Pipes logs), step compute logs, worker logs and store attrs."""
    inprocess, celery = runs["inprocess"], runs["celery"]
    records = list(inprocess["instance"].all_logs(inprocess["result"].run_id)) + list(celery["events"])
    assert records
    texts = [dg.serialize_value(r) for r in records]
    logs = [p for d in (celery["home"], celery["logs"]) for p in d.rglob("*")
            if p.is_file() and p.suffix in {".out", ".err", ".log", ".txt"}]
    assert any(p.name.startswith("celery-") for p in logs)
    texts += [p.read_text(errors="replace") for p in logs]
    for root in (inprocess["root"], celery["root"]):
        bucket, prefix = root[len("s3://"):].split("/", 1)
        texts += [aws["client"].get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read().decode()
                  for key in _keys(aws, root) if key.endswith("zarr.json")]
    text = "\n".join(texts)
    assert "rs_embed_pipeline" in text and "tiles_ok" in text  # the scan reads real content
    for secret in (SECRET_KEY, ACCESS_KEY):
        assert secret not in text


def test_store_refuses_credentials_in_storage_options():
    from rs_embed_pipeline.orchestration.resources import PipelineStore

    store = PipelineStore(root="s3://bucket/prefix",
                          storage_options_json=json.dumps({"client_kwargs": {"aws_secret_access_key": "x"}}))
    with pytest.raises(ValueError, match="must not hold credentials"):
        _ = store.storage_options
    ok = PipelineStore(root="s3://bucket/prefix", storage_options_json=json.dumps({"endpoint_url": "http://h"}))
    assert ok.storage_options == {"endpoint_url": "http://h"}


# ------------------------------------------------------------------------------ Celery workers
def test_celery_run_succeeds(celery_run):
    result = celery_run["result"]
    assert result.success, (
        [e.message for e in celery_run["events"] if e.dagster_event and e.dagster_event.is_failure],
        celery_run["worker_logs"])
    assert all(_checks(e.dagster_event for e in celery_run["events"] if e.dagster_event).values())


def test_celery_steps_ran_in_separate_worker_processes(celery_run, inprocess):
    starts = [e for e in celery_run["events"] if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"]
    n_steps = len(inprocess["result"].get_step_success_events())
    assert len(starts) == n_steps >= 9  # tile_grid, 2 patches, 3+ embeddings, 3+ cubes
    pids = {e.dagster_event.pid for e in starts}
    assert os.getpid() not in pids, "a step ran in the test process"
    assert len(pids) >= 2, f"all steps ran in one process: {pids}"
    hosts = {e.dagster_event.event_specific_data.metadata["Celery worker"].value
             for e in celery_run["events"]
             if e.dagster_event and e.dagster_event.event_type_value == "ENGINE_EVENT"
             and "Celery worker" in (getattr(e.dagster_event.event_specific_data, "metadata", None) or {})}
    assert {h.split("@")[0] for h in hosts} == {"w1", "w2"}, hosts


def test_celery_gpu_steps_went_to_the_gpu_queue_worker(celery_run):
    """Embedding steps (tag dagster-celery/queue=gpu) ran on w2, which listens only on ``gpu``;
    every other step on w1, which listens only on the default queue."""
    from rs_embed_pipeline.orchestration.executors import GPU_QUEUE

    assert GPU_QUEUE == "gpu"
    worker_of = {e.dagster_event.step_key: e.dagster_event.event_specific_data.metadata["Celery worker"].value
                 for e in celery_run["events"]
                 if e.dagster_event and e.dagster_event.event_type_value == "ENGINE_EVENT"
                 and "Celery worker" in (getattr(e.dagster_event.event_specific_data, "metadata", None) or {})}
    on = {step: host.split("@")[0] for step, host in worker_of.items()}
    gpu_steps = {step for step in on if step.endswith("_embeddings")}
    assert gpu_steps == {"terrafm_s2_embeddings", "terrafm_s1_embeddings", "thor_s2_embeddings"}, on
    assert {on[s] for s in gpu_steps} == {"w2"}, on
    assert {on[s] for s in set(on) - gpu_steps} == {"w1"}, on


@pytest.mark.parametrize("asset_name", sorted(CUBES))
def test_celery_cube_equals_single_process_cube(celery_run, inprocess, asset_name):
    for group in ("EPSG32632/grid", "EPSG32632/pooled"):
        a = xr.open_zarr(f"{inprocess['root']}/cubes/{CUBES[asset_name]}/tiny.zarr", group=group)
        b = xr.open_zarr(f"{celery_run['root']}/cubes/{CUBES[asset_name]}/tiny.zarr", group=group)
        for name in ("x", "y", "time"):
            assert np.array_equal(a[name].values, b[name].values), (group, name)
        va, vb = a["embedding"].values, b["embedding"].values
        assert va.shape == vb.shape and np.isfinite(a["embedding"].sel(time=WINDOW).values).all()
        assert np.array_equal(va, vb, equal_nan=True), (group, float(np.nanmax(np.abs(va - vb))))
