"""docs/knobs.md cannot drift: it is generated from the knob table (rs_embed_pipeline/config/knobs.yaml)
and compared with its regeneration; its table is parsed and checked against the resources' fields and
defaults, the variables' table (models/knobs.py) and the settings (the environment -> resource path)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rs_embed_pipeline.orchestration import knob_table as KT
from rs_embed_pipeline.orchestration import resources as R
from rs_embed_pipeline.orchestration import settings as S
from rs_embed_pipeline.orchestration.definitions import resources_for
from rs_embed_pipeline.models import knobs as K
from rs_embed_pipeline.models.errors import ModelInputError

DOC = Path(__file__).resolve().parents[2] / "docs" / "knobs.md"
CLASSES = {n: getattr(R, n) for n in ("TerraFMResource", "ThorResource", "ImageryResource", "EarthEngineImagery",
                                      "LocalStacImagery", "StacImagery")}
RESOURCE_KEY = {"TerraFMResource": "terrafm", "ThorResource": "thor", "ImageryResource": "imagery"}
NOT_KNOBS = {"model_id", "provider_name"}  # identity constants, not settings
ENV_RE = re.compile(r"`([A-Z][A-Z0-9_]+)`")
FIELD_RE = re.compile(r"`(\w+)\.(\w+)`")
# A valid non-default sample per environment variable: (raw, expected resource value).
SAMPLES = {
    "RS_EMBED_TERRAFM_BATCH_SIZE": ("3", 3),
    "RS_EMBED_TERRAFM_FETCH_WORKERS": ("2", 2),
    "RS_EMBED_THOR_MODEL_KEY": ("large", "thor_v1_large"),
    "RS_EMBED_THOR_CKPT": ("/weights/thor_v1_vit_base.pt", "/weights/thor_v1_vit_base.pt"),
    "RS_EMBED_THOR_PRETRAINED": ("0", False),
    "RS_EMBED_THOR_IMG": ("256", 256),
    "RS_EMBED_THOR_NORMALIZE": ("unit_scale", "unit_scale"),
    "RS_EMBED_THOR_GROUP_MERGE": ("concat", "concat"),
    "RS_EMBED_THOR_PATCH_SIZE": ("8", 8),
    "RS_EMBED_THOR_FETCH_WORKERS": ("3", 3),
    "RS_EMBED_CHECK_INPUT": ("false", False),
    "RS_EMBED_CHECK_RAISE": ("1", True),
    "HUGGINGFACE_HUB_CACHE": ("/hf/hub", "/hf/hub"),
    "HF_HUB_CACHE": ("/hf2/hub", "/hf2/hub"),
    "HF_HOME": ("/hfhome", "/hfhome/hub"),
    "RS_EMBED_DEVICE": ("cpu", "cpu"),
    "RS_EMBED_ALLOW_RANDOM_WEIGHTS": ("1", True),
    "RS_EMBED_WORKER_PYTHON": ("/opt/worker/bin/python", "/opt/worker/bin/python"),
}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_table() -> list[dict]:
    rows = []
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Knob (page) |"))
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, line
        knob, fields, envs, default, meta = cells
        outside = re.sub(r"\([^)]*\)", "", default)  # literals in parentheses are explanations
        rows.append({
            "knob": knob,
            "fields": FIELD_RE.findall(fields),
            "envs": ENV_RE.findall(envs),
            "defaults": [_literal(v) for v in re.findall(r"`([^`]*)`", outside)],
            "required": outside.strip() == "required",
            "meta": meta,
            "line": line,
        })
    return rows


ROWS = parse_table()


def _field_default(cls, field):
    info = cls.model_fields[field]
    return "required" if info.is_required() else info.get_default(call_default_factory=True)


def test_table_parsed():
    assert len(ROWS) >= 30
    assert all(r["meta"] for r in ROWS), "every knob says what it changes in metadata"


def test_doc_is_generated_from_the_knob_table():
    """docs/knobs.md is the generator's output, byte for byte."""
    assert DOC.read_text(encoding="utf-8") == KT.knobs_markdown(), (
        f"docs/knobs.md is out of date with the knob table (rs_embed_pipeline/config/knobs.yaml); run "
        f"`make knobs-doc` "
        f"({KT.GENERATE_COMMAND})")


def test_generator_writes_and_checks_the_page(tmp_path, capsys):
    page = tmp_path / "knobs.md"
    page.write_text(DOC.read_text(encoding="utf-8").replace("`thor_v1_base`", "`thor_v1_large`"), encoding="utf-8")
    assert KT.main(["--check", str(page)]) == 1
    assert KT.GENERATE_COMMAND in capsys.readouterr().err
    assert KT.main(["--write", str(page)]) == 0 and KT.main(["--check", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")


def test_resource_fields_take_defaults_and_descriptions_from_the_knob_table():
    """The resources declare these fields with knob_field: the table's default and description."""
    for row in KT.KNOB_ROWS:
        for path, default in row.documented_fields():
            cls_name, field = path.split(".")
            assert _field_default(CLASSES[cls_name], field) == ("required" if default is KT.REQUIRED else default), path
        for entry in row.entries:
            described = entry.help or row.help
            if described:
                assert getattr(R, entry.owner).model_fields[entry.name].description == described, entry.path
    assert R.DEFAULT_FETCH_WORKERS == K.default("terrafm", "fetch_workers") == R.ModelResource.model_fields[
        "fetch_workers"].default


def test_knob_table_takes_variable_defaults_from_models_knobs():
    """A row naming an rs-embed variable has no default of its own: models/knobs.py's is the one."""
    documented = {e for row in KT.KNOB_ROWS for e in row.env}
    assert set(K.ENV_VARS) <= documented
    for row in KT.KNOB_ROWS:
        for env in row.env:
            if env in K.KNOBS_BY_ENV:
                assert row.row_default == K.KNOBS_BY_ENV[env].default, row.knob
    assert set(KT.SETTING_VARIABLES) <= set(S.environment_variables())
    with pytest.raises(ValueError, match="its default comes from models.knobs"):
        KT.KnobRow("THOR image size", ("ThorResource.image_size",), env=("RS_EMBED_THOR_IMG",), default=224)
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['RS_EMBED_THOR_IMAGE'\]"):
        KT.KnobRow("THOR image size", ("ThorResource.image_size",), env=("RS_EMBED_THOR_IMAGE",))
    with pytest.raises(KeyError, match="ThorResource.image_side is not in the knob table"):
        KT.knob_field("ThorResource", "image_side")


def test_knob_table_file_refuses_unknown_keys(tmp_path):
    table = tmp_path / "knobs.yaml"
    table.write_text("- knob: THOR image size\n  fields: [ThorResource.image_size]\n  env: [RS_EMBED_THOR_IMG]\n"
                     "  chnages: '`image_size`'\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown keys \['chnages'\], lacks \['changes'\]; valid keys: changes, default, env, fields"):
        KT.load_rows(table)
    assert KT.load_rows(KT.TABLE_PATH) == KT.KNOB_ROWS


@pytest.mark.parametrize("row", ROWS, ids=[r["knob"] for r in ROWS])
def test_fields_exist_with_the_documented_default(row):
    for i, (cls_name, field) in enumerate(row["fields"]):
        cls = CLASSES[cls_name]
        assert field in cls.model_fields, f"{cls_name}.{field} is not a resource field ({row['line']})"
        actual = _field_default(cls, field)
        if row["required"]:
            assert actual == "required", row["line"]
            continue
        documented = row["defaults"][i] if len(row["defaults"]) == len(row["fields"]) else row["defaults"][0]
        assert actual == documented or str(actual) == str(documented), (
            f"{cls_name}.{field} defaults to {actual!r}, the table says {documented!r}")


@pytest.mark.parametrize("row", [r for r in ROWS if r["envs"]], ids=[r["knob"] for r in ROWS if r["envs"]])
def test_env_vars_are_read_by_settings_and_match_the_knob_table(row):
    for env in row["envs"]:
        library_only = env in K.KNOBS_BY_ENV and not K.KNOBS_BY_ENV[env].field
        if not library_only:  # library-only knobs are honoured by load_adapter (models/knobs.py) only
            assert env in S.__doc__, f"{env} is not documented in settings.py"
        if env in K.KNOBS_BY_ENV:
            k = K.KNOBS_BY_ENV[env]
            assert row["defaults"] and (row["defaults"][0] == k.default or str(row["defaults"][0]) == str(k.default)), (
                f"{env}: knob default {k.default!r} vs table {row['defaults']}")
            if k.field:
                assert (next(c for c, key in RESOURCE_KEY.items() if key == k.resource), k.field) in row["fields"]
            else:
                assert row["fields"] == [], f"{env} is library-only; the table gives it a resource field"
        else:
            assert env in K.HF_CACHE_ENV or env in ("RS_EMBED_DEVICE", "RS_EMBED_ALLOW_RANDOM_WEIGHTS",
                                                    "RS_EMBED_WORKER_PYTHON"), env


@pytest.mark.parametrize("row", [r for r in ROWS if r["envs"] and r["fields"]],
                         ids=[r["knob"] for r in ROWS if r["envs"] and r["fields"]])
def test_env_var_sets_the_resource_field(row):
    """The whole path: environment -> Settings.from_env -> resources_for -> the resource's field."""
    for env in row["envs"]:
        raw, expected = SAMPLES[env]
        settings = S.Settings.from_env({"RS_EMBED_STORE": "/tmp/unused", env: raw})
        resources = resources_for(settings)
        for cls_name, field in row["fields"]:
            key = RESOURCE_KEY.get(cls_name, "imagery")
            assert getattr(resources[key], field) == expected, (env, cls_name, field)
        # unset: the resource keeps its own default
        plain = resources_for(S.Settings.from_env({"RS_EMBED_STORE": "/tmp/unused"}))
        for cls_name, field in row["fields"]:
            key = RESOURCE_KEY.get(cls_name, "imagery")
            if not CLASSES[cls_name].model_fields[field].is_required():
                assert getattr(plain[key], field) == _field_default(CLASSES[cls_name], field)


def test_every_knob_and_field_is_documented():
    documented_envs = {e for r in ROWS for e in r["envs"]}
    assert set(K.ENV_VARS) - {"HF_HUB_CACHE"} <= documented_envs
    documented = {f for r in ROWS for f in r["fields"]}
    for cls_name in ("TerraFMResource", "ThorResource", "ImageryResource"):
        cls = CLASSES[cls_name]
        for field in set(cls.model_fields) - NOT_KNOBS:
            if cls_name == "ImageryResource" or field not in R.ModelResource.model_fields \
                    or (cls_name, field) in documented:
                assert (cls_name, field) in documented, f"{cls_name}.{field} is not in docs/knobs.md"
    for field in R.ModelResource.model_fields:
        if field in NOT_KNOBS:
            continue
        assert {("TerraFMResource", field), ("ThorResource", field)} & documented, field
    assert ("EarthEngineImagery", "s1_require_iw") in documented


@pytest.mark.parametrize("env, raw, needle", [
    ("RS_EMBED_THOR_GROUP_MERGE", "max", "valid values: mean, sum, concat"),
    ("RS_EMBED_THOR_MODEL_KEY", "thor_v2_huge", "thor_v1_tiny, thor_v1_small, thor_v1_base, thor_v1_large"),
    ("RS_EMBED_THOR_NORMALIZE", "zscore2", "thor_stats, unit_scale, none"),
    ("RS_EMBED_TERRAFM_BATCH_SIZE", "0", "an integer >= 1"),
    ("RS_EMBED_THOR_PATCH_SIZE", "eight", "an integer >= 1"),
    ("RS_EMBED_THOR_PRETRAINED", "maybe", "1/0, true/false"),
    ("RS_EMBED_CHECK_RAISE", "sometimes", "1/0, true/false"),
])
def test_invalid_env_value_names_the_variable_and_valid_values(env, raw, needle):
    with pytest.raises(ModelInputError) as err:
        S.Settings.from_env({env: raw})
    msg = str(err.value)
    assert f"{env}={raw!r}" in msg and needle in msg
    assert isinstance(err.value, ValueError)


def test_explicit_resource_config_wins_over_the_environment():
    settings = S.Settings.from_env({"RS_EMBED_STORE": "/tmp/unused", "RS_EMBED_THOR_GROUP_MERGE": "sum"})
    thor = resources_for(settings)["thor"]
    assert thor.group_merge == "sum"  # the environment's default...
    overridden = thor.model_copy(update={"group_merge": "concat"})  # ...until config says otherwise
    opts = overridden.adapter_options()
    assert opts["group_merge"] == "concat" and opts["use_env"] is False  # the worker ignores the environment


def test_modality_per_adapter_resource_and_variant_store_paths():
    """THOR embeds S2 by default; modalities ['s2', 's1'] adds its S1 assets and its tile size to the
    S1 patches. A THOR model key other than base writes to its own store paths."""
    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.plan import plan_pipeline

    settings = S.Settings.from_env({"RS_EMBED_STORE": "/tmp/unused"})
    res = resources_for(settings)
    names = lambda d: {k.to_user_string() for k in d.resolve_asset_graph().get_all_asset_keys()}  # noqa: E731
    assert not {"thor_s1_embeddings", "thor_s1_cube"} & names(build_definitions(settings, res))
    assert plan_pipeline(res).patch_sizes("s1") == [224]
    thor = res["thor"].model_copy(update={"modalities": ["s2", "s1"], "fetch_workers": 12, "model_key": "l"})
    res = {**res, "thor": thor}
    assert {"thor_s1_embeddings", "thor_s1_cube"} <= names(build_definitions(settings, res))
    plan = plan_pipeline(res)
    assert plan.patch_sizes("s1") == [224, 288]
    assert plan.fetch_workers("s1") == 12  # the largest of the models that embed S1
    assert thor.store_model_id == "thor_1_0_large" and thor.adapter_options()["variant"] == "l"
    with pytest.raises(ValueError, match=r"modalities \['s3'\]: use 's2' and/or 's1'"):
        thor.model_copy(update={"modalities": ["s3"]}).adapter_options()
    with pytest.raises(ValueError, match="Unknown THOR group_merge 'max'; valid: mean, sum, concat"):
        thor.model_copy(update={"group_merge": "max"}).adapter_options()
