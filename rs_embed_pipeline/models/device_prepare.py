"""Input preparation as torch ops on the model's device: the numpy rules of
:mod:`rs_embed_pipeline.models.preprocessing` (the reference), operation for operation in float32,
so the results equal the reference's (tests: ``test_device_prepare.py``, every reference fixture).

A batch arrives as the patch store's codes (S2: uint16 ``DN = code * 0.5 - 1000``,
``stores/patch_encoding.py``; S1: float32), uploaded from pinned memory (:func:`upload`), decoded
and normalised on the device: the host only reads and copies. The families' ``_prepare`` take
either namespace (:data:`NUMPY_OPS` or :data:`TORCH_OPS`), so the metadata and the order of the
steps are written once.

Patch stores hold S2 codes as row differences (``stores/patch_encoding.py``, filter ``delta_y``).
On a GPU the worker uploads them as stored (``TileStore.read_filtered``) and :func:`undo_filter`
sums them back on the device (an int32 cumulative sum along y, modulo 2**16: exact), so the host
skips the running sum (about 0.4 ms per 224 px tile); on a CPU device the worker keeps the host's
undo and numpy preparation (faster there: ``worker/embed.py``). The filter names are spelled here
too (:data:`FILTERS`): models may not import stores (the layer contract); a test checks that both
lists agree.

On CUDA :func:`upload` copies a batch into a page-locked staging buffer reused per thread and batch
shape (two per shape, each reused only once its previous copy to the device has finished) instead
of pinning a fresh buffer every batch; other devices take the numpy array as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import preprocessing as P
from .errors import ModelInputError


ROW_DELTA = "delta_y"  # stores.patch_encoding.ROW_DELTA: each row stored as its difference to the previous one
FILTERS = (ROW_DELTA,)  # stores.patch_encoding.FILTERS (test_device_prepare checks they agree)
STAGING_SHAPES = 4  # batch shapes whose staging buffers a thread keeps (a store's batches: one or two)


class _Staging(threading.local):
    """Per thread: batch (shape, dtype) -> two page-locked buffers and the event of each one's last copy."""

    def __init__(self) -> None:
        self.rings: dict[tuple[tuple[int, ...], str], list[list[Any]]] = {}
        self.turn: dict[tuple[tuple[int, ...], str], int] = {}


_STAGING = _Staging()


def _staged(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device`` (CUDA) through a reused page-locked buffer: the buffer's previous copy
    is waited for (its event) before it is overwritten, so a non-blocking copy never reads a buffer
    being refilled."""
    key = (tuple(host.shape), str(host.dtype))
    rings, turn = _STAGING.rings, _STAGING.turn
    if key not in rings:
        if len(rings) >= STAGING_SHAPES:
            rings.clear()
            turn.clear()
        rings[key] = [[torch.empty(host.shape, dtype=host.dtype, pin_memory=True), None] for _ in range(2)]
        turn[key] = 0
    slot = rings[key][turn[key]]
    turn[key] = 1 - turn[key]
    if slot[1] is not None:
        slot[1].synchronize()
    slot[0].copy_(host)
    t = slot[0].to(device, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    slot[1] = event
    return t


def upload(codes: np.ndarray, device: torch.device, channels: Sequence[int] | None = None) -> torch.Tensor:
    """Host codes ``[B, C, H, W]`` to ``device`` as they are stored (uint16 travels as its int16 view:
    every torch op supports int16; :func:`decode` undoes the view), through a reused page-locked
    buffer on CUDA (module docstring), then ``channels`` picked on the device (no host copy for the
    band selection)."""
    arr = np.ascontiguousarray(codes)
    if arr.dtype == np.uint16:
        arr = arr.view(np.int16)
    host = torch.from_numpy(arr)
    t = _staged(host, device) if device.type == "cuda" else host.to(device, non_blocking=True)
    if channels is not None and list(channels) != list(range(t.shape[1])):
        t = t[:, list(channels)]
    return t


def undo_filter(t: torch.Tensor, name: str | None) -> torch.Tensor:
    """The codes of a batch uploaded as its store holds them (``[B, C, H, W]``, filter ``name``): for
    ``delta_y`` the cumulative sum along y in int32, then modulo 2**16 (``& 0xFFFF``), exactly the
    host's uint16 running sum (``stores.patch_encoding.undo_filter``): int16 and uint16 views of a
    difference are equal modulo 2**16, and int32 holds the sum of any 65,535 rows. The result is
    int32 codes in [0, 65535] (:func:`decode` takes them as ``unsigned16``). None: ``t`` as it is."""
    if name is None:
        return t
    if name not in FILTERS:
        raise ValueError(f"unknown patch filter {name!r}; valid: {', '.join(FILTERS)} (or None: codes as stored)")
    if t.dtype not in (torch.int16, torch.int32):
        raise ValueError(f"filter {name!r} holds 16-bit integer codes (their int16 view), got {t.dtype}")
    return torch.cumsum(t, dim=-2, dtype=torch.int32) & 0xFFFF


def decode(t: torch.Tensor, scale_factor: float = 1.0, add_offset: float = 0.0, *, unsigned16: bool = False
           ) -> torch.Tensor:
    """float32 provider values: ``code * scale_factor + add_offset`` in float32, as the host's
    ``PatchEncoding.decode`` (``unsigned16``: ``t`` is the int16 view of uint16 codes)."""
    if unsigned16:
        t = t.to(torch.int32) & 0xFFFF
    x = t.to(torch.float32)
    if scale_factor != 1.0 or add_offset != 0.0:
        x = x * np.float32(scale_factor) + np.float32(add_offset)
    return x


def input_flags(x: torch.Tensor, modality: str) -> bool:
    """Whether any image fails the reference's checks (no finite value; not in ``modality``'s
    units): then the caller runs the reference checks on the host for their exact message."""
    b = x.shape[0]
    flat = x.reshape(b, -1)
    finite = torch.isfinite(flat)
    bad = ~finite.any(dim=1)
    nonzero = finite & (flat != 0)
    n = nonzero.sum(dim=1)
    if modality == "s2":
        amax = torch.where(finite, flat.abs(), torch.zeros((), device=x.device)).amax(dim=1)
        bad |= (n > 0) & (amax <= P.S2_UNIT_SCALED_MAX)
    else:
        neg = (nonzero & (flat < 0)).sum(dim=1)
        high = (nonzero & (flat.abs() > P.S1_LINEAR_IMPLAUSIBLE)).sum(dim=1)
        denom = n.clamp(min=1)
        bad |= (n > 0) & ((neg / denom > 0.5) | (high / denom > 0.5))
    return bool(bad.any())


class _TorchOps:
    """The preprocessing functions the families call, on torch tensors (same names as numpy's)."""

    @staticmethod
    def clean_nonfinite(x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    def s2_unit_scale(self, x: torch.Tensor) -> torch.Tensor:
        return (self.clean_nonfinite(x) / np.float32(P.S2_DN_SCALE)).clamp(0.0, 1.0)

    def s2_clean_dn(self, x: torch.Tensor) -> torch.Tensor:
        return self.clean_nonfinite(x).clamp(0.0, P.S2_DN_SCALE)

    def s2_zscore(self, x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
        """THOR's ``s2_thor_stats`` with its statistics ``mean`` and ``std`` per band."""
        x = self.s2_clean_dn(x) / np.float32(P.S2_DN_SCALE)
        m = torch.as_tensor(np.asarray(mean, np.float32), device=x.device).reshape(1, -1, 1, 1)
        s = torch.as_tensor(np.maximum(np.asarray(std, np.float32), np.float32(1e-6)), device=x.device)
        return self.clean_nonfinite((x - m) / s.reshape(1, -1, 1, 1))

    def s1_log1p_p99(self, x: torch.Tensor, what: str = "S1") -> tuple[torch.Tensor, np.ndarray]:
        """The shared S1 normaliser; the dB check already ran (``input_flags``). The 99th percentile
        is numpy's linear one: the two order statistics (``kthvalue``) interpolated in float64."""
        # torch's float32 log1p and numpy's differ by one ulp on ~10 % of values (neither is correctly
        # rounded): the result is within 2e-7 of the reference, not equal; the worker keeps S1 on the host.
        x = torch.log1p(self.clean_nonfinite(x).clamp(min=0.0))
        b = x.shape[0]
        flat = x.reshape(b, -1)
        n = flat.shape[1]
        pos = 0.99 * (n - 1)
        lo = int(np.floor(pos))
        t = pos - lo
        a = flat.kthvalue(lo + 1, dim=1).values.double()
        hi = flat.kthvalue(min(lo + 2, n), dim=1).values.double() if t > 0 else a
        diff = hi - a
        # numpy's _lerp: from the lower value below t = 0.5, from the upper one above
        denom = a + diff * t if t < 0.5 else hi - diff * (1 - t)
        denom = torch.where(torch.isfinite(denom) & (denom > 0), denom, torch.ones_like(denom)).float()
        out = (x / denom.reshape(b, 1, 1, 1)).clamp(0.0, 1.0)
        return out, denom.cpu().numpy()


class _NumpyOps:
    """The reference: :mod:`preprocessing`'s functions (and THOR's z-score) on numpy arrays."""

    clean_nonfinite = staticmethod(P.clean_nonfinite)
    s2_unit_scale = staticmethod(P.s2_unit_scale)
    s2_clean_dn = staticmethod(P.s2_clean_dn)
    s1_log1p_p99 = staticmethod(P.s1_log1p_p99)
    s2_zscore = staticmethod(P.s2_zscore)


NUMPY_OPS: Any = _NumpyOps()
TORCH_OPS: Any = _TorchOps()


def check_shape(shape: tuple[int, ...], bands: Sequence[str], what: str, hint: str = "") -> None:
    """The reference's shape checks (``preprocessing.as_bchw``) for a batch of codes."""
    if len(shape) != 4:
        raise ModelInputError(f"{what} expects a 4-D array [B, C={len(bands)}, H, W] with bands {list(bands)}, "
                              f"got shape {shape}")
    if shape[1] != len(bands):
        raise ModelInputError(f"{what} expects C={len(bands)} channels in band order {list(bands)}, got "
                              f"C={shape[1]} (shape {shape})" + (f". {hint}" if hint else ""))
    if shape[0] == 0:
        raise ModelInputError(f"{what}: empty batch (B=0)")
    if shape[2] < 1 or shape[3] < 1:
        raise ModelInputError(f"{what} got an empty image, shape {shape}")
