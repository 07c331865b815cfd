"""One block's loaded scenes: raw planes in the assets' dtypes, their harmonization to provider
units and their validity (nodata, non-finite values, SCL classes).

Harmonized S2 DN below 0 (raw DN < 1000 under the -0.1 offset: dark water and shadow) are
clamped at 0 before compositing, as Earth Engine's ``S2_SR_HARMONIZED`` (UINT16) holds them, so
that both providers composite the same values (:data:`S2_CLAMP`)."""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Sequence

import numpy as np

from rs_embed_pipeline.core.vocabulary import UNIT_FACTOR

from .specs import SCL_INVALID_CLASSES

#: What the S2 harmonization does below 0 (recorded in the patches' metadata and ``describe()``).
S2_CLAMP = "harmonized S2 DN below 0 set to 0 before compositing (as S2_SR_HARMONIZED's UINT16)"


def _levels(dtype: np.dtype, scale: float, offset: float, factor: float, clamp: bool) -> np.ndarray:
    """Provider value of every raw level of an 8 / 16-bit unsigned asset (float32)."""
    levels = np.arange(np.iinfo(dtype).max + 1, dtype=np.float64)
    v = (levels * scale + offset) * factor
    return (np.maximum(v, 0.0) if clamp else v).astype(np.float32)


def valid_values(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """Finite and not ``nodata`` (compared in the raw dtype when the value fits it exactly)."""
    if np.issubdtype(raw.dtype, np.integer):
        if nodata is None or math.isnan(nodata):
            return np.ones(raw.shape, bool)
        info = np.iinfo(raw.dtype)
        if float(nodata).is_integer() and info.min <= nodata <= info.max:
            return raw != raw.dtype.type(int(nodata))
        return np.ones(raw.shape, bool)
    ok = np.isfinite(raw)
    if nodata is not None:
        ok &= ~np.isnan(raw) if math.isnan(nodata) else raw != nodata
    return ok


class SceneStack:
    """One block's loaded scenes: ``raw[asset] [T, H, W]`` in the assets' dtype, planes in time
    order (``slices``: (time, signature group, item ids) per plane), ``ok [T, H, W]``."""

    def __init__(self, spec, band_list, keys, sigs, resampling, flt) -> None:
        self.spec, self.band_list, self.keys, self.sigs = spec, list(band_list), keys, sigs
        self.resampling, self.flt = resampling, flt
        self.slices: list[tuple[Any, int, frozenset]] = []
        self.raw: dict[str, np.ndarray] = {}
        self.ok: np.ndarray | None = None
        self.nobs: np.ndarray | None = None  # valid observations per pixel (computed once)
        self.reader = "none"

    @property
    def loaded_ok(self) -> np.ndarray:
        """``ok`` once the block is loaded (tiles are cut only from a loaded stack)."""
        if self.ok is None:
            raise RuntimeError("the block's stack is not loaded yet")
        return self.ok

    def lut(self, band: int, sel: Sequence[int]) -> np.ndarray | None:
        """Provider value of every raw level of band ``band`` (float32, indexed by the raw value)
        when the planes ``sel`` share one harmonization, the asset is 8 / 16-bit unsigned and the
        mapping is non-decreasing (scale >= 0, no dB conversion); else None."""
        raw = self.raw[self.keys[band]]
        if raw.dtype not in (np.uint8, np.uint16):
            return None
        if self.spec.modality == "s1" and not self.flt.use_float_linear:
            return None
        sigs = {self.sigs[self.slices[t][1]][band][:2] for t in sel}
        if len(sigs) != 1:
            return None
        scale, offset = sigs.pop()
        if scale < 0:
            return None
        return _levels(raw.dtype, scale, offset, UNIT_FACTOR[self.spec.modality], self.clamp)

    @property
    def clamp(self) -> bool:
        """S2 harmonized DN are clamped at 0 (:data:`S2_CLAMP`)."""
        return self.spec.modality == "s2"

    def harmonized(self, band: int, sel: Sequence[int], rows: slice, cols: slice) -> np.ndarray:
        """Provider units ``(DN * scale + offset) * unit_factor`` (S1 dB -> linear power) of
        band ``band`` for the planes ``sel``, float32 ``[len(sel), h, w]``; the arithmetic is
        float64 per value, as a lookup table for 8 / 16-bit integer assets (same numbers)."""
        factor = UNIT_FACTOR[self.spec.modality]
        db = self.spec.modality == "s1" and not self.flt.use_float_linear
        raw = self.raw[self.keys[band]]
        first = raw[sel[0], rows, cols]
        out = np.empty((len(sel),) + first.shape, np.float32)
        luts: dict[int, np.ndarray] = {}
        for j, t in enumerate(sel):
            gi = self.slices[t][1]
            scale, offset, _ = self.sigs[gi][band]
            plane = raw[t, rows, cols]
            if raw.dtype in (np.uint8, np.uint16) and not db:
                if gi not in luts:
                    luts[gi] = _levels(raw.dtype, scale, offset, factor, self.clamp)
                np.take(luts[gi], plane, out=out[j])
            else:
                h = (plane.astype(np.float64) * scale + offset) * factor
                if self.clamp:
                    h = np.maximum(h, 0.0)
                if db:  # dB -> linear sigma0 power, per observation, before compositing
                    h = np.power(10.0, h / 10.0)
                out[j] = h.astype(np.float32)
        return out


def valid_mask(stack: SceneStack) -> np.ndarray:
    """Per observation: raw value not the asset nodata and finite in every asked band, and
    for S2 the SCL class not in :data:`SCL_INVALID_CLASSES`."""
    spec = stack.spec
    first = stack.raw[stack.keys[0]]
    ok = np.ones(first.shape, dtype=bool)
    for t, (_, gi, _) in enumerate(stack.slices):
        for i, k in enumerate(stack.keys):
            nod = stack.sigs[gi][i][2]
            ok[t] &= valid_values(stack.raw[k][t], nod)
    if spec.mask_asset:
        scl = stack.raw[spec.mask_asset]
        lut = np.ones(256, dtype=bool)
        lut[list(SCL_INVALID_CLASSES)] = False
        if scl.dtype == np.uint8:
            ok &= lut[scl]
        else:
            ok &= ~np.isin(scl, SCL_INVALID_CLASSES)
    return ok
