"""The cube writer on its own (no pipeline run), from embedding TileStores as the cube asset
writes it: one window lands at its time slot and cells and only it is marked filled, the marker
written after the window's data; an exception or a SIGKILL between a window's data and its marker
leaves the window unmarked (open_cube's default view leaves it out) and an earlier window intact;
two windows written at the same time (two threads, two processes) both land whole and marked."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from rs_embed_pipeline.core.grid import tile_id
from rs_embed_pipeline.stores import ArraySpec, TileStore
from rs_embed_pipeline.stores.cube import root as cube_root
from rs_embed_pipeline.stores.cube import writer as cube_writer
from rs_embed_pipeline.stores.cube import (
    TIME_ARRAYS, CallableGrids, CubeError, CubeWindowWrite, CubeWindowWritten, CubeZoneWritten, TileStoreGrids,
    read_window_state, write_cube_window,
)
from rs_embed_pipeline.stores.cube.codec import QuantizationError
from rs_embed_pipeline.stores.cube.reader import open_cube
from rs_embed_pipeline_tests.stores.recording import record_store_writes

REPO = Path(__file__).resolve().parents[2]
EPSG = 32632
SIZE, SCALE = 32, 10.0
SIDE = SIZE * SCALE                  # 320 m tiles
COLS, ROWS = (100, 101, 102), (500, 501)  # 3 x 2 tiles; row 501 is the northern one
D, D_GRID, GH, GW = 4, 3, 2, 2       # pooled [4], feature maps [3, 2, 2]: 160 m cells
LEFT, TOP = COLS[0] * SIDE, ROWS[-1] * SIDE
STARTS = [f"2024-{m:02d}-01" for m in range(1, 7)]                      # 6 windows: the whole axis
LONG_STARTS = [f"{y}-{m:02d}-01" for y in (2024, 2025) for m in range(1, 13)]  # 24 windows
IN_RANGE = 2
GROUPS = {"grid": f"EPSG{EPSG}/grid", "pooled": f"EPSG{EPSG}/pooled"}
ATTRS = {"title": "tiny", "model_id": "tiny"}
FINGERPRINT = "cube-v1"


def tiles() -> list[dict]:
    """The region's tile_grid rows (as the cube asset passes them); x0 / y0: upper-left corner."""
    return [{"tile_id": tile_id(EPSG, SIZE, SCALE, c, r), "utm_epsg": EPSG, "x0": c * SIDE, "y0": r * SIDE,
             "size_px": SIZE, "scale_m": SCALE} for c in COLS for r in ROWS]


def missing_tile(window: int) -> int:
    """The tile of a window without an embedding (left pending in its store)."""
    return window % len(tiles())


def tile_values(window: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile i's (pooled [D], grid [D', h, w]) in a window: a function of both only."""
    rng = np.random.default_rng(1000 * window + i)
    return rng.standard_normal(D).astype(np.float32), rng.standard_normal((D_GRID, GH, GW)).astype(np.float32)


def embedding_store(root: Path, window: int) -> TileStore:
    """A window's embedding store: every tile ok but :func:`missing_tile` (pending)."""
    ids = [t["tile_id"] for t in tiles()]
    store = TileStore.create_or_open(
        str(root / f"emb-{window}.zarr"), "embeddings", tile_ids=ids,
        arrays=[ArraySpec("pooled", (D,), ("feature",), fill_value=np.nan),
                ArraySpec("grid", (D_GRID, GH, GW), ("feature", "gy", "gx"), fill_value=np.nan)],
        fingerprint=f"emb-{window}", attrs={"window": window})
    done = [i for i in range(len(ids)) if i != missing_tile(window)]
    values = [tile_values(window, i) for i in done]
    store.write_tiles(done, ["ok"] * len(done), [{}] * len(done),
                      pooled=np.stack([p for p, _ in values]), grid=np.stack([g for _, g in values]))
    return store


def window_request(store: TileStore, window: int, starts: list[str] = STARTS, layout: str = "sharded"
                   ) -> CubeWindowWrite:
    """A window's write request from its embedding store, as the cube asset makes it (ok tiles, a
    TileStoreGrids reader, the store's shapes for windows without embeddings)."""
    ok = store.indices_with_status("ok")
    pooled = dict(zip([store.tile_ids[i] for i in ok], store.read("pooled", ok)))
    return CubeWindowWrite(
        tiles=tiles(), pooled=pooled, reader=TileStoreGrids(store), window_index=window,
        window_starts=starts, windows_in_range=IN_RANGE, attrs=ATTRS, fingerprint=FINGERPRINT,
        provenance={"window": window}, grid_shape=(D_GRID, GH, GW), pooled_dim=D, layout=layout)


def write_window(cube_uri: str, store: TileStore, window: int, starts: list[str] = STARTS,
                 layout: str = "sharded") -> CubeWindowWritten:
    """Write a window from its embedding store, as the cube asset does (:func:`window_request`)."""
    return write_cube_window(cube_uri, window_request(store, window, starts, layout))


def expected(window: int) -> dict[str, np.ndarray]:
    """The window's planes, placed by hand: grid [y, x, D'] (h x w cells per tile), pooled [y, x, D]
    (a cell per tile); rows from the north, columns from the west; NaN for the missing tile."""
    grid = np.full((len(ROWS) * GH, len(COLS) * GW, D_GRID), np.nan, dtype=np.float32)
    pooled = np.full((len(ROWS), len(COLS), D), np.nan, dtype=np.float32)
    for i, t in enumerate(tiles()):
        if i == missing_tile(window):
            continue
        col = COLS.index(int(round(t["x0"] / SIDE)))
        row = len(ROWS) - 1 - ROWS.index(int(round(t["y0"] / SIDE)))
        p, g = tile_values(window, i)
        pooled[row, col] = p
        grid[row * GH:(row + 1) * GH, col * GW:(col + 1) * GW] = np.moveaxis(g, 0, -1)
    return {"grid": grid, "pooled": pooled}


def raw(cube_uri: str, kind: str, name: str) -> np.ndarray:
    """An array of the cube as stored (fresh metadata, every time slot)."""
    root = zarr.open_group(cube_uri, mode="r", use_consolidated=False)
    return np.asarray(root[f"{GROUPS[kind]}/{name}"][...])


def starts_of(ds) -> list[str]:
    return [str(t)[:10] for t in ds["time"].values]


# --------------------------------------------------------------------------- one window
def test_a_bad_request_fails_naming_the_value_and_writes_nothing(tmp_path):
    """A write request whose window lies outside window_starts, whose quantization is not a scheme
    or whose embeddings have no grid reader fails when it is made, naming the value and what is
    valid: nothing is written (the cube, with window 0 written before, stays byte for byte)."""
    uri = tmp_path / "cube.zarr"
    store = embedding_store(tmp_path, 0)
    write_window(str(uri), store, 0)
    before = sorted((p.relative_to(uri), p.read_bytes()) for p in uri.rglob("*") if p.is_file())
    good = window_request(store, 1)
    for index in (len(STARTS), -1):
        with pytest.raises(ValueError, match=rf"^window_index {index} is outside window_starts \(6 windows\)$"):
            dataclasses.replace(good, window_index=index)
    with pytest.raises(QuantizationError,
                       match=r"^quantization 'int4' is not a scheme; valid: none, int8_per_cell, int8_per_feature$"):
        dataclasses.replace(good, quantization="int4")
    with pytest.raises(ValueError, match=r"have an embedding but the request has no grid reader: pass "
                                         r"reader=TileStoreGrids\(store\) or CallableGrids"):
        dataclasses.replace(good, reader=CallableGrids())
    assert sorted((p.relative_to(uri), p.read_bytes()) for p in uri.rglob("*") if p.is_file()) == before
    assert sorted(read_window_state(str(uri), GROUPS["grid"])) == [0]


def test_one_window_lands_at_its_slot_and_cells_and_only_it_is_marked(tmp_path):
    """Window 2 of 6 from its embedding store: its values sit at time index 2 and at each tile's
    (y, x) cells, feature last, the missing tile NaN, every other slot NaN; only window 2 is marked
    filled (with its provenance); coordinates are cell centres; open_cube shows window 2 alone."""
    uri = str(tmp_path / "cube.zarr")
    written = write_window(uri, embedding_store(tmp_path, 2), 2)
    assert written == CubeWindowWritten(
        groups=(CubeZoneWritten(group="EPSG32632", epsg=EPSG, grid_shape=(6, 4, 6, 3), pooled_shape=(6, 2, 3, 4)),),
        tiles_written=5, tiles_empty=1, quantization=None)
    want = expected(2)
    for kind in GROUPS:
        emb = raw(uri, kind, "embedding")
        assert emb.shape == (len(STARTS), *want[kind].shape)
        assert np.array_equal(emb[2], want[kind], equal_nan=True), kind
        assert np.isnan(emb[2]).all(axis=-1).sum() == (GH * GW if kind == "grid" else 1)
        assert np.isnan(np.delete(emb, 2, axis=0)).all(), kind
        assert raw(uri, kind, "window_filled").tolist() == [0, 0, 1, 0, 0, 0], kind
        assert read_window_state(uri, GROUPS[kind]) == {2: {"window": 2}}
        days = [(dt.date.fromisoformat(s) - dt.date(1970, 1, 1)).days for s in STARTS]
        assert raw(uri, kind, "time").tolist() == days
    cell = SIDE / GW
    assert np.array_equal(raw(uri, "grid", "x"), LEFT + cell * (np.arange(len(COLS) * GW) + 0.5))
    assert np.array_equal(raw(uri, "grid", "y"), TOP - cell * (np.arange(len(ROWS) * GH) + 0.5))
    assert np.array_equal(raw(uri, "pooled", "x"), LEFT + SIDE * (np.arange(len(COLS)) + 0.5))

    ds = open_cube(uri)
    assert ds["embedding"].dims == ("time", "y", "x", "feature")
    assert starts_of(ds) == ["2024-03-01"]
    assert np.array_equal(ds["embedding"].values[0], want["grid"], equal_nan=True)
    # Tiles looked up by their centre in metres (x0 / y0 is the upper-left corner): (102, 500) has
    # its pooled vector, (101, 500) is window 2's missing tile.
    pooled = open_cube(uri, kind="pooled")
    ids = [t["tile_id"] for t in tiles()]

    def at(col: int, row: int) -> np.ndarray:
        cell = pooled["embedding"].sel(x=col * SIDE + SIDE / 2, y=row * SIDE - SIDE / 2, method="nearest")
        return cell.isel(time=0).values

    assert ids.index(tile_id(EPSG, SIZE, SCALE, 101, 500)) == missing_tile(2)
    assert np.isnan(at(101, 500)).all()
    assert np.array_equal(at(102, 500), tile_values(2, ids.index(tile_id(EPSG, SIZE, SCALE, 102, 500)))[0])
    assert open_cube(uri, filled_only=False).sizes["time"] == len(STARTS)


def test_window_marker_is_written_after_the_window_data(tmp_path, monkeypatch):
    """The chunk writes of a window as they reach the store: in each group the window's embedding
    chunks (only its own time slot) and its provenance, all returned before its window_filled
    chunk starts; the filled markers are the last chunks written."""
    store = embedding_store(tmp_path, 1)
    uri = str(tmp_path / "cube.zarr")
    write_window(uri, embedding_store(tmp_path, 0), 0)  # the cube exists: the write below is the fast path
    events = record_store_writes(monkeypatch)
    write_window(uri, store, 1)
    chunks = [(kind, key) for kind, key in events if "/c/" in key]
    markers = [f"{g}/window_filled/c/1" for g in GROUPS.values()]
    for group in GROUPS.values():
        data = [key for kind, key in chunks if kind == "done" and key.startswith(f"{group}/embedding/c/")]
        assert data and all(key.startswith(f"{group}/embedding/c/1/") for key in data), data
        before_marker = chunks[:chunks.index(("start", f"{group}/window_filled/c/1"))]
        assert set(data) | {f"{group}/window_provenance/c/1"} <= {k for kind, k in before_marker if kind == "done"}
    assert [key for _, key in chunks[-4:]] == [markers[0], markers[0], markers[1], markers[1]]


# --------------------------------------------------------------------------- failures
def assert_window_1_unmarked_window_0_intact(uri: str) -> None:
    """Window 0 complete; window 1's data written but not marked, so left out of open_cube's view."""
    for kind in GROUPS:
        assert raw(uri, kind, "window_filled").tolist() == [1, 0, 0, 0, 0, 0], kind
        assert read_window_state(uri, GROUPS[kind]) == {0: {"window": 0}}
        emb = raw(uri, kind, "embedding")
        assert np.array_equal(emb[0], expected(0)[kind], equal_nan=True), kind
        assert np.array_equal(emb[1], expected(1)[kind], equal_nan=True), kind  # the data did land
    for kind in GROUPS:
        ds = open_cube(uri, kind=kind)
        assert starts_of(ds) == ["2024-01-01"]
        assert np.array_equal(ds["embedding"].values[0], expected(0)[kind], equal_nan=True)


def assert_resumed(uri: str, store: TileStore) -> None:
    """Writing window 1 again marks it; both windows are then in open_cube's view, exact."""
    write_window(uri, store, 1)
    for kind in GROUPS:
        assert read_window_state(uri, GROUPS[kind]) == {0: {"window": 0}, 1: {"window": 1}}
        ds = open_cube(uri, kind=kind)
        assert starts_of(ds) == ["2024-01-01", "2024-02-01"]
        for t in (0, 1):
            assert np.array_equal(ds["embedding"].values[t], expected(t)[kind], equal_nan=True), (kind, t)


def test_exception_between_window_data_and_marker_leaves_it_unmarked(tmp_path, monkeypatch):
    """Window 1's marker write fails (an injected OSError, after its data and provenance): the
    write raises, window_filled stays 0 for window 1 in both groups, open_cube shows window 0 only,
    with its exact values; writing window 1 again completes it."""
    uri = str(tmp_path / "cube.zarr")
    write_window(uri, embedding_store(tmp_path, 0), 0)
    store = embedding_store(tmp_path, 1)
    original = LocalStore.set

    async def failing_marker(self, key, value):
        if key.endswith("/window_filled/c/1"):
            raise OSError(f"injected failure writing {key}")
        await original(self, key, value)

    with monkeypatch.context() as m:
        m.setattr(LocalStore, "set", failing_marker)
        with pytest.raises(OSError, match="injected failure writing EPSG32632/grid/window_filled/c/1"):
            write_window(uri, store, 1)
    assert_window_1_unmarked_window_0_intact(uri)
    assert json.loads(str(raw(uri, "grid", "window_provenance")[1])) == {"window": 1}  # written before the marker
    assert_resumed(uri, store)


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from zarr.storage import LocalStore
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline_tests.stores.test_cube_writer import write_window

uri, root, test, part = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
write_window(uri, TileStore.open(str(root / "emb-0.zarr"), "embeddings"), 0)   # a complete window
original = LocalStore.set

async def die_at_key(self, key, value):
    if getattr(key, test)(part):  # key.startswith(part) or key.endswith(part)
        os.kill(os.getpid(), signal.SIGKILL)
    await original(self, key, value)

LocalStore.set = die_at_key
write_window(uri, TileStore.open(str(root / "emb-1.zarr"), "embeddings"), 1)
print("not killed")
"""


def run_killed_writer(tmp_path: Path, test: str, part: str) -> tuple[str, TileStore, subprocess.CompletedProcess[str]]:
    """(cube URI, window 1's embedding store, the process) of a writer process that writes window 0,
    then window 1 until it SIGKILLs itself at the first store key that ``test`` (``"startswith"`` or
    ``"endswith"``) ``part``."""
    embedding_store(tmp_path, 0)
    store = embedding_store(tmp_path, 1)
    uri = str(tmp_path / "cube.zarr")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, uri, str(tmp_path), test, part], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    return uri, store, proc


def test_sigkill_between_window_data_and_marker_leaves_it_unmarked(tmp_path):
    """A writer process SIGKILLed when window 1's first filled marker is about to be written:
    window 1 is not marked (open_cube leaves it out) while window 0, written before by the same
    process, is complete and exact; a new writer of window 1 completes the cube."""
    # killed when window 1's data and provenance are written
    uri, store, proc = run_killed_writer(tmp_path, "endswith", "/window_filled/c/1")
    assert "not killed" not in proc.stdout
    assert_window_1_unmarked_window_0_intact(uri)
    assert_resumed(uri, store)


# --------------------------------------------------------------------------- concurrent writers
def create_cube_root(uri: str) -> None:
    """The cube's root alone, as a write of a window without any embedding (and no shapes to create
    the zone's groups with) leaves it."""
    written = write_cube_window(uri, CubeWindowWrite(tiles=tiles(), pooled={}, window_index=0,
                                                     window_starts=LONG_STARTS, windows_in_range=IN_RANGE,
                                                     attrs=ATTRS, fingerprint=FINGERPRINT))
    assert written.groups == ()
    assert sorted(p.name for p in Path(uri).iterdir()) == ["zarr.json"]


WRITER = """
import sys, time
from pathlib import Path
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline_tests.stores.test_cube_writer import LONG_STARTS, write_window

uri, emb, window, go, layout = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
store = TileStore.open(emb, "embeddings")
print("ready", flush=True)
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.002)
write_window(uri, store, window, LONG_STARTS, layout)
"""


def write_concurrently(mode: str, uri: str, stores: dict[int, TileStore], tmp_path: Path, monkeypatch,
                       layout: str = "chunked") -> None:
    """Each window written once by its own thread or process, all starting together. Threads also
    write their data blocks in lockstep (a barrier before each block: a row of tiles' feature maps,
    then the pooled plane), so that the two windows' chunks are written at the same time. (Once:
    a rewrite of the same window would repair a window lost to the other writer.)"""
    if mode == "threads":
        start = threading.Barrier(len(stores))
        lockstep = threading.Barrier(len(stores))
        blocks: list[int] = []
        write_block = cube_writer._write_block

        def in_lockstep(array, selection, value):
            lockstep.wait(timeout=60)
            blocks.append(selection[0])
            return write_block(array, selection, value)

        monkeypatch.setattr(cube_writer, "_write_block", in_lockstep)

        def writer(window: int) -> None:
            try:
                start.wait(timeout=60)
                write_window(uri, stores[window], window, LONG_STARTS, layout)
            except BaseException:
                lockstep.abort()  # the other writer fails at once instead of waiting
                raise

        with ThreadPoolExecutor(len(stores)) as pool:
            for future in [pool.submit(writer, w) for w in stores]:
                future.result(timeout=120)
        if layout == "chunked":
            # 2 rows of tiles + the pooled plane per window, every block in lockstep
            assert sorted(blocks) == sorted(list(stores) * (len(ROWS) + 1))
        else:  # one shard of the window's feature maps + the pooled plane per window
            assert sorted(blocks) == sorted(list(stores) * 2)
        return
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, store.uri, str(w), str(go), layout], cwd=REPO,
                              env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w, store in stores.items()]
    try:
        for proc in procs:  # both have imported zarr & co.: start them together
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("layout", ["chunked", "sharded"])
@pytest.mark.parametrize("mode", ["threads", "processes"])
@pytest.mark.parametrize(("windows", "length"), [((0, 1), 16), ((3, 20), 24)], ids=["adjacent", "axis-grows"])
def test_two_windows_written_at_once_both_land_whole_and_marked(tmp_path, monkeypatch, mode, windows, length,
                                                                layout):
    """Two writers of different windows of a cube at the same time, the cube holding its root only,
    so both may create the zone's groups and arrays (the root's own creation race is the xfail test
    below); with window 20 one grows the time axis from 16 to 24 while the other writes; threads
    write their data blocks in lockstep, processes as the scheduler lets them. Both windows hold
    exactly their values, both are marked in both groups and no other slot is, every time array
    and the consolidated metadata have the same length, and open_cube shows the two windows."""
    uri = str(tmp_path / "cube.zarr")
    create_cube_root(uri)
    stores = {w: embedding_store(tmp_path, w) for w in windows}
    write_concurrently(mode, uri, stores, tmp_path, monkeypatch, layout)
    shards = zarr.open_group(uri, mode="r")[f"{GROUPS['grid']}/embedding"].shards
    assert shards == (None if layout == "chunked" else (1, len(ROWS) * GH, len(COLS) * GW, D_GRID))

    consolidated = zarr.open_group(uri, mode="r", use_consolidated=True)
    for kind, group in GROUPS.items():
        assert read_window_state(uri, group) == {w: {"window": w} for w in windows}
        filled = raw(uri, kind, "window_filled")
        assert np.flatnonzero(filled).tolist() == list(windows)
        emb = raw(uri, kind, "embedding")
        for w in windows:
            assert np.array_equal(emb[w], expected(w)[kind], equal_nan=True), (kind, w)
        assert np.isnan(np.delete(emb, list(windows), axis=0)).all()
        for name in TIME_ARRAYS:
            assert raw(uri, kind, name).shape[0] == length, (kind, name)
            assert consolidated[f"{group}/{name}"].shape[0] == length, (kind, name)
        ds = open_cube(uri, kind=kind)
        assert starts_of(ds) == [LONG_STARTS[w] for w in windows]
        for t, w in enumerate(windows):
            assert np.array_equal(ds["embedding"].values[t], expected(w)[kind], equal_nan=True), (kind, w)


CREATOR = """
import sys, time
from pathlib import Path
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline_tests.stores.test_cube_writer import LONG_STARTS, write_window

uri, emb, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
root_doc, replace = Path(uri) / "zarr.json", Path.replace

def held_replace(self, target):
    # zarr's LocalStore writes zarr.json to a temporary *.partial file and renames it: hold the
    # rename of the root's document until the other writer has looked at the cube
    if Path(target) == root_doc and not go.exists():
        print("creating", flush=True)
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return replace(self, target)

Path.replace = held_replace
write_window(uri, TileStore.open(emb, "embeddings"), 0, LONG_STARTS)
"""


def test_a_cube_root_being_created_by_another_writer_does_not_refuse_a_write(tmp_path):
    """Writer A (a process) creating a new cube is held between writing the root's zarr.json to
    its temporary file and renaming it into place; writer B writes another window meanwhile. B
    should go on (creation is idempotent: the module docstring) and both windows end marked. Before
    the fix B raised CubeError "exists but is not a Zarr group" (two processes starting on a new cube
    hit it about one run in six)."""
    uri = str(tmp_path / "cube.zarr")
    first, second = embedding_store(tmp_path, 0), embedding_store(tmp_path, 1)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", CREATOR, uri, first.uri, str(go)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "creating", proc.stderr.read()[-3000:]
        assert [p.suffix for p in Path(uri).iterdir()] == [".partial"]  # A is mid-way through the root
        release = threading.Timer(1.0, go.touch)  # A finishes its root a moment after B has started
        release.start()
        write_window(uri, second, 1, LONG_STARTS)
    finally:
        go.touch()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    for group in GROUPS.values():
        assert read_window_state(uri, group) == {0: {"window": 0}, 1: {"window": 1}}


def test_a_root_whose_creator_was_killed_before_its_rename_is_created_after_a_wait(tmp_path, monkeypatch):
    """A cube folder holding only zarr's temporary root document (its creator was SIGKILLed between
    the write and the rename) is neither refused nor waited on forever: after ROOT_CREATION_WAIT_S the
    writer removes the temporary file, creates the root and writes its window."""
    monkeypatch.setattr(cube_root, "ROOT_CREATION_WAIT_S", 0.3)
    uri = str(tmp_path / "cube.zarr")
    Path(uri).mkdir()
    (Path(uri) / "zarr.0123abcd.partial").write_text('{"zarr_format": 3, "node_type": "gr')  # cut short
    write_window(uri, embedding_store(tmp_path, 1), 1, STARTS)
    assert not any(p.suffix == ".partial" for p in Path(uri).iterdir())
    for kind in GROUPS:
        assert np.flatnonzero(raw(uri, kind, "window_filled")).tolist() == [1]
        assert np.array_equal(raw(uri, kind, "embedding")[1], expected(1)[kind], equal_nan=True)


def test_a_foreign_folder_is_still_refused(tmp_path):
    """Anything else in a folder without a root (not a temporary root document) is not this writer's
    to touch: refused, named, and left as it was."""
    uri = str(tmp_path / "cube.zarr")
    Path(uri).mkdir()
    (Path(uri) / "notes.txt").write_text("mine")
    with pytest.raises(CubeError, match=r"cube\.zarr exists but is not a Zarr group; it was left untouched"):
        write_window(uri, embedding_store(tmp_path, 0), 0, STARTS)
    assert [p.name for p in Path(uri).iterdir()] == ["notes.txt"]
