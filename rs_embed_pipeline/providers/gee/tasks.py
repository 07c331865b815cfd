"""The task graph of one fetch, run by the work queue (``scheduler.py``): a block's scene lists,
then its pixel requests, split in halves while too large; one tile's request split in pixel
pieces, stitched when both halves are here. Each task makes at most one request.

A mixin of :class:`GEEProvider` (why mixins: ``auth.py``)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import defaultdict
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..base import Patch, Tile
from .client import RequestFailed, SplitNeeded
from .expressions import FetchRun
from .request_blocks import EE_MAX_GRID_PX, PixelBox, RequestBlock, pack_requests, request_bytes
from .scheduler import Context, RequestScheduler, Task
from .calls import EarthEngineCalls
from .patches import PatchAssembly
from .retries import Retry, Tries

log = logging.getLogger("rs_embed_pipeline.providers.gee")  # one logger for the package


MAX_PIXEL_SPLIT_DEPTH = 10  # pixel halvings of one tile's request at most


@dataclasses.dataclass(eq=False)
class Piece:
    """A pixel box of one tile's request; ``parts``: its halves' (pixels, splits) once asked."""

    box: PixelBox
    depth: int
    parent: Piece | None
    index: int  # 0: the first half of the parent, 1: the second
    axis: int = 0
    parts: list[tuple[np.ndarray, int] | None] = dataclasses.field(default_factory=lambda: [None, None])


@dataclasses.dataclass(eq=False)
class TileJob:
    """One tile whose request may be split in pixel halves: answered once (``finished``)."""

    block: RequestBlock
    variant: str
    info: dict[str, Any]
    finished: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class FetchTasks(EarthEngineCalls, PatchAssembly):
    """The tasks of one fetch and their run on the scheduler (:meth:`_run_blocks`)."""

    def _run_blocks(self, run: FetchRun, blocks: list[RequestBlock], copies: Mapping[str, int],
                    listed: Mapping[str, list[list[str]]] | None = None) -> Iterator[Patch]:
        """The blocks' tasks on the scheduler (``scheduler.py``): twice as many threads as slots
        (a free slot finds a thread while others decode), at most twice as many blocks open as
        slots (the bound on what waits for the consumer)."""
        slots = self.max_concurrent_requests
        sched = RequestScheduler(workers=2 * slots, max_open=2 * slots, clock=self._clock,
                                 sleep=self._sleep)
        answered: set[str] = set()
        for patch in sched.run(self._root_task(run, b, listed) for b in blocks):
            answered.add(patch.tile_id)
            yield from self._copies(patch, copies)
        for block in blocks:  # a safety net: every tile is answered once, whatever happened
            for tile in block.tiles:
                if tile.tile_id not in answered:
                    yield from self._copies(self._patch(run, tile, "failed", None,
                                                        reason="no answer (internal error)"), copies)

    # ---- the tasks of one fetch (scheduler.py runs them; each makes at most one request) -------

    def _guarded(self, fail: Callable[[str], None], n_tiles: int, body: Callable[[], None]) -> None:
        """``body``; a RequestFailed fails its tiles with its text, anything else (a bug, an
        unexpected answer) with the redacted error: these tiles, not the run."""
        try:
            body()
        except RequestFailed as exc:
            fail(str(exc))
        except Exception as exc:
            reason = self._redact(f"{type(exc).__name__}: {exc}")
            log.warning("GEE request of %d tile(s) failed: %s", n_tiles, reason)
            fail(reason)

    def _failed(self, ctx: Context, run: FetchRun, tiles: Sequence[Tile],
                info: Mapping[str, dict[str, Any]] | None = None) -> Callable[[str], None]:
        """Emits ``tiles`` as failed with a reason (their scene lists when ``info`` has them)."""
        return lambda reason: ctx.emit([self._patch(run, t, "failed", info[t.tile_id] if info else None,
                                                    reason=reason) for t in tiles])

    def _root_task(self, run: FetchRun, block: RequestBlock,
                   listed: Mapping[str, list[list[str]]] | None) -> Task:
        """A packed block: its tiles' scene lists (from the partition's list, or one scene query
        of the block), then its pixel requests."""
        if listed is None:
            return self._scene_task(run, block, Tries())

        def task(ctx: Context) -> None:
            self._guarded(self._failed(ctx, run, block.tiles), len(block.cells),
                          lambda: self._plan_pixels(ctx, run, block, [listed[t.tile_id] for t in block.tiles]))
        return task

    def _scene_task(self, run: FetchRun, block: RequestBlock, tries: Tries) -> Task:
        def task(ctx: Context) -> None:
            def body() -> None:
                try:
                    ids = self._scene_ids(run, block.tiles, tries)
                except Retry as retry:
                    ctx.later(self._scene_task(run, block, tries), retry.delay)
                    return
                except SplitNeeded as exc:
                    if len(block.cells) < 2:
                        raise RequestFailed(f"scene query failed: {exc}") from None
                    self._stats.add("splits")
                    for half in block.split():
                        ctx.submit(self._scene_task(run, half, Tries()))
                    return
                self._plan_pixels(ctx, run, block, ids)
            self._guarded(self._failed(ctx, run, block.tiles), len(block.cells), body)
        return task

    def _plan_pixels(self, ctx: Context, run: FetchRun, block: RequestBlock,
                     ids: Sequence[list[list[str]]]) -> None:
        """Tiles without images are no_data; the others go into one pixel task per packed
        request of each variant (S1: with / without the IW filter)."""
        sensor = run.sensor
        variants: dict[str, list[Tile]] = defaultdict(list)
        info: dict[str, dict[str, Any]] = {}
        for tile, lists in zip(block.tiles, ids):
            variant, scene_ids, relaxed = self._choose_variant(sensor, lists)
            info[tile.tile_id] = {"scene_ids": scene_ids, "iw_relaxed": relaxed, "variant": variant}
            variants[variant].append(tile)
        no_data = [self._patch(run, tile, "no_data", info[tile.tile_id],
                               reason="no image matches the filters for this tile and time window")
                   for tile in variants.pop("none", [])]
        tasks = [self._pixels_task(run, sub, variant, info)
                 for variant, vtiles in variants.items()
                 for sub in pack_requests(vtiles, band_bytes=sensor.band_bytes,
                                          max_request_bytes=self.max_request_bytes, max_tiles=run.max_tiles)]
        if no_data:
            ctx.emit(no_data)
        for t in tasks:
            ctx.submit(t)

    def _pixels_task(self, run: FetchRun, block: RequestBlock, variant: str,
                     info: Mapping[str, dict[str, Any]], tries: Tries | None = None,
                     call: Callable[[], Any] | None = None) -> Task:
        """One computePixels request of a block of tiles; too large: two tasks (the halves, in
        two slots); one tile: :meth:`_piece_task`."""
        def task(ctx: Context) -> None:
            def body() -> None:
                n = len(block.cells)
                if n == 1:
                    job = TileJob(block, variant, info[block.tiles[0].tile_id])
                    self._piece_task(run, job, Piece(block.box, 0, None, 0))(ctx)
                    return
                split_reason: str | None = None
                if request_bytes(block.box.pixels, run.sensor.band_bytes) > self.max_request_bytes:
                    split_reason = "over the size limit"
                else:
                    c = call or self._pixels_call(run, block.box, variant)
                    t = tries or Tries()
                    try:
                        pixels, raw = self._request_pixels(run, block.box, c, t)
                    except Retry as retry:
                        ctx.later(self._pixels_task(run, block, variant, info, t, c), retry.delay)
                        return
                    except SplitNeeded as exc:
                        split_reason = str(exc)
                    except RequestFailed as exc:
                        self._failed(ctx, run, block.tiles, info)(str(exc))
                        return
                    else:
                        patches = self._cut(run, block, pixels, info, {"tiles_in_request": n, "pixel_splits": 0})
                        del pixels  # the patches hold copies: the answer's buffer is free
                        run.buffers.give(raw)
                        ctx.emit(patches)
                        return
                self._stats.add("splits")
                log.debug("splitting a %d-tile request: %s", n, split_reason)
                for half in block.split():
                    ctx.submit(self._pixels_task(run, half, variant, info))
            self._guarded(self._failed(ctx, run, block.tiles), len(block.cells), body)
        return task

    def _piece_task(self, run: FetchRun, job: TileJob, piece: Piece, tries: Tries | None = None,
                    call: Callable[[], Any] | None = None) -> Task:
        """One tile's pixels, or a pixel box of it: split in halves (two tasks) while too large,
        the halves stitched when both have arrived (:meth:`_piece_done`)."""
        def task(ctx: Context) -> None:
            def body() -> None:
                if job.finished:  # another piece of this tile failed: nothing to ask for
                    return
                box = piece.box
                reason: str | None = None
                too_big = (request_bytes(box.pixels, run.sensor.band_bytes) > self.max_request_bytes
                           or max(box.width, box.height) > EE_MAX_GRID_PX)
                if not too_big:
                    c = call or self._pixels_call(run, box, job.variant)
                    t = tries or Tries()
                    try:
                        pixels, raw = self._request_pixels(run, box, c, t)
                    except Retry as retry:
                        ctx.later(self._piece_task(run, job, piece, t, c), retry.delay)
                        return
                    except SplitNeeded as exc:
                        reason = str(exc)
                    except RequestFailed as exc:
                        self._tile_failed(ctx, run, job, str(exc), job.info)
                        return
                    else:
                        self._piece_done(ctx, run, job, piece, pixels, 0)
                        if piece.parent is None:  # cut out (copies); a half waits as a view of its answer
                            del pixels
                            run.buffers.give(raw)
                        return
                if piece.depth >= MAX_PIXEL_SPLIT_DEPTH or max(box.width, box.height) < 2:
                    self._tile_failed(ctx, run, job, f"request still too large after {piece.depth} split(s): "
                                                     f"{reason or 'over the size limit'}", job.info)
                    return
                self._stats.add("splits")
                a, b, axis = box.halves()
                piece.axis = axis
                for k, half in enumerate((a, b)):
                    ctx.submit(self._piece_task(run, job, Piece(half, piece.depth + 1, piece, k)))
            self._guarded(lambda reason: self._tile_failed(ctx, run, job, reason, None), 1, body)
        return task

    def _piece_done(self, ctx: Context, run: FetchRun, job: TileJob, piece: Piece,
                    pixels: np.ndarray, splits: int) -> None:
        """A piece's pixels: joined with its sibling's once both are here, up to the tile."""
        with job.lock:
            while piece.parent is not None:
                parent = piece.parent
                parent.parts[piece.index] = (pixels, splits)
                if any(p is None for p in parent.parts):
                    return
                (pa, sa), (pb, sb) = parent.parts  # type: ignore[misc]
                pixels, splits = np.concatenate([pa, pb], axis=parent.axis), 1 + sa + sb
                parent.parts = [None, None]
                piece = parent
            if job.finished:
                return
            job.finished = True
        ctx.emit(self._cut(run, job.block, pixels, {job.block.tiles[0].tile_id: job.info},
                           {"tiles_in_request": 1, "pixel_splits": splits}))

    def _tile_failed(self, ctx: Context, run: FetchRun, job: TileJob, reason: str,
                     info: dict[str, Any] | None) -> None:
        with job.lock:
            if job.finished:
                return
            job.finished = True
        self._failed(ctx, run, job.block.tiles, {job.block.tiles[0].tile_id: info} if info else None)(reason)
