"""TileStore on its own (no pipeline run): the create / open round trip, status written last (the
order in which chunks reach the disk), an exception or a SIGKILL between a batch's data and its
statuses leaving those tiles to do while earlier tiles stay done and exact, and a store built with
other settings refused without a byte changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from zarr.storage import LocalStore

from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore
from rs_embed_pipeline_tests.stores.recording import record_store_writes

REPO = Path(__file__).resolve().parents[2]
KIND = "embeddings"
TILE_IDS = [f"t{i}" for i in range(6)]
D, D_GRID, GH, GW = 4, 3, 2, 2
SPECS = [
    ArraySpec("pooled", (D,), ("feature",), fill_value=np.nan),
    ArraySpec("grid", (D_GRID, GH, GW), ("feature", "gy", "gx"), fill_value=np.nan),
]
FINGERPRINT = "a1" * 32
SETTINGS = {"model": "tiny", "bands": ["B2", "B3"], "patch_px": 32}


def open_store(uri: str, fingerprint: str = FINGERPRINT, attrs: dict | None = None, **kwargs) -> TileStore:
    return TileStore.create_or_open(uri, KIND, tile_ids=TILE_IDS, arrays=SPECS, fingerprint=fingerprint,
                                    attrs=SETTINGS if attrs is None else attrs, **kwargs)


def tile_values(i: int) -> dict[str, np.ndarray]:
    """Tile i's arrays: a function of i only (the killed subprocess writes the same)."""
    rng = np.random.default_rng(i)
    return {"pooled": rng.standard_normal(D).astype(np.float32),
            "grid": rng.standard_normal((D_GRID, GH, GW)).astype(np.float32)}


def write_batch(store: TileStore, indices: list[int], status: str = "ok") -> None:
    """``write_tiles`` of the given tiles, their values from :func:`tile_values`."""
    values = [tile_values(i) for i in indices]
    store.write_tiles(indices, [status] * len(indices), [{"tile": i} for i in indices],
                      pooled=np.stack([v["pooled"] for v in values]), grid=np.stack([v["grid"] for v in values]))


def assert_tiles_exact(store: TileStore, indices) -> None:
    for i in indices:
        expected = tile_values(int(i))
        for name in ("pooled", "grid"):
            assert np.array_equal(store.read(name, [int(i)])[0], expected[name]), (name, i)
        assert store.tile_meta(int(i)) == {"tile": int(i)}


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and modification time (ns)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def data_keys(i: int) -> set[str]:
    """The chunk keys of tile i's arrays (one chunk per tile and array)."""
    return {f"pooled/c/{i}/0", f"grid/c/{i}/0/0/0"}


# --------------------------------------------------------------------------- create / open
def test_create_then_open_round_trips_arrays_specs_fingerprint_and_settings(tmp_path):
    """A new store has every array allocated (shape, one tile per chunk, dtype, dims, fill value),
    every tile pending, and the fingerprint and settings given; what is written reads back exactly
    after a reopen (for reading, and for writing with the same fingerprint, which resets nothing)."""
    uri = str(tmp_path / "emb.zarr")
    store = open_store(uri)
    assert not store.unfinished
    assert store.group.attrs["schema"] == "rs_embed_pipeline.embeddings"
    assert store.group.attrs["schema_version"] == 1
    assert store.group.attrs["state"] == "ready"
    assert store.tile_ids == TILE_IDS
    for spec in SPECS:
        array = store.group[spec.name]
        assert array.shape == (6, *spec.tile_shape)
        assert array.chunks == (1, *spec.tile_shape)
        assert array.dtype == np.float32
        assert tuple(array.metadata.dimension_names) == ("tile", *spec.dims)
        assert np.isnan(store.read(spec.name, range(6))).all()  # nothing written: the fill value
    status = store.group["status"]
    assert (status.shape, status.chunks, status.dtype) == ((6,), (1,), np.int8)
    assert status.attrs["flag_meanings"] == "pending ok no_data failed"
    assert store.statuses().tolist() == [0] * 6
    assert store.status_counts() == {"pending": 6, "ok": 0, "no_data": 0, "failed": 0}

    write_batch(store, [3, 0], "ok")          # non-contiguous, out of order
    write_batch(store, [1, 2], "no_data")     # contiguous
    values = tile_values(5)
    store.write_tile(5, "failed", {"tile": 5}, **values)

    for reopened in (TileStore.open(uri, KIND), open_store(uri)):
        assert reopened.fingerprint == FINGERPRINT
        assert reopened.settings == SETTINGS
        assert reopened.tile_ids == TILE_IDS
        assert reopened.statuses().tolist() == [1, 2, 2, 1, 0, 3]
        assert reopened.status_counts() == {"pending": 1, "ok": 2, "no_data": 2, "failed": 1}
        assert reopened.indices_with_status("ok").tolist() == [0, 3]
        assert reopened.indices_with_status("pending", "failed").tolist() == [4, 5]
        assert_tiles_exact(reopened, [0, 1, 2, 3, 5])
        expected = np.stack([tile_values(i)["grid"] for i in (0, 3, 5)])
        assert np.array_equal(reopened.read("grid", [0, 3, 5]), expected)  # orthogonal read
        assert reopened.read("pooled", [1, 2, 3]).shape == (3, D)          # contiguous read
        assert reopened.read("pooled", []).shape == (0, D)
        assert np.isnan(reopened.read("pooled", [4])).all()
        assert reopened.tile_meta(4) == {}


def test_open_refuses_a_missing_store_and_a_store_of_another_kind(tmp_path):
    """Readers get a clear error for a path with no store and for a store of another kind."""
    uri = str(tmp_path / "emb.zarr")
    with pytest.raises(StoreError, match=r"embeddings store .*emb\.zarr does not exist; materialize its asset first"):
        TileStore.open(uri, KIND)
    open_store(uri)
    with pytest.raises(StoreError, match=r"is not a patches store \(schema='rs_embed_pipeline.embeddings'\)"):
        TileStore.open(uri, "patches")


# --------------------------------------------------------------------------- status last
@pytest.mark.parametrize("indices", [[1, 2, 3], [4, 0, 2]], ids=["contiguous", "scattered"])
def test_write_tiles_writes_every_status_after_the_batch_data(tmp_path, monkeypatch, indices):
    """The chunk writes as they reach the store: a batch writes its tiles' array chunks, then their
    provenance, and only when every one of those writes has returned does any status chunk of the
    batch start. Only the batch's own chunks are written."""
    store = open_store(str(tmp_path / "emb.zarr"))
    events = record_store_writes(monkeypatch)
    write_batch(store, indices)

    def position(kind: str, key: str) -> int:
        return events.index((kind, key))

    written = {key for kind, key in events if kind == "done"}
    expected = set().union(*(data_keys(i) | {f"tile_meta/c/{i}", f"status/c/{i}"} for i in indices))
    assert written == expected
    first_status = min(position("start", f"status/c/{i}") for i in indices)
    last_data = max(position("done", key) for i in indices for key in data_keys(i))
    last_meta = max(position("done", f"tile_meta/c/{i}") for i in indices)
    assert last_data < min(position("start", f"tile_meta/c/{i}") for i in indices)
    assert last_data < last_meta < first_status
    monkeypatch.undo()
    assert store.indices_with_status("ok").tolist() == sorted(indices)
    assert_tiles_exact(store, indices)


def test_write_tile_writes_its_status_after_its_data(tmp_path, monkeypatch):
    """The one-tile write: the tile's arrays, then its provenance, then its status, each write
    returned before the next starts."""
    store = open_store(str(tmp_path / "emb.zarr"))
    events = record_store_writes(monkeypatch)
    store.write_tile(2, "ok", {"tile": 2}, **tile_values(2))
    keys = [key for kind, key in events if kind == "done"]
    assert set(keys[:2]) == data_keys(2)
    assert keys[2:] == ["tile_meta/c/2", "status/c/2"]
    assert events[-2:] == [("start", "status/c/2"), ("done", "status/c/2")]


# --------------------------------------------------------------------------- failures and resume
def test_exception_between_data_and_status_leaves_the_batch_to_do(tmp_path, monkeypatch):
    """A batch whose status write fails (an injected OSError, after its arrays were written) is
    not marked: a reopen sees its tiles pending (to do) next to the tiles of an earlier batch, which
    stay done with their exact values; resuming the pending tiles completes the store."""
    uri = str(tmp_path / "emb.zarr")
    store = open_store(uri)
    write_batch(store, [0, 1, 2])
    original = LocalStore.set
    refused: set[str] = set()

    async def failing_status(self, key, value):
        if key.startswith("status/"):
            refused.add(key)
            raise OSError(f"injected failure writing {key}")
        await original(self, key, value)

    with monkeypatch.context() as m:
        m.setattr(LocalStore, "set", failing_status)
        with pytest.raises(OSError, match="injected failure writing status/c/"):
            write_batch(store, [3, 4, 5])
        # zarr raises at the first failed chunk while the call's other chunk writes go on in its
        # event loop: keep the failure in place until each status write of the batch was tried.
        deadline = time.monotonic() + 30
        while len(refused) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert refused == {"status/c/3", "status/c/4", "status/c/5"}

    reopened = open_store(uri)
    assert reopened.statuses().tolist() == [1, 1, 1, 0, 0, 0]
    assert reopened.indices_with_status("pending").tolist() == [3, 4, 5]
    assert_tiles_exact(reopened, [0, 1, 2])
    # The failure came after the data: the unmarked tiles' arrays are on disk.
    assert all((tmp_path / "emb.zarr" / "pooled" / "c" / str(i) / "0").is_file() for i in (3, 4, 5))

    todo = reopened.indices_with_status("pending").tolist()
    write_batch(reopened, todo)
    final = TileStore.open(uri, KIND)
    assert final.status_counts() == {"pending": 0, "ok": 6, "no_data": 0, "failed": 0}
    assert_tiles_exact(final, range(6))


KILLED_WRITER = """
import os, signal, sys
from zarr.storage import LocalStore
from rs_embed_pipeline_tests.stores.test_tile_store import open_store, write_batch

store = open_store(sys.argv[1])
write_batch(store, [0, 1, 2])                     # a complete batch
original = LocalStore.set

async def die_at_status(self, key, value):
    if key.startswith("status/"):
        os.kill(os.getpid(), signal.SIGKILL)      # the batch's arrays and provenance are written
    await original(self, key, value)

LocalStore.set = die_at_status
write_batch(store, [3, 4, 5])
print("not killed")
"""


def test_sigkill_between_data_and_status_then_resume(tmp_path):
    """A process SIGKILLed when the second batch's first status chunk is about to be written: the
    reopened store has the first batch done and exact, the second pending (its arrays written, not
    trusted); a resume writes only the pending tiles and ends with every tile done and exact."""
    uri = str(tmp_path / "emb.zarr")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, uri], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    assert "not killed" not in proc.stdout

    store = open_store(uri)
    assert store.statuses().tolist() == [1, 1, 1, 0, 0, 0]
    assert_tiles_exact(store, [0, 1, 2])
    assert all((tmp_path / "emb.zarr" / "grid" / "c" / str(i) / "0" / "0" / "0").is_file() for i in (3, 4, 5))
    assert not any((tmp_path / "emb.zarr" / "status" / "c" / str(i)).exists() for i in (3, 4, 5))

    todo = store.indices_with_status("pending").tolist()
    assert todo == [3, 4, 5]
    write_batch(store, todo)
    final = TileStore.open(uri, KIND)
    assert final.statuses().tolist() == [1] * 6
    assert_tiles_exact(final, range(6))


# --------------------------------------------------------------------------- fingerprints
def test_other_fingerprint_is_refused_and_nothing_is_touched(tmp_path):
    """Reopening for writing with another fingerprint raises a StoreError that names both
    fingerprints, the settings that differ and the way out; no file of the store changes (bytes or
    modification time), and the store still opens with its fingerprint, statuses and values."""
    uri = str(tmp_path / "emb.zarr")
    store = open_store(uri)
    write_batch(store, [0, 1])
    write_batch(store, [4], "no_data")
    before = files(tmp_path)

    other = {**SETTINGS, "model": "other"}
    with pytest.raises(StoreError) as info:
        open_store(uri, fingerprint="b2" * 32, attrs=other)
    message = str(info.value)
    assert message.startswith(f"embeddings store {uri} was built with other settings")
    assert "(fingerprint a1a1a1a1a1a1 != b2b2b2b2b2b2: model: 'tiny' -> 'other')" in message
    assert "Nothing was changed" in message and "rebuild (config `rebuild: true`)" in message
    with pytest.raises(StoreError, match="code or input version changed"):  # same settings, other digest
        open_store(uri, fingerprint="c3" * 32)

    assert files(tmp_path) == before
    reopened = TileStore.open(uri, KIND)
    assert reopened.fingerprint == FINGERPRINT and reopened.settings == SETTINGS
    assert reopened.statuses().tolist() == [1, 1, 0, 0, 2, 0]
    assert_tiles_exact(reopened, [0, 1, 4])


def test_rebuild_and_force_mark_every_tile_to_do_and_other_tiles_are_refused(tmp_path):
    """``force`` (same fingerprint) and ``rebuild`` (other fingerprint: recorded with its settings)
    put every tile back to pending; a store over another tile list is refused unless ``rebuild``,
    which recreates it over the new tiles."""
    uri = str(tmp_path / "emb.zarr")
    write_batch(open_store(uri), [0, 1, 2])
    assert open_store(uri, force=True).statuses().tolist() == [0] * 6
    write_batch(open_store(uri), [0, 1, 2])
    rebuilt = open_store(uri, fingerprint="b2" * 32, attrs={"model": "other"}, rebuild=True)
    assert rebuilt.statuses().tolist() == [0] * 6
    assert TileStore.open(uri, KIND).fingerprint == "b2" * 32
    assert TileStore.open(uri, KIND).settings == {"model": "other"}

    fewer = TILE_IDS[:4]
    with pytest.raises(StoreError, match=r"holds 6 tiles that differ from the tile grid's 4; the AOI or grid changed"):
        TileStore.create_or_open(uri, KIND, tile_ids=fewer, arrays=SPECS, fingerprint="b2" * 32, attrs={})
    assert TileStore.open(uri, KIND).tile_ids == TILE_IDS
    recreated = TileStore.create_or_open(uri, KIND, tile_ids=fewer, arrays=SPECS, fingerprint="b2" * 32, attrs={},
                                         rebuild=True)
    assert recreated.tile_ids == fewer and recreated.group["pooled"].shape == (4, D)
