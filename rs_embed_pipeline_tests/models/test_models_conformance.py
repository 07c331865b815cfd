"""Conformance against the reference fixtures (rs-embed 0.3.1 outputs), every case, every file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_embed_pipeline.models import preprocessing as P

from .conftest import CASES, TERRAFM_CASES, THOR_CASES, assert_close


def test_reference_holds_exactly_the_known_cases(reference):
    present = sorted(p.name for p in reference.iterdir() if p.is_dir() and (p / "case.json").is_file())
    assert present == sorted(CASES), "a reference case was added or removed: update CASES so every case runs"


@pytest.mark.parametrize("name", TERRAFM_CASES)
def test_terrafm_case(cases, name):
    case = cases[name]
    adapter = case.load()
    out = adapter.embed(case.input(), modality=case.modality, output="both")
    exp = case.spec["expected"]
    assert_close(out.pooled, case.expected(exp["pooled"]), case.atol, case.rtol, f"{name} pooled")
    assert_close(out.grid, case.expected(exp["grid"]), case.atol, case.rtol, f"{name} grid")
    assert list(out.pooled.shape) == exp["shapes"]["pooled"]
    assert list(out.grid.shape) == exp["shapes"]["grid"]
    meta = out.meta
    assert meta["model_id"] == "terrafm_b"
    assert meta["modality"] == case.modality
    assert meta["image_size"] == case.options["image_size"]
    resize = case.options["resize"]
    assert meta["resize"]["mode"] == resize["mode"]
    assert meta["resize"]["align_corners"] is resize["align_corners"]
    assert meta["resize"]["antialias"] is resize["antialias"]
    h = case.spec["input"]["shape"][-1]
    assert meta["resize"]["applied"] is (h != 224)
    assert meta["tokens_per_item"] == case.spec["derived"]["tokens_per_item"]
    if case.modality == "s2":
        assert meta["s2_branch"] == case.options["s2_branch"]
        assert meta["model_branch"] == f"s2_{case.options['s2_branch']}"
    else:
        assert meta["model_branch"] == "s1"
        np.testing.assert_allclose(meta["s1_p99_log1p"], case.spec["derived"]["s1_p99_log1p"], rtol=1e-6)
    assert meta["weights_source"] == "local_file"
    assert meta["random_weights"] is False


def test_terrafm_l1c_and_l2a_differ(cases):
    """The two branches share input and weights: a wrong branch is far outside the tolerance."""
    l1c, l2a = cases["terrafm_s2_l1c"], cases["terrafm_s2_l2a"]
    a = l1c.expected("pooled.npy")
    b = l2a.expected("pooled.npy")
    assert np.abs(a - b).max() > 100 * l1c.atol
    out = l2a.load(s2_branch="l1c").embed(l2a.input(), "s2", "pooled")
    assert_close(out.pooled, a, l1c.atol, l1c.rtol, "l2a case through the l1c branch = l1c expected")


@pytest.mark.parametrize("name", THOR_CASES)
def test_thor_case(cases, name):
    case = cases[name]
    exp = case.spec["expected"]
    x = case.input()
    merges = {merge: filename for filename, merge in case.options["group_merge"].items()}
    assert set(merges) == {"mean", "sum", "concat"}
    tokens_seen = None
    for merge, filename in sorted(merges.items()):
        adapter = case.load(group_merge=merge)
        out = adapter.embed(x, modality=case.modality, output="all")
        assert_close(out.pooled, case.expected(exp["pooled"]), case.atol, case.rtol, f"{name} pooled")
        assert_close(out.tokens, case.expected(exp["tokens"]), case.atol, case.rtol, f"{name} tokens")
        assert_close(out.grid, case.expected(filename), case.atol, case.rtol, f"{name} grid {merge}")
        assert list(out.grid.shape) == exp["shapes"][f"grid_{merge}"]
        assert tuple(out.grid.shape[1:]) == adapter.grid_shape(case.modality)
        if tokens_seen is not None:
            np.testing.assert_array_equal(out.tokens, tokens_seen)  # the merge only shapes the grid
        tokens_seen = out.tokens
        meta = out.meta
        derived = case.spec["derived"]
        assert meta["group_merge"] == merge
        assert meta["ground_cover_m"] == case.options["ground_cover_m"] == derived["ground_cover_m"]
        assert meta["patch_size"] == case.options["patch_size"]
        assert meta["scale_m"] == case.options["scale_m"]
        assert meta["model_bands"] == case.options["model_bands"]
        assert meta["groups_used"] == derived["groups_used"]
        assert meta["group_patch_sizes"] == derived["group_patch_grid"]
        assert meta["group_members"] == derived["group_members_in_model_order"]
        assert meta["tokens_per_item"] == derived["tokens_per_item"]
        assert meta["tokens_shape"] == [derived["tokens_per_item"], case.arch["embed_dim"]]
        assert meta["final_norm_applied"] is derived["final_layer_norm_applied"] is False
        assert meta["cls_token"] is derived["cls_token"] is False
        assert meta["preprocess"]["strategy"] == derived["preprocess_strategy"]
        assert meta["normalization"] == case.options["normalization"]
        assert meta["resize_mode"] == case.options["resize_mode"]


def test_thor_fixed_mode_equals_native_snap_at_native_size(cases):
    case = cases["thor_s2_p8"]
    out = case.load(resize_mode="fixed").embed(case.input(), "s2", "pooled")
    assert_close(out.pooled, case.expected("pooled.npy"), case.atol, case.rtol, "fixed mode pooled")
    assert out.meta["preprocess"]["strategy"] == "fixed_resize"
    assert out.meta["preprocess"]["resize_applied"] is False


def test_thor_final_norm_is_loaded_but_not_applied(cases):
    """norm.* is in the file and loads, yet applying it would move the outputs far away."""
    case = cases["thor_s2_p16"]
    adapter = case.load()
    state = torch.load(case.weights, weights_only=True)
    torch.testing.assert_close(adapter.model.norm.weight.cpu(), state["encoder.norm.weight"])
    out = adapter.embed(case.input(), "s2", "tokens")
    normed = adapter.model.norm(torch.from_numpy(out.tokens)).detach().numpy()
    assert np.abs(normed - case.expected("tokens.npy")).max() > 100 * case.atol


@pytest.mark.parametrize("name", CASES)
def test_preprocessing_matches_derived_channel_means(cases, name):
    """Our preprocessing (before the model) reproduces the case's derived per-channel means."""
    case = cases[name]
    x = case.input()
    derived = case.spec["derived"]
    if case.model == "terrafm_b":
        prepared = P.s2_unit_scale(x) if case.modality == "s2" else P.s1_log1p_p99(x)[0]
        prepared = P.resize_bilinear(torch.from_numpy(prepared), 224).numpy()
    elif case.modality == "s1":
        prepared = P.s1_log1p_p99(x)[0]
    elif case.options["normalization"] == "thor_stats":
        prepared = P.s2_thor_stats(x)
        np.testing.assert_allclose(P.THOR_S2_MEAN, derived["thor_stats_per_band"]["mean"], rtol=1e-6)
        np.testing.assert_allclose(P.THOR_S2_STD, derived["thor_stats_per_band"]["std"], rtol=1e-6)
        assert list(P.THOR_S2_BANDS) == derived["thor_stats_per_band"]["bands"]
    else:
        prepared = P.s2_unit_scale(x)
    assert list(prepared.shape) == derived["model_input_shape"]
    means = prepared.mean(axis=(0, 2, 3))
    # derived means are rounded to 3 significant digits
    np.testing.assert_allclose(means, derived["model_input_channel_mean"], rtol=6e-3, atol=6e-4)
    if "s1_p99_log1p" in derived:
        np.testing.assert_allclose(P.s1_log1p_p99(x)[1], derived["s1_p99_log1p"], rtol=1e-6)
