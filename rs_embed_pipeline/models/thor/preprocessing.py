"""THOR's own input preparation (numpy): the S2 z-score with THOR's pretraining statistics and the
``native_snap`` geometry (rs-embed's; raw values are centre-cropped / padded to a side the patch grid
tiles exactly before normalising). The preparation every model shares (validation, the S2 unit
scale, the shared S1 normaliser, resizing) is in :mod:`rs_embed_pipeline.models.preprocessing`.

Rules (rs-embed 0.3.1, MODEL_SPEC.md section 2.4): ``thor_stats``:
``(clip(x, 0, 10000) / 10000 - mean) / max(std, 1e-6)`` per band (THOR pretraining statistics),
then NaN -> 0. S1 ``thor_stats`` is the shared log1p / joint-p99 normaliser, not THOR's own dB
statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce

import numpy as np

from ..preprocessing import S2_DN_SCALE, clean_nonfinite, s2_clean_dn, s2_zscore  # noqa: F401 - S2_DN_SCALE, clean_nonfinite, s2_clean_dn: importers' names

# THOR pretraining statistics of reflectance (DN / 10000), in THOR_S2_BANDS order.
THOR_S2_MEAN = np.array(
    [0.176620, 0.195923, 0.213948, 0.263378, 0.300818, 0.313144, 0.308133, 0.320993, 0.221550, 0.175772],
    dtype=np.float32,
)
THOR_S2_STD = np.array(
    [0.264520, 0.252949, 0.259180, 0.272771, 0.248175, 0.235432, 0.226434, 0.223274, 0.171606, 0.156223],
    dtype=np.float32,
)


def s2_thor_stats(raw: np.ndarray, mean: np.ndarray = THOR_S2_MEAN, std: np.ndarray = THOR_S2_STD) -> np.ndarray:
    """THOR z-score: ``(clip(x, 0, 10000) / 10000 - mean) / max(std, 1e-6)`` per band, NaN -> 0."""
    return s2_zscore(raw, mean, std)



def thor_side_unit(patch_size: int, scale_m: float, gsds: Sequence[float]) -> int | None:
    """Smallest image side (px at ``scale_m``) that every group of ``gsds`` tiles exactly:
    ``lcm over gsd of (patch*gsd) / gcd(scale_m, patch*gsd)``; None for non-integer metres."""
    if float(scale_m) != int(scale_m) or any(float(g) != int(g) for g in gsds):
        return None
    s = int(scale_m)
    units = [(patch_size * int(g)) // math.gcd(s, patch_size * int(g)) for g in gsds]
    return reduce(lambda a, b: a * b // math.gcd(a, b), units, 1)


def snap_side(side: int, unit: int) -> int:
    """Nearest multiple of ``unit`` (ties go down), at least one unit."""
    lo = (side // unit) * unit
    hi = lo + unit
    snapped = lo if side - lo <= hi - side else hi
    return max(unit, snapped)



def thor_native_snap_decision(
    h: int,
    w: int,
    *,
    patch_size: int,
    scale_m: float,
    gsds: Sequence[float],
    image_size: int,
    shape_adjust: str = "crop",
    shape_tol_px: int = 8,
    max_native_side: int = 384,
    max_native_tokens: int = 3000,
) -> dict:
    """rs-embed's ``native_snap`` decision for an ``h x w`` input (MODEL_SPEC 2.4).

    Returns ``{"strategy": "native_snap"|"fixed_resize", "reason", "side", "ground_cover_m", ...}``;
    ``fixed_resize`` means: normalise, then resize to ``image_size`` (ground cover
    ``scale_m * image_size``)."""
    decision = {"raw_input_hw": [h, w], "shape_adjust": shape_adjust, "requested_image_size": image_size}

    def fixed(reason: str) -> dict:
        decision.update(strategy="fixed_resize", reason=reason, side=image_size,
                        ground_cover_m=float(scale_m) * image_size)
        return decision

    if abs(h - w) > shape_tol_px:
        return fixed("rectangular_above_tolerance")
    unit = thor_side_unit(patch_size, scale_m, gsds)
    if unit is None:
        return fixed("non_integer_metres")
    square = min(h, w) if shape_adjust == "crop" else max(h, w)
    snapped = snap_side(square, unit)
    decision.update(square_side=square, side_unit=unit, snapped_side=snapped)
    if snapped > max_native_side:
        return fixed("native_side_limit")
    gc = float(scale_m) * snapped
    tokens = sum(int(round(gc / (patch_size * g))) ** 2 for g in gsds)
    decision["estimated_patch_tokens"] = tokens
    if tokens > max_native_tokens:
        return fixed("native_token_limit")
    adjust = "none" if snapped == square else ("pad_to_valid_side" if snapped > square else "crop_to_valid_side")
    decision.update(strategy="native_snap", reason="native", side=snapped, ground_cover_m=gc,
                    snap_adjust_applied=adjust)
    return decision

