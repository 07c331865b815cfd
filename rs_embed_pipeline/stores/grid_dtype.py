"""How an embedding store holds its ``grid``: float32 (default), float16 or bfloat16.

The grid is the largest output (TerraFM-B: 768 x 14 x 14 values per tile, 602 KB in float32), so
users choose its stored type (the model resources' ``grid_dtype``). The model casts on its device
(``adapters.run(..., out_dtypes=)``: half the bytes over the bus); this module is the host side:
what the array holds and how it reads back as float32.

* ``float32`` and ``float16`` are stored as they are (zarr knows both);
* ``bfloat16`` has no numpy or Zarr v3 core type, so its 16-bit patterns are stored as ``uint16``
  with the array attribute ``stored_type = "bfloat16"``; reading shifts them into the high half of
  a float32 (exact). :func:`to_stored` rounds float32 to nearest even, as torch's cast does.

:meth:`~rs_embed_pipeline.stores.tile_store.TileStore.read` returns float32 whatever the stored
type (float16 and bfloat16 widen exactly), so readers such as the cube writer need no change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

import numpy as np

GridDtype = Literal["float32", "float16", "bfloat16"]
GRID_DTYPES: tuple[str, ...] = get_args(GridDtype)
STORED_TYPE_ATTR = "stored_type"  # array attribute: the value type the stored numbers are (bfloat16 bits)
_NUMPY = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
# 16-bit grids are stored without compression: on embedding values Blosc zstd-1 kept about 8 % of
# the bytes for 0.47 ms of CPU per TerraFM-B tile (lz4: nothing for 0.1 ms), a quarter of the embed
# host path's budget on a GPU box (#21; benchmarks/bench_embed_loop.py). float32 grids keep zstd-1.
UNCOMPRESSED: tuple[str, ...] = ("float16", "bfloat16")


def check_grid_dtype(value: Any) -> GridDtype:
    """``value`` if it is one of :data:`GRID_DTYPES`, else a ValueError naming it and the choices."""
    if value not in GRID_DTYPES:
        raise ValueError(f"grid_dtype {value!r} is not one of {', '.join(GRID_DTYPES)}")
    return cast(GridDtype, value)


def numpy_dtype(grid_dtype: str) -> str:
    """The numpy dtype an array of ``grid_dtype`` values holds (bfloat16: its uint16 bit patterns)."""
    return _NUMPY[check_grid_dtype(grid_dtype)]


def attributes(grid_dtype: str) -> dict[str, Any]:
    """The array's attributes: its stored value type."""
    return {STORED_TYPE_ATTR: check_grid_dtype(grid_dtype)}


def stored_type(array_attrs: Mapping[str, Any], array_dtype: Any) -> GridDtype:
    """The value type an array holds: its ``stored_type`` attribute (arrays written before it:
    float32), checked against the array's dtype (a mismatch is a ValueError naming both)."""
    name = check_grid_dtype(array_attrs.get(STORED_TYPE_ATTR, "float32"))
    if np.dtype(array_dtype) != np.dtype(_NUMPY[name]):
        raise ValueError(f"the array holds {np.dtype(array_dtype)} where its {STORED_TYPE_ATTR} {name!r} "
                         f"stores {_NUMPY[name]}")
    return name


def to_stored(values: np.ndarray, grid_dtype: str) -> np.ndarray:
    """float values as an array of ``grid_dtype`` holds them (bfloat16: round to nearest even, NaN kept)."""
    name = check_grid_dtype(grid_dtype)
    if name != "bfloat16":
        return np.asarray(values, dtype=name)
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    return np.where(nan, ((bits >> 16) | np.uint32(0x40)).astype(np.uint16), rounded)  # NaN stays quiet NaN


def to_float32(stored: np.ndarray, grid_dtype: str) -> np.ndarray:
    """float32 values of stored ``grid_dtype`` numbers (exact)."""
    if check_grid_dtype(grid_dtype) != "bfloat16":
        return np.asarray(stored, dtype=np.float32)
    return (np.asarray(stored, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def nonfinite_count(stored: np.ndarray, grid_dtype: str) -> int:
    """Non-finite values among stored ``grid_dtype`` numbers (bfloat16 bits: exponent all ones)."""
    if check_grid_dtype(grid_dtype) != "bfloat16":
        return int((~np.isfinite(stored)).sum())
    return int(((np.asarray(stored, dtype=np.uint16) & 0x7F80) == 0x7F80).sum())
