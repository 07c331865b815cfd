"""Input inspection (pure numpy) and the tensor backend's missing-torch error in the orchestrator env."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rs_embed_pipeline.core.inspection import inspect_patch, summarize


def _s2(c: int = 12, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(100, 5000, (c, side, side)).astype(np.float32)


def _s1(side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(1.0, 0.05, (2, side, side)).astype(np.float32)


def test_clean_patches_pass():
    for data, modality in ((_s2(), "s2"), (_s2(10), "s2"), (_s1(), "s1")):
        chk = inspect_patch(data, np.ones(data.shape[1:], bool), modality)
        assert chk["ok"] and chk["issues"] == [], chk["issues"]
        json.dumps(chk)
    assert inspect_patch(_s2(), None, "s2")["fill_fraction"] == 0.0


@pytest.mark.parametrize("make, modality, kwargs, flag, issue", [
    (lambda: _s2(11), "s2", {}, "channels_ok", "channels: got 11, expected 12 or 10 for S2"),
    (lambda: _s2(), "s2", {"expected_channels": 10}, "channels_ok", "channels: got 12, expected 10"),
    (lambda: np.where(np.arange(32)[None, None, :] < 4, np.nan, _s2()), "s2", {}, None, "nonfinite: 12.50% of values"),
    (lambda: np.where(np.arange(32)[None, :, None] < 20, 0.0, _s2()), "s2", {}, None, "fill: 62.5% of pixels"),
    (lambda: np.where(np.arange(32)[None, :, None] < 4, 20000.0, _s2()), "s2", {}, None, "range: 12.50% of valid values outside [0, 10000]"),
    (lambda: np.full((12, 32, 32), 700.0, np.float32), "s2", {}, "constant", "constant: every band is constant"),
    (lambda: 10 * np.log10(_s1()), "s1", {}, "looks_db", "looks dB-scaled"),
    (lambda: _s2(2), "s1", {}, "looks_like_dn", "looks like S2 DN"),
    (lambda: _s2() / 10000, "s2", {}, "looks_unit_scaled", "looks unit-scaled"),
])
def test_each_problem_is_flagged(make, modality, kwargs, flag, issue):
    chk = inspect_patch(make(), None, modality, **kwargs)
    assert not chk["ok"]
    assert any(issue in i for i in chk["issues"]), chk["issues"]
    if flag == "channels_ok":
        assert chk[flag] is False
    elif flag:
        assert chk[flag] is True


def test_invalid_mask_counts_as_fill_and_thresholds():
    valid = np.zeros((32, 32), bool)
    valid[:, :8] = True
    chk = inspect_patch(_s2(), valid, "s2")
    assert chk["fill_fraction"] == 0.75 and not chk["ok"]
    assert inspect_patch(_s2(), valid, "s2", thresholds={"max_fill_fraction": 0.8})["ok"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="modality must be 's2' or 's1'"):
        inspect_patch(_s2(), None, "s3")
    with pytest.raises(ValueError, match=r"one patch \[C, H, W\]"):
        inspect_patch(_s2()[None], None, "s2")


def test_summarize():
    checks = [{"tile_id": "a", **inspect_patch(_s2(), None, "s2")},
              {"tile_id": "b", **inspect_patch(np.full((12, 8, 8), 5.0), None, "s2")}]
    s = summarize(checks)
    assert s["inspected"] == 2 and s["flagged"] == 1 and s["examples"][0]["tile_id"] == "b"
    assert s["issue_counts"]["constant"] == 1


def test_tensor_backend_without_torch_is_a_clear_error():
    """The orchestrator environment has no torch: the tensor backend says what is missing and where."""
    pytest.importorskip("dagster")  # this file runs in the orchestrator environment
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here")
    except ImportError:
        pass
    from rs_embed_pipeline.models import MissingDependencyError, embed_arrays, load_adapter

    with pytest.raises(MissingDependencyError, match=r"Missing dependency: 'torch' is needed for the terrafm model") as err:
        embed_arrays("terrafm_b", np.zeros((12, 32, 32), np.float32))
    assert ".venv-worker" in str(err.value) and "pip install" in str(err.value)
    with pytest.raises(ImportError, match="Missing dependency: 'torch'"):
        load_adapter("thor")
