"""``python -m rs_embed_pipeline.cli.build`` (issue 24 point 1): the real definitions, run in-process over
the synthetic catalog (local STAC provider); the README's STAC API lines run as printed against a STAC
API on 127.0.0.1 serving the synthetic catalog as Earth Search items (``RS_EMBED_PROVIDER=stac``: the
dry runs of both presets, then the patches stage for real); every wrong name an error listing the
valid ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rs_embed_pipeline.cli import build
from rs_embed_pipeline.orchestration.resources import EarthEngineImagery, StacImagery
from rs_embed_pipeline.products import open_cube
from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline_tests.pipeline.conftest import (  # noqa: F401 - fixtures
    REPO,
    TINY_BBOX,
    WINDOW,
    reference_dir,
    synthetic_catalog,
    worker_python,
    write_config,
)
from rs_embed_pipeline_tests.providers.conftest import StacApiServer, earth_search_items


def _reduced(family: str, case: str, weights: str) -> list[str]:
    """--set arguments for a model at the reference fixtures' reduced size, with their weights."""
    arch = json.loads((reference_dir() / case / "case.json").read_text())["arch"]
    return ["--set", f"{family}.arch_json={json.dumps(arch)}", "--set", f"{family}.checkpoint={reference_dir() / case / weights}",
            "--set", f"{family}.device=cpu", "--set", f"{family}.batch_size=4"]


@pytest.fixture
def env(tmp_path, monkeypatch, synthetic_catalog, worker_python):  # noqa: F811
    config = write_config(tmp_path / "pipeline.yaml", [{"name": "tiny", "bbox": list(TINY_BBOX)},
                                                       {"name": "alps", "bbox": [6.60, 46.50, 6.70, 46.56],
                                                        "split_km": 8}])
    values = {"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": str(tmp_path / "store"),
              "RS_EMBED_LOCAL_CATALOG": str(synthetic_catalog), "RS_EMBED_WORKER_PYTHON": worker_python,
              "DAGSTER_HOME": str(tmp_path / "dagster_home"), "RS_EMBED_PROVIDER": "local_stac",
              "RS_EMBED_STEP_RETRIES": "0"}
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("")
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**values, "tmp": tmp_path}


def test_build_runs_the_named_model_and_modality_into_a_cube(env, capsys):
    args = ["--region", "tiny", "--window", WINDOW, "--models", "terrafm", "--modalities", "s2", "--stages", "cubes",
            *_reduced("terrafm", "terrafm_s2_l2a", "weights.pth")]
    assert build.main(args) == 0
    out = capsys.readouterr().out
    assert "Assets (4): s2_patches, terrafm_s2_cube, terrafm_s2_embeddings, tile_grid\nPartitions: tiny|2024-01-01\n" in out
    assert "Runs recorded in the Dagster instance at $DAGSTER_HOME" in out and f"done tiny|{WINDOW}" in out
    cube = f"{env['RS_EMBED_STORE']}/cubes/terrafm_b_s2/tiny.zarr"
    assert f"  terrafm_s2_cube    {cube}  [pretrained]\n" in out
    ds = open_cube(cube)
    assert [str(t)[:10] for t in ds["time"].values] == [WINDOW] and ds.sizes["feature"] > 0
    assert not os.path.exists(f"{env['RS_EMBED_STORE']}/patches/s1")  # S1 off: never fetched


def test_a_failed_run_exits_1_naming_the_step_and_its_error(env, capfd):
    args = ["--region", "tiny", "--window", WINDOW, "--models", "thor", "--stages", "embeddings",
            "--set", "thor.checkpoint=/no/such/thor.pt", "--set", "thor.device=cpu"]
    assert build.main(args) == 1
    out, err = capfd.readouterr()
    assert f"FAILED tiny|{WINDOW} (run " in out
    assert "  thor_s2_embeddings: dagster._core.errors.DagsterPipesExecutionError: External execution process " \
           "failed with code 1\n" in out
    # the worker's own error reaches the terminal (its stderr), naming the file
    assert "WeightsNotFoundError: Checkpoint file '/no/such/thor.pt' does not exist" in err


TINY = ["--region", "tiny", "--window", WINDOW]  # the arguments of a valid build before the wrong one


@pytest.mark.parametrize(("args", "message"), [
    (["--region", "tinny", "--window", WINDOW], "error: unknown region 'tinny' in {config}; configured regions: tiny, "
     "alps (README 'Adding a region')"),
    (["--region", "alps", "--window", WINDOW], "error: region 'alps' is split into 4 cells (split_km); name one of "
     "them: alps-32N-E0312-N05152, alps-32N-E0320-N05152, alps-32N-E0312-N05144, alps-32N-E0320-N05144\n"),
    (["--region", "tiny", "--window", "2024-02-01"], "error: unknown window '2024-02-01'; windows are the first days "
     "of the configured cadence's periods: 2024-01-01, 2024-04-01"),
    ([*TINY, "--models", "thorr"], "error: unknown model 'thorr'; valid names: "
     "terrafm: terrafm, terrafm_b; thor: thor, thor_1_0_base"),
    ([*TINY, "--modalities", "thor=s3"], "error: --modalities 'thor=s3': thor "
     "embeds s2, s1 (comma-separated, e.g. thor=s2,s1), got 's3'"),
    ([*TINY, "--stages", "cube"], "error: unknown stage(s) cube; stages: patches, "
     "embeddings, cubes, products, answers"),
    ([*TINY, "--assets", "terrafm_s2_cubes"], "error: unknown asset(s) "
     "terrafm_s2_cubes; assets: s1_patches, s2_patches, terrafm_s1_change, terrafm_s1_cog"),
    ([*TINY, "--set", "terrafm.batchsize=4"], "error: --set 'terrafm.batchsize=4': "
     "terrafm has no field 'batchsize'; fields: checkpoint, batch_size"),
    ([*TINY, "--set", "gpu.device=cuda"], "error: --set 'gpu.device=cuda': expected "
     "RESOURCE.FIELD=VALUE with RESOURCE one of store, imagery, terrafm, thor"),
])
def test_every_wrong_name_lists_the_valid_ones(env, capsys, args, message):
    assert build.main(args) == 2
    assert capsys.readouterr().err.startswith(message.format(config=env["RS_EMBED_CONFIG"]))


def test_dry_run_selects_by_stage_and_the_package_runs_it_by_name(env):
    run = subprocess.run([sys.executable, "-m", "rs_embed_pipeline", "build", "--region", "alps-32N-E0312-N05152",
                          "--window", WINDOW, "2024-04-01", "--models", "thor_v1_base", "--stages", "answers",
                          "--dry-run"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1:] == [
        "Assets (6): s2_patches, thor_s2_change, thor_s2_cube, thor_s2_embeddings, thor_s2_search_index, tile_grid",
        f"Partitions: alps-32N-E0312-N05152|{WINDOW}, alps-32N-E0312-N05152|2024-04-01"]
    named = subprocess.run([sys.executable, "-m", "rs_embed_pipeline.cli.build", "--region", "tiny", "--window", WINDOW,
                            "--assets", "terrafm_b_s2_cube", "thor_v1_base_s2_embeddings", "tile_grid", "--dry-run"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Assets (3): terrafm_s2_cube, thor_s2_embeddings, tile_grid\n" in named.stdout, named.stderr
    listing = subprocess.run([sys.executable, "-m", "rs_embed_pipeline"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert listing.returncode == 2 and "commands: build, build_status, demo, plan_build, search" in listing.stdout


def readme_offline_build_lines() -> list[str]:
    """The README's offline build command lines ("Build your own region": --list and --dry-run)."""
    section = (REPO / "README.md").read_text().split("## Build your own region", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines()
            if line.startswith(".venv/bin/python") and ("--dry-run" in line or line.endswith("--list"))]


def test_readme_build_lines_run_as_printed(tmp_path):
    """Issue 24: the README's command lines that work offline, run exactly as printed from a checkout
    whose .venv is this interpreter's environment, with the packaged regions config."""
    lines = readme_offline_build_lines()
    assert len(lines) == 3
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RS_EMBED_", "EE_PROJECT"))}
    env.update(PYTHONPATH=str(REPO), RS_EMBED_STORE=str(tmp_path / "data"))
    outputs = []
    for line in lines:
        run = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0, f"README line failed: {line}\n{run.stdout}\n{run.stderr}"
        outputs.append(run.stdout)
    assert outputs[0].startswith("regions (") and "windows: 2024-01-01, 2024-04-01," in outputs[0]
    assert "Assets (4): s2_patches, terrafm_s2_cube, terrafm_s2_embeddings, tile_grid\nPartitions: demo|2024-01-01\n" \
        in outputs[1]
    assert "Partitions: demo|2024-01-01, demo|2024-04-01\n" in outputs[2] and "thor_s2_stac" in outputs[2]


def readme_stac_build_lines() -> list[str]:
    """The README's STAC API build lines ("Build your own region" step 4), continuation lines joined
    and trailing comments dropped."""
    section = (REPO / "README.md").read_text().split("## Build your own region", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)[0]
    commands = re.sub(r"\\\n\s*", "", block).splitlines()
    return [c.split("  #", 1)[0].rstrip() for c in commands if c.startswith("RS_EMBED_PROVIDER=stac ")]


@pytest.fixture
def readme_stac_checkout(tmp_path) -> Iterator[tuple[dict[str, str], StacApiServer]]:
    """A checkout whose .venv is this interpreter's environment, a regions config with the README's
    region (lake-geneva: the tiny test area on the lake's shore) and a STAC API on 127.0.0.1 serving
    a synthetic catalog of the README's window (Q2 2024) as Earth Search C1 items."""
    catalog = generate_synthetic_catalog(tmp_path / "catalog", TINY_BBOX, "2024-04-01", "2024-07-01", seed=0,
                                         s2_revisit_days=30, s1=False, pad_m=3000.0)
    items, coll = earth_search_items(catalog)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RS_EMBED_", "EE_PROJECT"))}
    with StacApiServer(items, [coll]) as api:
        env.update(PYTHONPATH=str(REPO), RS_EMBED_STAC_URL=api.url, RS_EMBED_STORE=str(tmp_path / "data"),
                   RS_EMBED_CONFIG=str(write_config(tmp_path / "pipeline.yaml",
                                                    [{"name": "lake-geneva", "bbox": list(TINY_BBOX)}])),
                   DAGSTER_HOME=str(tmp_path / "dagster_home"), RS_EMBED_STEP_RETRIES="0")
        yield env, api


def test_readme_stac_lines_run_against_a_local_stac_api(readme_stac_checkout, tmp_path):
    """Issue 24: the README's STAC walk-through with the same commands, against a local STAC API: the
    Earth Search preset switches S1 off (its presets configure no S1 collection), the Planetary Computer
    preset keeps TerraFM S1 (its s1_collection is sentinel-1-rtc); the patches stage then fetches S2
    from the served items."""
    env, api = readme_stac_checkout
    earth_search, planetary = lines = readme_stac_build_lines()
    assert lines == [
        "RS_EMBED_PROVIDER=stac .venv/bin/python -m rs_embed_pipeline.cli.build --region lake-geneva --window 2024-04-01",
        "RS_EMBED_PROVIDER=stac .venv/bin/python -m rs_embed_pipeline.cli.build --region lake-geneva --window 2024-04-01 "
        "--set imagery.catalog_preset=planetary-computer"]

    def run(line: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, f"failed: {line}\n{done.stdout}\n{done.stderr}"
        return done

    es = run(f"{earth_search} --dry-run")
    assert es.stdout.splitlines()[0].endswith("; models: terrafm s2, thor s2")
    assert "\nPartitions: lake-geneva|2024-04-01\n" in es.stdout and "s1_patches" not in es.stdout
    assert "note: terrafm: S1 switched off, the stac provider (catalog_preset earth-search-c1) has no Sentinel-1 " \
           "collection (--modalities terrafm=s2 says so explicitly)\n" in es.stderr
    pc = run(f"{planetary} --dry-run")
    assert pc.stdout.splitlines()[0].endswith("; models: terrafm s2+s1, thor s2") and "S1 switched off" not in pc.stderr
    assert "Assets (24): s1_patches, s2_patches, terrafm_s1_change, terrafm_s1_cog, terrafm_s1_cube, " in pc.stdout
    assert not api.searches  # a dry run asks nothing

    built = run(f"{earth_search} --stages patches")
    assert "Assets (2): s2_patches, tile_grid\n" in built.stdout and "done lake-geneva|2024-04-01 (run " in built.stdout
    served = sorted(d["id"] for d in api.items)
    assert served and {tuple(s["collections"]) for s in api.searches} == {("sentinel-2-c1-l2a",)}
    for size in (224, 288):
        store = TileStore.open(f"{env['RS_EMBED_STORE']}/patches/s2/lake-geneva/2024-04-01/p{size}.zarr", "patches")
        counts = store.status_counts()
        assert counts["ok"] == len(store.tile_ids) > 0 and counts["failed"] == counts["no_data"] == 0
        meta = store.tile_meta(0)
        assert meta["provider"] == "stac" and meta["collection"] == "sentinel-2-c1-l2a" and meta["synthetic"] is False
        assert set(meta["scene_ids"]) <= set(served) and meta["image_count"] == len(meta["scene_ids"]) > 0
    assert not os.path.exists(f"{env['RS_EMBED_STORE']}/patches/s1")


def test_serves_s1_follows_the_resolved_catalog():
    """S1 is built where the imagery names an S1 collection: the Planetary Computer preset
    (sentinel-1-rtc) and Earth Engine, not the Earth Search presets unless one is set."""
    assert build.serves_s1(StacImagery(catalog_preset="planetary-computer")) is True
    assert build.serves_s1(StacImagery()) is False
    assert build.serves_s1(StacImagery(catalog_preset="earth-search-l2a")) is False
    assert build.serves_s1(StacImagery(s1_collection="sentinel-1-rtc")) is True
    assert build.serves_s1(EarthEngineImagery(project="p")) is True


def readme_plan_and_status_lines() -> list[str]:
    """The README's plan and status command lines ("Continental builds"), offline as printed."""
    section = (REPO / "README.md").read_text().split("\n## Continental builds\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines()
            if line.startswith(".venv/bin/python -m rs_embed_pipeline.cli.") and ("plan_build" in line or "build_status" in line)]


def test_readme_plan_and_status_lines_run_as_printed(tmp_path):
    """Issue 24: the plan and progress commands of "Continental builds", exactly as printed, on the
    packaged demo config and an empty Dagster instance (nothing built yet: every partition pending)."""
    lines = readme_plan_and_status_lines()
    assert [line.split()[2] for line in lines] == ["rs_embed_pipeline.cli.plan_build", "rs_embed_pipeline.cli.build_status"]
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RS_EMBED_", "EE_PROJECT"))}
    env.update(PYTHONPATH=str(REPO), RS_EMBED_STORE=str(tmp_path / "data"), DAGSTER_HOME=str(tmp_path / "home"))
    plan = subprocess.run(["bash", "-c", lines[0]], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert plan.returncode == 0, plan.stderr
    assert "partitions: 1 region partitions x 2 windows = 2 per asset" in plan.stdout
    assert "written to build_plan.json" in plan.stdout
    written = json.loads((tmp_path / "build_plan.json").read_text())
    assert written["partitions"]["per_asset"] == 2
    status = subprocess.run(["bash", "-c", lines[1]], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert status.returncode == 0, status.stderr
    rows = [row.split() for row in status.stdout.splitlines()[1:]]
    assert rows and all(row[0].startswith("terrafm_") for row in rows)
    assert ["terrafm_s2_cube", "2024-01-01", "0", "0", "0", "1"] in rows
