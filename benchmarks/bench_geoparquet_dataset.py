"""What DuckDB reads from the Hive-partitioned pooled GeoParquet dataset for a small bbox and one window.

    .venv/bin/python benchmarks/bench_geoparquet_dataset.py                  # 6 x 6 cells of 20 km, 4 windows
    .venv/bin/python benchmarks/bench_geoparquet_dataset.py --side 10 --geometry parquet_geometry

A split build of ``--side`` x ``--side`` cells (``--cell-km`` km, zone 32N) of 224 px / 10 m tiles
(TerraFM-B's), ``--windows`` quarterly windows, pooled 768-float vectors (random normal), written as
the GeoParquet asset writes them (``products.geoparquet``: Hilbert order, bbox covering column) into
``window_start=<start>/<cell>.parquet``, once with the product's row groups (about 64 MiB of
vectors: one per cell file here) and once with ``--small-groups`` rows per group. Three queries per
layout, each on a fresh DuckDB connection reading through a counting filesystem
(``rs_embed_pipeline_tests/products/parquet_reads.py``: files opened, row groups whose bytes were
read, bytes read): the baseline reads the whole dataset (tile_id and embedding of every row); then
the same columns for one tile's bbox in the middle of the area and one window (``window_start`` =
and the ``bbox`` covering column); then the same bbox in every window. The machine is shared and
noisy: the counts are exact, the times are not.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rs_embed_pipeline.core.grid import Cell, Tile, tile_id
from rs_embed_pipeline.products import geoparquet
from rs_embed_pipeline_tests.products.parquet_reads import Reads, bbox_query, query_reads

EPSG, SIZE, SCALE = 32632, 224, 10.0
SIDE = SIZE * SCALE
D = 768
STARTS = ["2024-01-01", "2024-04-01", "2024-07-01", "2024-10-01", "2025-01-01"]
I0, J0 = 20, 255      # first 20 km cell: 400 km E, 5100 km N (western Alps)


def cell_tiles(cell: Cell) -> list[dict[str, Any]]:
    (c_lo, c_hi), (r_lo, r_hi) = cell.tile_block(SIDE)
    return [{"tile_id": tile_id(EPSG, SIZE, SCALE, c, r), "utm_epsg": EPSG, "x0": c * SIDE, "y0": r * SIDE,
             "size_px": SIZE, "scale_m": SCALE} for c in range(c_lo, c_hi + 1) for r in range(r_lo, r_hi + 1)]


def build(root: Path, cells: list[Cell], windows: int, rows_per_group: int | None, geometry: str) -> int:
    rows = 0
    for cell in cells:
        tiles = [{**t, "geometry": Tile.from_row(t).with_footprint().footprint} for t in cell_tiles(cell)]
        for w in range(windows):
            rng = np.random.default_rng([cell.i, cell.j, w])
            vectors = {str(t["tile_id"]): rng.standard_normal(D).astype(np.float32) for t in tiles}
            table = geoparquet.pooled_table(tiles, vectors, window_start=STARTS[w], window_end=STARTS[w + 1],
                                            model_id="terrafm_b", weights_sha256="ab" * 32, modality="s2",
                                            dimensions=D)
            path = root / geoparquet.dataset_path(STARTS[w], f"bench-{cell.cell_id}")
            geoparquet.write_geoparquet(table, str(path), rows_per_group=rows_per_group,
                                        geometry=geometry)  # type: ignore[arg-type]
            rows += table.num_rows
    return rows


def timed(root: Path, sql: str, params: list[Any]) -> tuple[Reads, float]:
    t0 = time.perf_counter()
    reads = query_reads(root, sql, params)
    return reads, time.perf_counter() - t0


def row(name: str, r: Reads, seconds: float, base: Reads) -> str:
    return (f"| {name} | {len(r.rows)} | {len(r.files_opened)} / {r.files_total} | {len(r.files_with_data)} | "
            f"{len(r.row_groups_read)} / {r.row_groups_total} | {r.bytes_read / 1e6:.2f} | "
            f"{r.bytes_read / max(base.bytes_read, 1):.4f} | {seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=6, help="cells per side")
    parser.add_argument("--cell-km", type=int, default=20)
    parser.add_argument("--windows", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--small-groups", type=int, default=16, help="rows per row group of the second layout")
    parser.add_argument("--geometry", default="wkb", choices=geoparquet.GEOMETRY_ENCODINGS)
    args = parser.parse_args()
    cells = [Cell(EPSG, args.cell_km, I0 * 20 // args.cell_km + a, J0 * 20 // args.cell_km + b)
             for a in range(args.side) for b in range(args.side)]
    print(f"# {platform.machine()} {platform.processor() or ''}, {len(cells)} cells of {args.cell_km} km, "
          f"{args.windows} windows, D={D}, geometry {args.geometry}")
    for groups in (None, args.small_groups):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rows = build(root, cells, args.windows, groups, args.geometry)
            middle = cells[len(cells) // 2]
            tiles = cell_tiles(middle)
            foot = Tile.from_row(tiles[len(tiles) // 2]).with_footprint().footprint.bounds
            box = tuple(foot)  # one tile's bbox (lon / lat)
            base, t_base = timed(root, "SELECT tile_id, embedding FROM read_parquet({files}, "
                                       "hive_partitioning=true)", [])
            sql, params = bbox_query(STARTS[min(1, args.windows - 1)], box, "tile_id, embedding")
            one, t_one = timed(root, sql, params)
            every_sql = sql.replace("window_start = ?::DATE AND ", "")
            every, t_every = timed(root, every_sql, params[1:])
            label = "product default (about 64 MiB)" if groups is None else str(groups)
            print(f"\n{rows} rows; rows per row group: {label}\n")
            print("| query | rows | files opened | files with data read | row groups read | MB read | x baseline "
                  "| s |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            print(row("whole dataset (baseline)", base, t_base, base))
            print(row("one tile's bbox, one window", one, t_one, base))
            print(row("one tile's bbox, every window", every, t_every, base))


if __name__ == "__main__":
    main()
