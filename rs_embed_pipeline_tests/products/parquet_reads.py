"""What a DuckDB query reads from a folder of Parquet files: files opened, row groups read, bytes.

DuckDB reads through an fsspec filesystem registered on the connection (``counted://<path>``);
every ``read`` is recorded with its offset and length. A read that ends at the end of a file is
the footer (DuckDB reads the file's tail for its metadata); a row group counts as read when any
other read overlaps its byte range (the column chunks from the Parquet metadata). Used by
``test_dataset_layouts.py`` and ``benchmarks/bench_geoparquet_dataset.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "counted"


class CountingFileSystem(LocalFileSystem):
    """The local filesystem, recording ``(path, offset, length)`` of every read."""

    protocol = PROTOCOL
    cachable = False  # fsspec would hand every query the same instance, with the reads of the last one

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads: list[tuple[str, int, int]] = []

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super()._open(path, mode, **kwargs)
        plain_read, reads = f.read, self.reads

        def read(n: int = -1) -> bytes:
            pos = f.tell()
            data = plain_read(n)
            reads.append((self._strip_protocol(path), pos, len(data)))
            return data

        f.read = read
        return f


def row_group_ranges(path: str) -> list[tuple[int, int]]:
    """``[(first byte, end byte)]`` of each row group's column chunks."""
    meta = pq.ParquetFile(path).metadata
    out = []
    for i in range(meta.num_row_groups):
        starts, ends = [], []
        for c in range(meta.num_columns):
            col = meta.row_group(i).column(c)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            starts.append(start)
            ends.append(start + col.total_compressed_size)
        out.append((min(starts), max(ends)))
    return out


@dataclasses.dataclass
class Reads:
    """What one query read, against what the folder holds."""

    rows: list[tuple[Any, ...]]
    files_total: int
    files_opened: set[str]            # files whose footer (at least) was read
    files_with_data: set[str]         # files with at least one row group read
    row_groups_total: int
    row_groups_read: set[tuple[str, int]]
    bytes_total: int
    bytes_read: int


def query_reads(root: str | Path, sql: str, params: Sequence[Any] = ()) -> Reads:
    """Run ``sql`` on a fresh connection (no cached metadata) with ``{files}`` replaced by
    ``'counted://<root>/**/*.parquet'``; what it read."""
    root = str(Path(root).resolve())
    files = sorted(str(p) for p in Path(root).rglob("*.parquet"))
    fs = CountingFileSystem()
    con = duckdb.connect()
    con.register_filesystem(fs)
    rows = con.execute(sql.replace("{files}", f"'{PROTOCOL}://{root}/**/*.parquet'"), list(params)).fetchall()
    con.close()
    sizes = {f: os.path.getsize(f) for f in files}
    ranges = {f: row_group_ranges(f) for f in files}
    groups: set[tuple[str, int]] = set()
    for path, offset, length in fs.reads:
        if length == 0 or offset + length >= sizes[path]:
            continue  # the footer
        groups |= {(path, i) for i, (a, b) in enumerate(ranges[path]) if offset < b and offset + length > a}
    return Reads(rows=rows, files_total=len(files), files_opened={p for p, _, _ in fs.reads},
                 files_with_data={p for p, _ in groups}, row_groups_total=sum(len(r) for r in ranges.values()),
                 row_groups_read=groups, bytes_total=sum(sizes.values()),
                 bytes_read=sum(n for _, _, n in fs.reads))


def bbox_query(window_start: str, bbox: Sequence[float], columns: str = "tile_id") -> tuple[str, list[Any]]:
    """A window and bbox (lon / lat) query over the Hive-partitioned dataset and its parameters; the
    bbox test is on the covering column, which row-group statistics can prune."""
    xmin, ymin, xmax, ymax = (float(v) for v in bbox)
    return (f"SELECT {columns} FROM read_parquet({{files}}, hive_partitioning=true) "
            "WHERE window_start = ?::DATE AND bbox.xmin <= ? AND bbox.ymin <= ? AND bbox.xmax >= ? "
            "AND bbox.ymax >= ? ORDER BY tile_id", [window_start, xmax, ymax, xmin, ymin])
