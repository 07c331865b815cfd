"""Cubes of a split region for the mosaic and sharding tests: one cube per 1 km cell of a UTM
zone's lattice (core.grid.Cell), 320 m tiles, written by the real cube writer."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rs_embed_pipeline.core.grid import Cell, tile_id
from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window

SIZE, SCALE = 32, 10.0
SIDE = SIZE * SCALE              # 320 m tiles
D, D_GRID, GH, GW = 4, 3, 2, 2   # pooled [4], feature maps [3, 2, 2]: 160 m cells
STARTS = ["2024-01-01", "2024-04-01", "2024-07-01"]
REGION = "demo"
# Four cells of zone 32N (2 x 2 km) and one of zone 33N; (epsg, i, j) of 1 km cells.
CELLS = [(32632, 100, 160), (32632, 101, 160), (32632, 100, 161), (32632, 101, 161), (32633, 100, 160)]


def cell_tiles(epsg: int, i: int, j: int) -> list[dict[str, Any]]:
    """The tile_grid rows of a cell: the lattice tiles whose centre lies in it."""
    (c_lo, c_hi), (r_lo, r_hi) = Cell(epsg, 1, i, j).tile_block(SIDE)
    return [{"tile_id": tile_id(epsg, SIZE, SCALE, c, r), "utm_epsg": epsg, "x0": c * SIDE, "y0": r * SIDE,
             "size_px": SIZE, "scale_m": SCALE} for c in range(c_lo, c_hi + 1) for r in range(r_lo, r_hi + 1)]


def cell_name(epsg: int, i: int, j: int) -> str:
    return f"{REGION}-{Cell(epsg, 1, i, j).cell_id}"


def values(tid: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile's (pooled [D], grid [D', h, w]) in a window: a function of both only."""
    rng = np.random.default_rng(int(hashlib.sha256(f"{tid}|{window}".encode()).hexdigest()[:8], 16))
    return rng.standard_normal(D).astype(np.float32), rng.standard_normal((D_GRID, GH, GW)).astype(np.float32)


def missing(tiles: Sequence[dict[str, Any]]) -> str:
    """The tile of a cell without an embedding in every window."""
    return str(tiles[1]["tile_id"])


def write_cell(root: Path, epsg: int, i: int, j: int, window: int, **options: Any) -> str:
    """Write one window of one cell's cube under ``root``; returns its URI."""
    tiles = cell_tiles(epsg, i, j)
    gone = missing(tiles)
    pooled = {str(t["tile_id"]): values(str(t["tile_id"]), window)[0] for t in tiles if t["tile_id"] != gone}
    uri = str(root / f"{cell_name(epsg, i, j)}.zarr")
    write_cube_window(uri, CubeWindowWrite(
        tiles=tiles, pooled=pooled, reader=CallableGrids(grids=lambda tid: values(tid, window)[1]),
        window_index=window, window_starts=STARTS, attrs={"title": "cells", "model_id": "tiny",
                                                          "region": cell_name(epsg, i, j)},
        grid_shape=(D_GRID, GH, GW), pooled_dim=D, **options))
    return uri


def write_build(root: Path, **options: Any) -> dict[str, str]:
    """Every cell with windows 0 and 1, except the last 32N cell (window 0 only): ``{name: uri}``."""
    out = {}
    for n, (epsg, i, j) in enumerate(CELLS):
        for window in ((0,) if n == 3 else (0, 1)):
            out[cell_name(epsg, i, j)] = write_cell(root, epsg, i, j, window, **options)
    return out
