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

from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.core.regions import ConfigError
from rs_embed_pipeline.orchestration.settings import Settings
from rs_embed_pipeline_tests.pipeline.conftest import REPO, write_config

EXPECTED_ASSETS = {
    "tile_grid", "s2_patches", "s1_patches",
    "terrafm_s2_embeddings", "terrafm_s1_embeddings", "thor_s2_embeddings",
    "terrafm_s2_cube", "terrafm_s1_cube", "thor_s2_cube",
    # Products (assets/products.py) and answers (assets/answers.py), one of each per model x modality.
    *(f"{spec}_{kind}" for spec in ("terrafm_s2", "terrafm_s1", "thor_s2")
      for kind in ("geoparquet", "cog", "stac", "search_index", "change")),
}


# dagster dev stops its daemon threads between iterations: on a loaded 2-core machine (CI beside
# another job) an iteration can take a while, so the graces are generous.
SIGTERM_GRACE_S = 60
GROUP_EXIT_GRACE_S = 90


def _group_members(pgid: int) -> list[str]:
    """``pid: command line`` of every live process in process group ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                members.append(f"{entry.name}: {cmd[:160]}")
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return members


def _env(tmp_path: Path) -> dict[str, str]:
    """The environment of a Dagster CLI process, with its instance already created: `dagster dev`
    starts a webserver, a daemon and a code server at once, and processes that create one SQLite
    schema at the same time race (alembic "more than one head")."""
    (tmp_path / "home").mkdir(exist_ok=True)
    with dg.DagsterInstance.from_config(str(tmp_path / "home")):
        pass
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


def _dg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``dg`` from the orchestrator environment, in the repository root (``[tool.dg]`` in pyproject.toml),
    that environment active (dg runs the code location with the active environment's Python)."""
    bin_dir = Path(sys.executable).parent
    env = {**_env(tmp_path), "VIRTUAL_ENV": str(bin_dir.parent), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "NO_COLOR": "1"}
    return subprocess.run([str(bin_dir / "dg"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_dg_lists_every_asset_and_checks_the_definitions(tmp_path):
    listed = _dg(tmp_path, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    defs = json.loads(listed.stdout)
    assert {a["asset_key"] for a in defs["assets"]} == EXPECTED_ASSETS
    assert {j["name"] for j in defs["jobs"]} == {"build_embeddings", "build_embeddings_celery"}
    assert {r["name"] for r in defs["resources"]} >= {"store", "imagery", "terrafm", "thor"}
    checked = _dg(tmp_path, "check", "defs")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully." in checked.stdout + checked.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_dev_serves_the_code_location(tmp_path):
    port = _free_port()
    dagster = Path(sys.executable).parent / "dagster"
    env = _env(tmp_path)
    # Its output goes to a file: a pipe nobody reads fills up (64 KiB) and blocks dagster dev's
    # logging, shutdown included.
    log = tmp_path / "dagster-dev.log"
    # A shell that starts a job in the background (`cmd &`, as a CI runner may) ignores SIGINT for
    # it, and an ignored signal stays ignored across exec. dagster dev maps SIGTERM to its SIGINT
    # handler, so it would ignore SIGTERM as well: start it with the default SIGINT disposition.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
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
        # SIGTERM to dagster dev alone (as a supervisor or `kill` sends it): it must stop its
        # webserver, daemon and code server itself.
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=SIGTERM_GRACE_S)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    # `dagster dev` stops on SIGTERM by itself, and takes its webserver and code server with it.
    assert not killed, f"dagster dev ignored SIGTERM for {SIGTERM_GRACE_S} s; its log ends:\n{log.read_text()[-3000:]}"
    # Its children stop on their own; on a loaded 2-core machine the daemon's and code server's
    # shutdown can take a while, so the grace is generous and the survivors are named.
    deadline = time.time() + GROUP_EXIT_GRACE_S
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the process group?
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        survivors = _group_members(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"a webserver or code server process outlived dagster dev by "
                             f"{GROUP_EXIT_GRACE_S} s: {survivors}; its log ends:\n{log.read_text()[-3000:]}")


# ------------------------------------------------------------------------------ issue 11
@pytest.mark.parametrize(("executor", "expected"), [("multiprocess", "multiprocess"), ("k8s", "k8s"),
                                                    ("celery", "celery"), (None, "multiprocess")])
def test_every_job_runs_on_the_configured_executor(executor, expected):
    """UI materializations and backfills run the implicit asset job: it gets the same executor as
    build_embeddings (Definitions(executor=...)); build_embeddings_celery stays on Celery."""
    env = {"RS_EMBED_STORE": "/tmp/unused-store", "RS_EMBED_CELERY_BROKER": "redis://127.0.0.1:1/0"}
    if executor:
        env["RS_EMBED_EXECUTOR"] = executor
    defs = build_definitions(Settings.from_env(env))
    implicit = defs.resolve_implicit_global_asset_job_def()
    assert set(implicit.asset_layer.executable_asset_keys) == set(defs.resolve_asset_graph().get_all_asset_keys())
    assert EXPECTED_ASSETS <= {k.to_user_string() for k in implicit.asset_layer.executable_asset_keys}
    executors = {job.name: job.executor_def.name for job in defs.resolve_all_job_defs()}
    assert executors == {implicit.name: expected, "build_embeddings": expected, "build_embeddings_celery": "celery"}
    if expected == "celery":  # the broker comes from the settings, no run config needed
        assert not implicit.executor_def.config_schema.as_field().is_required
    # A job that names an asset subset (the UI's "Materialize selected") runs there too.
    subset = implicit.get_subset(asset_selection={dg.AssetKey("thor_s2_embeddings")})
    assert subset.executor_def.name == expected


def test_every_asset_step_retries_with_backoff():
    defs = build_definitions(Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store",
                                                "RS_EMBED_STEP_RETRIES": "3", "RS_EMBED_STEP_RETRY_DELAY_S": "5"}))
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        policy = defs.resolve_assets_def(key).op.retry_policy
        assert policy is not None, key
        assert (policy.max_retries, policy.delay, policy.backoff, policy.jitter) == (
            3, 5, dg.Backoff.EXPONENTIAL, dg.Jitter.PLUS_MINUS), key
    default = build_definitions(Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store"}))
    policy = default.resolve_assets_def("thor_s2_cube").op.retry_policy
    assert (policy.max_retries, policy.delay) == (2, 30)


@pytest.mark.parametrize(("env", "message"), [
    ({"RS_EMBED_THOR_NORMALIZE": "zscored"},
     r"RS_EMBED_THOR_NORMALIZE='zscored' is invalid; valid values: thor_stats, unit_scale, none"),
    ({"RS_EMBED_THOR_GROUP_MERGE": "max"}, r"RS_EMBED_THOR_GROUP_MERGE='max' is invalid; valid values: mean, sum, concat"),
    ({"RS_EMBED_TERRAFM_BATCH_SIZE": "0"}, r"RS_EMBED_TERRAFM_BATCH_SIZE='0' is invalid; valid values: an integer >= 1"),
    ({"RS_EMBED_EXECUTOR": "spark"}, r"RS_EMBED_EXECUTOR='spark' is not one of multiprocess, k8s, celery"),
    ({"RS_EMBED_DEVICE": "tpu"}, r"RS_EMBED_DEVICE='tpu' is invalid; valid values: auto, cpu, cuda, cuda:<index>"),
    ({"RS_EMBED_ALLOW_RANDOM_WEIGHTS": "maybe"},
     r"RS_EMBED_ALLOW_RANDOM_WEIGHTS='maybe' is invalid; valid values: 1/0, true/false"),
    ({"RS_EMBED_STEP_RETRIES": "-1"}, r"RS_EMBED_STEP_RETRIES='-1' is invalid; valid values: an integer >= 0"),
    ({"RS_EMBED_LEASE_WAIT_S": "soon"}, r"RS_EMBED_LEASE_WAIT_S='soon' is invalid; valid values: a number >= 0"),
])
def test_invalid_setting_fails_the_load_naming_variable_and_valid_values(env, message):
    with pytest.raises(ValueError, match=message):
        build_definitions(Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store", **env}))


def test_invalid_resource_field_fails_the_load_naming_it(tmp_path):
    """Values valid in general but not for this configuration fail the load too, naming the field
    (or the variable that set it) and the valid values, instead of failing in the worker."""
    from rs_embed_pipeline.orchestration.definitions import resources_for

    settings = Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store", "RS_EMBED_THOR_NORMALIZE": "unit_scale"})
    resources = resources_for(settings)
    from rs_embed_pipeline.orchestration.resources import LocalStacImagery, ThorResource

    # unit_scale, and rs-embed's S2 alias zscore, are valid for S2 only: with S1 embedded too, the
    # load fails (it used to fail in the S1 worker, after the fetch).
    for normalization in ("unit_scale", "zscore"):
        thor = ThorResource(worker_python="python", normalization=normalization, modalities=["s2", "s1"])
        with pytest.raises(ValueError, match=rf"Invalid RS_EMBED_THOR_NORMALIZE \(thor.normalization\): "
                                             rf".*{normalization}.* Use one of: thor_stats .*none"):
            build_definitions(settings, resources={**resources, "thor": thor})
    with pytest.raises(ValueError, match=r"Invalid resource field imagery.composite: Unknown composite='max'. "
                                         r"Use 'median' or 'mosaic'"):
        build_definitions(settings, resources={**resources, "imagery": LocalStacImagery(catalog_path="x", composite="max")})
    with pytest.raises(ValueError, match=r"Invalid resource field thor.precision: 'fp8'; valid values: fp32, bf16"):
        build_definitions(settings, resources={**resources, "thor": ThorResource(worker_python="python", precision="fp8")})


def _resource(kind: str, **fields):
    from rs_embed_pipeline.orchestration.resources import LocalStacImagery, TerraFMResource, ThorResource

    if kind == "imagery":
        return LocalStacImagery(catalog_path="x", **fields)
    return {"thor": ThorResource, "terrafm": TerraFMResource}[kind](worker_python="python", **fields)


@pytest.mark.parametrize(("key", "fields", "field", "message"), [
    # values that hold another field's name: the field is the one the check names, not a word of the text
    ("imagery", {"s1_orbit": "composite"}, "s1_orbit",
     "Invalid resource field imagery.s1_orbit: Unknown S1 orbit='composite'. Use 'ASCENDING' or 'DESCENDING'."),
    ("imagery", {"composite": "cloudy_pct"}, "composite",
     "Invalid resource field imagery.composite: Unknown composite='cloudy_pct'. Use 'median' or 'mosaic'."),
    ("imagery", {"cloudy_pct": 150}, "cloudy_pct",
     "Invalid resource field imagery.cloudy_pct: cloudy_pct must be within [0, 100]"),
    ("thor", {"group_merge": "batch_size"}, "group_merge",
     "Invalid RS_EMBED_THOR_GROUP_MERGE (thor.group_merge): Unknown THOR group_merge 'batch_size'; valid: mean"),
    ("thor", {"normalization": "modalities"}, "normalization",
     "Invalid RS_EMBED_THOR_NORMALIZE (thor.normalization): Unknown THOR normalization mode 'modalities'."),
    ("thor", {"model_key": "huge"}, "model_key",
     "Invalid RS_EMBED_THOR_MODEL_KEY (thor.model_key): Unknown THOR variant='huge'"),
    # one message for both sizes; the field named is the one out of range
    ("thor", {"image_size": 0}, "image_size",
     "Invalid RS_EMBED_THOR_IMG (thor.image_size): patch_size and image_size must be >= 1, got 16, 0"),
    ("thor", {"patch_size": 0}, "patch_size",
     "Invalid RS_EMBED_THOR_PATCH_SIZE (thor.patch_size): patch_size and image_size must be >= 1, got 0, "),
    ("terrafm", {"batch_size": 0}, "batch_size",
     "Invalid RS_EMBED_TERRAFM_BATCH_SIZE (terrafm.batch_size): batch_size must be an integer >= 1 or None, got 0"),
    ("terrafm", {"fetch_workers": 0}, "fetch_workers",
     "Invalid RS_EMBED_TERRAFM_FETCH_WORKERS (terrafm.fetch_workers): fetch_workers must be an integer >= 1, got 0"),
    ("terrafm", {"modalities": ["s3"]}, "modalities",
     "Invalid resource field terrafm.modalities: TerraFMResource.modalities ['s3']: use 's2' and/or 's1'"),
])
def test_validate_resources_names_the_field_its_check_names(key, fields, field, message):
    """validate_resources names the field the failing check names (ResourceFieldError.field, set
    where the field is checked), never a field name found in the message's text."""
    from rs_embed_pipeline.orchestration.definitions import validate_resources
    from rs_embed_pipeline.orchestration.resources import ResourceFieldError

    resources = {"terrafm": _resource("terrafm", modalities=["s2", "s1"]), key: _resource(key, **fields)}
    with pytest.raises(ValueError) as err:
        validate_resources(resources)
    assert str(err.value).startswith(message), str(err.value)
    # The resource's own check: a ValueError naming the field, with the message that follows the prefix.
    resource = resources[key]
    with pytest.raises(ResourceFieldError) as own:
        resource.sensor_options("s1") if key == "imagery" else resource.validate_settings()
    assert isinstance(own.value, ValueError) and own.value.field == field
    assert str(err.value) == f"{message.split(': ', 1)[0]}: {own.value}"


def test_patch_assets_only_for_the_modalities_a_model_embeds():
    from rs_embed_pipeline.orchestration.definitions import resources_for
    from rs_embed_pipeline.orchestration.resources import TerraFMResource

    settings = Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store"})
    resources = resources_for(settings)

    def asset_names(res: dict) -> set[str]:
        defs = build_definitions(settings, resources=res)
        return {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}

    default = asset_names(resources)
    assert {"s2_patches", "s1_patches", "terrafm_s1_embeddings"} <= default
    s2_only = asset_names({**resources, "terrafm": TerraFMResource(worker_python="python", modalities=["s2"])})
    assert "s1_patches" not in s2_only and "s2_patches" in s2_only
    assert not {name for name in s2_only if name.startswith("terrafm_s1")}
    assert default - s2_only == {"s1_patches"} | {name for name in default if name.startswith("terrafm_s1")}


def test_inputs_assets_take_only_the_resources_they_use():
    """Tile sizes, patch sizes and fetch threads come from the plan computed in build_definitions:
    tile_grid needs only the store, the patch assets the store and the imagery (no model resource)."""
    defs = build_definitions(Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store"}))
    required = {name: defs.resolve_assets_def(name).required_resource_keys - {"io_manager"}  # Dagster's own
                for name in ("tile_grid", "s2_patches", "s1_patches")}
    assert required == {"tile_grid": {"store"}, "s2_patches": {"store", "imagery"},
                        "s1_patches": {"store", "imagery"}}


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"]


REGION_KEYS = ('{ assetNodeOrError(assetKey: {path: ["tile_grid"]}) { ... on AssetNode { '
               'partitionKeysByDimension { name partitionKeys } } } }')


def test_a_region_added_to_the_mounted_file_appears_after_a_reload(tmp_path):
    """The deployed code server (`dagster code-server start`, as in the image and the Helm values)
    and a webserver on it: a region added to the regions file (the mounted ConfigMap) is a partition
    after "Reload" in the UI (the GraphQL mutation the button sends), without restarting anything."""
    config = write_config(tmp_path / "pipeline.yaml", [{"name": "demo", "bbox": [6.6, 46.5, 6.64, 46.528]}])
    env = {**_env(tmp_path), "RS_EMBED_CONFIG": str(config)}
    bin_dir = Path(sys.executable).parent
    grpc_port, web_port = _free_port(), _free_port()
    (tmp_path / "workspace.yaml").write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {grpc_port}\n"
        f"      location_name: rs_embed_pipeline\n")
    procs = []  # their instance exists already (_env)
    try:
        procs.append(subprocess.Popen(
            [str(bin_dir / "dagster"), "code-server", "start", "-m", "rs_embed_pipeline.definitions",
             "-h", "127.0.0.1", "-p", str(grpc_port)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        procs.append(subprocess.Popen(
            [str(bin_dir / "dagster-webserver"), "-w", str(tmp_path / "workspace.yaml"), "-h", "127.0.0.1",
             "-p", str(web_port)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

        def regions() -> list[str] | None:
            try:
                node = _graphql(web_port, REGION_KEYS)["assetNodeOrError"]
            except (OSError, KeyError, TypeError, ValueError):
                return None
            dims = {d["name"]: d["partitionKeys"] for d in (node or {}).get("partitionKeysByDimension") or []}
            return dims.get("region")

        deadline = time.time() + 180
        while regions() is None and time.time() < deadline:
            time.sleep(2)
        assert regions() == ["demo"]

        write_config(config, [{"name": "demo", "bbox": [6.6, 46.5, 6.64, 46.528]},
                              {"name": "alps-east", "bbox": [10.0, 46.0, 10.1, 46.1]}])
        assert regions() == ["demo"], "nothing changes until the location is reloaded"
        reloaded = _graphql(web_port, 'mutation { reloadRepositoryLocation(repositoryLocationName: '
                                      '"rs_embed_pipeline") { __typename ... on WorkspaceLocationEntry { '
                                      'locationOrLoadError { __typename ... on PythonError { message } } } } }')["reloadRepositoryLocation"]
        assert reloaded["locationOrLoadError"]["__typename"] == "RepositoryLocation", reloaded
        assert regions() == ["demo", "alps-east"]
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.parametrize(("asset", "field", "good", "bad", "choices"), [
    ("terrafm_s2_cube", "quantization", "int8_per_cell", "int9", "'none', 'int8_per_cell', 'int8_per_feature'"),
    ("terrafm_s2_search_index", "ann", "hnsw", "annoy", "'auto', 'hnsw', 'exact'"),
    ("thor_s2_change", "kind", "pooled", "tokens", "'grid', 'pooled'"),
])
def test_run_config_choices_are_typed_and_checked_by_dagster(asset, field, good, bad, choices):
    """Choice fields of the run config are Literal types: Dagster's config system (and the launchpad)
    knows the choices, and refuses another value before a run starts, naming them."""
    defs = build_definitions(Settings.from_env({"RS_EMBED_STORE": "/tmp/unused-store"}))
    job = defs.resolve_implicit_global_asset_job_def()
    checked = dg.validate_run_config(job, {"ops": {asset: {"config": {field: good}}}})
    assert checked["ops"][asset]["config"][field] == good
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        dg.validate_run_config(job, {"ops": {asset: {"config": {field: bad}}}})
    assert f"Value at path root:ops:{asset}:config:{field} not in enum type Literal[{choices}] got {bad}" in str(
        refused.value)
