"""Input inspection: is a patch what the model expects? (rs-embed's optional input check.)

``inspect_patch(data, valid, modality)`` looks at one ``[C, H, W]`` patch in provider units
(Sentinel-2 DN = reflectance x 10000, Sentinel-1 linear sigma0 power) and returns a JSON-serialisable
dict of measurements and flags:

* ``channels`` vs ``expected_channels`` (S2: 12 provider bands, or the 10 THOR bands; S1: VV, VH);
* ``nonfinite_fraction``: NaN / inf values;
* ``fill_fraction``: pixels that are invalid (``valid`` False) or equal ``fill_value`` in every band;
* ``out_of_range_fraction``: valid finite values outside the modality's expected range
  (S2 ``[0, 10000]`` DN; S1 ``[0, 100]`` linear power);
* ``constant``: every band constant over the valid pixels (``constant_bands`` lists the bands that are);
* unit mismatches: ``looks_db`` (S1: over half the finite nonzero values negative),
  ``looks_unit_scaled`` (S2: every value within +-1.5, i.e. reflectance 0..1 or S1 power given as S2),
  ``looks_like_dn`` (S1: over half the values above 100, i.e. S2 DN given as S1);
* ``issues``: one readable line per problem; ``ok``: no issue.

Thresholds (``DEFAULT_THRESHOLDS``) decide what is an issue. Pure numpy: the patches asset stores the
result in each tile's ``tile_meta["input_check"]`` and reports an asset check; ``embed_arrays`` adds
it to the embedding metadata (``input_checks``) and raises on issues when ``check_raise`` is set.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable, Mapping

import numpy as np

from rs_embed_pipeline.core.vocabulary import MODALITIES, PROVIDER_UNITS

EXPECTED_CHANNELS: dict[str, tuple[int, ...]] = {"s2": (12, 10), "s1": (2,)}
VALUE_RANGE: dict[str, tuple[float, float]] = {"s2": (0.0, 10000.0), "s1": (0.0, 100.0)}
UNITS: dict[str, str] = PROVIDER_UNITS
DEFAULT_THRESHOLDS: dict[str, float] = {
    "max_nonfinite_fraction": 0.0,
    "max_fill_fraction": 0.5,
    "max_out_of_range_fraction": 0.01,
}
CHECK_VERSION = 1


def _r(v: float) -> float:
    return float(round(float(v), 6))


def inspect_patch(
    data: np.ndarray,
    valid: np.ndarray | None = None,
    modality: str = "s2",
    *,
    expected_channels: int | Iterable[int] | None = None,
    fill_value: float = 0.0,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Measurements and flags of one ``[C, H, W]`` patch (see the module docstring)."""
    m = str(modality).strip().lower()
    if m not in MODALITIES:
        raise ValueError(f"modality must be {' or '.join(map(repr, MODALITIES))}, got {modality!r}")
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    x = np.asarray(data)
    if x.ndim != 3:
        raise ValueError(f"inspect_patch expects one patch [C, H, W], got shape {x.shape}")
    x = x.astype(np.float64, copy=False)
    c, h, w = x.shape
    if expected_channels is None:
        expected = EXPECTED_CHANNELS[m]
    elif isinstance(expected_channels, (int, np.integer)):
        expected = (int(expected_channels),)
    else:
        expected = tuple(int(v) for v in expected_channels)
    v = np.ones((h, w), bool) if valid is None else np.asarray(valid, dtype=bool)
    if v.shape != (h, w):
        raise ValueError(f"valid mask {v.shape} does not match the patch {x.shape}")
    finite = np.isfinite(x)
    n_values = x.size
    nonfinite_fraction = 1.0 - finite.sum() / n_values if n_values else 0.0
    fill_pixel = ~v | np.all(np.where(finite, x == fill_value, True), axis=0)
    fill_fraction = float(fill_pixel.mean()) if fill_pixel.size else 1.0
    use = finite & ~fill_pixel[None]  # the real observations
    vals = x[use]
    lo, hi = VALUE_RANGE[m]
    out: dict[str, Any] = {
        "check_version": CHECK_VERSION,
        "modality": m,
        "units": UNITS[m],
        "channels": int(c),
        "expected_channels": list(expected),
        "channels_ok": c in expected,
        "nonfinite_fraction": _r(nonfinite_fraction),
        "fill_value": float(fill_value),
        "fill_fraction": _r(fill_fraction),
        "expected_range": [lo, hi],
    }
    if vals.size:
        out.update(min=_r(vals.min()), max=_r(vals.max()), mean=_r(vals.mean()), std=_r(vals.std()))
        out["out_of_range_fraction"] = _r(((vals < lo) | (vals > hi)).mean())
    else:
        out.update(min=None, max=None, mean=None, std=None, out_of_range_fraction=0.0)
    constant_bands = []
    for i in range(c):
        band = x[i][use[i]]
        if band.size == 0 or float(band.max()) == float(band.min()):
            constant_bands.append(i)
    out["constant_bands"] = constant_bands
    out["constant"] = bool(vals.size) and len(constant_bands) == c
    nonzero = vals[vals != 0]
    if m == "s1":
        out["negative_fraction"] = _r((nonzero < 0).mean()) if nonzero.size else 0.0
        out["looks_db"] = bool(nonzero.size) and out["negative_fraction"] > 0.5
        out["looks_like_dn"] = bool(nonzero.size) and float((np.abs(nonzero) > hi).mean()) > 0.5
    else:
        out["looks_unit_scaled"] = bool(nonzero.size) and float(np.abs(nonzero).max()) <= 1.5

    issues = []
    if not out["channels_ok"]:
        issues.append(f"channels: got {c}, expected {' or '.join(map(str, expected))} for {m.upper()}")
    if nonfinite_fraction > th["max_nonfinite_fraction"]:
        issues.append(f"nonfinite: {100 * nonfinite_fraction:.2f}% of values are NaN/inf")
    if fill_fraction > th["max_fill_fraction"]:
        issues.append(
            f"fill: {100 * fill_fraction:.1f}% of pixels are invalid or fill ({fill_value:g}) "
            f"(> {100 * th['max_fill_fraction']:.0f}%)"
        )
    if out["out_of_range_fraction"] > th["max_out_of_range_fraction"]:
        issues.append(
            f"range: {100 * out['out_of_range_fraction']:.2f}% of valid values outside [{lo:g}, {hi:g}] "
            f"({UNITS[m]})"
        )
    if out["constant"]:
        issues.append("constant: every band is constant over the valid pixels")
    if out.get("looks_db"):
        issues.append(
            f"units: {100 * out['negative_fraction']:.0f}% of values negative - looks dB-scaled, but S1 "
            "must be linear sigma0 power (use_float_linear / convert with 10 ** (dB / 10))"
        )
    if out.get("looks_like_dn"):
        issues.append("units: most values above 100 - looks like S2 DN or uncalibrated DN, not S1 linear power")
    if out.get("looks_unit_scaled"):
        issues.append("units: every value within +-1.5 - looks unit-scaled (reflectance 0..1) or S1, not S2 DN")
    out["issues"] = issues
    out["ok"] = not issues
    return out


def summarize(checks: Iterable[Mapping[str, Any]], examples: int = 5) -> dict[str, Any]:
    """Counts over many ``inspect_patch`` results: ``inspected``, ``flagged``, issue kinds and the
    first ``examples`` flagged tiles (``tile_id`` when the dicts carry one)."""
    inspected = flagged = 0
    kinds: dict[str, int] = {}
    shown: list[dict[str, Any]] = []
    for chk in checks:
        inspected += 1
        if chk.get("ok", True):
            continue
        flagged += 1
        for issue in chk.get("issues", []):
            kind = issue.split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        if len(shown) < examples:
            shown.append({"tile_id": chk.get("tile_id"), "issues": list(chk.get("issues", []))})
    return {"inspected": inspected, "flagged": flagged, "issue_counts": kinds, "examples": shown}
