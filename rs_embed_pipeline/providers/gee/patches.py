"""Patches out of answers: the tiles cut from one computePixels answer, each patch's metadata,
the scene variant of a tile, one patch per asked row (duplicates) and the tile counters.

A mixin of :class:`GEEProvider` (why mixins: ``auth.py``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from collections.abc import Iterator, Mapping

import numpy as np

from ..base import Patch, Tile
from .expressions import FetchRun, Sensor
from .request_blocks import RequestBlock
from . import scenes
from .auth import EarthEngineAuth
from .npy import tile_arrays

log = logging.getLogger("rs_embed_pipeline.providers.gee")  # one logger for the package


class PatchAssembly(EarthEngineAuth):
    """Patches and their metadata; counted once yielded."""

    def _cut(self, run: FetchRun, block: RequestBlock, pixels: np.ndarray,
             info: Mapping[str, dict[str, Any]], request: dict[str, Any]) -> list[Patch]:
        """The block's tiles out of one answer: ok, or no_data where every pixel is masked."""
        out: list[Patch] = []
        s = block.size
        for tile, c, r in block.cells:
            data, valid = tile_arrays(pixels, run.sensor.bands, slice(r * s, (r + 1) * s),
                                       slice(c * s, (c + 1) * s))
            if not valid.any():
                out.append(self._patch(run, tile, "no_data", info[tile.tile_id], request=request,
                                       reason="every pixel is masked in the composite"))
            else:
                out.append(self._patch(run, tile, "ok", info[tile.tile_id], data=data, valid=valid,
                                       request=request))
        return out

    @staticmethod
    def _choose_variant(sensor: Sensor, lists: list[list[str]]) -> tuple[str, list[str], bool]:
        """(variant, scene ids, iw relaxed) from the scene query lists of one tile."""
        if sensor.modality == "s2":
            ids = lists[0] if lists else []
            return ("ok" if ids else "none"), ids, False
        if not sensor.require_iw:
            ids = lists[0] if lists else []
            return ("any" if ids else "none"), ids, False
        iw_ids = lists[0] if lists else []
        if iw_ids:
            return "iw", iw_ids, False
        if sensor.relax_iw_on_empty and len(lists) > 1 and lists[1]:
            return "any", lists[1], True
        return "none", [], False

    def _patch(self, run: FetchRun, tile: Tile, status: str, info: dict[str, Any] | None, *,
               data: np.ndarray | None = None, valid: np.ndarray | None = None,
               request: dict | None = None, reason: str | None = None) -> Patch:
        s = run.sensor
        meta: dict[str, Any] = {
            "provider": self.name,
            "modality": s.modality,
            "collection": s.collection,
            "bands": list(s.bands),
            "composite": s.composite,
            "composite_rule": s.composite_description(),
            "start": run.start,
            "end": run.end,
            "crs": tile.crs,
            "transform": tile.transform,
            "size_px": tile.size_px,
            "scale_m": tile.scale_m,
            "resampling": "none (tile's own UTM grid); Earth Engine nearest neighbour for coarser bands",
            "fill_value": s.fill_value,
            "request_dtype": s.send_dtype,
        }
        if s.modality == "s2":
            meta["cloudy_pct"] = s.cloudy_pct
            meta["clamp"] = s.clamp
        relaxed = bool(info and info.get("iw_relaxed"))
        if info is not None:
            meta["scene_ids"] = list(info["scene_ids"])
            meta["image_count"] = len(info["scene_ids"])
            meta.update(scenes.scene_count(s.collection, s.modality, run.start, run.end, info["scene_ids"]))
            if "scene_gap" in meta and run.first_gap_warning():
                gap = meta["scene_gap"]
                log.warning("tile %s: %d scene dates in %s .. %s, %d expected: %s", tile.tile_id,
                            gap["found_scenes"], run.start, run.end, gap["expected_scenes"], gap["reason"])
            meta["filters"] = s.filters(run.start, run.end,
                                        iw=(s.require_iw and not relaxed) if s.modality == "s1" else None)
        if s.modality == "s1":
            meta.update({
                "iw_relaxed": relaxed,
                "s1_iw_requested": s.require_iw,
                "s1_iw_applied": s.require_iw and not relaxed,
                "s1_relax_iw_on_empty": s.relax_iw_on_empty,
                "s1_orbit_requested": s.orbit,
                "s1_orbit_applied": s.orbit,
                "s1_collection_used": s.collection,
                "s1_db_to_linear": not s.use_float_linear,
                "use_float_linear": s.use_float_linear,
            })
        if request is not None:
            meta["request"] = dict(request)
        if reason is not None:
            meta["reason"] = self._redact(reason)
        if status == "ok" and data is not None and valid is not None:
            if s.fill_value != 0.0:  # masked pixels arrive as 0 (unmask(0)); give them the fill value
                data = np.where(valid[None], data, np.float32(s.fill_value)).astype(np.float32)
            return Patch(tile.tile_id, data, valid, "ok", meta)
        return Patch(tile.tile_id, np.zeros((len(s.bands), tile.size_px, tile.size_px), np.float32),
                     np.zeros((tile.size_px, tile.size_px), bool), status, meta)  # type: ignore[arg-type]

    def _copies(self, patch: Patch, copies: Mapping[str, int]) -> Iterator[Patch]:
        """The patch once per row that asked for its tile (counted)."""
        for k in range(copies.get(patch.tile_id, 1)):
            out = patch if k == 0 else dataclasses.replace(patch, meta=dict(patch.meta))
            self._count(out)
            yield out

    def _count(self, patch: Patch) -> None:
        self._stats.add("tiles")
        self._stats.add(f"tiles_{patch.status}")
        if patch.status == "failed":
            log.warning("GEE tile %s failed: %s", patch.tile_id, patch.meta.get("reason"))
