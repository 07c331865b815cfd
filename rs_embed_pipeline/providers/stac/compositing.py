"""Composites of a loaded block and the tiles cut out of them, with their provenance."""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Sequence

import numpy as np

from rs_embed_pipeline.core.vocabulary import UNIT_FACTOR

from ..base import ProviderError, Tile
from ..blocks import Block
from ..composite import MedianRanks, mosaic_composite
from ..sensor_options import SensorOptions
from .stack import SceneStack


def composite_box(stack: SceneStack, flt: SensorOptions, rows: slice, cols: slice,
                  slice_ids: Sequence[int] | None = None, in_place: bool = False) -> np.ndarray:
    """``[C, h, w]`` composite of the box ``rows x cols`` over the chosen planes (all by default).
    ``in_place``: the median may sort the stack's raw planes in place (last use of them)."""
    sel = list(range(len(stack.slices))) if slice_ids is None else list(slice_ids)
    whole = in_place and slice_ids is None and rows == slice(None) and cols == slice(None)
    if stack.ok is None or not sel:
        raise ProviderError("no scene plane loaded for this block")
    ok = stack.ok[sel][:, rows, cols]
    out = np.empty((len(stack.keys),) + ok.shape[1:], np.float32)
    invalid = ~ok.any(axis=0)
    ranks = MedianRanks(ok) if flt.composite == "median" else None
    for i in range(len(stack.keys)):
        lut = stack.lut(i, sel) if ranks is not None else None
        if ranks is not None and lut is not None:  # median of raw integers, converted at the two middle values
            raw = stack.raw[stack.keys[i]]
            raw = raw if whole else raw[sel][:, rows, cols]
            band = ranks.median_raw(raw, lut, flt.fill_value)
            if np.isfinite(lut).all():  # finite levels: the median's empty pixels hold fill
                out[i] = band
                continue
        elif ranks is not None:
            band = ranks.median(stack.harmonized(i, sel, rows, cols), flt.fill_value)
        else:
            band = mosaic_composite(stack.harmonized(i, sel, rows, cols), ok, flt.fill_value)
        np.putmask(band, ~np.isfinite(band), np.float32(0))
        np.putmask(band, invalid, np.float32(flt.fill_value))
        out[i] = band
    return out


def own_planes(stack: SceneStack, block: Block, tile: Tile, items) -> list[int] | None:
    """The tile's planes when a plane of scenes outside its footprint has valid pixels in
    its box (the tile is then composited from its own planes), else None."""
    ids = {it.id for it in items}
    mine = [t for t, (_, _, s) in enumerate(stack.slices) if s & ids]
    others = [t for t, (_, _, s) in enumerate(stack.slices) if not s & ids]
    if not mine or not others:
        return None
    rows, cols = block.box(tile)
    return mine if stack.loaded_ok[others][:, rows, cols].any() else None


def cut_tile(stack: SceneStack, composite, block: Block, tile: Tile, items,
             own: np.ndarray | None = None):
    n, size = len(stack.keys), tile.size_px
    ids = {it.id for it in items}
    mine = [t for t, (_, _, s) in enumerate(stack.slices) if s & ids]
    extra_meta: dict[str, Any] = {"resampling": stack.resampling, "reader": stack.reader}
    if not mine:
        extra_meta.update({"n_dates": 0, "harmonization": harmonization(stack, items)})
        return np.zeros((n, size, size), np.float32), np.zeros((size, size), bool), extra_meta
    rows, cols = block.box(tile)
    if own is not None:
        # a scene outside this tile's footprint has pixels here: the tile's composite comes
        # from its own scenes only (what a single-tile read would give)
        data = own
        nobs = stack.loaded_ok[mine][:, rows, cols].sum(axis=0)
    else:  # the block's composite and observation counts hold for this tile as they are
        data = composite[:, rows, cols].copy()
        if stack.nobs is None:
            stack.nobs = stack.loaded_ok.sum(axis=0, dtype=np.int32)
        nobs = stack.nobs[rows, cols]
    valid = nobs > 0
    times = [stack.slices[t][0] for t in mine]
    extra_meta.update(
        {
            "n_dates": len(mine),
            "dates": sorted({str(np.datetime_as_string(t, unit="D")) for t in times}),
            "valid_fraction": float(valid.mean()),
            "valid_obs_mean": float(nobs.mean()),
            "harmonization": harmonization(stack, items),
        }
    )
    return data, valid, extra_meta


def harmonization(stack: SceneStack, items) -> list[dict[str, Any]]:
    """Per signature group holding some of ``items``: its items and per-band scale / offset /
    nodata (groups in order of their first item)."""
    group_of = {i: gi for _, gi, ids in stack.slices for i in ids}
    out: dict[int, dict[str, Any]] = {}
    for it in items:
        gi = group_of.get(it.id)
        if gi is None:
            continue
        if gi not in out:
            out[gi] = {
                "items": [],
                "bands": {
                    b: {
                        "scale": s,
                        "offset": o,
                        "nodata": nd if nd is None or not math.isnan(nd) else "nan",
                    }
                    for b, (s, o, nd) in zip(stack.band_list, stack.sigs[gi])
                },
                "unit_factor": UNIT_FACTOR[stack.spec.modality],
            }
        out[gi]["items"].append(it.id)
    return list(out.values())
