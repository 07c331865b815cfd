"""Request blocks: tiles packed into rectangular blocks, one computePixels request each, under
Earth Engine's size rule (pixels x sum over bands of (bytes + 1 mask byte))."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any
from collections.abc import Sequence

import numpy as np

from ..base import Tile

#: computePixels limits: 48 MiB of uncompressed data (bands' bytes + 1 mask byte per pixel),
#: 32K pixels a side.
EE_MAX_REQUEST_BYTES = 48 * 1024 * 1024


EE_MAX_GRID_PX = 32768


#: Bytes per pixel Earth Engine adds for the mask when it sizes a request.
EE_MASK_BYTES_PER_PIXEL = 1


@dataclasses.dataclass(frozen=True)
class PixelBox:
    """A pixel rectangle of one UTM lattice: upper-left (x0, y0), width x height pixels."""

    epsg: int
    scale: float
    x0: float
    y0: float
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def grid(self) -> dict[str, Any]:
        return {
            "dimensions": {"width": int(self.width), "height": int(self.height)},
            "affineTransform": {
                "scaleX": float(self.scale), "shearX": 0.0, "translateX": float(self.x0),
                "shearY": 0.0, "scaleY": -float(self.scale), "translateY": float(self.y0),
            },
            "crsCode": f"EPSG:{self.epsg}",
        }

    def bounds(self) -> list[float]:
        """[xmin, ymin, xmax, ymax] in the box's CRS."""
        return [self.x0, self.y0 - self.height * self.scale,
                self.x0 + self.width * self.scale, self.y0]

    def halves(self) -> tuple[PixelBox, PixelBox, int]:
        """Two halves along the longer axis; the axis (1: columns, 0: rows) to concatenate on."""
        if self.width >= self.height:
            w1 = self.width // 2
            return (dataclasses.replace(self, width=w1),
                    dataclasses.replace(self, x0=self.x0 + w1 * self.scale, width=self.width - w1),
                    1)
        h1 = self.height // 2
        return (dataclasses.replace(self, height=h1),
                dataclasses.replace(self, y0=self.y0 - h1 * self.scale, height=self.height - h1),
                0)


@dataclasses.dataclass(frozen=True)
class RequestBlock:
    """A full rectangle of ``nw x nh`` adjacent tiles of one lattice (one request)."""

    epsg: int
    scale: float
    size: int
    x0: float
    y0: float
    nw: int
    nh: int
    cells: tuple[tuple[Tile, int, int], ...]  # (tile, column offset, row offset) in tiles

    @property
    def tiles(self) -> list[Tile]:
        return [c[0] for c in self.cells]

    @property
    def box(self) -> PixelBox:
        return PixelBox(self.epsg, self.scale, self.x0, self.y0, self.nw * self.size, self.nh * self.size)

    def split(self) -> tuple[RequestBlock, RequestBlock]:
        """Two full rectangles along the longer side (in tiles). Needs at least 2 tiles."""
        step = self.size * self.scale
        if self.nw >= self.nh:
            k = self.nw // 2
            a = [(t, c, r) for t, c, r in self.cells if c < k]
            b = [(t, c - k, r) for t, c, r in self.cells if c >= k]
            return (dataclasses.replace(self, nw=k, cells=tuple(a)),
                    dataclasses.replace(self, x0=self.x0 + k * step, nw=self.nw - k, cells=tuple(b)))
        k = self.nh // 2
        a = [(t, c, r) for t, c, r in self.cells if r < k]
        b = [(t, c, r - k) for t, c, r in self.cells if r >= k]
        return (dataclasses.replace(self, nh=k, cells=tuple(a)),
                dataclasses.replace(self, y0=self.y0 - k * step, nh=self.nh - k, cells=tuple(b)))


def request_bytes(pixels: int, band_bytes: Sequence[int]) -> int:
    """Earth Engine's size of a computePixels request: pixels x sum over bands of (bytes of the
    band + 1 mask byte), e.g. the real error "Total request size (56623104 bytes) must be less
    than or equal to 50331648 bytes" for 48 float64 bands of 512 x 256 px (google/Xee#50)."""
    if isinstance(band_bytes, (int, np.integer)):
        raise TypeError("band_bytes is the bytes of each band sent (a sequence), not a total")
    return pixels * sum(int(b) + EE_MASK_BYTES_PER_PIXEL for b in band_bytes)


def pack_requests(
    tiles: Sequence[Tile],
    *,
    band_bytes: Sequence[int],
    max_request_bytes: int = EE_MAX_REQUEST_BYTES,
    max_tiles: int | None = None,
    max_grid_px: int = EE_MAX_GRID_PX,
) -> list[RequestBlock]:
    """Pack tiles into rectangular blocks of adjacent tiles, one computePixels request each.

    ``band_bytes``: bytes per pixel of each band sent (Earth Engine adds one mask byte per band:
    :func:`request_bytes`). Tiles of
    one (zone, scale, tile size, lattice phase) are packed greedily row by row: a block grows
    east while tiles are adjacent, then south while whole rows of the same width are present,
    under ``max_request_bytes``, ``max_tiles`` and ``max_grid_px`` a side. Blocks are always full
    rectangles (never pixels outside the asked tiles). A tile too large on its own is a block of
    one (the fetch splits its pixels).
    """
    groups: dict[tuple, list[Tile]] = defaultdict(list)
    for t in tiles:
        step = t.size_px * t.scale_m
        phase = (round((t.x0 % step) / t.scale_m, 3) % t.size_px, round((t.y0 % step) / t.scale_m, 3) % t.size_px)
        groups[(t.utm_epsg, t.scale_m, t.size_px, phase)].append(t)

    blocks: list[RequestBlock] = []
    for (epsg, scale, size, _phase), members in groups.items():
        step = size * scale
        ref_x = min(t.x0 for t in members)
        ref_y = max(t.y0 for t in members)
        cells: dict[tuple[int, int], Tile] = {}
        overflow: list[Tile] = []  # another tile id at an occupied place: packed separately
        for t in members:
            cell = (int(round((t.x0 - ref_x) / step)), int(round((ref_y - t.y0) / step)))
            if cell in cells:
                overflow.append(t)
            else:
                cells[cell] = t
        tile_bytes = request_bytes(size * size, band_bytes)
        cap = max(1, max_request_bytes // tile_bytes)
        if max_tiles is not None:
            cap = max(1, min(cap, int(max_tiles)))
        max_side = max(1, max_grid_px // size)
        taken: set[tuple[int, int]] = set()
        for (ci, cj) in sorted(cells, key=lambda c: (c[1], c[0])):
            if (ci, cj) in taken:
                continue
            run = 1
            while (run < min(cap, max_side) and (ci + run, cj) in cells
                   and (ci + run, cj) not in taken):
                run += 1
            # the widest-fullest rectangle from here: e.g. 4 x 4 = 16 tiles rather than 7 x 2 = 14
            # in a 7-wide region when 16 fit in a request
            w, h = 1, 1
            for ww in range(1, run + 1):
                hh = 1
                while (hh < max_side and (hh + 1) * ww <= cap
                       and all((ci + k, cj + hh) in cells and (ci + k, cj + hh) not in taken
                               for k in range(ww))):
                    hh += 1
                if ww * hh >= w * h:
                    w, h = ww, hh
            block_cells = []
            for dj in range(h):
                for di in range(w):
                    taken.add((ci + di, cj + dj))
                    block_cells.append((cells[(ci + di, cj + dj)], di, dj))
            first = cells[(ci, cj)]
            blocks.append(RequestBlock(epsg, scale, size, first.x0, first.y0, w, h, tuple(block_cells)))
        if overflow:
            blocks.extend(pack_requests(overflow, band_bytes=band_bytes, max_request_bytes=max_request_bytes,
                                        max_tiles=max_tiles, max_grid_px=max_grid_px))
    return blocks
