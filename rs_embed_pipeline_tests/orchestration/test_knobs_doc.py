"""docs/knobs.md cannot drift: it is generated from the knob fields of the resources and run configs
(orchestration/knob_fields.knob, orchestration/knobs_doc.py) and compared with its regeneration; its table
is parsed and checked against the fields and defaults, the variables' table (models/knobs.py) and the
settings (the environment -> resource path)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from typing import get_args

import dagster as dg

from rs_embed_pipeline.orchestration import knob_fields as KF
from rs_embed_pipeline.orchestration import knobs_doc as KD
from rs_embed_pipeline.orchestration import resources as R
from rs_embed_pipeline.orchestration import settings as S
from rs_embed_pipeline.orchestration.definitions import resources_for
from rs_embed_pipeline.models import knobs as K
from rs_embed_pipeline.models.errors import ModelInputError

DOC = Path(__file__).resolve().parents[2] / "docs" / "knobs.md"
CLASSES = {c.__name__: c for c in KD.documented_classes()}  # resources and run configs, the page's order
RESOURCE_KEY = {"TerraFMResource": "terrafm", "ThorResource": "thor", "ImageryResource": "imagery",
                "PipelineStore": "store"}
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
    "RS_EMBED_LEASE_WAIT_S": ("30", 30.0),
    "RS_EMBED_LEASE_TTL_S": ("60", 60.0),
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


def test_doc_is_generated_from_the_knob_fields():
    """docs/knobs.md is the generator's output, byte for byte."""
    assert DOC.read_text(encoding="utf-8") == KD.knobs_markdown(), (
        f"docs/knobs.md is out of date with the knob fields (orchestration/knob_fields.knob); run "
        f"`make knobs-doc` "
        f"({KD.GENERATE_COMMAND})")


def test_generator_writes_and_checks_the_page(tmp_path, capsys):
    page = tmp_path / "knobs.md"
    page.write_text(DOC.read_text(encoding="utf-8").replace("`thor_v1_base`", "`thor_v1_large`"), encoding="utf-8")
    assert KD.main(["--check", str(page)]) == 1
    assert KD.GENERATE_COMMAND in capsys.readouterr().err
    assert KD.main(["--write", str(page)]) == 0 and KD.main(["--check", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")


def test_fields_declare_their_knob_once():
    """Each documented field is declared with knob(): its default is the row's, its description the
    declaration's help; a ModelResource field is one declaration documented under both models."""
    for row in KD.knob_rows():
        for path, default, _ in row.fields:
            if not path:  # a library-only knob of models/knobs.py
                continue
            cls_name, field = path.split(".")
            info = CLASSES[cls_name].model_fields[field]
            assert KF.knob_info(info) is not None and KF.knob_info(info).title == row.title, path
            assert _field_default(CLASSES[cls_name], field) == ("required" if default is KF.REQUIRED else default), path
            assert info.description, f"{path} has no description (help)"
    device = [KF.knob_info(c.model_fields["device"]) for c in (R.TerraFMResource, R.ThorResource)]
    assert device[0] is device[1] or device[0] == device[1]  # declared once, on ModelResource
    assert R.DEFAULT_FETCH_WORKERS == K.default("terrafm", "fetch_workers") == R.TerraFMResource.model_fields[
        "fetch_workers"].default


def test_knob_fields_take_variable_defaults_from_models_knobs():
    """A field naming an rs-embed variable has no default of its own: models/knobs.py's is the one."""
    documented = {e for row in KD.knob_rows() for e in row.env}
    assert set(K.ENV_VARS) <= documented
    for row in KD.knob_rows():
        for env in row.env:
            if env in K.KNOBS_BY_ENV:
                assert all(d == K.KNOBS_BY_ENV[env].default for _, d, _ in row.fields), row.title
    assert set(KF.SETTING_VARIABLES) <= set(S.environment_variables())
    with pytest.raises(ValueError, match="its default comes from models.knobs"):
        KF.knob("THOR image size", help="Tile side.", env="RS_EMBED_THOR_IMG", default=224)
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['RS_EMBED_THOR_IMAGE'\]; valid: RS_EMBED_TERRAFM"):
        KF.knob("THOR image size", help="Tile side.", env="RS_EMBED_THOR_IMAGE")
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['RS_EMBED_LEASE'\]"):
        KF.knob("Lease wait", help="Wait.", default=1.0, setting="RS_EMBED_LEASE")
    field = KF.knob("THOR image size", help="Tile side.", env="RS_EMBED_THOR_IMG")
    assert field.default == 288 and field.description == "Tile side."
    assert KF.knob_info(field) == KF.KnobInfo("THOR image size", ("RS_EMBED_THOR_IMG",))


def test_rows_need_one_description_of_what_they_change(monkeypatch):
    class Silent(dg.Config):
        retries: int = KF.knob("Silent retries", help="Retries.", default=1)

    class Clashing(dg.Config):
        a: int = KF.knob("Clash", help="A.", default=1, changes="`a`")
        b: int = KF.knob("Clash", help="B.", default=2, changes="`b`")

    monkeypatch.setattr(KD, "RUN_CONFIG_CLASSES", (Silent,))
    with pytest.raises(ValueError, match=r"knob\(s\) \['Silent retries'\]: no field of the row says what it changes"):
        KD.knob_rows()
    monkeypatch.setattr(KD, "RUN_CONFIG_CLASSES", (Clashing,))
    with pytest.raises(ValueError, match=r"knob 'Clash': Clashing.b gives another changes \('`b`'\)"):
        KD.knob_rows()


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
            assert {"RS_EMBED_DEVICE", "RS_EMBED_ALLOW_RANDOM_WEIGHTS", "RS_EMBED_WORKER_PYTHON"} <= set(
                KF.SETTING_VARIABLES)
            assert env in K.HF_CACHE_ENV or env in KF.SETTING_VARIABLES, env


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
    # every run-config field, the Earth Engine throughput fields and the store's leases
    for cls in KD.RUN_CONFIG_CLASSES:
        assert {(cls.__name__, f) for f in cls.model_fields} <= documented, cls.__name__
    assert {("EarthEngineImagery", f) for f in ("max_concurrent_requests", "max_requests_per_second", "rate_burst",
                                                "max_request_bytes", "max_tiles_per_request", "max_retries",
                                                "backoff_base_s", "backoff_max_s", "request_timeout_s")} <= documented
    assert {("PipelineStore", "lease_wait_s"), ("PipelineStore", "lease_ttl_s")} <= documented


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


def test_earth_engine_throughput_fields_reach_the_provider():
    """The resource's throughput knobs are GEEProvider's arguments, with the provider's own defaults."""
    default = R.EarthEngineImagery(anonymous=True).build().config()
    assert (default["max_concurrent_requests"], default["max_requests_per_second"], default["max_retries"],
            default["max_request_bytes"], default["request_timeout_s"]) == (40, 100.0, 8, 48 * 1024 * 1024, 360.0)
    tuned = R.EarthEngineImagery(anonymous=True, max_concurrent_requests=4, max_requests_per_second=20,
                                 rate_burst=3, max_request_bytes=2**20, max_tiles_per_request=2, max_retries=1,
                                 backoff_base_s=0.5, backoff_max_s=5, request_timeout_s=30).build().config()
    assert {k: tuned[k] for k in ("max_concurrent_requests", "max_requests_per_second", "rate_burst",
                                  "max_request_bytes", "max_tiles_per_request", "max_retries", "backoff_base_s",
                                  "backoff_max_s", "request_timeout_s")} == {
        "max_concurrent_requests": 4, "max_requests_per_second": 20.0, "rate_burst": 3.0, "max_request_bytes": 2**20,
        "max_tiles_per_request": 2, "max_retries": 1, "backoff_base_s": 0.5, "backoff_max_s": 5.0,
        "request_timeout_s": 30.0}


def test_choice_fields_are_literals_that_dagster_shows():
    """A Literal field is an Enum in Dagster's config schema (the launchpad offers its values) and
    pydantic refuses another value naming the valid ones."""
    assert get_args(R.TerraFMResource.model_fields["s2_branch"].annotation) == ("l2a", "l1c", "s2_l2a", "s2_l1c")
    schema = R.TerraFMResource.to_config_schema().as_field().config_type.fields
    assert [v.config_value for v in schema["s2_branch"].config_type.enum_values] == ["l2a", "l1c", "s2_l2a", "s2_l1c"]
    assert R.TerraFMResource(worker_python="python", s2_branch="s2_l1c").model_options() == {"s2_branch": "s2_l1c"}
    with pytest.raises(ValueError, match=r"s2_branch\n  Input should be 'l2a', 'l1c', 's2_l2a' or 's2_l1c'"):
        R.TerraFMResource(worker_python="python", s2_branch="l3")
    from rs_embed_pipeline.orchestration.assets.answers import ChangeConfig, SearchIndexConfig
    from rs_embed_pipeline.orchestration.assets.embeddings import CubeConfig

    for cls, field in ((CubeConfig, "quantization"), (SearchIndexConfig, "ann"), (ChangeConfig, "kind")):
        values = get_args(cls.model_fields[field].annotation)
        assert values and all(isinstance(v, str) for v in values), (cls.__name__, field)
    with pytest.raises(ValueError, match=r"Input should be 'none', 'int8_per_cell' or 'int8_per_feature'"):
        CubeConfig(quantization="int4")


def test_lease_and_device_defaults_are_the_fields_own():
    """Unset, the lease and device settings are None and the resources keep their declared defaults."""
    settings = S.Settings.from_env({"RS_EMBED_STORE": "/tmp/unused"})
    assert (settings.device, settings.lease_wait_s, settings.lease_ttl_s) == (None, None, None)
    resources = resources_for(settings)
    assert (resources["store"].lease_wait_s, resources["store"].lease_ttl_s) == (600.0, 120.0)
    assert resources["thor"].device == resources["terrafm"].device == "auto"
    with pytest.raises(ValueError, match=r"RS_EMBED_LEASE_TTL_S='1' is invalid; valid values: a number >= 5"):
        S.Settings.from_env({"RS_EMBED_LEASE_TTL_S": "1"})
