"""Sharded vs chunked cubes on the same data, and what a mosaic bbox read costs.

    .venv/bin/python benchmarks/bench_cube_layout.py                 # 2 cells of 20 km, TerraFM-B shapes
    .venv/bin/python benchmarks/bench_cube_layout.py --cells 4 --cell-km 20

A split build of ``--cells`` cells (``--cell-km`` km, zone 32N) of 224 px / 10 m tiles with
TerraFM-B's outputs (feature maps 768 x 14 x 14 float32, pooled 768; random normal values, which
compress about as badly as random-weight embeddings), written with the pipeline's cube writer in
the ``chunked`` layout (the baseline: one object per tile per window) and the ``sharded`` one. Two
windows per cell; window 1 is measured (the groups exist: the common case). Per layout: objects
and store requests per window per cell (the local store's calls, counted: each is one request on
S3), bytes written, write seconds and MB/s of float32 payload; reading a whole window through
``open_mosaic`` (MB/s) and one tile's feature map (store reads and bytes); and a bbox of one tile's
size through ``open_mosaic``: bytes read against the bytes of the cells asked for. Ratios are
against the chunked layout in the same run. The machine is shared and noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import Transformer
from zarr.storage import LocalStore

from rs_embed_pipeline.core.grid import Cell, tile_id
from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, open_cube, open_mosaic, write_cube_window

EPSG, SIZE, SCALE = 32632, 224, 10.0
SIDE = SIZE * SCALE
D, CELLS_PER_TILE = 768, 14
STARTS = ["2024-01-01", "2024-04-01"]
I0, J0 = 20, 255      # first cell (20 km): 400 km E, 5100 km N (western Alps)


class Calls:
    """Counts LocalStore requests (and bytes) while installed."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.keys: set[str] = set()
        self._orig = {n: getattr(LocalStore, n) for n in ("set", "get", "delete", "get_partial_values")}

    def __enter__(self) -> Calls:
        calls = self

        async def set_(store: LocalStore, key: str, value: Any) -> None:
            calls.count["put"] += 1
            calls.bytes["put"] += len(value)
            calls.keys.add(f"{store.root}/{key}")
            await calls._orig["set"](store, key, value)

        async def get(store: LocalStore, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            out = await calls._orig["get"](store, key, prototype, byte_range)
            calls.count["get"] += 1
            calls.bytes["get"] += 0 if out is None else len(out)
            return out

        async def delete(store: LocalStore, key: str) -> None:
            calls.count["delete"] += 1
            await calls._orig["delete"](store, key)

        async def partial(store: LocalStore, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            out = await calls._orig["get_partial_values"](store, prototype, key_ranges)
            calls.count["get"] += len(key_ranges)
            calls.bytes["get"] += sum(0 if b is None else len(b) for b in out)
            return out

        for name, fn in (("set", set_), ("get", get), ("delete", delete), ("get_partial_values", partial)):
            setattr(LocalStore, name, fn)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._orig.items():
            setattr(LocalStore, name, fn)


def cell_tiles(i: int, j: int) -> list[dict[str, Any]]:
    (c_lo, c_hi), (r_lo, r_hi) = Cell(EPSG, ARGS.cell_km, i, j).tile_block(SIDE)
    return [{"tile_id": tile_id(EPSG, SIZE, SCALE, c, r), "utm_epsg": EPSG, "x0": c * SIDE, "y0": r * SIDE,
             "size_px": SIZE, "scale_m": SCALE} for c in range(c_lo, c_hi + 1) for r in range(r_lo, r_hi + 1)]


def grids(tids: list[str], window: int) -> np.ndarray:
    rng = np.random.default_rng([window, len(tids), zlib.crc32(tids[0].encode())])
    return rng.standard_normal((len(tids), D, CELLS_PER_TILE, CELLS_PER_TILE), dtype=np.float32)


def write(root: Path, layout: str, cells: list[tuple[int, int]], window: int) -> None:
    for i, j in cells:
        tiles = cell_tiles(i, j)
        pooled = {str(t["tile_id"]): np.full(D, window, np.float32) for t in tiles}
        write_cube_window(str(root / f"bench-{Cell(EPSG, ARGS.cell_km, i, j).cell_id}.zarr"), CubeWindowWrite(
            tiles=tiles, pooled=pooled, reader=CallableGrids(read=lambda ids, w=window: grids(list(ids), w)),
            window_index=window, window_starts=STARTS, attrs={"title": "bench"}, layout=layout))


def measure(root: Path, layout: str, cells: list[tuple[int, int]]) -> dict[str, float]:
    out: dict[str, float] = {}
    write(root, layout, cells, 0)
    with Calls() as calls:
        t0 = time.perf_counter()
        write(root, layout, cells, 1)
        out["write_s"] = time.perf_counter() - t0
    n_tiles = sum(len(cell_tiles(i, j)) for i, j in cells)
    payload = n_tiles * D * CELLS_PER_TILE**2 * 4
    data = {k for k in calls.keys if "/embedding/c/1/" in k}
    out.update(tiles_per_cell=n_tiles / len(cells), payload_mb=payload / 1e6,
               objects_per_cell=len(data) / len(cells),
               requests_per_cell=sum(calls.count.values()) / len(cells),
               puts_per_cell=calls.count["put"] / len(cells), gets_per_cell=calls.count["get"] / len(cells),
               written_mb=calls.bytes["put"] / 1e6, write_mb_s=payload / 1e6 / out["write_s"])
    t0 = time.perf_counter()
    whole = open_mosaic(str(root), windows=STARTS[1])["embedding"].values
    out["read_s"] = time.perf_counter() - t0
    out["read_mb_s"] = whole.nbytes / 1e6 / out["read_s"]
    cube = open_cube(str(next(root.glob("*.zarr"))))
    with Calls() as calls:
        one = cube["embedding"].isel(time=1, y=slice(0, CELLS_PER_TILE), x=slice(0, CELLS_PER_TILE)).values
    out.update(tile_read_requests=calls.count["get"], tile_read_kb=calls.bytes["get"] / 1e3)
    # A bbox of one tile's size around the middle of the first cell, through the mosaic.
    xmin, ymin, xmax, ymax = Cell(EPSG, ARGS.cell_km, *cells[0]).bounds
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    lo, hi = to_ll.transform(cx - SIDE / 4, cy - SIDE / 4), to_ll.transform(cx + SIDE / 4, cy + SIDE / 4)
    ds = open_mosaic(str(root), bbox=(lo[0], lo[1], hi[0], hi[1]), windows=STARTS[1])
    with Calls() as calls:
        area = ds["embedding"].values
    out.update(bbox_cells=area.shape[1] * area.shape[2], bbox_area_kb=area.nbytes / 1e3,
               bbox_read_kb=calls.bytes["get"] / 1e3, bbox_read_requests=calls.count["get"])
    assert np.isfinite(one).all() and np.isfinite(area).all()
    return out


def main() -> None:
    cells = [(I0 + k % 2, J0 + k // 2) for k in range(ARGS.cells)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()} (shared, noisy)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_cube_layout_", dir=ARGS.tmp) as tmp:
        for layout in ("chunked", "sharded"):
            results[layout] = measure(Path(tmp) / layout, layout, cells)
    base = results["chunked"]
    print(f"{ARGS.cells} cells of {ARGS.cell_km} km, {base['tiles_per_cell']:.0f} tiles each "
          f"({SIZE} px, {SCALE:g} m; feature maps {D} x {CELLS_PER_TILE} x {CELLS_PER_TILE} float32), "
          f"window payload {base['payload_mb']:.0f} MB; window 1 measured")
    keys = ["objects_per_cell", "requests_per_cell", "puts_per_cell", "gets_per_cell", "written_mb", "write_s",
            "write_mb_s", "read_s", "read_mb_s", "tile_read_requests", "tile_read_kb", "bbox_cells", "bbox_area_kb",
            "bbox_read_kb", "bbox_read_requests"]
    print(f"{'':22s} {'chunked':>10s} {'sharded':>10s} {'ratio':>7s}")
    for k in keys:
        a, b = base[k], results["sharded"][k]
        print(f"{k:22s} {a:10.1f} {b:10.1f} {b / a if a else float('nan'):7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=2)
    parser.add_argument("--cell-km", type=int, default=20)
    parser.add_argument("--tmp", default=None, help="folder for the temporary cubes (default: the system's)")
    ARGS = parser.parse_args()
    main()
