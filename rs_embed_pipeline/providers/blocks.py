"""Spatial blocks: adjacent tiles of one pixel lattice read together, tiles cut out of the block.

A fetch groups its tiles by pixel lattice (UTM EPSG, ``scale_m`` and the sub-pixel phase of the
corners, so that every tile of a block starts on a whole block pixel) and, within a lattice,
into blocks of at most ``max_block_px`` pixels a side plus one tile: a block holds the tiles whose
upper-left corner falls in one ``max_block_px`` cell of that lattice (cells anchored at the
group's upper-left corner) and spans their bounding box. Providers read each scene band once per
block, composite once per block and cut every tile, of every size, out of that one array, so one
fetch reads each scene pixel once whatever the models' tile sizes are (up to the overlap of
neighbouring blocks: at most one tile width along a cell edge). Memory is bounded by the block,
not by the region.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from collections.abc import Sequence

from rs_embed_pipeline.core.grid import Tile

__all__ = ["Block", "DEFAULT_MAX_BLOCK_PX", "group_blocks"]

DEFAULT_MAX_BLOCK_PX = 1024


@dataclasses.dataclass(frozen=True)
class Block:
    """``width x height`` pixels of ``scale_m`` in ``EPSG:epsg`` with upper-left corner
    ``(x0, y0)``; ``tiles`` are the tiles cut out of it."""

    epsg: int
    scale_m: float
    x0: float
    y0: float
    width: int
    height: int
    tiles: tuple[Tile, ...]

    def box(self, tile: Tile) -> tuple[slice, slice]:
        """Row and column slices of ``tile``'s pixel box inside the block."""
        c = int(round((tile.x0 - self.x0) / self.scale_m))
        r = int(round((self.y0 - tile.y0) / self.scale_m))
        return slice(r, r + tile.size_px), slice(c, c + tile.size_px)

    def geobox(self):
        from affine import Affine  # noqa: PLC0415 - odc-geo's stack (affine, pyproj) only for the odc-stac load path
        from odc.geo.geobox import GeoBox  # noqa: PLC0415 - odc-geo: only for the odc-stac load path

        return GeoBox(
            (self.height, self.width),
            Affine(self.scale_m, 0.0, self.x0, 0.0, -self.scale_m, self.y0),
            f"EPSG:{self.epsg}",
        )

    def describe(self) -> dict[str, Any]:
        return {
            "crs": f"EPSG:{self.epsg}",
            "transform": [self.scale_m, 0.0, self.x0, 0.0, -self.scale_m, self.y0],
            "shape": [self.height, self.width],
            "tiles": len(self.tiles),
        }


def _phase(v: float, scale: float) -> float:
    """Sub-pixel phase of a coordinate on a lattice of ``scale`` (rounded against float noise)."""
    p = round(math.fmod(v, scale), 6)
    return 0.0 if p in (0.0, round(scale, 6), -0.0) else (p + scale if p < 0 else p)


def group_blocks(tiles: Sequence[Tile], max_block_px: int = DEFAULT_MAX_BLOCK_PX) -> list[Block]:
    """Blocks covering ``tiles``; every tile is in exactly one block. Deterministic: same tiles,
    same blocks (ordered by lattice, then row, then column)."""
    if max_block_px < 1:
        raise ValueError(f"max_block_px must be >= 1, got {max_block_px}")
    lattices: dict[tuple, list[Tile]] = {}
    for t in tiles:
        key = (int(t.utm_epsg), float(t.scale_m), _phase(t.x0, t.scale_m), _phase(t.y0, t.scale_m))
        lattices.setdefault(key, []).append(t)
    blocks: list[Block] = []
    for (epsg, scale, _, _), group in sorted(lattices.items(), key=lambda kv: kv[0]):
        gx0 = min(t.x0 for t in group)
        gy0 = max(t.y0 for t in group)
        cells: dict[tuple[int, int], list[Tile]] = {}
        for t in group:
            col = int(round((t.x0 - gx0) / scale)) // max_block_px
            row = int(round((gy0 - t.y0) / scale)) // max_block_px
            cells.setdefault((row, col), []).append(t)
        for _, members in sorted(cells.items()):
            bx0 = min(t.x0 for t in members)
            by0 = max(t.y0 for t in members)
            w = max(int(round((t.x0 - bx0) / scale)) + t.size_px for t in members)
            h = max(int(round((by0 - t.y0) / scale)) + t.size_px for t in members)
            blocks.append(Block(epsg, scale, bx0, by0, w, h, tuple(members)))
    return blocks
