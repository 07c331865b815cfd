"""Input preparation every model shares: plain numpy functions on ``[B, C, H, W]`` batches.

Inputs are in provider units (docs/architecture.md): Sentinel-2 surface-reflectance DN (reflectance x 10000),
Sentinel-1 linear sigma0 power (VV, VH). Every function works image by image (no batch statistics),
so a batch gives the same numbers as its items one at a time.

Rules (rs-embed 0.3.1, MODEL_SPEC.md sections 1.4 and 2.4):

* NaN and +/-inf become 0 (not 10000) before anything else.
* TerraFM S2 / THOR ``unit_scale``: ``clip(x / 10000, 0, 1)``.
* S1 (both models): reject dB-looking input (more than half of the finite nonzero values negative),
  ``log1p(max(x, 0))``, divided by the image's 99th percentile taken jointly over both channels and
  all pixels (zeros included; numpy's default linear interpolation), clipped to [0, 1]. This is
  rs-embed's shared normaliser, not THOR's own dB statistics.
* Resizing (bilinear, align_corners False, no antialias) happens after normalisation, in torch
  (``resize_bilinear``).

A family's own preparation lives with it (THOR's statistics and ``native_snap`` geometry:
``thor/preprocessing.py``; its bands and normalisation names: ``thor/spec.py``). The names that
lived here before (``THOR_S2_BANDS``, ``thor_normalization``, ``s2_thor_stats``,
``TERRAFM_S2_BANDS``, ...) still resolve, from their family's module (:data:`_MOVED`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rs_embed_pipeline.core.vocabulary import S1_BANDS  # noqa: F401 - re-exported: VV, VH, every model's S1 order

from .errors import ModelInputError

# Names that moved to their model family's package -> the module that holds them now (relative to
# rs_embed_pipeline.models). Resolved on first use: this module imports no family.
_MOVED = {
    "TERRAFM_S2_BANDS": "terrafm.spec",
    **dict.fromkeys(("THOR_S2_BANDS", "THOR_BAND_NAMES", "THOR_S2_NORMALIZATIONS", "THOR_S1_NORMALIZATIONS",
                     "thor_normalization"), "thor.spec"),
    **dict.fromkeys(("THOR_S2_MEAN", "THOR_S2_STD", "s2_thor_stats", "thor_side_unit", "snap_side",
                     "thor_native_snap_decision"), "thor.preprocessing"),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(f"rs_embed_pipeline.models.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


S2_DN_SCALE = 10000.0

MODALITY_ALIASES = {
    "s2": "s2",
    "sentinel2": "s2",
    "sentinel_2": "s2",
    "sentinel-2": "s2",
    "s1": "s1",
    "sentinel1": "s1",
    "sentinel_1": "s1",
    "sentinel-1": "s1",
}


def canonical_modality(modality: str) -> str:
    m = str(modality).strip().lower()
    if m not in MODALITY_ALIASES:
        raise ModelInputError(f"Unknown modality {modality!r}; valid: 's2' or 's1' (aliases: {sorted(MODALITY_ALIASES)})")
    return MODALITY_ALIASES[m]


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def as_bchw(raw, bands: Sequence[str], what: str, hint: str = "") -> np.ndarray:
    """Validate a raw batch and return it as a C-contiguous float32 ``[B, C, H, W]`` array.
    ``hint`` is appended to the channel-count error (which channel counts the model takes)."""
    if hasattr(raw, "detach") and hasattr(raw, "cpu"):  # torch tensor
        raw = raw.detach().cpu().numpy()
    if not isinstance(raw, np.ndarray):
        raise ModelInputError(f"{what} expects a numpy array [B, C, H, W], got {type(raw).__name__}")
    if raw.ndim != 4:
        hint = " (a single image? add a batch axis: raw[None])" if raw.ndim == 3 else ""
        raise ModelInputError(
            f"{what} expects a 4-D array [B, C={len(bands)}, H, W] with bands {list(bands)}, "
            f"got shape {raw.shape}{hint}"
        )
    if raw.dtype == np.bool_ or not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
        raise ModelInputError(f"{what} expects a numeric (float32) array, got dtype {raw.dtype}")
    if raw.shape[1] != len(bands):
        raise ModelInputError(
            f"{what} expects C={len(bands)} channels in band order {list(bands)}, got C={raw.shape[1]} "
            f"(shape {raw.shape})" + (f". {hint}" if hint else "")
        )
    if raw.shape[2] < 1 or raw.shape[3] < 1:
        raise ModelInputError(f"{what} got an empty image, shape {raw.shape}")
    return np.ascontiguousarray(raw, dtype=np.float32)


def check_has_finite(x: np.ndarray, what: str) -> None:
    """Reject any image with no finite value at all (an all-NaN tile has no embedding)."""
    if x.shape[0] == 0:
        return
    finite_any = np.isfinite(x).reshape(x.shape[0], -1).any(axis=1)
    bad = np.flatnonzero(~finite_any)
    if bad.size:
        raise ModelInputError(
            f"{what}: image(s) at batch index {bad.tolist()} contain no finite value (all NaN/inf); "
            "such tiles have no data and must not be embedded"
        )


# Modality plausibility (provider units): S2 DN are reflectance x 10000, S1 linear sigma0 power is
# mostly well below 1. Over half the finite nonzero values beyond these bounds means the data are
# not in the configured modality's units.
S2_UNIT_SCALED_MAX = 1.5  # an S2 image whose every finite value is within +-1.5 DN is unit-scaled
S1_LINEAR_IMPLAUSIBLE = 100.0  # linear sigma0 power above 100 (+20 dB) on most pixels is not S1


def check_modality_units(x: np.ndarray, modality: str, what: str) -> None:
    """Reject data that do not match the configured modality's provider units: S2 that look
    unit-scaled (reflectance 0..1, or S1 power) instead of DN; S1 that look dB-scaled (over half the
    finite nonzero values negative) or like S2 DN (over half above 100). All-zero images pass (they are
    fill, flagged by the input inspection, not a unit mismatch)."""
    b = x.shape[0]
    flat = x.reshape(b, -1)
    finite = np.isfinite(flat)
    nonzero = finite & (flat != 0)
    n = nonzero.sum(axis=1)
    if modality == "s2":
        amax = np.where(finite, np.abs(flat), 0.0).max(axis=1) if flat.shape[1] else np.zeros(b)
        bad = np.flatnonzero((n > 0) & (amax <= S2_UNIT_SCALED_MAX))
        if bad.size:
            raise ModelInputError(
                f"{what} expects Sentinel-2 surface-reflectance DN (reflectance x 10000) but image(s) at "
                f"batch index {bad.tolist()} have every value within +-{S2_UNIT_SCALED_MAX} (max |x| "
                f"{float(amax[bad[0]]):.4g}): unit-scaled reflectance (multiply by 10000) or Sentinel-1 data "
                "given as S2 (use modality='s1')?"
            )
        return
    check_s1_linear(x, what)
    high = (nonzero & (np.abs(np.where(finite, flat, 0.0)) > S1_LINEAR_IMPLAUSIBLE)).sum(axis=1)
    _refuse_flagged_images(np.where(n > 0, high / np.maximum(n, 1), 0.0), lambda images, pct: (
        f"{what} expects linear-scale S1 backscatter (sigma0 power, typically 0..1) but image(s) at "
        f"batch index {images} have {pct} of finite nonzero values above {S1_LINEAR_IMPLAUSIBLE:g}: "
        "Sentinel-2 DN given as S1 (use modality='s2'), or unscaled / uncalibrated DN?"
    ))


def _refuse_flagged_images(frac: np.ndarray, message: Callable[[list[int], str], str]) -> None:
    """Refuse a batch in which an image has more than half of its finite nonzero values flagged
    (``frac`` per image): ``message(batch indices, their percentages)`` says what the input looks like."""
    bad = np.flatnonzero(frac > 0.5)
    if bad.size:
        pct = ", ".join(f"{100 * frac[i]:.0f}%" for i in bad[:5])
        raise ModelInputError(message(bad.tolist(), pct))


def clean_nonfinite(x: np.ndarray) -> np.ndarray:
    """NaN, +inf and -inf become 0 (rs-embed ``nan_to_num(nan=0, posinf=0, neginf=0)``)."""
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


# ------------------------------------------------------------------------------------------------
# Sentinel-2
# ------------------------------------------------------------------------------------------------


def s2_unit_scale(raw: np.ndarray) -> np.ndarray:
    """Non-finite -> 0, / 10000, clip to [0, 1] (TerraFM S2 and THOR ``unit_scale``)."""
    x = clean_nonfinite(raw.astype(np.float32, copy=False)) / np.float32(S2_DN_SCALE)
    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)


def s2_clean_dn(raw: np.ndarray) -> np.ndarray:
    """Non-finite -> 0, clip to [0, 10000] DN (THOR ``none`` output and the start of every THOR S2 mode)."""
    return np.clip(clean_nonfinite(raw.astype(np.float32, copy=False)), 0.0, S2_DN_SCALE).astype(np.float32, copy=False)


def s2_zscore(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-band z-score of reflectance: ``(clip(x, 0, 10000) / 10000 - mean) / max(std, 1e-6)``, NaN -> 0
    (THOR's ``thor_stats`` with its pretraining statistics: ``thor/preprocessing.s2_thor_stats``)."""
    x = s2_clean_dn(raw) / np.float32(S2_DN_SCALE)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.maximum(np.asarray(std, dtype=np.float32), np.float32(1e-6)).reshape(1, -1, 1, 1)
    return clean_nonfinite((x - mean) / std).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------
# Sentinel-1
# ------------------------------------------------------------------------------------------------


def s1_negative_fraction(raw: np.ndarray) -> np.ndarray:
    """Per image: the fraction of finite nonzero values that are negative (0 when there are none)."""
    b = raw.shape[0]
    flat = raw.reshape(b, -1)
    valid = np.isfinite(flat) & (flat != 0)
    neg = (valid & (flat < 0)).sum(axis=1)
    n = valid.sum(axis=1)
    return np.where(n > 0, neg / np.maximum(n, 1), 0.0)


def check_s1_linear(raw: np.ndarray, what: str) -> None:
    _refuse_flagged_images(s1_negative_fraction(raw), lambda images, pct: (
        f"{what} expects linear-scale S1 backscatter (sigma0 power) but the input looks dB-scaled: "
        f"image(s) at batch index {images} have {pct} negative values among finite nonzero "
        "pixels. Convert with 10 ** (dB / 10) or fetch the linear (S1_GRD_FLOAT) collection."
    ))


def s1_log1p_p99(raw: np.ndarray, what: str = "S1") -> tuple[np.ndarray, np.ndarray]:
    """Shared S1 normaliser; returns ``(normalised [B, C, H, W] float32, per-image p99 [B])``.

    Per image: NaN/inf -> 0, dB check, ``x = log1p(max(raw, 0))``,
    ``denom = percentile(x, 99)`` over both channels and every pixel jointly (zeros included,
    numpy linear interpolation; 1.0 when non-finite or <= 0), ``clip(x / denom, 0, 1)``."""
    raw = raw.astype(np.float32, copy=False)
    check_s1_linear(raw, what)
    x = np.log1p(np.maximum(clean_nonfinite(raw), np.float32(0.0)))
    b = x.shape[0]
    if b == 0:
        return x.astype(np.float32), np.zeros((0,), np.float32)
    denom = np.percentile(x.reshape(b, -1), 99, axis=1)
    denom = np.where(np.isfinite(denom) & (denom > 0), denom, 1.0).astype(x.dtype)
    out = np.clip(x / denom.reshape(b, 1, 1, 1), 0.0, 1.0).astype(np.float32, copy=False)
    return out, denom.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Resizing (torch) and cropping / padding (raw values)
# ------------------------------------------------------------------------------------------------


def resize_bilinear(t, size: int):
    """``[B, C, H, W]`` torch tensor to ``size x size``: bilinear, align_corners False, no antialias.
    Identity (the same tensor) when already that size."""
    import torch.nn.functional as F

    if t.shape[-2] == size and t.shape[-1] == size:
        return t
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def center_crop_or_pad(x: np.ndarray, side: int, fill_value: float = 0.0) -> np.ndarray:
    """Centre-crop and/or centre-pad ``[B, C, H, W]`` to ``side x side`` (extra pixel after)."""
    out = x
    for axis in (2, 3):
        n = out.shape[axis]
        if n > side:
            start = (n - side) // 2
            out = np.take(out, np.arange(start, start + side), axis=axis)
        elif n < side:
            before = (side - n) // 2
            pad = [(0, 0)] * 4
            pad[axis] = (before, side - n - before)
            out = np.pad(out, pad, mode="constant", constant_values=fill_value)
    return np.ascontiguousarray(out, dtype=np.float32)

