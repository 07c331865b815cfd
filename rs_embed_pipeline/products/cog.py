"""Cloud-Optimized GeoTIFFs of a cube window, for GDAL, QGIS, rasterio and every GIS.

One file per (cube window, UTM zone, kind): north-up (negative y resolution), embedding features as
bands (``feature_000`` ...), the zone's CRS, NaN as nodata (cells without an embedding), internal
tiling (pixel interleaved: a block holds whole vectors), ZSTD with the floating-point predictor.
Blocks are 256 px for up to 64 features and smaller for more (:func:`block_size_for`), so that one
block stays under :data:`MAX_BLOCK_BYTES` decompressed: a 256 x 256 block of 768 float32 features
would be 192 MiB for every read of one vector or one band.

Overviews average like Satellite Embedding's: each overview cell is the mean of the finite vectors
of the 2 x 2 cells below it, then re-normalised to the mean length of those vectors (unit-length
inputs stay unit length, and a mixed block is not shrunk towards the origin, which a plain average
does to vectors that point different ways). GDAL cannot compute that itself, so the levels are
computed here and handed to GDAL's COG driver as existing overviews (a VRT with explicit
``<Overview>`` sources, ``OVERVIEWS=FORCE_USE_EXISTING``).
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import fsspec
import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

BLOCK_SIZE = 256
MIN_BLOCK_SIZE = 64
MAX_BLOCK_BYTES = 16 * 2**20
COMPRESS = "ZSTD"


def block_size_for(bands: int) -> int:
    """The largest power-of-two block side (:data:`MIN_BLOCK_SIZE`..:data:`BLOCK_SIZE`) whose
    pixel-interleaved float32 block fits :data:`MAX_BLOCK_BYTES`: 256 for 64 features, 64 for 768."""
    side = BLOCK_SIZE
    while side > MIN_BLOCK_SIZE and side * side * 4 * max(1, int(bands)) > MAX_BLOCK_BYTES:
        side //= 2
    return side


def overview_factors(height: int, width: int, block_size: int = BLOCK_SIZE) -> list[int]:
    """Powers of two until the overview fits in one block (GDAL COG's own rule)."""
    factors, f = [], 2
    while max(height, width) / (f // 2) > block_size:
        factors.append(f)
        f *= 2
    return factors


def renormalised_mean(bands: np.ndarray) -> np.ndarray:
    """``[D, H, W]`` -> ``[D, ceil(H/2), ceil(W/2)]``: mean of each 2 x 2 block's finite vectors,
    rescaled to their mean length; NaN where the block has none."""
    d, h, w = bands.shape
    bands = np.asarray(bands, dtype=np.float32)  # no float64 copy of the input: a window can be GBs
    if h % 2 or w % 2:
        padded = np.full((d, h + h % 2, w + w % 2), np.nan, dtype=np.float32)
        padded[:, :h, :w] = bands
    else:
        padded = bands  # reshaped as a view, no copy
    blocks = padded.reshape(d, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    valid = np.asarray(np.isfinite(blocks).all(axis=0))           # [h2, 2, w2, 2]
    vals = np.where(valid[None], blocks, 0.0)
    count = valid.sum(axis=(1, 3))                                # [h2, w2]
    with np.errstate(invalid="ignore", divide="ignore"):
        # Sums in float64 (the outputs are a quarter of the input; the order of float32 sums would
        # otherwise depend on memory layout): the same vectors give the same bits.
        mean = vals.sum(axis=(2, 4), dtype=np.float64) / count
        lengths = np.sqrt(np.einsum("dijkl,dijkl->ijkl", vals, vals, dtype=np.float64))  # no full-size temporary
        target = np.where(valid, lengths, 0.0).sum(axis=(1, 3)) / count
        norm = np.sqrt((mean ** 2).sum(axis=0))
        out = mean * np.where(norm > 0, target / norm, 1.0)
    out[:, count == 0] = np.nan
    return out.astype(np.float32)


def _write_gtiff(path: str, data: np.ndarray, transform: Affine, crs: CRS) -> None:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype="float32", crs=crs, transform=transform, nodata=np.nan, tiled=False) as dst:
        dst.write(data)


def _vrt(base: str, overviews: Sequence[str], shape: tuple[int, int, int], transform: Affine, crs: CRS,
         tags: Mapping[str, str]) -> str:
    """The source GDAL's COG driver copies: base raster, our overview levels, tags, band names."""
    d, h, w = shape
    metadata = "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in tags.items())
    bands = []
    for b in range(1, d + 1):
        ovr = "".join(f'<Overview><SourceFilename relativeToVRT="1">{escape(os.path.basename(o))}</SourceFilename>'
                      f"<SourceBand>{b}</SourceBand></Overview>" for o in overviews)
        bands.append(f'<VRTRasterBand dataType="Float32" band="{b}"><Description>feature_{b - 1:03d}</Description>'
                     f"<NoDataValue>nan</NoDataValue>"
                     f'<SimpleSource><SourceFilename relativeToVRT="1">{escape(os.path.basename(base))}</SourceFilename>'
                     f"<SourceBand>{b}</SourceBand></SimpleSource>{ovr}</VRTRasterBand>")
    return (f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{escape(crs.to_wkt())}</SRS>'
            f"<GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>"
            f"<Metadata>{metadata}</Metadata>{''.join(bands)}</VRTDataset>")


def write_cog(
    uri: str,
    features: np.ndarray,
    *,
    epsg: int,
    left: float,
    top: float,
    cell_m: float,
    tags: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    block_size: int | None = None,
    factors: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write ``features`` ``[y, x, feature]`` (rows north to south, as in the cube) as a COG at
    ``uri`` (a local path or any fsspec URL). ``left``/``top``: the raster's upper-left corner in
    metres of ``epsg``; ``block_size``: None = :func:`block_size_for` the band count. The file is
    built in a temporary directory (next to a local target), then renamed into place or uploaded
    from disk, never held in memory whole; readers see the old file or the new one. Returns facts."""
    if features.ndim != 3:
        raise ValueError(f"features must be [y, x, feature], got shape {features.shape}")
    bands = np.ascontiguousarray(np.moveaxis(np.asarray(features, dtype=np.float32), -1, 0))
    d, h, w = bands.shape
    block_size = int(block_size or block_size_for(d))
    crs = CRS.from_epsg(int(epsg))
    transform = from_origin(float(left), float(top), float(cell_m), float(cell_m))
    factors = list(overview_factors(h, w, block_size) if factors is None else factors)
    if any(f < 2 or f & (f - 1) for f in factors) or factors != sorted(set(factors)):
        raise ValueError(f"overview factors must be increasing powers of two (2, 4, 8, ...), got {factors}")
    local = "://" not in uri or uri.startswith("file://")
    target = uri.removeprefix("file://")
    if local:  # same file system as the target, so the final rename is atomic
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rs_embed_cog_",
                                     dir=os.path.dirname(os.path.abspath(target)) if local else None) as tmp:
        base = os.path.join(tmp, "base.tif")
        _write_gtiff(base, bands, transform, crs)
        levels, level = [], bands
        for i, (prev, f) in enumerate(zip([1, *factors], factors)):
            for _ in range(int(np.log2(f // prev))):  # each halving averages 2 x 2 cells of the level above
                level = renormalised_mean(level)
            path = os.path.join(tmp, f"ovr{i}.tif")
            _write_gtiff(path, level, transform @ Affine.scale(w / level.shape[2], h / level.shape[1]), crs)
            levels.append(path)
        vrt = os.path.join(tmp, "src.vrt")
        with open(vrt, "w") as fh:
            fh.write(_vrt(base, levels, bands.shape, transform, crs,
                          {k: v if isinstance(v, str) else json.dumps(v) for k, v in dict(tags or {}).items()}))
        out = os.path.join(tmp, "out.tif")
        rasterio.shutil.copy(vrt, out, driver="COG", COMPRESS=COMPRESS, PREDICTOR="YES", BLOCKSIZE=int(block_size),
                             OVERVIEWS="FORCE_USE_EXISTING" if levels else "NONE", BIGTIFF="IF_SAFER")
        size = os.path.getsize(out)
        if local:
            os.replace(out, target)
        else:  # object stores publish an object only when its (multipart) upload completes
            fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            fs.put_file(out, path)
    return {"uri": uri, "bands": d, "height": h, "width": w, "overviews": factors, "bytes": size,
            "epsg": int(epsg), "transform": list(transform)[:6], "block_size": block_size}
