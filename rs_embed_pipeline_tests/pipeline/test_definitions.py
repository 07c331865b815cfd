"""The code location loads, validates with the dagster CLI and serves in `dagster dev`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from rs_embed_pipeline.definitions import build_definitions
from rs_embed_pipeline.regions import ConfigError
from rs_embed_pipeline.settings import Settings
from rs_embed_pipeline_tests.pipeline.conftest import REPO, write_config

EXPECTED_ASSETS = {
    "tile_grid", "s2_patches", "s1_patches",
    "terrafm_s2_embeddings", "terrafm_s1_embeddings", "thor_s2_embeddings",
    "terrafm_s2_cube", "terrafm_s1_cube", "thor_s2_cube",
}


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    return {**os.environ, "RS_EMBED_STORE": str(tmp_path / "store"), "DAGSTER_HOME": str(tmp_path / "home")}


def test_definitions_load_with_expected_graph():
    defs = build_definitions(Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store"}))
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == EXPECTED_ASSETS
    assert graph.get(dg.AssetKey("thor_s2_cube")).parent_keys == {
        dg.AssetKey("thor_s2_embeddings"), dg.AssetKey("tile_grid")}
    assert graph.get(dg.AssetKey("terrafm_s1_embeddings")).parent_keys == {dg.AssetKey("s1_patches")}
    partitions = graph.get(dg.AssetKey("s2_patches")).partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    assert {d.name for d in partitions.partitions_defs} == {"region", "window"}
    assert partitions.get_partitions_def_for_dimension("window").get_partition_keys()[:2] == ["2024-01-01", "2024-04-01"]
    for key in graph.get_all_asset_keys():
        policy = graph.get(key).backfill_policy
        assert policy is not None and policy.max_partitions_per_run == 4, key
    assert defs.resolve_schedule_def("latest_window_all_regions").cron_schedule == "0 0 3 1,4,7,10 *"
    assert graph.get(dg.AssetKey("thor_s2_embeddings")).pools == {"gpu"}


def test_monthly_cadence_and_new_region_need_no_code_change(tmp_path):
    config = write_config(tmp_path / "p.yaml", [
        {"name": "demo", "bbox": [6.6, 46.5, 6.64, 46.528]},
        {"name": "alps-east", "bbox": [10.0, 46.0, 10.1, 46.1]},
    ], cadence="monthly")
    defs = build_definitions(Settings.from_env({"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": "/tmp/x"}))
    parts = defs.resolve_asset_graph().get(dg.AssetKey("tile_grid")).partitions_def
    assert parts.get_partitions_def_for_dimension("region").get_partition_keys() == ["demo", "alps-east"]
    assert parts.get_partitions_def_for_dimension("window").get_partition_keys()[:3] == [
        "2024-01-01", "2024-02-01", "2024-03-01"]


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ([{"name": "a", "bbox": [1, 2, 3, 4]}, {"name": "a", "bbox": [1, 2, 3, 4]}], "defined more than once"),
        ([{"name": "Bad Name", "bbox": [1, 2, 3, 4]}], "is invalid; use lower-case"),
        ([{"name": "empty", "bbox": [3, 2, 3, 4]}], "invalid AOI"),
        ([{"name": "nobox"}], "needs exactly one of 'bbox' or 'geojson'"),
        ([], "no regions configured"),
    ],
)
def test_bad_region_config_is_a_clear_error(tmp_path, regions, message):
    config = write_config(tmp_path / "p.yaml", regions)
    with pytest.raises(ConfigError, match=message):
        build_definitions(Settings.from_env({"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": "/tmp/x"}))


def test_unknown_provider_is_a_clear_error():
    with pytest.raises(ValueError, match="RS_EMBED_PROVIDER='sentinelhub' is not a known provider; valid: local_stac, stac, gee"):
        Settings.from_env({"RS_EMBED_PROVIDER": "sentinelhub"})


def test_dagster_definitions_validate_cli(tmp_path):
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_dev_serves_the_code_location(tmp_path):
    port = _free_port()
    dagster = Path(sys.executable).parent / "dagster"
    env = _env(tmp_path)
    proc = subprocess.Popen(
        [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    query = {"query": "{ workspaceOrError { ... on Workspace { locationEntries { name "
                      "locationOrLoadError { __typename ... on RepositoryLocation { repositories { name "
                      "assetNodes { assetKey { path } } } } } } } } }"}
    try:
        deadline, location = time.time() + 180, None
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps(query).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    entries = json.load(resp)["data"]["workspaceOrError"]["locationEntries"]
                location = entries[0]["locationOrLoadError"] if entries else None
                if location and location["__typename"] == "RepositoryLocation":
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(2)
        assert location and location["__typename"] == "RepositoryLocation", location
        keys = {"/".join(n["assetKey"]["path"]) for n in location["repositories"][0]["assetNodes"]}
        assert keys == EXPECTED_ASSETS
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode is not None
