"""The Earth Engine calls of a fetch: scene queries (the partition's list, or one per block) and
computePixels requests (through the direct REST client or the ee client), decoded.

A mixin of :class:`GEEProvider` (why mixins: ``auth.py``)."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from ..base import Tile
from .client import ComputePixelsClient, RequestFailed, SplitNeeded, import_ee
from .expressions import FetchRun
from .request_blocks import PixelBox
from . import scenes  # scenes.MAX_ROWS_PER_CHUNK read at call time (tests lower it)
from .scenes import Chunk, FootprintError, chunk_tiles, scene_lists
from .npy import read_npy
from .retries import RequestRetries, Tries

log = logging.getLogger("rs_embed_pipeline.providers.gee")  # one logger for the package


class EarthEngineCalls(RequestRetries):
    """Scene queries and pixel requests, each one try (:meth:`_attempt`) or tried until done."""

    def _scene_ids(self, run: FetchRun, tiles: Sequence[Tile], tries: Tries) -> list[list[list[str]]]:
        """One try of the per-block scene query (``scene_query="block"``); raises as :meth:`_attempt`."""
        ee = run.ee
        expr = run.scene_query(tiles)
        result = self._attempt("value", lambda: ee.data.computeValue(expr), tries)
        self._stats.add("value_bytes", len(json.dumps(result, default=str)))
        if not isinstance(result, list) or len(result) != len(tiles):
            raise RequestFailed(f"unexpected scene query answer ({type(result).__name__})")
        return [[[str(i) for i in (ids or [])] for ids in per_tile] for per_tile in result]

    def _list_scenes(self, run: FetchRun, tiles: Sequence[Tile]) -> dict[str, list[list[str]]] | None:
        """Each tile's scene lists (as ``_scene_ids``) from one list query of the whole area;
        None when a footprint cannot be intersected here (the caller queries per block).

        A group of chunks answered "too large" / "memory" is asked for again as two halves (two
        requests); a chunk with more than ``scenes.MAX_ROWS_PER_CHUNK`` rows is split in two chunks.
        Raises RequestFailed when the list cannot be had."""
        ee = run.ee
        out: dict[str, list[list[str]]] = {}
        pending: list[list[Chunk]] = [chunk_tiles(tiles)]
        while pending:
            group = pending.pop()
            try:
                answer = self._call("value", functools.partial(ee.data.computeValue,
                                                               run.scene_list_query(group)))
            except SplitNeeded as exc:
                if len(group) > 1:
                    pending += [group[: len(group) // 2], group[len(group) // 2:]]
                elif len(group[0].tiles) > 1:
                    pending += [[half] for half in group[0].halves()]
                else:
                    raise RequestFailed(f"scene list failed: {exc}") from None
                self._stats.add("splits")
                continue
            self._stats.add("value_bytes", len(json.dumps(answer, default=str)))
            if not isinstance(answer, list) or len(answer) != len(group):
                raise RequestFailed(f"unexpected scene list answer ({type(answer).__name__})")
            for chunk, per_collection in zip(group, answer):
                if any(len(rows or []) > scenes.MAX_ROWS_PER_CHUNK for rows in per_collection):
                    if len(chunk.tiles) < 2:
                        raise RequestFailed(f"more than {scenes.MAX_ROWS_PER_CHUNK} scenes for one tile")
                    self._stats.add("splits")
                    pending.append(list(chunk.halves()))
                    continue
                try:
                    out.update(scene_lists(chunk, [rows or [] for rows in per_collection]))
                except FootprintError as exc:
                    log.warning("GEE scene list: %s; querying scenes per request block", exc)
                    return None
        return out

    def _pixels_call(self, run: FetchRun, box: PixelBox, variant: str) -> Callable[[], Any]:
        """The computePixels call of one box, built once (its retries reuse it)."""
        ee = run.ee
        params: dict[str, Any] = {
            "expression": run.pixel_image(box, variant),
            "fileFormat": "NPY",
            "grid": box.grid(),
        }
        if self.workload_tag:
            params["workloadTag"] = self.workload_tag
        if self.pixel_transport == "rest":
            # the same REST call, serialized once here, answered into one buffer (client.py)
            params["expression"] = ee.serializer.encode(params["expression"])
            return functools.partial(self._pixels_client().compute_pixels, params, run.buffers)
        return lambda: ee.data.computePixels(params)

    def _request_pixels(self, run: FetchRun, box: PixelBox, call: Callable[[], Any],
                        tries: Tries) -> tuple[np.ndarray, Any]:
        """One try of a box's computePixels, decoded (a view of the answer), and the answer
        (``run.buffers.give`` it once no array views it); raises as :meth:`_attempt`."""
        raw = self._attempt("pixel", call, tries)
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise RequestFailed(f"computePixels returned {type(raw).__name__}, expected NPY bytes")
        self._stats.add("bytes", len(raw))
        self._stats.add("pixel_bytes", len(raw))
        return read_npy(raw, run.sensor.bands, box.height, box.width), raw

    def _pixels_client(self) -> ComputePixelsClient:
        """The direct computePixels client, made once (the ee client is initialised by then)."""
        with self._init_lock:
            if self._rest is None:
                creds = self._credentials
                if getattr(creds, "quota_project_id", None):  # as the ee client: the header names it
                    creds = creds.with_quota_project(None)
                if self._auth_kind == "anonymous":
                    creds = None
                version = getattr(import_ee(), "__version__", "")
                self._rest = ComputePixelsClient(self.endpoint, str(self.project), creds,
                                                 self.request_timeout_s, self.max_concurrent_requests,
                                                 client_version=f"ee-py/{version} rs-embed-pipeline")
            return self._rest
