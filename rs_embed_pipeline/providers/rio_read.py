"""Windowed rasterio reads of one asset onto a block's pixel grid, when the grids nest.

Sentinel-2 L2A COGs (Earth Search, Planetary Computer, the synthetic catalog) are north-up UTM
rasters at 10 / 20 / 60 m whose origins sit on a 60 m lattice, and tile grids are 10 m lattices of
the same zone: the block's pixels then *nest* in the asset's (same CRS, no rotation, pixel size an
integer multiple ``f`` of the block's, origins a whole number of block pixels apart). A nested
asset is read once, at its native resolution, over the rasterio ``Window`` that covers the block, and
upsampled by pixel replication, which is exactly nearest-neighbour resampling (block pixel
``(r, c)`` takes native pixel ``((oy + r) // f, (ox + c) // f)``), without a warp. Pixels of the
block outside the raster get the fill value (the asset's nodata). :func:`read_nested` returns None
when the grids do not nest; the provider then reads that block through odc-stac (a warp, same
nearest resampling).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["nest_factor", "read_nested"]

_TOL = 1e-6


def _whole(v: float) -> int | None:
    r = round(v)
    return int(r) if abs(v - r) < _TOL else None


def nest_factor(transform: Any, crs_epsg: int | None, block: Any) -> tuple[int, int, int] | None:
    """``(f, ox, oy)``: the block pixel nests ``f x f`` times in an asset pixel and the block's
    origin is ``(ox, oy)`` block pixels right of / below the asset's; None when they do not nest."""
    if crs_epsg is None or int(crs_epsg) != int(block.epsg):
        return None
    a, b, c, d, e, f_ = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
    if abs(b) > _TOL or abs(d) > _TOL or a <= 0 or e >= 0 or not math.isclose(a, -e, rel_tol=1e-9):
        return None
    factor = _whole(a / block.scale_m)
    ox = _whole((block.x0 - c) / block.scale_m)
    oy = _whole((f_ - block.y0) / block.scale_m)
    if factor is None or factor < 1 or ox is None or oy is None:
        return None
    return factor, ox, oy


def read_nested(href: str, block: Any, fill: float, dtype: Any = None,
                out: np.ndarray | None = None) -> np.ndarray | None:
    """The asset's band 1 on the block grid (``[height, width]``, nearest), or None when the grids
    do not nest (see the module docstring). ``fill``: value of block pixels outside the raster;
    ``out``: write into this array (the caller's stack plane) instead of a new one."""
    import rasterio  # noqa: PLC0415 - rasterio (GDAL) loads only when a COG is read
    from rasterio.windows import Window  # noqa: PLC0415 - rasterio: see above

    with rasterio.open(href) as src:
        epsg = src.crs.to_epsg() if src.crs is not None else None
        nest = nest_factor(src.transform, epsg, block)
        if nest is None:
            return None
        f, ox, oy = nest
        out_dtype = np.dtype(dtype or src.dtypes[0]) if out is None else out.dtype
        if out is None:
            out = np.empty((block.height, block.width), dtype=out_dtype)
        # native pixels covering the block, clipped to the raster
        c0, c1 = ox // f, (ox + block.width - 1) // f + 1
        r0, r1 = oy // f, (oy + block.height - 1) // f + 1
        cc0, cc1 = max(c0, 0), min(c1, src.width)
        rr0, rr1 = max(r0, 0), min(r1, src.height)
        if cc0 >= cc1 or rr0 >= rr1:
            out[...] = fill
            return out
        native = src.read(1, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
    if native.dtype != out_dtype:
        native = native.astype(out_dtype)
    # block pixels covered by the read: block column x <-> native column (ox + x) // f
    x0 = max(cc0 * f - ox, 0)
    x1 = min(cc1 * f - ox, block.width)
    y0 = max(rr0 * f - oy, 0)
    y1 = min(rr1 * f - oy, block.height)
    if (x0, y0, x1, y1) != (0, 0, block.width, block.height):  # only the uncovered rim
        out[:y0] = fill
        out[y1:] = fill
        out[:, :x0] = fill
        out[:, x1:] = fill
    if f == 1:
        out[y0:y1, x0:x1] = native[(oy + y0) - rr0:(oy + y1) - rr0, (ox + x0) - cc0:(ox + x1) - cc0]
        return out
    # replicate each native pixel f x f (one broadcast pass), then drop the part before the
    # block's origin
    ny, nx = native.shape
    up = np.empty((ny, f, nx, f), dtype=out_dtype)
    up[...] = native[:, None, :, None]
    up = up.reshape(ny * f, nx * f)
    sy, sx = (oy + y0) - rr0 * f, (ox + x0) - cc0 * f
    out[y0:y1, x0:x1] = up[sy:sy + (y1 - y0), sx:sx + (x1 - x0)]
    return out
