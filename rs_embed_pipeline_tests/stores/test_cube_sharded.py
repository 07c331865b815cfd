"""Sharded cubes (stores/cube/groups.py layouts): one object per array per window of a cell, each
written whole; a missing tile stores nothing inside its shard; a writer SIGKILLed in the middle of
a window's shard writes leaves that window unmarked and the others intact; cubes of the previous
(chunked) layout keep their layout and stay readable and writable. The concurrent-writer tests
of test_cube_writer.py run in both layouts; its other tests (marker last, an exception or a SIGKILL
before the marker) run on the default, sharded, layout."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import zarr

from rs_embed_pipeline.stores.cube import CubeWindowWrite, write_cube_window
from rs_embed_pipeline.stores.cube.groups import SHARD_MAX_BYTES, shard_tiles
from rs_embed_pipeline.stores.cube.reader import open_cube, read_window_state
from rs_embed_pipeline.stores.cube.root import CubeError
from rs_embed_pipeline_tests.stores import cells as C
from rs_embed_pipeline_tests.stores.test_cube_writer import (
    COLS, D, D_GRID, GH, GROUPS, GW, ROWS, assert_resumed,
    embedding_store, expected, missing_tile, run_killed_writer, starts_of, window_request, write_window,
)

EMPTY = 2**64 - 1  # an inner chunk the shard does not hold (zarr sharding index: offset = nbytes = 2**64 - 1)


def objects(uri: str, group: str, name: str, window: int) -> list[str]:
    """The stored objects of one array's window."""
    base = Path(uri) / group / name / "c" / str(window)
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []


def shard_index(path: Path, n_chunks: int) -> list[tuple[int, int]]:
    """(offset, nbytes) of each inner chunk, from the index at the shard's end (+ 4 bytes crc32c)."""
    raw = path.read_bytes()[-(16 * n_chunks + 4):-4]
    return [struct.unpack("<QQ", raw[16 * i:16 * i + 16]) for i in range(n_chunks)]


def test_a_window_is_one_object_per_array_and_a_missing_tile_stores_nothing(tmp_path: Path) -> None:
    """Window 0 of 3 x 2 tiles: one shard each for the feature maps and the pooled plane (the
    chunked layout: one object per tile with an embedding, 5); the missing tile's inner chunk is
    absent from the shard's index; a rewrite of the window where another tile is missing leaves
    no stale tile (the shard is written whole)."""
    uri = str(tmp_path / "cube.zarr")
    write_window(uri, embedding_store(tmp_path, 0), 0)
    grid = zarr.open_group(uri, mode="r")[f"{GROUPS['grid']}/embedding"]
    assert grid.shards == (1, len(ROWS) * GH, len(COLS) * GW, D_GRID) and grid.chunks == (1, GH, GW, D_GRID)
    assert zarr.open_group(uri, mode="r")[f"{GROUPS['pooled']}/embedding"].shards == (1, len(ROWS), len(COLS), D)
    assert objects(uri, GROUPS["grid"], "embedding", 0) == ["0/0/0"]
    assert objects(uri, GROUPS["pooled"], "embedding", 0) == ["0/0/0"]
    index = shard_index(Path(uri) / GROUPS["grid"] / "embedding/c/0/0/0/0", len(ROWS) * len(COLS))
    # tiles() lists columns outer, rows inner (row 500 south first); the index is C order (y, x).
    empty = [i for i, (offset, n) in enumerate(index) if offset == n == EMPTY]
    tile = missing_tile(0)
    assert empty == [(len(ROWS) - 1 - tile % len(ROWS)) * len(COLS) + tile // len(ROWS)]
    chunked = str(tmp_path / "chunked.zarr")
    write_window(chunked, embedding_store(tmp_path, 0), 0, layout="chunked")
    assert len(objects(chunked, GROUPS["grid"], "embedding", 0)) == len(ROWS) * len(COLS) - 1
    # Rewrite window 0 from window 1's embeddings (another tile missing): exact, no stale tile.
    write_window(uri, embedding_store(tmp_path, 1), 0)
    ds = open_cube(uri)
    assert np.array_equal(ds["embedding"].values[0], expected(1)["grid"], equal_nan=True)


def test_shards_are_bounded() -> None:
    """A cell's window fits one shard; a larger zone is cut into square blocks of chunks under the bound."""
    tile = 14 * 14 * 768 * 4  # a TerraFM-B grid chunk (602 KB)
    assert shard_tiles(9, 9, tile) == (9, 9)
    assert shard_tiles(200, 300, tile) == (10, 10) and 10 * 10 * tile <= SHARD_MAX_BYTES
    assert shard_tiles(3, 500, 2**30) == (1, 1)


def test_an_old_chunked_cube_keeps_its_layout(tmp_path: Path) -> None:
    """A cube written before sharding (chunked) gets new windows in its own layout, both windows read
    exactly; an unknown layout is refused naming the valid ones."""
    uri = str(tmp_path / "cube.zarr")
    write_window(uri, embedding_store(tmp_path, 0), 0, layout="chunked")
    write_window(uri, embedding_store(tmp_path, 1), 1)  # the default asks for sharded
    assert zarr.open_group(uri, mode="r")[f"{GROUPS['grid']}/embedding"].shards is None
    assert len(objects(uri, GROUPS["grid"], "embedding", 1)) == len(ROWS) * len(COLS) - 1
    for kind in GROUPS:
        ds = open_cube(uri, kind=kind)
        for t in (0, 1):
            assert np.array_equal(ds["embedding"].values[t], expected(t)[kind], equal_nan=True)
    with pytest.raises(CubeError, match=r"^cube layout 'zip' is not a layout; valid: sharded, chunked$"):
        window_request(embedding_store(tmp_path, 2), 2, layout="zip")


def test_sigkill_in_the_middle_of_a_windows_shards_leaves_it_unmarked(tmp_path: Path) -> None:
    """A writer SIGKILLed between window 1's two shards (feature maps written, pooled plane not):
    window 1 is not marked and open_cube leaves it out; window 0 is exact; a new writer of window 1
    completes the cube. (Each shard is one atomic object write: zarr's LocalStore renames a
    finished file into place, S3 publishes whole objects; require_atomic_chunk_writes refuses
    other stores.)"""
    # killed when window 1's feature-map shard is written, its pooled shard is not
    uri, store, _ = run_killed_writer(tmp_path, "startswith", "EPSG32632/pooled/embedding/c/1/")
    assert objects(uri, GROUPS["grid"], "embedding", 1) == ["0/0/0"]
    assert objects(uri, GROUPS["pooled"], "embedding", 1) == []
    for kind in GROUPS:
        assert read_window_state(uri, GROUPS[kind]) == {0: {"window": 0}}
        ds = open_cube(uri, kind=kind)
        assert starts_of(ds) == ["2024-01-01"]
        assert np.array_equal(ds["embedding"].values[0], expected(0)[kind], equal_nan=True)
    assert_resumed(uri, store)


def test_a_split_build_mosaics_the_same_in_both_layouts(tmp_path: Path) -> None:
    """The five cells of stores/cells.py written sharded and chunked give the same mosaic values (and the
    two builds really differ in layout: shards against one chunk per tile)."""
    from rs_embed_pipeline.stores.cube.mosaic import open_mosaic

    chunked = C.write_build(tmp_path / "chunked", layout="chunked")
    sharded = C.write_build(tmp_path / "sharded", layout="sharded")
    assert chunked and sharded
    a = open_mosaic(str(tmp_path / "chunked"), zone=32632)["embedding"].values
    b = open_mosaic(str(tmp_path / "sharded"), zone=32632)["embedding"].values
    assert a.shape == b.shape and np.isfinite(a).any()
    assert np.array_equal(a, b, equal_nan=True)
    cell = sorted(sharded)[0]
    sharded_arr = zarr.open_group(sharded[cell], mode="r")[GROUPS["grid"]]["embedding"]
    chunked_arr = zarr.open_group(chunked[cell], mode="r")[GROUPS["grid"]]["embedding"]
    assert sharded_arr.shards is not None and chunked_arr.shards is None


def test_an_int8_window_is_sharded_with_its_scales(tmp_path: Path) -> None:
    """int8_per_cell: the per-cell scales share the embedding's shards; values de-quantize as before."""
    uri = str(tmp_path / "cube.zarr")
    store = embedding_store(tmp_path, 0)
    request = window_request(store, 0)
    write_cube_window(uri, CubeWindowWrite(**{**{f: getattr(request, f) for f in request.__dataclass_fields__},
                                              "quantization": "int8_per_cell"}))
    group = zarr.open_group(uri, mode="r")[GROUPS["grid"]]
    assert group["embedding_scale"].shards == (1, len(ROWS) * GH, len(COLS) * GW)
    assert objects(uri, GROUPS["grid"], "embedding_scale", 0) == ["0/0"]
    ds = open_cube(uri)
    assert np.allclose(ds["embedding"].values[0], expected(0)["grid"], atol=0.05, equal_nan=True)
