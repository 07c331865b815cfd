"""How a patch store holds its pixels: the ``data`` array's stored type and its exact decoding.

Provider units are float32 (docs/architecture.md), but Sentinel-2 DN are integers, or halves of
integers where a median composite averages the two middle observations, and since the -1000
harmonization offset of processing baseline >= 04.00 they may be negative (down to -999 DN; the
real-catalog fidelity issue #22 will clamp those). So S2 is stored as

    code = 2 * (DN + 1000)        uint16: DN = code * 0.5 - 1000        (CF scale_factor / add_offset)

exact for every half-integer DN in [-1000, 31767.5] (reflectance -0.1 .. 3.18) and half the bytes
of float32 before compression. A value outside that range is clamped into it and one that is not a
multiple of 0.5 is rounded; both are counted in the tile's ``tile_meta["encoding_adjusted_px"]``
(the models clip S2 to [0, 10000] DN first, so no embedding changes). A store whose ``fill_value``
the code cannot hold (NaN, -9999, ...) keeps float32 (``encoding_for``). Sentinel-1 linear power
is not integer: float32. Stores written before this module have no ``encoding`` attribute and are
float32 (:data:`FLOAT32`).

The decoding is one multiply-add, so the worker can upload the codes as they are (uint16 is half
the bytes of float32 over the bus) and decode on the model's device (``models.adapters``
``prepare_encoded``); :meth:`PatchEncoding.decode` is the host reference.

Codec (``compressors``): Blosc zstd level 5, byte shuffle, one chunk per tile, chosen by read +
decode CPU time per tile on one core, measured on synthetic-catalog S2 tiles
(``benchmarks/bench_patch_codec.py``; figures in the README): zstd-5 and lz4 with byte shuffle read
fastest (about 0.45x of float32 zstd-1; zstd decodes as fast at any level), bit shuffle and zstd-1
slower; of the two, zstd-5 also stores fewer bytes (0.86x float32 zstd-1 where lz4 takes 1.3x). Its
extra compression cost falls on the fetch's background writers, not on the GPU's feed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec

ENCODING_ATTR = "encoding"  # the data array's attribute naming its encoding (absent: float32)


@dataclasses.dataclass(frozen=True)
class PatchEncoding:
    """``value = code * scale_factor + add_offset``; ``dtype`` is what the store holds."""

    name: str
    dtype: str
    scale_factor: float = 1.0
    add_offset: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.scale_factor == 1.0 and self.add_offset == 0.0

    @property
    def value_range(self) -> tuple[float, float]:
        """The provider values the codes can hold (inclusive)."""
        if np.dtype(self.dtype).kind == "f":
            return (-math.inf, math.inf)
        info = np.iinfo(np.dtype(self.dtype))
        return (info.min * self.scale_factor + self.add_offset, info.max * self.scale_factor + self.add_offset)

    def holds(self, value: float) -> bool:
        """Whether ``value`` is stored exactly."""
        if np.dtype(self.dtype).kind == "f":
            return True
        lo, hi = self.value_range
        if not (math.isfinite(value) and lo <= value <= hi):
            return False
        code = (value - self.add_offset) / self.scale_factor
        return code == round(code)

    def attributes(self) -> dict[str, Any]:
        """The data array's attributes (CF names)."""
        return {ENCODING_ATTR: self.name, "scale_factor": self.scale_factor, "add_offset": self.add_offset,
                "units_decoded": "provider units (docs/architecture.md)"}

    def compressors(self) -> list[BloscCodec]:
        if np.dtype(self.dtype).kind == "f":
            # Float arrays: Blosc zstd level 1, byte shuffle (the layout of every store before).
            return [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]
        # Integer codes: zstd-5 + byte shuffle, the fastest read per core and smaller (module docstring).
        return [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=np.dtype(self.dtype).itemsize)]

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, adjusted pixel count per tile)`` of a ``[tile, ...]`` float array: values out of
        range are clamped and others rounded to the nearest code (counted; exact values are 0)."""
        values = np.asarray(values)
        if np.dtype(self.dtype).kind == "f":
            return values.astype(self.dtype, copy=False), np.zeros(values.shape[0], np.int64)
        info = np.iinfo(np.dtype(self.dtype))
        scaled = (values.astype(np.float64) - self.add_offset) / self.scale_factor
        # NaN (never a provider value: a NaN fill_value keeps float32) becomes the code of 0, as the models read it
        codes = np.clip(np.rint(np.nan_to_num(scaled, nan=-self.add_offset / self.scale_factor, posinf=info.max,
                                              neginf=info.min)), info.min, info.max)
        adjusted = (codes != scaled).reshape(values.shape[0], -1).sum(axis=1)  # NaN != anything: counted
        return codes.astype(self.dtype), adjusted

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Provider values (float32) of stored codes: the host reference of the device decoding."""
        if self.is_identity:
            return np.asarray(codes, dtype=np.float32)
        out = np.asarray(codes).astype(np.float32)
        out *= np.float32(self.scale_factor)
        out += np.float32(self.add_offset)
        return out


FLOAT32 = PatchEncoding("float32", "float32")
S2_DN_HALF_UINT16 = PatchEncoding("s2_dn_half_uint16", "uint16", scale_factor=0.5, add_offset=-1000.0)
ENCODINGS: dict[str, PatchEncoding] = {e.name: e for e in (FLOAT32, S2_DN_HALF_UINT16)}


def encoding_for(modality: str, fill_value: float = 0.0) -> PatchEncoding:
    """The encoding new stores of ``modality`` use: S2 DN as uint16 codes when ``fill_value`` is one
    of them, else float32 (as S1)."""
    if modality == "s2" and S2_DN_HALF_UINT16.holds(float(fill_value)):
        return S2_DN_HALF_UINT16
    return FLOAT32


def encoding_named(name: str | None) -> PatchEncoding:
    """The encoding of that name (None: a store written before encodings existed, float32)."""
    if name is None:
        return FLOAT32
    if name not in ENCODINGS:
        raise ValueError(f"unknown patch encoding {name!r}; valid: {', '.join(ENCODINGS)}")
    return ENCODINGS[name]


def encoding_of(array_attrs: Mapping[str, Any]) -> PatchEncoding:
    """The encoding a stored data array declares (float32 when it declares none)."""
    name = array_attrs.get(ENCODING_ATTR)
    return encoding_named(None if name is None else str(name))
