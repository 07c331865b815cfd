"""Small pictures for materialization metadata: heat maps, histograms, the input imagery as RGB.

Pure numpy + Pillow (no matplotlib in the orchestrator environment). Every picture of one region
and window covers the same extent as the cube's zone group (its tile block, north up), so the PCA
preview, the input RGB, the similarity map and the change map line up when shown side by side.
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from rs_embed_pipeline.core.grid import parse_tile_id
from PIL import Image

# A perceptually ordered map (dark blue -> teal -> yellow), close to viridis; NaN cells are grey.
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
NAN_RGB = (96, 96, 96)


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` (any shape) -> uint8 RGB ``[..., 3]``; ``lo`` dark, ``hi`` bright, NaN grey."""
    v = np.asarray(values, dtype=np.float64)
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    pos = np.nan_to_num(t) * (len(_ANCHORS) - 1)
    i = np.minimum(pos.astype(int), len(_ANCHORS) - 2)
    f = (pos - i)[..., None]
    rgb = (_ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f).round().astype(np.uint8)
    rgb[~np.isfinite(v)] = NAN_RGB
    return rgb


def mark(rgb: np.ndarray, cells: Sequence[tuple[int, int]], color=(255, 0, 0)) -> np.ndarray:
    """A copy of ``rgb`` with the given (row, col) cells painted (e.g. the query cell)."""
    out = rgb.copy()
    for r, c in cells:
        out[int(r), int(c)] = color
    return out


# Pictures are stored in the event log with every materialization: small regions are enlarged
# (whole pixels, no smoothing) to be visible, large ones shrunk so that no side exceeds this.
PREVIEW_MAX_SIDE = 512


def png(rgb: np.ndarray, min_side: int = 256, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """``[h, w, 3]`` uint8 as a PNG whose longer side is at most ``max_side`` pixels: enlarged by
    a whole factor towards ``min_side`` (nearest neighbour), or shrunk (box filter) to fit."""

    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    h, w = rgb.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    factor = max(1, min(factor, max_side // max(1, h, w)))
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    elif factor > 1:
        image = image.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def histogram_png(counts: Sequence[int], width: int = 320, height: int = 120,
                  highlight_from: int | None = None) -> bytes:
    """Bars of ``counts`` (bins left to right); bins from ``highlight_from`` on are drawn in red."""
    values = np.asarray(counts, dtype=np.float64)
    n = max(1, len(values))
    rgb = np.full((height, width, 3), 255, dtype=np.uint8)
    top = values.max() if values.size and values.max() > 0 else 1.0
    bar = max(1, width // n)
    for i, c in enumerate(values):
        h = int(round((height - 4) * np.sqrt(c / top))) if c > 0 else 0  # sqrt: small bins stay visible
        colour = (200, 40, 40) if highlight_from is not None and i >= highlight_from else (59, 82, 139)
        if h:
            rgb[height - h:, i * bar:(i + 1) * bar - (1 if bar > 2 else 0)] = colour
    rgb[-1, :] = 0
    return png(rgb, min_side=0)


def markdown(images: Sequence[tuple[bytes, str]], caption: str | None = None) -> str:
    """Images side by side (one Markdown line), then a caption."""
    line = " ".join(f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})" for data, alt in images)
    return line + (f"\n\n{caption}" if caption else "")


# ------------------------------------------------------------------------------ input imagery
S2_RGB = ("B4", "B3", "B2")


def input_rgb(data: np.ndarray, valid: np.ndarray | None, bands: Sequence[str], modality: str) -> np.ndarray:
    """One tile's provider values ``[C, H, W]`` as an RGB float image ``[H, W, 3]`` (NaN = no data):
    S2 true colour (B4, B3, B2 reflectance DN); S1 false colour (VV dB, VH dB, VV/VH dB)."""
    data = np.asarray(data, dtype=np.float64)
    if modality == "s2":
        missing = [b for b in S2_RGB if b not in bands]
        if missing:
            raise ValueError(f"the patches lack bands {missing} for an RGB picture (bands: {list(bands)})")
        img = np.stack([data[list(bands).index(b)] for b in S2_RGB], axis=-1)
    else:
        names = [str(b).upper() for b in bands]
        vv, vh = data[names.index("VV")], data[names.index("VH")]
        with np.errstate(divide="ignore", invalid="ignore"):
            db = lambda a: 10 * np.log10(np.where(a > 0, a, np.nan))  # noqa: E731
            img = np.stack([db(vv), db(vh), db(vv) - db(vh)], axis=-1)
    if valid is not None:
        img[~np.asarray(valid, dtype=bool)] = np.nan
    return img


def stretch(img: np.ndarray) -> np.ndarray:
    """Float RGB -> uint8, each channel stretched between its 2nd and 98th percentile; NaN black."""
    out = np.zeros(img.shape, dtype=np.uint8)
    for ch in range(img.shape[-1]):
        band = img[..., ch]
        ok = np.isfinite(band)
        if ok.sum() < 2:
            continue
        lo, hi = np.percentile(band[ok], [2, 98])
        scaled = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        out[..., ch] = np.where(ok, (np.nan_to_num(scaled) * 255).round(), 0).astype(np.uint8)
    return out


def tile_mosaic(tiles: Sequence[Mapping[str, Any]], pictures: Mapping[str, np.ndarray], side: int) -> np.ndarray:
    """Tile pictures ``[side, side, 3]`` placed like the cube's zone group places the tiles (its
    tile block, north up); tiles without a picture stay NaN."""
    parsed = {str(t["tile_id"]): parse_tile_id(str(t["tile_id"])) for t in tiles}
    cols = [p["col"] for p in parsed.values()]
    rows = [p["row"] for p in parsed.values()]
    col_min, row_max = min(cols), max(rows)
    out = np.full(((row_max - min(rows) + 1) * side, (max(cols) - col_min + 1) * side, 3), np.nan)
    for tid, pic in pictures.items():
        p = parsed.get(tid)
        if p is None:
            continue
        r, c = row_max - p["row"], p["col"] - col_min
        out[r * side:(r + 1) * side, c * side:(c + 1) * side] = pic
    return out


def downsample(img: np.ndarray, side: int) -> np.ndarray:
    """``[H, W, 3]`` -> ``[side, side, 3]`` by block means (NaN-aware); H and W multiples of side
    are exact, others are cropped to the nearest multiple."""
    h, w = img.shape[:2]
    fy, fx = max(1, h // side), max(1, w // side)
    crop = img[: fy * side, : fx * side]
    blocks = crop.reshape(side, fy, side, fx, img.shape[-1])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks (no data) stay NaN
        return np.nanmean(blocks, axis=(1, 3))


def patches_rgb(patches: Any, tiles: Sequence[Mapping[str, Any]], side: int, batch: int = 16) -> np.ndarray | None:
    """The input imagery of a patch store (a ``TileStore``) as one uint8 RGB mosaic of ``tiles``
    (each tile ``side`` x ``side``), laid out like the cube's zone group. None when no tile has
    imagery or the bands cannot make a picture."""
    settings = patches.settings
    bands, modality = list(settings.get("bands", [])), str(settings.get("modality", "s2"))
    wanted = {str(t["tile_id"]) for t in tiles}
    ids = patches.tile_ids
    ok = [i for i in patches.indices_with_status("ok") if ids[i] in wanted]
    if not ok:
        return None
    pictures: dict[str, np.ndarray] = {}
    for start in range(0, len(ok), batch):
        chunk = ok[start:start + batch]
        data, valid = patches.read("data", chunk), patches.read("valid", chunk)
        for i, d, v in zip(chunk, data, valid):
            try:
                pictures[ids[i]] = downsample(input_rgb(d, v, bands, modality), side)
            except (ValueError, IndexError):
                return None
    return stretch(tile_mosaic(tiles, pictures, side))


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """First three principal components of ``[..., D]`` features as uint8 RGB ``[..., 3]``.

    NaN cells (tiles without an embedding) come out black. Each component is stretched between its
    2nd and 98th percentile so that one outlier does not wash out the picture.
    """
    shape = features.shape[:-1]
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    ok = np.isfinite(flat).all(axis=1)
    rgb = np.zeros((flat.shape[0], 3), dtype=np.uint8)
    if ok.sum() >= 2:
        x = flat[ok] - flat[ok].mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps = x @ vt[:3].T
        if comps.shape[1] < 3:
            comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
        lo, hi = np.percentile(comps, 2, axis=0), np.percentile(comps, 98, axis=0)
        scaled = np.clip((comps - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
        rgb[ok] = (scaled * 255).round().astype(np.uint8)
    return rgb.reshape(*shape, 3)
