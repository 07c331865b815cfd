"""Compositing over dates: per-pixel median or mosaic of the valid observations.

Both take one band's stack ``values [T, H, W]`` (float32, dates ascending) and the per-observation
validity ``ok [T, H, W]`` (bool), and return ``[H, W]`` float32 where pixels without any valid
observation hold ``fill_value``.

The median is a sorting network over the T date planes (element-wise ``np.minimum`` /
``np.maximum`` on whole planes, invalid observations as +inf so that they sort last), then the
mean of the two middle valid values picked per pixel. No masked arrays, no ``np.nanmedian``: it
is vectorised over pixels instead of looping per pixel, and its numbers equal ``np.nanmedian``'s
bit for bit (both take ``(a + b) / 2`` of the two middle values in float32; tests check it).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["MedianRanks", "median_composite", "mosaic_composite", "sorting_network"]

# above this many dates a network is no faster than numpy's own sort along the date axis
_MAX_NETWORK_DATES = 32


@functools.cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort comparators ``(i, j)`` (i < j) for ``n`` inputs (padded to a
    power of two internally; comparators touching the padding are dropped: padding is +inf and
    already last)."""
    p2 = 1
    while p2 < n:
        p2 *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(min(k, p2 - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p):
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple((a, b) for a, b in pairs if b < n)


class MedianRanks:
    """What every band of one stack shares: the validity mask gives each pixel its count of valid
    observations ``n`` and so the ranks of its two middle values, computed once per stack."""

    def __init__(self, ok: np.ndarray) -> None:
        t = ok.shape[0]
        self.shape = ok.shape[1:]
        flat = ok.reshape(t, -1)
        npx = flat.shape[1]
        self.invalid = ~flat
        n = flat.sum(axis=0)
        self.empty = n == 0
        cols = np.arange(npx, dtype=np.intp)
        # flat indices (into the [T, N] stack) of the two middle values of each pixel
        self.lo = np.maximum((n - 1) // 2, 0).astype(np.intp) * npx + cols
        self.hi = np.minimum(n // 2, max(t - 1, 0)).astype(np.intp) * npx + cols
        self.t = t

    def _middle(self, stack: np.ndarray, sentinel: Any) -> tuple[np.ndarray, np.ndarray]:
        np.putmask(stack, self.invalid, sentinel)  # invalid observations sort last
        stack = _sort_inplace(stack)
        flat = stack.reshape(-1)
        return flat[self.lo], flat[self.hi]

    def median(self, values: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
        """Median of the valid observations; ``values [T, H, W]`` float32 is used as scratch."""
        if self.t == 0:
            return np.full(self.shape, fill_value, np.float32)
        stack = values.reshape(self.t, -1)
        if stack.dtype != np.float32 or not stack.flags.writeable:
            stack = stack.astype(np.float32)
        a, b = self._middle(stack, np.float32(np.inf))
        med = (a + b) / np.float32(2)
        np.putmask(med, self.empty, np.float32(fill_value))
        return med.reshape(self.shape)

    def median_raw(self, raw: np.ndarray, lut: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
        """The same median from raw unsigned integers and their provider values ``lut[raw]``
        (float32, non-decreasing in raw): sorting raw values sorts their provider values, so only
        the two middle values of each pixel are converted; ``raw`` is used as scratch. Equal to
        :meth:`median` of ``lut[raw]`` bit for bit (a raw value at the dtype's maximum ties with
        the invalid sentinel, and then both are that same value below rank ``n``)."""
        if self.t == 0:
            return np.full(self.shape, fill_value, np.float32)
        stack = raw.reshape(self.t, -1)
        a, b = self._middle(stack, np.iinfo(stack.dtype).max)
        med = (lut[a] + lut[b]) / np.float32(2)
        np.putmask(med, self.empty, np.float32(fill_value))
        return med.reshape(self.shape)


def median_composite(values: np.ndarray, ok: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
    """Median over dates of the valid observations of one band (see the module docstring)."""
    return MedianRanks(ok).median(np.array(values, dtype=np.float32), fill_value)


def _sort_inplace(stack: np.ndarray) -> np.ndarray:
    t = stack.shape[0]
    if t > _MAX_NETWORK_DATES:
        stack.sort(axis=0)
        return stack
    tmp = np.empty_like(stack[0])
    for a, b in sorting_network(t):
        np.minimum(stack[a], stack[b], out=tmp)
        np.maximum(stack[a], stack[b], out=stack[b])
        stack[a] = tmp
    return stack


def mosaic_composite(values: np.ndarray, ok: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
    """Latest valid observation on top (dates ascending along axis 0)."""
    t, h, w = values.shape
    out = np.full((h, w), fill_value, np.float32)
    for i in range(t):
        np.copyto(out, values[i], where=ok[i], casting="unsafe")
    return out
