"""computePixels' NPY answers: the header read without copying the answer, the structured array
as a view of it, and one tile's float32 bands and validity cut out of it."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .client import RequestFailed
from .expressions import VALID_BAND


def npy_header(raw: bytes | bytearray | memoryview) -> bytes:
    """The magic string and header of an NPY buffer (a copy of those bytes only: a BytesIO over a
    memoryview would copy the whole answer)."""
    head = bytes(raw[:12])
    if head[6:8] == b"\x01\x00":
        return bytes(raw[: 10 + int.from_bytes(head[8:10], "little")])
    if head[6:8] in (b"\x02\x00", b"\x03\x00"):
        return bytes(raw[: 12 + int.from_bytes(head[8:12], "little")])
    return bytes(raw)  # not NPY 1 / 2 / 3: the caller's np.load reports it


def read_npy(raw: bytes | bytearray | memoryview, bands: Sequence[str], height: int, width: int) -> np.ndarray:
    """NPY bytes -> the structured array [H, W] (one field per band), a view of ``raw`` (no copy)."""
    try:
        buf = io.BytesIO(npy_header(raw))
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            arr = np.load(io.BytesIO(bytes(raw)), allow_pickle=False)
            shape, fortran, dtype = arr.shape, False, arr.dtype
        if dtype.hasobject:
            raise ValueError("object fields")
        count = int(np.prod(shape)) if shape else 1
        if version in ((1, 0), (2, 0)):
            arr = np.frombuffer(raw, dtype=dtype, count=count, offset=buf.tell())
            arr = arr.reshape(shape, order="F" if fortran else "C")
    except Exception as exc:
        raise RequestFailed(f"undecodable NPY answer: {type(exc).__name__}: {exc}") from None
    names = arr.dtype.names or ()
    missing = [b for b in bands if b not in names]
    if missing:
        raise RequestFailed(f"NPY answer lacks band(s) {missing} (has {list(names)})")
    if arr.shape != (height, width):
        raise RequestFailed(f"NPY answer has shape {arr.shape}, expected {(height, width)}")
    return arr


def tile_arrays(arr: np.ndarray, bands: Sequence[str], ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """float32 [C, h, w] and bool [h, w] of one pixel box of the structured array (copies).

    A fresh array per tile, not views of one per answer: measured under load (issue 26), one
    38 MB array's huge-page faults cost more kernel time (1.8-2.0 ms per tile) than the small
    pages of per-tile arrays, which the allocator mostly reuses (0.9-1.4 ms)."""
    part = arr[ys, xs]
    h, w = part.shape
    data = np.empty((len(bands), h, w), dtype=np.float32)
    for i, b in enumerate(bands):
        data[i] = part[b]
    names = arr.dtype.names or ()
    valid = part[VALID_BAND] > 0 if VALID_BAND in names else np.ones((h, w), dtype=bool)
    if all(arr.dtype[b].kind == "f" for b in bands):  # integer bands (uint16 S2 mosaic) are finite
        valid &= np.isfinite(data).all(axis=0)
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid
