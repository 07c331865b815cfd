"""precision="bf16" on CPU: autocast where the CPU has native bf16, recorded in the metadata and the
store fingerprint; pooled embeddings stay at cosine >= 0.999 to the float32 reference (the reduced
fixtures: real key names, seeded random weights, expected outputs computed in float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_embed_pipeline.models import runtime
from rs_embed_pipeline.core.fingerprint import embedding_fingerprint
from rs_embed_pipeline.worker.embed import fingerprint_settings

from .conftest import assert_close

BF16_CASES = ("terrafm_s2_l1c", "terrafm_s1", "thor_s2_p16", "thor_s2_p8", "thor_s1_p16")
SUPPORT = runtime.cpu_bf16_support()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_cpu_bf16_detection_matches_the_cpu_flags():
    flags = runtime.cpu_flags()
    assert SUPPORT["cpu_bf16_flags"] == sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
    assert SUPPORT["supported"] == bool(SUPPORT["cpu_bf16_flags"] and SUPPORT["onednn_bf16"])
    assert SUPPORT["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("name", BF16_CASES)
def test_bf16_on_cpu_runs_bf16_close_to_fp32(cases, name):
    case = cases[name]
    adapter = case.load(precision="bf16")
    out = adapter.embed(case.input(), case.modality, "pooled")
    expected = case.expected("pooled.npy")
    if not SUPPORT["supported"]:  # this CPU has no native bf16: fp32, said so (never silently)
        assert out.meta["precision"] == "fp32" and out.meta["autocast"] is None
        assert "precision_fallback" in out.meta and out.meta["cpu_bf16_native"] is False
        assert_close(out.pooled, expected, case.atol, case.rtol, f"{name} pooled (fp32 fallback)")
        return
    assert (out.meta["precision"], out.meta["precision_requested"], out.meta["autocast"]) == (
        "bf16", "bf16", "cpu:bfloat16")
    assert out.meta["cpu_bf16_native"] is True and "precision_fallback" not in out.meta
    assert adapter.describe()["precision"] == "bf16"
    assert out.pooled.dtype == np.float32 and np.isfinite(out.pooled).all()
    cos = _cosine(out.pooled, expected)
    assert cos.min() >= 0.999, f"{name}: cosine to fp32 {cos}"
    # bf16 really ran: the numbers moved by more than float32 noise.
    assert np.abs(out.pooled - expected).max() > 10 * case.atol


def test_bf16_grid_and_tokens_close_to_fp32(cases):
    case = cases["thor_s2_p16"]
    out = case.load(precision="bf16", group_merge="mean").embed(case.input(), "s2", "all")
    for got, file in ((out.grid, "grid_mean.npy"), (out.tokens, "tokens.npy")):
        exp = case.expected(file)
        assert got.shape == exp.shape
        flat_got, flat_exp = got.reshape(len(got), -1), exp.reshape(len(exp), -1)
        assert _cosine(flat_got, flat_exp).min() >= 0.999, file


def test_precision_is_in_the_store_fingerprint(cases):
    case = cases["thor_s2_p16"]
    fp32, bf16 = case.load(), case.load(precision="bf16")
    f32 = embedding_fingerprint("patches", fingerprint_settings(fp32), "v1")
    f16 = embedding_fingerprint("patches", fingerprint_settings(bf16), "v1")
    assert fp32.describe()["precision"] == "fp32"
    if SUPPORT["supported"]:
        assert f16 != f32, "a bf16 store must not be resumed as an fp32 one"
    else:
        assert f16 == f32, "the fp32 fallback computes fp32 numbers"


def test_fp32_path_is_unchanged_by_the_two_step_api(cases):
    """prepare() + run() is embed(): the worker's split keeps the reference numbers."""
    case = cases["thor_s2_p8"]
    adapter = case.load()
    prepared = adapter.prepare(case.input(), case.modality)
    assert len(prepared) == 2 and prepared.x.dtype == np.float32
    out = adapter.run(prepared, "all")
    assert_close(out.tokens, case.expected("tokens.npy"), case.atol, case.rtol, "thor_s2_p8 tokens (two-step)")
    assert out.meta["autocast"] is None and out.meta["precision"] == "fp32"
    np.testing.assert_array_equal(out.pooled, adapter.embed(case.input(), case.modality, "pooled").pooled)


def test_compile_option_is_validated():
    from rs_embed_pipeline.models import ModelInputError, load_adapter

    from .conftest import TERRAFM_TINY

    with pytest.raises(ModelInputError, match=r"compile must be a bool, got 'yes'"):
        load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights=True, compile="yes")


def test_bf16_weight_storage_is_what_autocast_computes_with(cases):
    """Under bf16 autocast the adapter stores the linear layers in bf16 (no re-cast per forward);
    the tokens equal those of the float32-weight model under plain autocast, bit for bit."""
    from rs_embed_pipeline.models import preprocessing as P

    case = cases["thor_s2_p16"]
    bf16, fp32 = case.load(precision="bf16"), case.load()
    if not SUPPORT["supported"]:
        assert bf16.bf16_linear_layers == 0
        return
    linear = [m for m in bf16.model.modules() if isinstance(m, torch.nn.Linear)]
    assert bf16.bf16_linear_layers == len(linear) == 4 * case.arch["depth"]
    assert all(m.weight.dtype == torch.bfloat16 for m in linear)
    assert bf16.model.norm.weight.dtype == torch.float32  # layer norms, embeddings stay float32
    x = torch.from_numpy(P.s2_thor_stats(case.input()))
    bands = bf16.model_bands("s2")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        stored, _ = bf16.model.forward_tokens(x, bands, 2880.0, 16)
        recast, _ = fp32.model.forward_tokens(x, bands, 2880.0, 16)
    assert torch.equal(stored, recast)


# Full size: every model x modality x THOR patch size, on the reference fixtures' inputs (realistic
# provider values, with the fixtures' NaN / inf / nodata) and on uniform noise over the sensor's range.
FULL_SIZE_BF16 = {
    "terrafm_s2_l2a": ("terrafm_b", "s2", {}),
    "terrafm_s2_l1c": ("terrafm_b", "s2", {"s2_branch": "l1c"}),
    "terrafm_s1": ("terrafm_b", "s1", {}),
    "thor_s2_p16": ("thor_1_0_base", "s2", {"patch_size": 16, "pretrained": False}),
    "thor_s2_p8": ("thor_1_0_base", "s2", {"patch_size": 8, "pretrained": False}),
    "thor_s1_p16": ("thor_1_0_base", "s1", {"patch_size": 16, "pretrained": False}),
    "thor_s1_p8": ("thor_1_0_base", "s1", {"patch_size": 8, "pretrained": False}),
}
# Inputs of the entries without a fixture of their own.
FULL_SIZE_INPUT_CASE = {"thor_s1_p8": "thor_s1_p16"}


@pytest.mark.parametrize("name", list(FULL_SIZE_BF16))
def test_full_size_bf16_matches_fp32_on_realistic_and_noise_inputs(cases, name):
    """Full-size models (seeded random weights): bf16 pooled embeddings at cosine >= 0.999 to fp32,
    image by image. THOR's patch-16 convolutions in bf16 gave 0.92 on an AMX Xeon (bf16 convolution
    kernels differ between CPUs), so THOR's patch embedding runs float32 under autocast."""
    from rs_embed_pipeline.models import load_adapter

    model, modality, options = FULL_SIZE_BF16[name]
    realistic = cases[FULL_SIZE_INPUT_CASE.get(name, name)].input()
    rng = np.random.default_rng(0)
    high = 9000.0 if modality == "s2" else 0.5  # S2 DN; S1 linear power
    noise = rng.uniform(0, high, realistic.shape).astype(np.float32)
    out = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        adapter = load_adapter(model, device="cpu", allow_random_weights=True, precision=precision, **options)
        out[precision] = [adapter.embed(x, modality, "pooled") for x in (realistic, noise)]
    assert out["fp32"][0].pooled.shape == (len(realistic), 768)
    ran = out["bf16"][0].meta
    if not SUPPORT["supported"]:  # no native bf16 here: the same fp32 numbers, said so
        assert ran["precision"] == "fp32" and "precision_fallback" in ran
        for f, b in zip(out["fp32"], out["bf16"], strict=True):
            np.testing.assert_array_equal(f.pooled, b.pooled)
        return
    assert ran["autocast"] == "cpu:bfloat16"
    for kind, f, b in zip(("realistic", "noise"), out["fp32"], out["bf16"], strict=True):
        cos = _cosine(f.pooled, b.pooled)
        assert cos.min() >= 0.999, f"{name} {kind}: bf16 cosine to fp32 per image {cos.round(5).tolist()}"
        assert np.abs(f.pooled - b.pooled).max() > 0, f"{name} {kind}: bf16 did not run"
