"""Write cube windows from a process of its own, many times (tests only: test_cube_concurrency.py).

    python -m rs_embed_pipeline_tests.pipeline.cube_hammer CUBE_URI WINDOWS REPEATS GO_FILE [OPTIONS_JSON]

Waits until ``GO_FILE`` exists (so that the writers start together), then writes each window of
``WINDOWS`` (comma-separated indices) ``REPEATS`` times with :func:`write_window`. The values of a
window are a function of its index only, so any number of writers give the same cube.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from rs_embed_pipeline.core.grid import tile_id
from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, CubeWindowWritten, write_cube_window

# A 3 x 3 block of 224 px tiles; monthly windows from 2024 (enough to grow the axis several times).
WINDOW_STARTS = [f"{y}-{m:02d}-01" for y in range(2024, 2034) for m in range(1, 13)]
IN_RANGE = 4


def tiles(n: int = 3, size: int = 224, scale: float = 10.0) -> list[dict]:
    side = size * scale
    return [{"tile_id": tile_id(32632, size, scale, 140 + c, 2300 + r), "utm_epsg": 32632,
             "x0": (140 + c) * side, "y0": (2300 + r) * side, "size_px": size, "scale_m": scale}
            for c in range(n) for r in range(n)]


def window_values(window: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(window)
    ts = tiles()
    missing = ts[window % len(ts)]["tile_id"]  # one tile without an embedding per window
    pooled = {t["tile_id"]: rng.standard_normal(8).astype(np.float32) for t in ts if t["tile_id"] != missing}
    grids = {t["tile_id"]: rng.standard_normal((6, 4, 4)).astype(np.float32) for t in ts}
    return pooled, grids


def write_window(uri: str, window: int, storage_options: dict | None = None) -> CubeWindowWritten:
    pooled, grids = window_values(window)
    return write_cube_window(uri, CubeWindowWrite(
        tiles=tiles(), pooled=pooled, reader=CallableGrids(grids=grids.__getitem__), window_index=window,
        window_starts=WINDOW_STARTS, windows_in_range=IN_RANGE, attrs={"title": "hammer"}, fingerprint="hammer-v1",
        provenance={"window": window}, storage_options=storage_options, grid_shape=(6, 4, 4), pooled_dim=8))


def main() -> None:
    uri, windows, repeats, go = sys.argv[1], [int(w) for w in sys.argv[2].split(",")], int(sys.argv[3]), Path(sys.argv[4])
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(repeats):
        for window in windows:
            write_window(uri, window, options)


if __name__ == "__main__":
    main()
