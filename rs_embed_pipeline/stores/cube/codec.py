"""Compact int8 cubes: quantize embeddings on write, de-quantize transparently on read.

Two schemes, chosen per cube (cube asset config ``quantization``):

``int8_per_cell`` (a float32 scale per cell, as TESSERA stores its maps)
    every cell (one embedding vector) gets its own float32 scale ``max|v - offset| / 127`` of its
    residual from the window's per-feature mean ``offset``; ``q = round((v - offset) / scale)`` in
    [-127, 127]. Stored: ``embedding`` int8 ``(time, y, x, feature)``, ``embedding_scale`` float32
    ``(time, y, x)`` and ``embedding_offset`` float32 ``(time, feature)``. 1 byte per value + 4 bytes
    per cell: about 0.25x float32 before compression for D = 768. Why the offset: ViT embeddings
    carry a few features tens of times larger than the rest and nearly constant over a region; a
    plain per-cell scale spends the int8 range on them (measured: min cosine 0.9988 and top-10
    search overlap 0.69 on the bench region, against 0.99999 and 0.97 with the offset).
``int8_per_feature``
    every feature of a window gets a float32 scale and offset from its range over the window's
    cells (``offset = (max + min) / 2``, ``scale = (max - min) / 254``); ``q = round((v - offset) / scale)``.
    Stored: ``embedding`` int8 plus ``embedding_scale`` and ``embedding_offset`` float32
    ``(time, feature)``. Cheaper per cell (1 byte per value), but a cell whose values are small
    next to the window's range loses relative precision.

Both schemes need a statistic of the whole window first (mean or range per feature): the writer
reads the window's embeddings twice.

``-128`` is the int8 fill value: a cell without an embedding (NaN in float32 cubes). A chunk of
nothing but fill is not stored (as NaN chunks of float32 cubes), so a rewrite leaves no stale tile.

The scheme is recorded on the ``embedding`` variable (attribute ``quantization``) and in the
``geoemb:quantization`` attribute of each cube group (:func:`geoemb_quantization`). :func:`dequantize`
turns such a dataset back into float32 ``embedding`` (lazily, dask-friendly); float32 cubes pass
through unchanged. ``rs_embed_pipeline.stores.cube.reader.open_cube`` calls it, so readers never see int8.
"""

from __future__ import annotations

from typing import Any, Literal, get_args
from collections.abc import Mapping

import numpy as np
import xarray as xr
from pathlib import Path

Scheme = Literal["none", "int8_per_cell", "int8_per_feature"]  # a typed choice: config and the UI list them
SCHEMES: tuple[str, ...] = get_args(Scheme)
INT8_FILL = -128
QMAX = 127
SCALE_VAR = "embedding_scale"
OFFSET_VAR = "embedding_offset"


class QuantizationError(ValueError):
    """An unknown scheme, or a dataset whose quantization variables are missing."""


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise QuantizationError(f"quantization {scheme!r} is not a scheme; valid: {', '.join(SCHEMES)}")
    return scheme


def quantized_arrays(scheme: str) -> tuple[str, ...]:
    """The extra arrays (beside ``embedding``) a scheme stores, all with ``time`` first."""
    check_scheme(scheme)
    return {"none": (), "int8_per_cell": (SCALE_VAR, OFFSET_VAR), "int8_per_feature": (SCALE_VAR, OFFSET_VAR)}[scheme]


def stored_scheme(embedding_doc: Mapping[str, Any]) -> str:
    """The scheme recorded on a group's ``embedding`` array, from its Zarr metadata document
    (``"none"``: float32)."""
    return str((embedding_doc.get("attributes") or {}).get("quantization") or "none")


def geoemb_quantization(scheme: str) -> dict[str, Any] | None:
    """The ``geoemb:quantization`` object of a cube group (None for float32 cubes)."""
    check_scheme(scheme)
    if scheme == "none":
        return None
    per_cell = scheme == "int8_per_cell"
    return {
        "method": "per_cell_scale_feature_offset" if per_cell else "affine_per_feature",
        "scheme": scheme,
        "original_data_type": "float32",
        "data_type": "int8",
        "fill_value": INT8_FILL,
        "scale_variable": SCALE_VAR,
        "scale_dimensions": ["time", "y", "x"] if per_cell else ["time", "feature"],
        "offset_variable": OFFSET_VAR,
        "offset_dimensions": ["time", "feature"],
        "formula": "embedding = q * scale[time, y, x] + offset[time, feature]" if per_cell
        else "embedding = q * scale[time, feature] + offset[time, feature]",
        "reader": "rs_embed_pipeline.products.open_cube (de-quantizes transparently)",
    }


# ------------------------------------------------------------------------------------ numpy level
def feature_range(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (min, max) over the finite cells of ``values [..., D]`` (NaN where none)."""
    flat = values.reshape(-1, values.shape[-1])
    ok = np.isfinite(flat).all(axis=1)
    if not ok.any():
        nan = np.full(values.shape[-1], np.nan, dtype=np.float32)
        return nan, nan.copy()
    return flat[ok].min(axis=0).astype(np.float32), flat[ok].max(axis=0).astype(np.float32)


def per_feature_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) of ``int8_per_feature`` from a window's per-feature range."""
    offset = ((hi.astype(np.float64) + lo) / 2).astype(np.float32)
    span = (hi.astype(np.float64) - lo) / (2 * QMAX)
    scale = np.where(np.isfinite(span) & (span > 0), span, 1.0).astype(np.float32)
    return scale, np.where(np.isfinite(offset), offset, 0.0).astype(np.float32)


def feature_sum(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(per-feature sum, count) over the finite cells of ``values [..., D]`` (for the window mean)."""
    flat = values.reshape(-1, values.shape[-1])
    ok = np.isfinite(flat).all(axis=1)
    return flat[ok].astype(np.float64).sum(axis=0), int(ok.sum())


def quantize_per_cell(values: np.ndarray, offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``values [..., D]`` float -> (q int8 [..., D], scale float32 [...]) of ``values - offset``;
    NaN cells -> fill / NaN."""
    v = np.asarray(values, dtype=np.float32)
    if offset is not None:
        v = v - np.asarray(offset, dtype=np.float32)
    ok = np.asarray(np.isfinite(v).all(axis=-1))
    absmax = np.max(np.abs(np.where(ok[..., None], v, 0.0)), axis=-1)
    scale = np.where(absmax > 0, absmax / QMAX, 1.0).astype(np.float32)
    q = np.rint(np.where(ok[..., None], v, 0.0) / scale[..., None])
    q = np.clip(q, -QMAX, QMAX).astype(np.int8)
    q[~ok] = INT8_FILL
    return q, np.where(ok, scale, np.float32(np.nan)).astype(np.float32)


def quantize_per_feature(values: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``values [..., D]`` -> q int8 with the window's per-feature ``scale`` / ``offset``."""
    v = np.asarray(values, dtype=np.float32)
    ok = np.asarray(np.isfinite(v).all(axis=-1))
    q = np.rint((np.where(ok[..., None], v, offset) - offset) / scale)
    q = np.clip(q, -QMAX, QMAX).astype(np.int8)
    q[~ok] = INT8_FILL
    return q


def dequantize_array(q: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None,
                     per_cell: bool = True) -> np.ndarray:
    """Inverse of the two quantizers (numpy): float32 with NaN where ``q`` is the fill value."""
    qf = np.where(q == INT8_FILL, np.nan, q.astype(np.float32))
    out = qf * (scale[..., None] if per_cell else scale)
    if offset is not None:
        out = out + offset
    return out.astype(np.float32)


def cosine_per_cell(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding cells of ``a`` and ``b`` ``[..., D]`` (NaN where either is)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=-1)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.where(num == 0, 1.0, np.nan))


# ---------------------------------------------------------------------------------- xarray level
def scheme_of(ds: xr.Dataset) -> str:
    """The quantization scheme of a cube dataset ("none" for float32 cubes)."""
    if "embedding" not in ds:
        return "none"
    return str(ds["embedding"].attrs.get("quantization")
               or ds["embedding"].encoding.get("quantization") or "none")


def dequantize(ds: xr.Dataset) -> xr.Dataset:
    """A cube's embeddings as float32 (identity for float32 cubes); lazy for dask-backed datasets.

    xarray may already have masked the int8 fill value (CF ``_FillValue`` decoding turns ``q`` into
    floats with NaN); both the raw int8 and the masked form are handled.
    """
    scheme = scheme_of(ds)
    if scheme == "none":
        return ds
    check_scheme(scheme)
    missing = [name for name in quantized_arrays(scheme) if name not in ds]
    if missing:
        raise QuantizationError(f"the cube's embedding is {scheme} but the dataset lacks {', '.join(missing)}")
    q = ds["embedding"]
    if np.issubdtype(q.dtype, np.integer):
        q = q.where(q != INT8_FILL)
    emb = q.astype(np.float32) * ds[SCALE_VAR].astype(np.float32) + ds[OFFSET_VAR].astype(np.float32)
    emb = emb.astype(np.float32).transpose(*ds["embedding"].dims)
    attrs = {k: v for k, v in ds["embedding"].attrs.items() if k != "quantization"}
    emb.attrs = {**attrs, "dequantized_from": scheme}
    out = ds.drop_vars(list(quantized_arrays(scheme))).assign(embedding=emb)
    out.attrs = {**ds.attrs, "dequantized_from": scheme}
    return out


def storage_bytes(uri_or_path: str, group: str, names: Mapping[str, Any] | None = None) -> int:
    """Bytes on disk of a cube group's embedding arrays (local stores; benchmarks and metadata)."""

    root = Path(uri_or_path) / group
    wanted = list(names or ("embedding", SCALE_VAR, OFFSET_VAR))
    total = 0
    for name in wanted:
        path = root / name
        if path.exists():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total
