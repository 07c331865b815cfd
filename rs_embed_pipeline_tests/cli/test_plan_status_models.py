"""The plan and status CLIs take any model name of cli/names.py (issue 19): ``plan_build --models``
plans only those models, ``build_status --model`` keeps a model's assets and ``--asset`` takes a
model id as the asset's prefix. Over the packaged demo config, no build."""

import pytest

from rs_embed_pipeline.cli import build_status, plan_build
from rs_embed_pipeline.cli.names import UsageError
from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.orchestration.settings import Settings

START, END = "2024-01-01", "2024-07-01"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    # the packaged config (RS_EMBED_CONFIG unset), a store and an instance of the test's own
    monkeypatch.delenv("RS_EMBED_CONFIG", raising=False)
    monkeypatch.setenv("RS_EMBED_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return Settings.from_env()


@pytest.mark.parametrize("name", ["thor", "thor_1_0_base", "THOR_v1_base"])
def test_plan_of_one_model_by_any_name(env, name):
    full = plan_build.plan_for(env, START, END)
    one = plan_build.plan_for(env, START, END, models=[name])
    assert set(full["tiles"]["by_model"]) == {"terrafm_s2", "terrafm_s1", "thor_s2"}
    assert one["tiles"]["by_model"] == {"thor_s2": full["tiles"]["by_model"]["thor_s2"]}
    assert one["partitions"] == full["partitions"]   # the cells still follow every tile size in use
    assert not [k for k in one["bytes"]["by_store"] if k.startswith("terrafm_")]
    assert one["bytes"]["by_store"]["thor_s2_embeddings"] == full["bytes"]["by_store"]["thor_s2_embeddings"]
    assert one["bytes"]["by_store"]["s2_patches_p288"] == full["bytes"]["by_store"]["s2_patches_p288"]
    assert "s2_patches_p224" not in one["bytes"]["by_store"]   # TerraFM's tile size: not fetched for THOR alone


def test_plan_cli_refuses_an_unknown_model_listing_the_names(env, tmp_path, capsys):
    assert plan_build.main(["--start", START, "--end", END, "--json", str(tmp_path / "p.json"),
                            "--models", "terafm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'terafm'; valid names: terrafm: terrafm, terrafm_b; thor: thor,")
    assert not (tmp_path / "p.json").exists()
    assert plan_build.main(["--start", START, "--end", END, "--json", str(tmp_path / "p.json"),
                            "--models", "terrafm_b"]) == 0
    out = capsys.readouterr().out
    assert "terrafm_s2" in out and "thor_s2" not in out


def test_status_selects_a_models_assets_by_any_name(env):
    defs = build_definitions(env)
    terrafm = build_status.selected_assets(defs, env, None, ["terrafm_b"])
    assert terrafm and all(a.startswith("terrafm_") for a in terrafm)
    assert {"terrafm_s2_embeddings", "terrafm_s1_cube"} <= set(terrafm)
    assert build_status.selected_assets(defs, env, None, ["TerraFM"]) == terrafm
    assert build_status.selected_assets(defs, env, ["thor_v1_base_s2_cube", "s2_patches"], None) == [
        "thor_s2_cube", "s2_patches"]
    assert build_status.selected_assets(defs, env, ["thor_1_0_base_s2_cube", "s2_patches"], ["thor"]) == ["thor_s2_cube"]
    assert build_status.selected_assets(defs, env, None, None) is None
    with pytest.raises(UsageError, match="unknown model 'thorr'; valid names: terrafm: terrafm, terrafm_b; thor"):
        build_status.selected_assets(defs, env, None, ["thorr"])
    with pytest.raises(UsageError, match=r"no partitioned asset of model\(s\) \['thor'\] among \['s2_patches'\]"):
        build_status.selected_assets(defs, env, ["s2_patches"], ["thor"])


def test_status_cli_with_a_model_name(env, capsys):
    assert build_status.main(["--model", "thor_v1_base", "--window", START]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert {"thor_s2_embeddings", "thor_s2_cube"} <= set(rows)
    assert all(r.startswith("thor_s2_") for r in rows), rows
    assert build_status.main(["--model", "terafm"]) == 2
    assert "unknown model 'terafm'" in capsys.readouterr().err
