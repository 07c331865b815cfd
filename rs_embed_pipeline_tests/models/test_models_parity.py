"""rs-embed parity (issue #6): THOR variants, environment knobs, metadata fields, the tensor backend
and every "Common Failure Mode" of the TerraFM-B / THOR pages, each with its message asserted."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from rs_embed_pipeline.models import (
    MissingDependencyError,
    ModelInputError,
    WeightsNotFoundError,
    build_model,
    embed_arrays,
    load_adapter,
)
from rs_embed_pipeline.models import knobs as K
from rs_embed_pipeline.models.tensor import temporal_to_range

from .conftest import TERRAFM_TINY, THOR_TINY, assert_close

ALL_ENV = K.ENV_VARS + ("HF_HUB_OFFLINE",)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No knob variable from the developer's shell leaks into these tests."""
    for var in ALL_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def terrafm_tiny():
    torch.manual_seed(0)
    return load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights=True, use_env=False)


@pytest.fixture(scope="module")
def thor_tiny():
    torch.manual_seed(1)
    return load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True, use_env=False)


def _s2(c: int, b: int = 1, side: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(200, 6000, size=(b, c, side, side)).astype(np.float32)


def _s1(b: int = 1, side: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(1.0, 0.05, size=(b, 2, side, side)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# THOR variants: architecture per model key, on the meta device (nothing allocated)
# ------------------------------------------------------------------------------------------------

VARIANTS = {  # embed_dim, depth, heads, band_embed_dim (upstream thor_vit_<size>_..._v1 factories)
    "tiny": (192, 12, 3, 32),
    "small": (384, 12, 6, 64),
    "base": (768, 12, 12, 128),
    "large": (1024, 24, 16, 256),
}


def _expected_params(d: int, depth: int, band: int) -> int:
    """46 single-band 16x16 patch-embed convs, ``depth`` pre-norm blocks (12 D^2 + 13 D each),
    the final norm, 10 band embeddings (frozen)."""
    return 46 * (256 * d + d) + depth * (12 * d * d + 13 * d) + 2 * d + 10 * band


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_thor_variant_builds_the_right_architecture(variant):
    d, depth, heads, band = VARIANTS[variant]
    with torch.device("meta"):
        model = build_model(f"thor_1_0_{variant}")
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_params(d, depth, band)
    assert all(p.is_meta for p in model.parameters())
    state = model.state_dict()
    assert len(state) == 1 + 46 * 2 + 10 + depth * 12 + 2  # slopes, convs, band embeds, blocks, norm
    assert state["encoder_slopes"].shape == (heads,)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * d, d)
    assert state[f"blocks.{depth - 1}.mlp.fc1.weight"].shape == (4 * d, d)
    assert state["band_embed.group9"].shape == (band,)
    assert model.cfg.patch_size_embed_dim == d - band


def test_thor_base_count_matches_the_manifest_figure():
    assert _expected_params(768, 12, 128) == 94_136_576  # MODEL_SPEC 2.2


@pytest.mark.parametrize("key", ["thor_v1_large", "thor_1_0_large", "large", "L", "FM4CS/THOR-1.0-large",
                                 "thor_vit_large_encoder_alibi_patch_size_embed_v1", " Thor_V1_Large "])
def test_thor_model_key_forms(key):
    assert K.canonical_thor_variant(key) == "large"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_thor_variant_adapter_weights_source_and_meta(variant):
    a = load_adapter("thor", variant=f"thor_v1_{variant}", arch=THOR_TINY, device="cpu",
                     allow_random_weights=True, use_env=False)
    d = a.describe()
    assert a.model_id == f"thor_1_0_{variant}" and d["model_key"] == f"thor_v1_{variant}"
    assert d["hf_repo"] == f"FM4CS/THOR-1.0-{variant}" and d["hf_file"] == f"thor_v1_vit_{variant}.pt"


# ------------------------------------------------------------------------------------------------
# Environment variables as defaults (direct library use); explicit options win
# ------------------------------------------------------------------------------------------------


def test_env_knobs_are_defaults_and_explicit_options_win(monkeypatch):
    monkeypatch.setenv("RS_EMBED_THOR_GROUP_MERGE", "concat")
    monkeypatch.setenv("RS_EMBED_THOR_PATCH_SIZE", "8")
    monkeypatch.setenv("RS_EMBED_THOR_NORMALIZE", "unit_scale")
    monkeypatch.setenv("RS_EMBED_THOR_IMG", "256")
    monkeypatch.setenv("RS_EMBED_THOR_RESIZE_MODE", "native_snap")
    monkeypatch.setenv("RS_EMBED_THOR_MAX_NATIVE_SIDE", "320")
    a = load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True)
    d = a.describe()
    assert (d["group_merge"], d["patch_size"], d["normalization"], d["image_size"], d["resize_mode"]) == (
        "concat", 8, "unit_scale", 256, "native_snap")
    assert d["max_native_side"] == 320
    b = load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True, group_merge="sum", patch_size=16)
    assert b.group_merge == "sum" and b.patch_size == 16 and b.normalization == "unit_scale"
    c = load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True, use_env=False)
    assert (c.group_merge, c.patch_size, c.image_size) == ("mean", 16, 288)


def test_env_model_key_and_batch_size(monkeypatch):
    monkeypatch.setenv("RS_EMBED_THOR_MODEL_KEY", "thor_v1_small")
    monkeypatch.setenv("RS_EMBED_TERRAFM_BATCH_SIZE", "3")
    assert load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True).model_id == "thor_1_0_small"
    assert load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True).variant == "small"
    # an id naming its size wins over the environment; so does an explicit variant
    assert load_adapter("thor_1_0_large", arch=THOR_TINY, device="cpu", allow_random_weights=True).variant == "large"
    assert load_adapter("thor", variant="tiny", arch=THOR_TINY, device="cpu", allow_random_weights=True).variant == "tiny"
    t = load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights=True)
    assert t.batch_size == 3
    monkeypatch.delenv("RS_EMBED_TERRAFM_BATCH_SIZE")
    assert load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights=True).batch_size == 8
    assert K.default_batch_size("terrafm", "cuda") == 64 and K.default_batch_size("thor", "cuda") == 32


def test_env_thor_ckpt_and_pretrained(cases, monkeypatch, caplog):
    case = cases["thor_s2_p16"]
    monkeypatch.setenv("RS_EMBED_THOR_CKPT", str(case.weights))
    a = load_adapter("thor", arch=case.arch, device="cpu", **case.adapter_options())
    d = a.describe()
    assert d["weights_source"] == "local_file" and d["weights_path"] == str(case.weights.resolve())
    out = a.embed(case.input(), "s2", "pooled")
    assert_close(out.pooled, case.expected("pooled.npy"), case.atol, case.rtol, "RS_EMBED_THOR_CKPT pooled")
    assert out.meta["weight_file"] == d["weights_path"] and out.meta["weight_file_size"] == case.weights.stat().st_size
    # pretrained off: the checkpoint is still loaded (rs-embed), without one: random init, no hub lookup
    monkeypatch.setenv("RS_EMBED_THOR_PRETRAINED", "0")
    assert load_adapter("thor", arch=case.arch, device="cpu").describe()["random_weights"] is False
    monkeypatch.delenv("RS_EMBED_THOR_CKPT")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = load_adapter("thor", arch=case.arch, device="cpu")
    rd = r.describe()
    assert rd["random_weights"] is True and rd["pretrained"] is False
    assert rd["weights_source"].startswith("RANDOM (pretrained=False)")


@pytest.mark.parametrize("env, raw, needle", [
    ("RS_EMBED_THOR_GROUP_MERGE", "max", "valid values: mean, sum, concat"),
    ("RS_EMBED_THOR_MODEL_KEY", "thor_v2", "thor_v1_tiny, thor_v1_small, thor_v1_base, thor_v1_large"),
    ("RS_EMBED_THOR_RESIZE_MODE", "stretch", "fixed, native_snap"),
    ("RS_EMBED_THOR_SHAPE_TOL_PX", "-1", "an integer >= 0"),
    ("RS_EMBED_THOR_PRETRAINED", "perhaps", "1/0, true/false"),
])
def test_invalid_env_value_names_variable_and_valid_values(monkeypatch, env, raw, needle):
    monkeypatch.setenv(env, raw)
    with pytest.raises(ModelInputError) as err:
        load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True)
    assert f"{env}={raw!r}" in str(err.value) and needle in str(err.value)


def test_hf_cache_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert K.hf_cache_dir_from_env() == str(tmp_path / "home" / "hub")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hub"))
    assert K.hf_cache_dir_from_env() == str(tmp_path / "hub")  # the explicit hub cache wins over HF_HOME


# ------------------------------------------------------------------------------------------------
# Metadata parity
# ------------------------------------------------------------------------------------------------

PAGE_FIELDS = ("modality", "source", "grid_type", "weight_file", "weight_file_size", "hf_repo", "model_key",
               "normalization", "patch_size", "ground_cover_m", "grid_kind", "cls_removed", "pooling",
               "image_size", "device", "model_source", "pretrained")


def test_metadata_fields_of_the_pages(terrafm_tiny, thor_tiny):
    t = terrafm_tiny.embed(_s2(12), "s2", "both").meta
    h = thor_tiny.embed(_s2(10, side=288), "s2", "both").meta
    for meta in (t, h):
        missing = [k for k in PAGE_FIELDS if k not in meta]
        assert not missing, missing
        json.dumps(meta)
    assert (t["grid_type"], t["pooling"], t["cls_removed"], t["model_key"]) == ("feature_map", "cls_token", True, "terrafm_b")
    assert (h["grid_kind"], h["pooling"], h["cls_removed"], h["model_key"]) == ("thor_group_grid", "mean", False, "thor_v1_base")
    assert h["group_merge"] == "mean" and h["ground_cover_m"] == 2880.0 and h["source"] is None
    for adapter in (terrafm_tiny, thor_tiny):
        d = adapter.describe()
        for k in ("model_key", "grid_type", "grid_kind", "pooling", "cls_removed", "pretrained", "weights_size_bytes"):
            assert k in d, k


# ------------------------------------------------------------------------------------------------
# Tensor backend
# ------------------------------------------------------------------------------------------------


def test_embed_arrays_chw_bchw_list_and_tensor(thor_tiny):
    x = _s2(10, b=2, side=288)
    ref = thor_tiny.embed(x, "s2", "both")
    out = embed_arrays(thor_tiny, x, modality="s2", output="both")
    np.testing.assert_array_equal(out.pooled, ref.pooled)
    np.testing.assert_array_equal(out.grid, ref.grid)
    single = embed_arrays(thor_tiny, x[0], output="both")
    assert single.pooled.shape == (32,) and single.grid.shape == (32, 18, 18)
    np.testing.assert_allclose(single.pooled, ref.pooled[0], atol=1e-5)
    assert single.meta["input_layout"] == "CHW" and out.meta["input_layout"] == "BCHW"
    listed = embed_arrays(thor_tiny, [x[0], x[1]])
    np.testing.assert_allclose(listed.pooled, ref.pooled, atol=1e-5)
    tens = embed_arrays(thor_tiny, torch.from_numpy(x))
    np.testing.assert_allclose(tens.pooled, ref.pooled, atol=1e-5)
    m = out.meta
    assert m["backend"] == "tensor" and m["source"] is None and m["temporal"] == {"mode": None}
    assert len(m["input_checks"]) == 2 and all(c["ok"] for c in m["input_checks"])
    assert m["input_checks_config"]["check_input"] is True and m["input_checks_config"]["check_raise"] is False
    json.dumps(m)


def test_embed_arrays_by_name_reproduces_the_fixture(cases):
    case = cases["terrafm_s2_l2a"]
    out = embed_arrays("terrafm_b", case.input(), modality="s2", output="both", checkpoint=str(case.weights),
                       arch=case.arch, device="cpu", temporal={"start": "2024-01-01", "end": "2024-04-01"},
                       **case.adapter_options())
    assert_close(out.pooled, case.expected("pooled.npy"), case.atol, case.rtol, "tensor backend pooled")
    assert out.meta["temporal"] == {"mode": "range", "start": "2024-01-01", "end": "2024-04-01"}
    assert out.meta["weights_source"] == "local_file"


def test_embed_arrays_inspection_raise_and_off(thor_tiny, monkeypatch):
    x = np.full((1, 10, 288, 288), 1234.0, np.float32)  # a constant tile
    out = embed_arrays(thor_tiny, x)
    assert out.meta["input_checks"][0]["constant"] is True and not out.meta["input_checks"][0]["ok"]
    with pytest.raises(ModelInputError, match=r"Input inspection failed for thor_1_0_base S2 input .*index 0: constant"):
        embed_arrays(thor_tiny, x, check_raise=True)
    monkeypatch.setenv("RS_EMBED_CHECK_RAISE", "1")
    with pytest.raises(ModelInputError, match="Input inspection failed"):
        embed_arrays(thor_tiny, x)
    monkeypatch.setenv("RS_EMBED_CHECK_INPUT", "0")
    off = embed_arrays(thor_tiny, x)  # inspection off: nothing to raise about
    assert "input_checks" not in off.meta and off.meta["input_checks_config"]["check_input"] is False


# ------------------------------------------------------------------------------------------------
# Common failure modes, one clear error each
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temporal, needle", [
    ("2024-01-01", "is not a range"),
    (("2024-04-01", "2024-01-01"), "is not before end"),
    (("2024-01-01", "2024-01-01"), "is not before end"),
    ({"begin": "2024-01-01", "end": "2024-02-01"}, "is not a range"),
    (("yesterday", "2024-02-01"), "is not an ISO date"),
    (("2024-01-01", "2024-02-01", "2024-03-01"), "is not a range"),
])
def test_time_window_that_is_not_a_range(thor_tiny, temporal, needle):
    with pytest.raises(ModelInputError, match=needle) as err:
        embed_arrays(thor_tiny, _s2(10, side=288), temporal=temporal)
    assert "a time window must be a range" in str(err.value)


def test_time_window_forms():
    assert temporal_to_range(2024) == {"mode": "range", "start": "2024-01-01", "end": "2025-01-01"}
    assert temporal_to_range({"year": 2023})["end"] == "2024-01-01"
    assert temporal_to_range(None) == {"mode": None}


@pytest.mark.parametrize("arrays", [None, [], ()])
def test_tensor_input_without_data(thor_tiny, arrays):
    with pytest.raises(ModelInputError, match=r"embed_arrays \(tensor backend\) requires input arrays: pass a CHW"):
        embed_arrays(thor_tiny, arrays)


@pytest.mark.parametrize("fixture, modality, c, expected", [
    ("terrafm_tiny", "s2", 10, r"expects C=12 channels .* got C=10 .*terrafm_b takes C=12 for S2 .* or C=2 for S1"),
    ("terrafm_tiny", "s1", 12, r"expects C=2 channels .* got C=12 .*terrafm_b takes C=12 for S2"),
    ("thor_tiny", "s2", 12, r"expects C=10 channels .* got C=12 .*thor_1_0_base takes C=10 for S2 .* or C=2 for S1"),
    ("thor_tiny", "s1", 10, r"expects C=2 channels in band order \['VV', 'VH'\], got C=10"),
])
def test_wrong_channel_count(request, fixture, modality, c, expected):
    adapter = request.getfixturevalue(fixture)
    with pytest.raises(ModelInputError, match=expected):
        adapter.embed(_s2(c), modality)
    with pytest.raises(ModelInputError, match=expected):
        embed_arrays(adapter, _s2(c)[0], modality=modality)


@pytest.mark.parametrize("fixture", ["terrafm_tiny", "thor_tiny"])
def test_data_not_matching_the_modality(request, fixture):
    adapter = request.getfixturevalue(fixture)
    db = 10 * np.log10(_s1() + 1e-4)
    with pytest.raises(ModelInputError, match=r"expects linear-scale S1 backscatter .* looks dB-scaled"):
        adapter.embed(db, "s1")
    n = len(adapter.input_bands("s2"))
    unit = _s2(n) / 10000.0
    with pytest.raises(ModelInputError, match=r"expects Sentinel-2 surface-reflectance DN .* every value within \+-1.5"):
        adapter.embed(unit, "s2")
    dn_as_s1 = _s2(2)
    with pytest.raises(ModelInputError, match=r"values above 100: Sentinel-2 DN given as S1"):
        adapter.embed(dn_as_s1, "s1")
    # all-zero (fill) tiles are not a unit mismatch
    assert adapter.embed(np.zeros((1, n, 64, 64), np.float32), "s2").pooled.shape[0] == 1


def test_thor_s1_normalization_none_still_rejects_db():
    a = load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True, normalization="none",
                     use_env=False)
    with pytest.raises(ModelInputError, match="looks dB-scaled"):
        a.embed(10 * np.log10(_s1() + 1e-4), "s1")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    return tmp_path / "empty-hub"


@pytest.mark.parametrize("variant", ["base", "large"])
def test_weights_that_cannot_be_fetched_offline(offline, variant):
    with pytest.raises(WeightsNotFoundError) as err:
        load_adapter("thor", variant=variant, device="cpu", use_env=False)
    msg = str(err.value)
    for needle in (f"FM4CS/THOR-1.0-{variant}", f"thor_v1_vit_{variant}.pt", str(offline), "HF_HUB_OFFLINE",
                   f"checkpoint='/path/to/thor_v1_vit_{variant}.pt'", "RS_EMBED_THOR_CKPT"):
        assert needle in msg, needle


def test_missing_optional_dependency_huggingface_hub(monkeypatch, offline):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(WeightsNotFoundError, match=r"Missing dependency: huggingface_hub is not installed") as err:
        load_adapter("terrafm_b", device="cpu", use_env=False)
    assert "pip install huggingface_hub" in str(err.value) and "MBZUAI/TerraFM" in str(err.value)


def test_missing_optional_dependency_generic(monkeypatch):
    from rs_embed_pipeline.models import require

    monkeypatch.setitem(sys.modules, "terratorch", None)
    with pytest.raises(MissingDependencyError, match=r"Missing dependency: 'terratorch' is needed for THOR .*\(\.venv-worker"):
        require("terratorch", "THOR in terratorch's registry")
    assert issubclass(MissingDependencyError, ImportError)


@pytest.mark.parametrize("value", ["max", "median", ""])
def test_invalid_group_merge(value):
    with pytest.raises(ModelInputError, match=rf"Unknown THOR group_merge {value!r}; valid: mean, sum, concat"):
        load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True, group_merge=value, use_env=False)


def test_grid_unavailable_for_the_configuration():
    # image_size 176 at patch 16, 10 m: S1 (10 m only) works, the S2 20 m group cannot be tiled
    a = load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True, image_size=176, use_env=False)
    assert a.embed(_s1(side=176), "s1", "grid").grid.shape == (1, 32, 11, 11)
    with pytest.raises(ModelInputError, match=r"grid and pooled output\) is unavailable for this configuration\. "
                                              r"Use the default model/input settings"):
        a.embed(_s2(10, side=176), "s2", "grid")
    assert "unavailable" in a.describe()["grid_shape"]["s2"]
    # no modality works at all: refused when the adapter is built
    with pytest.raises(ModelInputError, match=r"THOR image_size=100, scale_m=10, patch_size=16: .*unavailable"):
        load_adapter("thor", arch=THOR_TINY, device="cpu", allow_random_weights=True, image_size=100, use_env=False)
