"""Input preparation as torch ops on the model's device: the numpy rules of
:mod:`rs_embed_pipeline.models.preprocessing` (the reference), operation for operation in float32,
so the results equal the reference's (tests: ``test_device_prepare.py``, every reference fixture).

A batch arrives as the patch store's codes (S2: uint16 ``DN = code * 0.5 - 1000``,
``stores/patch_encoding.py``; S1: float32), uploaded from pinned memory (:func:`upload`), decoded
and normalised on the device: the host only reads and copies. The families' ``_prepare`` take
either namespace (:data:`NUMPY_OPS` or :data:`TORCH_OPS`), so the metadata and the order of the
steps are written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import preprocessing as P
from .errors import ModelInputError


def upload(codes: np.ndarray, device: torch.device, channels: Sequence[int] | None = None) -> torch.Tensor:
    """Host codes ``[B, C, H, W]`` to ``device`` as they are stored (uint16 travels as its int16 view:
    every torch op supports int16; :func:`decode` undoes the view), through pinned memory on CUDA,
    then ``channels`` picked on the device (no host copy for the band selection)."""
    arr = np.ascontiguousarray(codes)
    if arr.dtype == np.uint16:
        arr = arr.view(np.int16)
    host = torch.from_numpy(arr)
    if device.type == "cuda":
        host = host.pin_memory()
    t = host.to(device, non_blocking=True)
    if channels is not None and list(channels) != list(range(t.shape[1])):
        t = t[:, list(channels)]
    return t


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
