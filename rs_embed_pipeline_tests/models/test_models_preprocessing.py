"""Preprocessing functions and THOR geometry helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_embed_pipeline.models import ModelInputError
from rs_embed_pipeline.models import preprocessing as P
from rs_embed_pipeline.models.thor import (
    group_grid,
    pi_resize_matrix,
    pi_resize_pinv,
    sincos_1d,
    square_token_grid,
    token_grid_for,
)


def test_s2_unit_scale_cleans_before_scaling():
    x = np.array([np.nan, np.inf, -np.inf, -5.0, 0.0, 2500.0, 10000.0, 12000.0], np.float32).reshape(1, 1, 2, 4)
    out = P.s2_unit_scale(x).ravel()
    np.testing.assert_array_equal(out, np.array([0, 0, 0, 0, 0, 0.25, 1, 1], np.float32))  # +inf -> 0, not 1
    assert out.dtype == np.float32


def test_s2_thor_stats_formula():
    x = np.zeros((1, 10, 1, 2), np.float32)
    x[0, :, 0, 0] = 5000.0
    x[0, :, 0, 1] = np.nan
    out = P.s2_thor_stats(x)
    np.testing.assert_allclose(out[0, :, 0, 0], (0.5 - P.THOR_S2_MEAN) / P.THOR_S2_STD, rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 1], -P.THOR_S2_MEAN / P.THOR_S2_STD, rtol=1e-6)  # NaN -> DN 0
    np.testing.assert_array_equal(P.s2_clean_dn(np.array([[[[-1, 20000, np.nan]]]], np.float32)), [[[[0, 10000, 0]]]])


def test_s1_percentile_is_joint_over_channels_and_zeros():
    rng = np.random.default_rng(0)
    x = np.zeros((1, 2, 32, 32), np.float32)
    x[0, 0] = rng.uniform(0.0, 1.0, (32, 32))
    x[0, 1] = rng.uniform(0.0, 0.01, (32, 32))
    x[0, :, :4] = 0.0  # nodata rows count
    out, p99 = P.s1_log1p_p99(x)
    joint = np.percentile(np.log1p(x), 99)
    per_channel = np.percentile(np.log1p(x[0, 0]), 99)
    assert p99[0] == pytest.approx(joint, rel=1e-6)
    assert abs(joint - per_channel) > 1e-3
    np.testing.assert_allclose(out, np.clip(np.log1p(x) / joint, 0, 1), rtol=1e-6)
    assert out.max() == 1.0 and out.min() == 0.0


def test_s1_zero_image_and_negative_values():
    out, p99 = P.s1_log1p_p99(np.zeros((1, 2, 8, 8), np.float32))
    assert p99[0] == 1.0 and not out.any()
    x = np.full((1, 2, 4, 4), 0.1, np.float32)
    x[0, 0, 0, :3] = -0.5  # a few negatives (3 of 32): linear, clipped to 0 by max(x, 0)
    out, _ = P.s1_log1p_p99(x)
    assert (out[0, 0, 0, :3] == 0).all()


def test_db_threshold_is_more_than_half_negative():
    half = np.array([-1.0, -2.0, 1.0, 2.0, 0.0, np.nan], np.float32).reshape(1, 1, 2, 3)
    P.check_s1_linear(half, "S1")  # exactly 50 %: accepted (zeros and NaN not counted)
    more = np.array([-1.0, -2.0, -3.0, 2.0, 0.0, 0.0], np.float32).reshape(1, 1, 2, 3)
    with pytest.raises(ModelInputError, match="75% negative"):
        P.check_s1_linear(more, "S1")


def test_normalisation_is_per_image():
    rng = np.random.default_rng(1)
    a = rng.gamma(1.0, 0.05, (1, 2, 16, 16)).astype(np.float32)
    b = 10 * a
    both, _ = P.s1_log1p_p99(np.concatenate([a, b]))
    alone, _ = P.s1_log1p_p99(a)
    np.testing.assert_array_equal(both[:1], alone)


def test_thor_normalization_aliases():
    assert P.thor_normalization("zscore", "s2") == "thor_stats"
    assert P.thor_normalization("Reflectance", "s2") == "unit_scale"
    assert P.thor_normalization("off", "s2") == "none"
    assert P.thor_normalization("log1p_p99", "s1") == "thor_stats"
    with pytest.raises(ModelInputError, match="Use one of: thor_stats, unit_scale, none"):
        P.thor_normalization("log1p", "s2")
    with pytest.raises(ModelInputError, match="unit_scale is S2-only"):
        P.thor_normalization("unit", "s1")


def test_resize_bilinear_is_identity_at_size_and_no_antialias():
    t = torch.rand(1, 2, 20, 20)
    assert P.resize_bilinear(t, 20) is t
    down = P.resize_bilinear(t, 10)
    expected = torch.nn.functional.interpolate(t, size=(10, 10), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(down, expected, rtol=0, atol=0)
    # exact 2x2 mean for an exact halving (the 20 m band rule at 288 px)
    torch.testing.assert_close(down, torch.nn.functional.avg_pool2d(t, 2))


@pytest.mark.parametrize(
    "side, patch, snapped, gc, tokens, strategy",
    [
        (288, 8, 288, 2880, 1620, "native_snap"),
        (224, 8, 224, 2240, 980, "native_snap"),
        (250, 8, 256, 2560, 1280, "native_snap"),
        (300, 8, 304, 3040, 1805, "native_snap"),
        (400, 8, 288, 2880, None, "fixed_resize"),
    ],
)
def test_native_snap_decision_matches_spec_table(side, patch, snapped, gc, tokens, strategy):
    decision = P.thor_native_snap_decision(side, side, patch_size=patch, scale_m=10, gsds=(10, 20), image_size=288)
    assert decision["strategy"] == strategy
    assert decision["side"] == snapped and decision["ground_cover_m"] == gc
    if tokens is not None:
        assert decision["estimated_patch_tokens"] == tokens
    else:
        assert decision["reason"] == "native_side_limit"


def test_snap_helpers():
    assert P.thor_side_unit(8, 10, (10, 20)) == 16
    assert P.thor_side_unit(8, 10, (10,)) == 8
    assert P.thor_side_unit(16, 10, (10, 20)) == 32
    assert P.snap_side(24, 16) == 16  # tie goes down
    assert P.snap_side(25, 16) == 32
    assert P.snap_side(3, 16) == 16  # at least one unit
    decision = P.thor_native_snap_decision(288, 270, patch_size=8, scale_m=10, gsds=(10, 20), image_size=288)
    assert decision["strategy"] == "fixed_resize" and decision["reason"] == "rectangular_above_tolerance"


def test_center_crop_or_pad():
    x = np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5)
    crop = P.center_crop_or_pad(x, 3)
    np.testing.assert_array_equal(crop, x[:, :, 1:4, 1:4])
    pad = P.center_crop_or_pad(x, 8, fill_value=-1)
    assert pad.shape == (1, 2, 8, 8)
    np.testing.assert_array_equal(pad[:, :, 1:6, 1:6], x)
    assert (pad[:, :, 0] == -1).all() and (pad[:, :, 6:] == -1).all()


# ------------------------------------------------------------------------------------------------
# THOR geometry helpers
# ------------------------------------------------------------------------------------------------


def test_token_grid_groups_in_model_order():
    bands = tuple(P.THOR_BAND_NAMES[b] for b in P.THOR_S2_BANDS)
    token_grid = token_grid_for(bands, 2880.0, 8)
    assert token_grid.groups_used == ("group0", "group1")
    assert token_grid.groups[0].members == ("S2:Red", "S2:Green", "S2:Blue", "S2:NIR")
    assert token_grid.groups[1].members[3] == "S2:RE4"
    assert token_grid.group_patch_sizes == (36, 18) and token_grid.n_tokens == 1620
    assert [g.side_px for g in token_grid.groups] == [288, 144]
    s1 = token_grid_for(("S1:IW-VV", "S1:IW-VH"), 2880.0, 16)
    assert s1.groups[0].members == ("S1:IW-VH", "S1:IW-VV") and s1.groups[0].kernels == ("S1:VH", "S1:VV")
    with pytest.raises(ModelInputError, match="Bands not implemented in THOR"):
        token_grid_for(("S2:Red", "S2:B99"), 2880.0, 16)
    with pytest.raises(ModelInputError, match="Duplicate"):
        token_grid_for(("S2:Red", "S2:Red"), 2880.0, 16)


def test_pi_resize_matrix_and_pinv():
    m = pi_resize_matrix(16, 8)
    assert m.shape == (256, 64) and m.dtype == torch.float64
    # each resized basis image of an (area-preserving) antialiased downsample sums to 1/4
    torch.testing.assert_close(m.sum(), torch.tensor(64.0, dtype=torch.float64))
    pinv = pi_resize_pinv(16, 8)
    assert pinv.shape == (64, 256)
    # pinv(M) @ M = I on the 64-dimensional space: a kernel that is a resized 16x16 kernel comes back
    torch.testing.assert_close(pinv @ m, torch.eye(64, dtype=torch.float64), atol=1e-8, rtol=0)


def test_sincos_1d():
    e = sincos_1d(np.array([0.0, 2.0]), 8)
    np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1])
    omega = 1 / 10000 ** (np.arange(4) / 4)
    np.testing.assert_allclose(e[1], np.concatenate([np.sin(2 * omega), np.cos(2 * omega)]))


def test_group_grid_and_square_fallback():
    token_grid = token_grid_for(("S2:Red", "S2:RE1"), 640.0, 16)  # group0 4x4 (10 m), group1 2x2 (20 m)
    tokens = torch.arange(20 * 3, dtype=torch.float32).reshape(1, 20, 3)
    g = group_grid(tokens, token_grid, "concat")
    assert g.shape == (1, 6, 4, 4)
    torch.testing.assert_close(g[0, :3], tokens[0, :16].reshape(4, 4, 3).permute(2, 0, 1))
    up = torch.nn.functional.interpolate(tokens[:, 16:].reshape(1, 2, 2, 3).permute(0, 3, 1, 2), size=(4, 4),
                                         mode="bilinear", align_corners=False)
    torch.testing.assert_close(g[:, 3:], up)
    torch.testing.assert_close(group_grid(tokens, token_grid, "sum"), g[:, :3] + g[:, 3:])
    torch.testing.assert_close(group_grid(tokens, token_grid, "average"), (g[:, :3] + g[:, 3:]) / 2)
    assert square_token_grid(torch.zeros(2, 16, 3)).shape == (2, 3, 4, 4)
    assert square_token_grid(torch.zeros(2, 17, 3)).shape == (2, 3, 4, 4)  # leading CLS dropped
    with pytest.raises(ModelInputError, match="use output='pooled' instead"):
        square_token_grid(torch.zeros(2, 20, 3))
