"""Adapter behaviour: batching, metadata, describe(), geometry, and every bad-input error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rs_embed_pipeline.models import ModelInputError, load_adapter
from rs_embed_pipeline.models.thor import model as thor_module

from .conftest import TERRAFM_TINY, THOR_TINY, assert_close


@pytest.fixture(scope="module")
def terrafm_tiny():
    torch.manual_seed(0)
    return load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights=True)


@pytest.fixture(scope="module")
def thor_tiny():
    torch.manual_seed(1)
    return load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True)


def _s2(n_bands: int, b: int = 2, side: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 6000, size=(b, n_bands, side, side)).astype(np.float32)


def _s1(b: int = 2, side: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(1.0, 0.05, size=(b, 2, side, side)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Batch == single, chunking
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["terrafm_s2_l2a", "terrafm_s1", "thor_s2_p8", "thor_s1_p16"])
def test_batch_equals_single_items(cases, name):
    case = cases[name]
    x = case.input()
    batched = case.load(batch_size=2).embed(x, case.modality, "both")
    single = case.load(batch_size=1)
    items = [single.embed(x[i : i + 1], case.modality, "both") for i in range(x.shape[0])]
    for i, item in enumerate(items):
        assert_close(batched.pooled[i : i + 1], item.pooled, case.atol, case.rtol, f"{name} pooled item {i}")
        assert_close(batched.grid[i : i + 1], item.grid, case.atol, case.rtol, f"{name} grid item {i}")
    assert batched.meta["batch_size"] == 2 and items[0].meta["batch_size"] == 1


@pytest.mark.parametrize("fixture, modality", [("terrafm_tiny", "s2"), ("thor_tiny", "s2"), ("thor_tiny", "s1")])
def test_chunking_covers_every_item_in_order(request, fixture, modality):
    adapter = request.getfixturevalue(fixture)
    bands = adapter.input_bands(modality)
    x = _s2(len(bands), b=5, seed=3) if modality == "s2" else _s1(b=5, seed=3)
    whole = load_adapter(adapter.model_id, arch=adapter.arch, device="cpu", allow_random_weights=True, batch_size=8)
    whole.model.load_state_dict(adapter.model.state_dict())
    chunked = load_adapter(adapter.model_id, arch=adapter.arch, device="cpu", allow_random_weights=True, batch_size=2)
    chunked.model.load_state_dict(adapter.model.state_dict())
    a = whole.embed(x, modality, "both")
    b = chunked.embed(x, modality, "both")
    assert a.pooled.shape[0] == 5
    np.testing.assert_allclose(a.pooled, b.pooled, atol=5e-5, rtol=1e-5)
    np.testing.assert_allclose(a.grid, b.grid, atol=5e-5, rtol=1e-5)
    assert not np.allclose(a.pooled[0], a.pooled[1])  # items differ: no broadcast mix-up


# ------------------------------------------------------------------------------------------------
# Public attributes, describe(), grid_shape
# ------------------------------------------------------------------------------------------------


def test_terrafm_attributes(terrafm_tiny):
    a = terrafm_tiny
    assert a.model_id == "terrafm_b" and a.embed_dim == 32 and a.image_size == 224
    assert a.modalities == ("s2", "s1")
    assert a.input_bands("s2") == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
    assert a.input_bands("s1") == ("VV", "VH")
    assert a.grid_shape("s2") == (32, 14, 14) == a.grid_shape("s1")
    d = a.describe()
    json.dumps(d)  # JSON-serialisable
    assert d["s2_branch"] == "l2a" and d["batch_size"] == 8 and d["precision"] == "fp32"
    assert d["input_bands"]["s1"] == ["VV", "VH"] and d["grid_shape"]["s2"] == [32, 14, 14]
    assert d["arch"]["attn_dim"] == 48


def test_thor_attributes(thor_tiny):
    a = thor_tiny
    assert a.model_id == "thor_1_0_base" and a.embed_dim == 32 and a.image_size == 288
    assert a.input_bands("s2") == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
    assert a.input_bands("s1") == ("VV", "VH")
    assert a.grid_shape("s2") == (32, 18, 18)  # patch 16 at 288 px / 10 m
    d = a.describe()
    json.dumps(d)
    assert d["patch_size"] == 16 and d["ground_cover_m"] == 2880 and d["group_merge"] == "mean"
    assert d["normalization"] == "thor_stats" and d["resize_mode"] == "fixed" and d["variant"] == "base"


@pytest.mark.parametrize("merge, channels", [("mean", 32), ("sum", 32), ("concat", 64)])
@pytest.mark.parametrize("patch_size, side", [(16, 18), (8, 36)])
def test_thor_grid_shape_matches_output(merge, channels, patch_size, side):
    a = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True,
                     group_merge=merge, patch_size=patch_size)
    out = a.embed(_s2(10, b=1, side=288), "s2", "both")
    assert a.grid_shape("s2") == (channels, side, side) == out.grid.shape[1:]
    s1 = a.embed(_s1(b=1, side=288), "s1", "grid")
    assert a.grid_shape("s1") == (32, side, side) == s1.grid.shape[1:]  # one group: concat = D
    assert s1.pooled is None


def test_thor_variant_option_sets_id_and_hub_source():
    a = load_adapter("thor_1_0_base", variant="tiny", arch=THOR_TINY, device="cpu", allow_random_weights=True)
    assert a.model_id == "thor_1_0_tiny"
    d = a.describe()
    assert d["hf_repo"] == "FM4CS/THOR-1.0-tiny" and d["hf_file"] == "thor_v1_vit_tiny.pt"
    with pytest.raises(ModelInputError, match="Unknown THOR variant='huge'.*tiny, small, base, large"):
        load_adapter("thor_1_0_base", variant="huge", arch=THOR_TINY, device="cpu", allow_random_weights=True)


def test_none_options_mean_defaults():
    a = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, normalization=None,
                     patch_size=None, group_merge=None, batch_size=None, precision=None, variant=None)
    d = a.describe()
    assert (d["normalization"], d["patch_size"], d["group_merge"], d["batch_size"], d["precision"], d["variant"]) == (
        "thor_stats", 16, "mean", 8, "fp32", "base")
    t = load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights=True, s2_branch=None)
    assert t.describe()["s2_branch"] == "l2a"


def test_output_kinds(terrafm_tiny, thor_tiny):
    x = _s2(12, b=1)
    out = terrafm_tiny.embed(x, "s2", "pooled")
    assert out.grid is None and out.tokens is None and out.pooled.shape == (1, 32)
    out = terrafm_tiny.embed(x, "s2", "tokens")
    assert out.pooled is None and out.tokens.shape == (1, 197, 32)
    out = thor_tiny.embed(_s2(10, b=1), "sentinel-2", "all")
    assert out.pooled.shape == (1, 32) and out.grid.shape == (1, 32, 18, 18) and out.tokens.shape == (1, 405, 32)
    np.testing.assert_allclose(out.pooled, out.tokens.astype(np.float64).mean(axis=1), atol=1e-5, rtol=1e-5)
    assert out.meta["modality"] == "s2"


# ------------------------------------------------------------------------------------------------
# Metadata and geometry
# ------------------------------------------------------------------------------------------------


def test_terrafm_resize_recorded(terrafm_tiny):
    out = terrafm_tiny.embed(_s2(12, b=1, side=240), "s2", "both")
    r = out.meta["resize"]
    assert r["applied"] is True and r["from_hw"] == [240, 240] and r["to_hw"] == [224, 224]
    assert r["mode"] == "bilinear" and r["align_corners"] is False and r["antialias"] is False
    assert out.meta["normalization"] == "s2_dn_div10000_clip01"
    assert out.meta["model_branch"] == "s2_l2a" and out.meta["s2_branch"] == "l2a"
    assert out.meta["raw_input_shape"] == [1, 12, 240, 240]
    assert out.meta["output_shapes"] == {"pooled": [1, 32], "grid": [1, 32, 14, 14]}
    out = terrafm_tiny.embed(_s2(12, b=1, side=224), "s2", "pooled")
    assert out.meta["resize"]["applied"] is False
    json.dumps(out.meta)


def test_thor_fixed_resize_recorded(thor_tiny):
    out = thor_tiny.embed(_s2(10, b=1, side=256), "s2", "both")
    pre = out.meta["preprocess"]
    assert pre["strategy"] == "fixed_resize" and pre["resize_applied"] is True
    assert pre["resized_from_hw"] == [256, 256] and pre["final_hw"] == [288, 288]
    assert out.meta["ground_cover_m"] == 2880.0 and out.grid.shape == (1, 32, 18, 18)
    json.dumps(out.meta)


@pytest.mark.parametrize(
    "side, snapped, adjust, grid",
    [(288, 288, "none", 18), (250, 256, "pad_to_valid_side", 16), (230, 224, "crop_to_valid_side", 14)],
)
def test_thor_native_snap(side, snapped, adjust, grid):
    a = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, resize_mode="native_snap")
    out = a.embed(_s2(10, b=1, side=side), "s2", "both")
    pre = out.meta["preprocess"]
    assert pre["strategy"] == "native_snap" and pre["snapped_side"] == snapped and pre["side_unit"] == 32
    assert pre["snap_adjust_applied"] == adjust and pre["resize_applied"] is False
    assert out.meta["ground_cover_m"] == 10.0 * snapped
    assert out.grid.shape == (1, 32, grid, grid)


def test_thor_native_snap_falls_back_to_fixed_above_side_limit():
    a = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, resize_mode="native_snap")
    out = a.embed(_s2(10, b=1, side=420), "s2", "pooled")  # snaps to 416 > 384
    pre = out.meta["preprocess"]
    assert pre["strategy"] == "fixed_resize" and pre["reason"] == "native_side_limit"
    assert pre["resize_applied"] is True and out.meta["ground_cover_m"] == 2880.0


def test_thor_pinv_computed_once_per_patch_size(monkeypatch):
    calls = []
    real = thor_module.pi_resize_pinv

    def counting(old, new):
        calls.append((old, new))
        return real(old, new)

    monkeypatch.setattr(thor_module, "pi_resize_pinv", counting)
    a = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, patch_size=8)
    for _ in range(3):
        a.embed(_s2(10, b=1), "s2", "pooled")
    a.embed(_s1(b=1), "s1", "pooled")
    assert calls == [(16, 8)]
    p16 = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True)
    p16.embed(_s2(10, b=1), "s2", "pooled")
    assert calls == [(16, 8)]  # native 16x16 kernels: no resize at all


def test_thor_s1_normalization_aliases_and_none():
    x = _s1(b=1)
    base = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True)
    ref = base.embed(x, "s1", "pooled")
    assert ref.meta["normalization"] == "thor_stats" and "s1_p99_log1p" in ref.meta
    alias = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, normalization="log1p_p99")
    alias.model.load_state_dict(base.model.state_dict())
    np.testing.assert_array_equal(alias.embed(x, "s1", "pooled").pooled, ref.pooled)
    raw = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, normalization="raw")
    raw.model.load_state_dict(base.model.state_dict())
    out = raw.embed(x, "s1", "pooled")
    assert out.meta["normalization"] == "none" and not np.allclose(out.pooled, ref.pooled)


def test_bf16_on_cpu_falls_back_to_fp32(caplog, monkeypatch):
    """On a CPU without native bf16 (simulated here; test_models_bf16.py covers the CPUs with it)."""
    from rs_embed_pipeline.models import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: {
        "supported": False, "cpu_capability": "AVX2", "cpu_bf16_flags": [], "onednn_bf16": False})
    a = load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights=True, precision="bf16")
    assert a.precision == "fp32" and a.precision_requested == "bf16"
    out = a.embed(_s2(12, b=1), "s2", "pooled")
    assert out.meta["precision"] == "fp32" and out.meta["precision_requested"] == "bf16"
    assert any("CUDA-only" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# Bad input: a ModelInputError (a ValueError) with a message that says what is wrong
# ------------------------------------------------------------------------------------------------


def test_wrong_channel_count(terrafm_tiny, thor_tiny):
    with pytest.raises(ModelInputError, match=r"expects C=12 channels in band order \['B1', 'B2'.*'B12'\], got C=10"):
        terrafm_tiny.embed(_s2(10), "s2")
    with pytest.raises(ModelInputError, match=r"expects C=10 channels .*got C=12"):
        thor_tiny.embed(_s2(12), "s2")
    with pytest.raises(ModelInputError, match=r"expects C=2 channels in band order \['VV', 'VH'\], got C=3"):
        thor_tiny.embed(_s2(3), "s1")


@pytest.mark.parametrize("shape, needle", [((12, 64, 64), "raw\\[None\\]"), ((1, 1, 12, 64, 64), "got shape"), ((64,), "4-D")])
def test_not_four_d(terrafm_tiny, shape, needle):
    with pytest.raises(ModelInputError, match=r"expects a 4-D array \[B, C=12, H, W\]") as err:
        terrafm_tiny.embed(np.zeros(shape, np.float32), "s2")
    assert __import__("re").search(needle, str(err.value))


def test_not_an_array_or_not_numeric(terrafm_tiny):
    with pytest.raises(ModelInputError, match="expects a numpy array"):
        terrafm_tiny.embed([[1, 2]], "s2")
    with pytest.raises(ModelInputError, match="numeric"):
        terrafm_tiny.embed(np.zeros((1, 12, 32, 32), bool), "s2")


def test_empty_batch(terrafm_tiny):
    with pytest.raises(ModelInputError, match="empty batch"):
        terrafm_tiny.embed(np.zeros((0, 12, 64, 64), np.float32), "s2")


def test_unknown_modality_and_output(terrafm_tiny):
    with pytest.raises(ModelInputError, match=r"Unknown modality 's3'; valid: 's2' or 's1'"):
        terrafm_tiny.embed(_s2(12), "s3")
    with pytest.raises(ModelInputError, match=r"Unknown output 'mean'; valid: pooled, grid, both, tokens, all"):
        terrafm_tiny.embed(_s2(12), "s2", output="mean")


@pytest.mark.parametrize(
    "name, options, pattern",
    [
        ("terrafm_b", {"s2_branch": "l3a"}, r"Unknown TerraFM s2_branch 'l3a'; valid: 'l2a' \(default\), 'l1c'"),
        ("terrafm_b", {"image_size": 256}, r"native 224 px"),
        ("terrafm_b", {"s2_brnach": "l1c"}, r"Unknown option\(s\) \['s2_brnach'\].*s2_branch"),
        ("terrafm_b", {"precision": "fp16"}, r"Unknown precision 'fp16'; valid: fp32, bf16"),
        ("terrafm_b", {"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ("thor_1_0_base", {"normalization": "zz"}, r"Unknown THOR normalization mode 'zz'. Use one of: thor_stats, unit_scale, none"),
        ("thor_1_0_base", {"group_merge": "max"}, r"Unknown THOR group_merge 'max'; valid: mean, sum, concat"),
        ("thor_1_0_base", {"resize_mode": "stretch"}, r"Unknown THOR resize_mode 'stretch'; valid: fixed, native_snap"),
        ("thor_1_0_base", {"shape_adjust": "wrap"}, r"Unknown THOR shape_adjust 'wrap'; valid: crop, pad"),
        ("thor_1_0_base", {"patch_size": 0}, r"THOR patch_size must be an integer >= 1, got 0"),
        ("thor_1_0_base", {"scale_m": -10}, r"scale_m must be a positive number"),
        ("thor_1_0_base", {"image_size": 100}, r"image_size=100.*multiple of patch_size \* GSD"),
        ("thor_1_0_base", {"s2_branch": "l2a"}, r"Unknown option\(s\) \['s2_branch'\]"),
    ],
)
def test_unknown_option_values(name, options, pattern):
    arch = TERRAFM_TINY if name == "terrafm_b" else THOR_TINY
    with pytest.raises(ModelInputError, match=pattern):
        load_adapter(name, arch=arch, device="cpu", allow_random_weights=True, **options)


def test_unknown_device_and_model():
    with pytest.raises(ModelInputError, match=r"Unknown device 'tpu'; valid: 'auto', 'cpu', 'cuda'"):
        load_adapter("terrafm_b", arch=TERRAFM_TINY, device="tpu", allow_random_weights=True)
    with pytest.raises(ModelInputError, match=r"Unknown model 'dofa'"):
        load_adapter("dofa")


def test_images_too_small(terrafm_tiny, thor_tiny):
    with pytest.raises(ModelInputError, match=r"8x8 px are smaller than one 16x16 patch"):
        terrafm_tiny.embed(_s2(12, side=8), "s2")
    with pytest.raises(ModelInputError, match=r"12x12 px are smaller than one 16x16 patch"):
        thor_tiny.embed(_s2(10, side=12), "s2")
    # image_size 176 at patch 16: the 20 m group cannot be tiled (S1, 10 m only, still works)
    a = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, image_size=176)
    assert a.embed(_s1(b=1, side=176), "s1", "grid").grid.shape == (1, 32, 11, 11)
    with pytest.raises(ModelInputError, match=r"cannot tile a 1760 m ground cover with patch_size=16 for group1"):
        a.embed(_s2(10, b=1, side=176), "s2")


@pytest.mark.parametrize("fixture, modality, n", [("terrafm_tiny", "s2", 12), ("thor_tiny", "s2", 10), ("thor_tiny", "s1", 2)])
def test_all_nan_image(request, fixture, modality, n):
    adapter = request.getfixturevalue(fixture)
    x = _s2(n, b=3) if modality == "s2" else _s1(b=3)
    x[1] = np.nan
    with pytest.raises(ModelInputError, match=r"batch index \[1\] contain no finite value"):
        adapter.embed(x, modality)
    x[1] = np.inf
    with pytest.raises(ModelInputError, match=r"batch index \[1\]"):
        adapter.embed(x, modality)


@pytest.mark.parametrize("fixture", ["terrafm_tiny", "thor_tiny"])
def test_db_scaled_s1_rejected(request, fixture):
    adapter = request.getfixturevalue(fixture)
    x = _s1(b=2)
    x[1] = 10 * np.log10(x[1] + 1e-4)  # dB: mostly negative
    with pytest.raises(ModelInputError, match=r"looks dB-scaled: image\(s\) at batch index \[1\]"):
        adapter.embed(x, "s1")


def test_thor_s1_rejects_unit_scale():
    a = load_adapter("thor_1_0_base", arch=THOR_TINY, device="cpu", allow_random_weights=True, normalization="unit_scale")
    a.embed(_s2(10, b=1), "s2", "pooled")  # fine for S2
    with pytest.raises(ModelInputError, match=r"Unknown THOR S1 normalization mode 'unit_scale'.*S2-only"):
        a.embed(_s1(b=1), "s1")


def test_input_errors_are_value_errors():
    assert issubclass(ModelInputError, ValueError)  # the worker retries a failing batch tile by tile
