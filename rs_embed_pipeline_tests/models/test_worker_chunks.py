"""Embedding stores chunked per write batch (#21 point 1): pooled, status and tile_meta one chunk
per ``batch_size`` tiles, batches that follow the chunks, per-tile resume to an uninterrupted run's
numbers, and stores of one tile per chunk (written before) read and resumed as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rs_embed_pipeline.core.vocabulary import STATUS_CODES
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline.worker.embed import _chunk_batches, _open_embeddings, embed_store

from .test_worker_loop import adapter, make_patch_store  # noqa: F401 - the fixture and the store maker


def test_batches_follow_the_chunks():
    ok = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10])  # tile 5 has no pixels
    assert [b.tolist() for b in _chunk_batches(ok, 4, 4)] == [[0, 1, 2, 3], [4, 6, 7], [8, 9, 10]]
    assert [b.tolist() for b in _chunk_batches(ok, 8, 4)] == [[0, 1, 2, 3, 4, 6, 7], [8, 9, 10]]
    assert [b.tolist() for b in _chunk_batches(ok, 2, 4)] == [[0, 1], [2, 3], [4, 6], [7], [8, 9], [10]]
    assert [b.tolist() for b in _chunk_batches(ok, 4, 1)] == [[0, 1, 2, 3], [4, 6, 7, 8], [9, 10]]  # as before


def _embed(tmp_path: Path, adapter, name: str, **kw):  # noqa: F811 - the fixture
    return embed_store(adapter, "s2", str(tmp_path / "p.zarr"), str(tmp_path / name), batch_size=4,
                       code_version="t", **kw)


def _objects(uri: Path, array: str) -> list[str]:
    return sorted(str(p.relative_to(uri / array)) for p in (uri / array).rglob("*")
                  if p.is_file() and p.name != "zarr.json")


def test_new_store_writes_a_chunk_per_batch_and_resumes_to_the_same_numbers(tmp_path, adapter):  # noqa: F811
    make_patch_store(str(tmp_path / "p.zarr"), 11, no_data=(5,))
    result = _embed(tmp_path, adapter, "ref.zarr")
    assert result.counts == {"pending": 0, "ok": 10, "no_data": 1, "failed": 0}
    ref = TileStore.open(str(tmp_path / "ref.zarr"), "embeddings")
    assert ref.tile_chunk == 4 and ref.group["pooled"].chunks[0] == 4 and ref.group["grid"].chunks[0] == 1
    for array in ("pooled", "status", "tile_meta"):
        assert _objects(tmp_path / "ref.zarr", array) == (["c/0/0", "c/1/0", "c/2/0"] if array == "pooled"
                                                          else ["c/0", "c/1", "c/2"]), array
    # A run killed after writing tiles 6 and 7's arrays but not their statuses: they are redone with
    # their batch (4, 6, 7), tile 4 not rewritten, and tile 5 keeps its no_data status.
    _embed(tmp_path, adapter, "e.zarr")
    store = TileStore.open(str(tmp_path / "e.zarr"), "embeddings", mode="r+")
    store.group["status"][6:8] = STATUS_CODES["pending"]
    store.group["pooled"][6:8] = 0.0
    store.group["pooled"][4] = 7.0  # done: must stay as it is
    again = _embed(tmp_path, adapter, "e.zarr")
    assert again.tiles_embedded_now == 2 and again.tiles_recomputed_for_alignment == 1
    ok = [0, 1, 2, 3, 6, 7, 8, 9, 10]
    np.testing.assert_array_equal(store.read("pooled", ok), ref.read("pooled", ok))
    np.testing.assert_array_equal(store.read("grid", ok), ref.read("grid", ok))
    assert (store.read("pooled", [4]) == 7.0).all()
    np.testing.assert_array_equal(store.statuses(), ref.statuses())
    assert store.tile_meta(5) == ref.tile_meta(5) and "no scene" in store.tile_meta(5)["reason"]


def test_store_of_one_tile_per_chunk_is_read_and_resumed_as_it_is(tmp_path, adapter):  # noqa: F811
    make_patch_store(str(tmp_path / "p.zarr"), 11, no_data=(5,))
    _embed(tmp_path, adapter, "ref.zarr")
    ref = TileStore.open(str(tmp_path / "ref.zarr"), "embeddings")
    # The store as the worker created it before (tile_chunk 1), holding the first batch only.
    patches = TileStore.open(str(tmp_path / "p.zarr"), "patches")
    first = _embed(tmp_path, adapter, "probe.zarr")  # its fingerprint, which the old store carries
    old = _open_embeddings(adapter, "s2", patches, str(tmp_path / "p.zarr"), str(tmp_path / "old.zarr"),
                           fingerprint=first.fingerprint, code_version="t", rebuild=False, force=False,
                           storage_options=None, tile_chunk=1)
    assert old.tile_chunk == 1
    old.write_tiles([0, 1, 2, 3], ["ok"] * 4, [{}] * 4, pooled=ref.read("pooled", range(4)),
                    grid=ref.read("grid", range(4)))
    result = _embed(tmp_path, adapter, "old.zarr")
    assert result.tiles_skipped_done == 4 and result.tiles_embedded_now == 6
    assert result.counts == {"pending": 0, "ok": 10, "no_data": 1, "failed": 0}
    store = TileStore.open(str(tmp_path / "old.zarr"), "embeddings")
    assert store.tile_chunk == 1 and store.group["pooled"].chunks[0] == 1  # its layout kept
    assert len(_objects(tmp_path / "old.zarr", "status")) == 11
    ok = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    # batches (4, 6, 7, 8), (9, 10) here against (4, 6, 7), (8, 9, 10): equal up to the CPU's summation order
    np.testing.assert_allclose(store.read("pooled", ok), ref.read("pooled", ok), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(store.statuses(), ref.statuses())


def test_a_16_bit_grid_is_one_chunk_per_batch_and_resumes_to_the_same_numbers(tmp_path, adapter):  # noqa: F811
    # A float16 grid (stored uncompressed) is chunked per batch as pooled is: one object per batch;
    # a float32 grid (zstd) keeps one tile per chunk (the test above).
    make_patch_store(str(tmp_path / "p.zarr"), 11, no_data=(5,))
    _embed(tmp_path, adapter, "ref.zarr", grid_dtype="float16")
    ref = TileStore.open(str(tmp_path / "ref.zarr"), "embeddings")
    assert ref.group["grid"].chunks[0] == 4 and ref.group["grid"].dtype == np.float16
    assert _objects(tmp_path / "ref.zarr", "grid") == ["c/0/0/0/0", "c/1/0/0/0", "c/2/0/0/0"]
    grids = ref.read("grid", range(11))  # float16 values, read as float32
    # a killed run: tiles 6 and 7 written but not marked; resumed, the chunk is merged, tile 4 kept
    _embed(tmp_path, adapter, "e.zarr", grid_dtype="float16")
    store = TileStore.open(str(tmp_path / "e.zarr"), "embeddings", mode="r+")
    store.group["status"][6:8] = STATUS_CODES["pending"]
    store.group["grid"][6:8] = 0.0
    store.group["grid"][4] = 7.0  # done: must stay as it is
    again = _embed(tmp_path, adapter, "e.zarr", grid_dtype="float16")
    assert again.tiles_embedded_now == 2
    ok = [0, 1, 2, 3, 6, 7, 8, 9, 10]
    np.testing.assert_array_equal(store.read("grid", ok), grids[ok])
    assert (store.read("grid", [4]) == 7.0).all()
    np.testing.assert_array_equal(store.read("grid", [9, 1]), grids[[9, 1]])  # tiles of a chunk, any order
    assert np.isnan(store.read("grid", [5])).all()  # no_data: the fill value
    np.testing.assert_array_equal(store.statuses(), ref.statuses())


def test_a_16_bit_grid_of_one_tile_per_chunk_is_resumed_as_it_is(tmp_path, adapter, monkeypatch):  # noqa: F811
    # Stores written between the two layout changes: pooled per batch, a float16 grid one tile per
    # chunk. Each array keeps the chunking it was created with, so such a store resumes as it is.
    import types

    from rs_embed_pipeline.stores import grid_dtype as G
    from rs_embed_pipeline.worker import embed as worker_embed

    make_patch_store(str(tmp_path / "p.zarr"), 11, no_data=(5,))
    _embed(tmp_path, adapter, "ref.zarr", grid_dtype="float16")
    grids = TileStore.open(str(tmp_path / "ref.zarr"), "embeddings").read("grid", range(11))
    with monkeypatch.context() as m:
        # the grid as that layout made it: uncompressed, one tile per chunk (the store's codecs as today)
        m.setattr(worker_embed, "G", types.SimpleNamespace(UNCOMPRESSED=(), check_grid_dtype=G.check_grid_dtype))
        _embed(tmp_path, adapter, "e.zarr", grid_dtype="float16")
    store = TileStore.open(str(tmp_path / "e.zarr"), "embeddings", mode="r+")
    assert store.group["grid"].chunks[0] == 1 and store.group["pooled"].chunks[0] == 4
    assert not store.group["grid"].compressors  # 16-bit grids: uncompressed in both layouts
    store.group["status"][6:8] = STATUS_CODES["pending"]  # a killed run: 6 and 7 not marked
    store.group["grid"][6:8] = 0.0
    again = _embed(tmp_path, adapter, "e.zarr", grid_dtype="float16")
    assert again.tiles_embedded_now == 2
    assert store.group["grid"].chunks[0] == 1  # kept
    assert len(_objects(tmp_path / "e.zarr", "grid")) == 10  # one object per ok tile
    ok = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    np.testing.assert_array_equal(store.read("grid", ok), grids[ok])
