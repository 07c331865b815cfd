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

Patch stores created since then hold the codes as differences to the previous row (``ArraySpec(
filter="delta_y")``, the encoding's ``store_filter``; modulo 2**16, exact: :func:`apply_filter` /
:func:`undo_filter`, which ``TileStore`` applies on write and undoes on read, so callers see codes):
0.50-0.52x the bytes of a float32 store where the codes alone took 0.86x (#21: <= 0.55x). Their codec,
Blosc zstd-6, no shuffle, one Blosc block per tile chunk (``blocksize`` 2 MiB: a 224 px tile's chunk
is 1.2 MB, a 288 px one 1.99 MB), was chosen by decode CPU per tile among the layouts within 0.55x,
measured on the synthetic-catalog S2 tiles' row differences (224 px, 12 bands, one core, Blosc at one
thread; bytes and ms per tile, the float32 store zstd-1 byte shuffle 205 KB and 1.5 ms):

    zstd-5 bit shuffle, Blosc's own block size (the stores before)   0.48x  0.60 ms   encode  5.5 ms
    zstd-5 no shuffle,  Blosc's own block size                        0.53x  0.51 ms   encode 13.7 ms
    zstd-4 / 5 no shuffle, whole-tile block                           0.51x  0.45 ms   encode 7.2 / 9.4 ms
    zstd-6 no shuffle,  whole-tile block (new stores)                 0.50x  0.41 ms   encode 20.7 ms
    zstd-7 no shuffle,  whole-tile block                              0.49x  0.41 ms   encode 55.6 ms
    zstd-1 / 3, any shuffle and block; bit shuffle at any level       0.47-0.66x  0.49-1.0 ms
    lz4, lz4hc, blosclz (fastest: lz4hc-9 0.15 ms)                    0.67-1.4x: over the bytes target

Blosc splits a chunk into blocks compressed one by one, and by default picks small blocks at low
levels: one block per tile lets zstd decode in long runs (the largest gain), and without a shuffle
the decoder writes the 16-bit differences as they are. Bit shuffle stores 3-4 % fewer bytes but
unshuffling costs 0.1-0.15 ms a tile. zstd-6 encodes 4x slower than the stores before (about 20 ms
a 224 px tile): that falls on the fetch's background writers, not on the GPU's feed; zstd-7 reads no
faster for 2.7x more. ``chunk_io`` decodes these chunks straight into the read batch (no copy).
The running sum is one numpy add per row over the whole batch (a cumulative sum along y costs 5x
that). The worker on a GPU skips that sum on the host: it
reads the differences as stored (``TileStore.read_filtered``) and sums them on the device
(``models/device_prepare.py`` ``undo_filter``: an int32 cumulative sum, modulo 2**16, equal to
:func:`undo_filter`); every other reader gets codes. The filter is lossless, so it is not part of the
fingerprint: a store records it on its array (absent: codes as they are, the stores before), and
stores written before keep their layout when resumed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec

ENCODING_ATTR = "encoding"  # the data array's attribute naming its encoding (absent: float32)
FILTER_ATTR = "filter"  # the data array's attribute naming a lossless filter on its codes (absent: none)
ROW_DELTA = "delta_y"  # each row stored as its difference to the previous row (the first as is), modulo 2**16
FILTERS = (ROW_DELTA,)
ROW_DELTA_BLOCKSIZE = 2**21  # Blosc block of a row-difference store: a whole tile chunk (module docstring)


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

    @property
    def store_filter(self) -> str | None:
        """The filter new patch stores hold these codes with (``ArraySpec(filter=)``): row
        differences for 16-bit integer codes (module docstring), none for float32."""
        return ROW_DELTA if np.dtype(self.dtype) == np.uint16 else None

    def compressors(self, filter: str | None = None) -> list[BloscCodec]:
        """The data array's codecs; ``filter``: the codes are stored through that filter."""
        if np.dtype(self.dtype).kind == "f":
            # Float arrays: Blosc zstd level 1, byte shuffle (the layout of every store before).
            return [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]
        if filter is not None:
            # Row differences: zstd-6, no shuffle, one Blosc block per tile chunk (up to 2 MiB: a 288 px
            # tile of 12 bands is 1.99 MB), the fastest read per core of the layouts within #21's 0.55x
            # float32 bytes (module docstring).
            return [BloscCodec(cname="zstd", clevel=6, shuffle="noshuffle", typesize=np.dtype(self.dtype).itemsize,
                               blocksize=ROW_DELTA_BLOCKSIZE)]
        # Codes as they are: zstd-5 + byte shuffle, the fastest read per core (module docstring).
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


def filter_of(array_attrs: Mapping[str, Any]) -> str | None:
    """The filter a stored array declares (None: its codes as they are); ValueError on an unknown one."""
    name = array_attrs.get(FILTER_ATTR)
    if name is not None and name not in FILTERS:
        raise ValueError(f"unknown patch filter {name!r}; valid: {', '.join(FILTERS)}")
    return None if name is None else str(name)


def apply_filter(codes: np.ndarray, name: str | None) -> np.ndarray:
    """``[tile, ..., y, x]`` uint16 codes as a ``name`` array stores them (a new array)."""
    if name is None:
        return codes
    codes = np.asarray(codes)
    if codes.dtype != np.uint16:
        raise ValueError(f"filter {name!r} stores uint16 codes, got {codes.dtype}")
    out = codes.copy()
    out[..., 1:, :] -= codes[..., :-1, :]  # wraps modulo 2**16: exact once summed back
    return out


def undo_filter(stored: np.ndarray, name: str | None) -> np.ndarray:
    """The codes of what a ``name`` array stores: the running sum along y, in place when ``stored``
    is writable. One add per row over every tile and band of the batch at once: the Python loop
    costs ``y`` calls per batch, where ``np.cumsum(axis=-2, dtype=uint16)`` was 5x slower here."""
    if name is None:
        return stored
    out = stored if stored.flags.writeable else stored.copy()
    for i in range(1, out.shape[-2]):
        np.add(out[..., i, :], out[..., i - 1, :], out=out[..., i, :])
    return out
