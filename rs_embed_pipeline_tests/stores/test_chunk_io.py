"""Whole-chunk writes without zarr's per-chunk machinery (stores/chunk_io.py): the same chunk bytes
as zarr's own write for every kind of tile-store array, atomic renames, and zarr's path elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from rs_embed_pipeline.stores import ArraySpec, TileStore
from rs_embed_pipeline.stores.chunk_io import write_whole_chunks
from rs_embed_pipeline.stores.patch_encoding import S2_DN_HALF_UINT16

RNG = np.random.default_rng(0)
ARRAYS = {  # name: (spec, values of tiles 1, 2, 4)
    "grid32": (ArraySpec("grid32", (8, 2, 2), ("f", "y", "x"), fill_value=np.nan),
               RNG.normal(size=(3, 8, 2, 2)).astype(np.float32)),
    "grid16": (ArraySpec("grid16", (8, 2, 2), ("f", "y", "x"), fill_value=np.nan, stored_type="float16"),
               RNG.normal(size=(3, 8, 2, 2)).astype(np.float16)),
    "gridbf": (ArraySpec("gridbf", (8, 2, 2), ("f", "y", "x"), fill_value=np.nan, stored_type="bfloat16"),
               RNG.integers(0, 2 ** 16, size=(3, 8, 2, 2)).astype(np.uint16)),
    "data": (ArraySpec("data", (2, 4, 4), ("b", "y", "x"), encoding=S2_DN_HALF_UINT16),
             RNG.integers(0, 20000, size=(3, 2, 4, 4)).astype(np.uint16)),
    "valid": (ArraySpec("valid", (4, 4), ("y", "x"), dtype="bool", fill_value=False), RNG.random((3, 4, 4)) > 0.5),
}


def _store(uri: str) -> TileStore:
    return TileStore.create_or_open(uri, "embeddings", tile_ids=list("abcdef"), arrays=[s for s, _ in ARRAYS.values()],
                                    fingerprint="f", attrs={})


def _chunk_files(uri: str) -> dict[str, bytes]:
    root = Path(uri)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "zarr.json" and not str(p.relative_to(root)).startswith("tile_id")}


def test_chunks_are_zarrs_bytes_for_every_kind_of_array(tmp_path):
    ours, theirs = _store(str(tmp_path / "ours.zarr")), _store(str(tmp_path / "theirs.zarr"))
    idx = [1, 2, 4]
    values = {**{k: v for k, (_, v) in ARRAYS.items()},
              "status": np.array([1, 2, 1], np.int8), "tile_meta": np.array(['{"reason": "x"}', "{}", "{}"], dtype=str)}
    for name, v in values.items():
        assert write_whole_chunks(ours.group[name], idx, v)
        theirs.group[name].set_orthogonal_selection((np.array(idx),), v)  # zarr's own write
    assert _chunk_files(str(tmp_path / "ours.zarr")) == _chunk_files(str(tmp_path / "theirs.zarr"))
    assert len(_chunk_files(str(tmp_path / "ours.zarr"))) == 3 * len(values)
    reopened = TileStore.open(str(tmp_path / "ours.zarr"), "embeddings")
    np.testing.assert_array_equal(reopened.read_stored("data", idx), values["data"])
    assert reopened.tile_meta(1) == {"reason": "x"}
    assert not list(Path(tmp_path / "ours.zarr").rglob("*.partial"))  # renamed into place


def test_write_tiles_uses_it_and_reads_back(tmp_path):
    store = _store(str(tmp_path / "s.zarr"))
    store.write_tiles([5, 0], ["ok", "failed"], [{}, {"reason": "r"}], grid32=ARRAYS["grid32"][1][:2])
    np.testing.assert_array_equal(store.read("grid32", [0, 5]), ARRAYS["grid32"][1][[1, 0]])
    assert store.status_counts() == {"pending": 4, "ok": 1, "no_data": 0, "failed": 1}
    assert store.tile_meta(0) == {"reason": "r"}


def test_other_stores_and_chunkings_fall_back_to_zarr(tmp_path):
    memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(3, 4), chunks=(1, 4), dtype="float32")
    assert not write_whole_chunks(memory, [0], np.ones((1, 4), np.float32))
    assert (memory[0] == 0).all()  # nothing written (fill value 0)
    two_tiles = zarr.create_array(str(tmp_path / "two.zarr"), shape=(4, 4), chunks=(2, 4), dtype="float32",
                                  compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")])
    assert not write_whole_chunks(two_tiles, [0], np.ones((1, 4), np.float32))
    assert not [p for p in Path(tmp_path / "two.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]


def test_reads_equal_zarrs_for_every_kind_of_array(tmp_path):
    from rs_embed_pipeline.stores.chunk_io import read_whole_chunks

    store = _store(str(tmp_path / "s.zarr"))
    for name, (_, v) in ARRAYS.items():
        store.group[name].set_orthogonal_selection((np.array([1, 2, 4]),), v)
    for name in ARRAYS:
        array = store.group[name]
        for idx in ([1, 2, 4], [4, 0, 1], [3]):  # tiles 0 and 3 never written: the fill value
            ours = read_whole_chunks(array, idx)
            assert ours is not None and ours.dtype == array.dtype
            np.testing.assert_array_equal(ours, np.asarray(array.get_orthogonal_selection((np.array(idx),))))
    assert read_whole_chunks(store.group["tile_meta"], [0]) is None  # strings: zarr's own read


def test_switched_off_everything_goes_through_zarr(tmp_path, monkeypatch):
    from rs_embed_pipeline.stores import chunk_io
    from rs_embed_pipeline.stores.chunk_io import read_whole_chunks

    store = _store(str(tmp_path / "s.zarr"))
    monkeypatch.setattr(chunk_io, "ENABLED", False)
    assert not write_whole_chunks(store.group["grid32"], [0], ARRAYS["grid32"][1][:1])
    assert read_whole_chunks(store.group["grid32"], [0]) is None
    store.write_tiles([0], ["ok"], [{}], grid32=ARRAYS["grid32"][1][:1])  # zarr's own write
    np.testing.assert_array_equal(store.read("grid32", [0]), ARRAYS["grid32"][1][:1])


# ------------------------------------------------------------------ chunks of several tiles (#21)
def _batched_store(uri: str, n: int = 10, k: int = 4) -> TileStore:
    return TileStore.create_or_open(uri, "embeddings", tile_ids=[f"t{i}" for i in range(n)],
                                    arrays=[ArraySpec("pooled", (3,), ("f",), fill_value=np.nan, batched=True),
                                            ArraySpec("grid", (2, 2), ("y", "x"), fill_value=np.nan)],
                                    fingerprint="f", attrs={}, tile_chunk=k)


def test_batched_chunks_are_zarrs_bytes_and_one_object_per_batch(tmp_path):
    ours, theirs = _batched_store(str(tmp_path / "ours.zarr")), _batched_store(str(tmp_path / "theirs.zarr"))
    assert ours.tile_chunk == 4 and ours.group["pooled"].chunks == (4, 3) and ours.group["grid"].chunks == (1, 2, 2)
    idx = [8, 9, 4, 5, 6, 7]  # chunk 1 whole, and the edge chunk (tiles 8, 9 of 8-11) whole
    values = RNG.normal(size=(6, 3)).astype(np.float32)
    assert write_whole_chunks(ours.group["pooled"], idx, values)
    theirs.group["pooled"].set_orthogonal_selection((np.array(sorted(idx)),), values[np.argsort(idx)])
    assert _chunk_files(str(tmp_path / "ours.zarr")) == _chunk_files(str(tmp_path / "theirs.zarr"))
    assert sorted(_chunk_files(str(tmp_path / "ours.zarr"))) == ["pooled/c/1/0", "pooled/c/2/0"]
    assert not write_whole_chunks(ours.group["pooled"], [0, 1], values[:2])  # part of chunk 0: not alone
    np.testing.assert_array_equal(ours.read("pooled", idx), values)


def test_tiles_of_uncompressed_chunks_are_read_as_byte_ranges(tmp_path, monkeypatch):
    # a 16-bit grid one chunk per batch (the embedding stores): a read of some of a chunk's tiles
    # reads their bytes only, and equals zarr's read; the edge chunk and an unwritten one included
    from rs_embed_pipeline.stores import chunk_io
    from rs_embed_pipeline.stores.chunk_io import read_whole_chunks

    store = TileStore.create_or_open(str(tmp_path / "s.zarr"), "embeddings", tile_ids=[f"t{i}" for i in range(10)],
                                     arrays=[ArraySpec("grid", (3, 2, 2), ("f", "y", "x"), fill_value=np.nan,
                                                       stored_type="float16", batched=True)],
                                     fingerprint="f", attrs={}, tile_chunk=4)
    array = store.group["grid"]
    assert array.chunks == (4, 3, 2, 2) and not array.compressors
    values = RNG.normal(size=(6, 3, 2, 2)).astype(np.float16)
    store.write_tiles([0, 1, 2, 3, 8, 9], ["ok"] * 6, [{}] * 6, grid=values)
    whole: list[int] = []
    real = chunk_io._read_rows
    monkeypatch.setattr(chunk_io, "_read_rows", lambda path, out, picks: (real(path, out, picks),
                                                                          whole.extend(r for _, r in picks))[0])
    for idx in ([2], [3, 0], [9], [8, 9], [5, 1, 9], [0, 1, 2, 3], [4, 7]):
        ours = read_whole_chunks(array, idx)
        assert ours is not None and ours.dtype == np.float16
        np.testing.assert_array_equal(ours, np.asarray(array.get_orthogonal_selection((np.array(idx),))))
    # rows read by range (chunk 0's, the edge chunk's); tiles 0-3 together: the whole chunk; chunk 1: never written
    assert whole == [2, 3, 0, 1, 0, 1, 1, 1]
    np.testing.assert_array_equal(store.read("grid", [9, 2]), values[[5, 2]].astype(np.float32))


def test_write_tiles_merges_a_part_of_a_chunk_and_writes_status_last(tmp_path, monkeypatch):
    from rs_embed_pipeline_tests.stores.recording import record_store_writes

    store = _batched_store(str(tmp_path / "s.zarr"))
    first = RNG.normal(size=(4, 3)).astype(np.float32)
    store.write_tiles([0, 1, 2, 3], ["ok"] * 4, [{}] * 4, pooled=first, grid=np.ones((4, 2, 2), np.float32))
    events = record_store_writes(monkeypatch)
    again = RNG.normal(size=(2, 3)).astype(np.float32)
    store.write_tiles([2, 1], ["failed", "ok"], [{"reason": "r"}, {}], pooled=again, grid=np.zeros((2, 2, 2), np.float32))
    keys = [key for what, key in events if what == "done"]
    assert keys == ["pooled/c/0/0", "grid/c/1/0/0", "grid/c/2/0/0", "tile_meta/c/0", "status/c/0"], keys
    np.testing.assert_array_equal(store.read("pooled", [0, 1, 2, 3]), np.stack([first[0], again[1], again[0], first[3]]))
    assert store.statuses().tolist() == [1, 1, 3, 1, 0, 0, 0, 0, 0, 0]
    assert store.tile_meta(2) == {"reason": "r"} and store.tile_meta(0) == {}
    store.write_tile(5, "no_data", {"reason": "no scene"})  # zarr's own write, merged the same way
    assert store.statuses().tolist() == [1, 1, 3, 1, 0, 2, 0, 0, 0, 0] and store.tile_meta(2) == {"reason": "r"}


def test_concurrent_writes_into_one_chunk_keep_every_tile(tmp_path):
    import concurrent.futures as cf

    store = _batched_store(str(tmp_path / "s.zarr"), n=16, k=16)
    values = RNG.normal(size=(16, 3)).astype(np.float32)
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: store.write_tiles([i], ["ok"], [{}], pooled=values[i : i + 1]), range(16)))
    np.testing.assert_array_equal(store.read("pooled", range(16)), values)
    assert (store.statuses() == 1).all()


def test_stores_of_one_tile_per_chunk_keep_it(tmp_path):
    old = _store(str(tmp_path / "old.zarr"))  # created without tile_chunk, as every store before
    assert old.tile_chunk == 1 and old.group["status"].chunks == (1,)
    reopened = TileStore.create_or_open(str(tmp_path / "old.zarr"), "embeddings", tile_ids=list("abcdef"),
                                        arrays=[s for s, _ in ARRAYS.values()], fingerprint="f", attrs={},
                                        tile_chunk=32)
    assert reopened.tile_chunk == 1  # reopened as it is
    with pytest.raises(ValueError, match="tile_chunk must be a positive number of tiles, got 0"):
        _batched_store(str(tmp_path / "zero.zarr"), k=0)
    assert _batched_store(str(tmp_path / "small.zarr"), n=3, k=32).tile_chunk == 3  # never larger than the store
