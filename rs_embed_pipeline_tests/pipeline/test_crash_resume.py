"""A kill costs rework, never a corrupt store: SIGKILL the pipeline mid-fetch, mid-embedding and
mid-cube write, resume, and compare with an uninterrupted run bit for bit. Also: two runs of
different windows writing one cube at the same time, and a SIGKILL in the middle of chunk writes.

The runs are separate processes (``crash_harness.py``: the S2 / TerraFM chain for one partition,
reduced fixture models, pixels from the fast synthesizer in ``fakes.py``); a kill hook named by
``RS_EMBED_TEST_KILL`` SIGKILLs the whole process group (orchestrator and model worker) at a
deterministic point.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from rs_embed_pipeline.stores import STATUS_CODES, TileStore
from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, read_window_state, write_cube_window
from rs_embed_pipeline_tests.pipeline.conftest import REPO

BBOX = ["6.575", "46.48", "6.635", "46.528"]  # 9 tiles of 224 px, 7 of 288 px
JAN, FEB = "2024-01-01", "2024-02-01"
JAN_INDEX = 0
PATCHES = ["patches/s2/crash/{w}/p224.zarr", "patches/s2/crash/{w}/p288.zarr"]
EMBEDDINGS = "embeddings/terrafm_b_s2/crash/{w}.zarr"
CUBE = "cubes/terrafm_b_s2/crash.zarr"
CUBE_GROUPS = ["EPSG32632/grid", "EPSG32632/pooled"]


@pytest.fixture(scope="module")
def shim(tmp_path_factory, worker_python) -> str:
    """The worker interpreter, via the harness (which installs the worker's kill hook)."""
    path = tmp_path_factory.mktemp("shim") / "worker-python"
    path.write_text(f'#!/bin/sh\nexec "{worker_python}" -m rs_embed_pipeline_tests.pipeline.crash_harness --worker "$@"\n')
    path.chmod(0o755)
    return str(path)


def start(tmp: Path, window: str, shim: str, kill: str | None = None, env_extra: dict[str, str] | None = None,
          result: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    env.pop("RS_EMBED_TEST_KILL", None)
    if kill:
        env["RS_EMBED_TEST_KILL"] = kill
    env.update(env_extra or {})
    label = f"{tmp.name}-{window}-{kill or 'full'}" + (f"-{result.stem}" if result else "")
    log = open(tmp.parent / f"{label}.log".replace(":", "_"), "w")
    return subprocess.Popen(
        [sys.executable, "-m", "rs_embed_pipeline_tests.pipeline.crash_harness", "--tmp", str(tmp),
         "--window", window, "--worker-python", shim, "--bbox", *BBOX,
         *(["--result", str(result)] if result else [])],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, expect_kill: bool) -> None:
    try:
        rc = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    log = Path(proc.args[proc.args.index("--tmp") + 1]).parent.glob("*.log")
    tail = "\n".join(p.read_text()[-3000:] for p in log)
    if expect_kill:
        assert rc == -signal.SIGKILL, f"expected the run to be killed, rc={rc}\n{tail}"
    else:
        assert rc == 0, f"run failed, rc={rc}\n{tail}"


def run(tmp: Path, window: str, shim: str, kill: str | None = None) -> None:
    finish(start(tmp, window, shim, kill), expect_kill=kill is not None)


def _stores(root: Path, window: str) -> dict[str, Path]:
    paths = {p.format(w=window): root / p.format(w=window) for p in PATCHES}
    paths[EMBEDDINGS.format(w=window)] = root / EMBEDDINGS.format(w=window)
    return paths


def assert_done_tiles_whole(root: Path, ref: Path, window: str) -> int:
    """Every tile marked done in ``root`` holds exactly the reference's values; returns how many."""
    done = 0
    for name, path in _stores(root, window).items():
        if not path.exists():
            continue
        kind = "embeddings" if name.startswith("embeddings") else "patches"
        store, expected = TileStore.open(str(path), kind), TileStore.open(str(ref / name), kind)
        ok = np.flatnonzero(store.statuses() == STATUS_CODES["ok"])
        arrays = ("pooled", "grid") if kind == "embeddings" else ("data", "valid")
        for array in arrays:
            assert np.array_equal(store.read(array, ok), expected.read(array, ok)), f"{name}/{array}"
        done += len(ok)
    return done


def assert_same_as(root: Path, ref: Path, window: str) -> None:
    for name, path in _stores(root, window).items():
        kind = "embeddings" if name.startswith("embeddings") else "patches"
        store, expected = TileStore.open(str(path), kind), TileStore.open(str(ref / name), kind)
        assert store.fingerprint == expected.fingerprint, name
        assert np.array_equal(store.statuses(), expected.statuses()), name
        assert (store.statuses() == STATUS_CODES["ok"]).all(), name
        for array in ("pooled", "grid") if kind == "embeddings" else ("data", "valid"):
            assert np.array_equal(store.group[array][:], expected.group[array][:]), f"{name}/{array}"
        assert [store.tile_meta(i) for i in range(len(store.tile_ids))] == \
            [expected.tile_meta(i) for i in range(len(expected.tile_ids))], name
        assert store.group.attrs.get("synthetic_imagery") == expected.group.attrs.get("synthetic_imagery")


def assert_cube_window_same(root: Path, ref: Path, index: int) -> None:
    got, want = zarr.open_group(str(root / CUBE), mode="r"), zarr.open_group(str(ref / CUBE), mode="r")
    assert got.attrs["fingerprint"] == want.attrs["fingerprint"]
    for group in CUBE_GROUPS:
        for name in ("x", "y", "feature", "time"):
            assert np.array_equal(got[group][name][:], want[group][name][:]), f"{group}/{name}"
        a, b = got[group]["embedding"][index], want[group]["embedding"][index]
        assert np.isfinite(a).any()
        assert np.array_equal(a, b, equal_nan=True), group
        assert read_window_state(str(root / CUBE), group)[index] == read_window_state(str(ref / CUBE), group)[index]


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory, shim) -> Path:
    """Two uninterrupted runs started together, January and February, one store root (so one
    cube). January's stores are the reference of the kill test."""
    tmp = tmp_path_factory.mktemp("concurrent") / "run"
    procs = [start(tmp, JAN, shim, result=tmp.parent / "jan.json"), start(tmp, FEB, shim)]
    for proc in procs:
        finish(proc, expect_kill=False)
    return tmp / "store"


@pytest.fixture(scope="module")
def reference(concurrent) -> Path:
    return concurrent


def test_kill_during_fetch_embedding_and_cube_write_then_resume(tmp_path, shim, reference):
    tmp = tmp_path / "run"
    root = tmp / "store"

    # 1. Killed while fetching: patches are written in batches (8, then 1), two batches at a time;
    #    the write that reaches the 9th tile dies after its arrays, before its statuses. Which of
    #    the two batches that is depends on thread timing; either way some tiles are done, the
    #    others pending, and every tile marked done is whole.
    run(tmp, JAN, shim, kill="fetch:9")
    p224 = TileStore.open(str(root / PATCHES[0].format(w=JAN)), "patches")
    counts = p224.status_counts()
    assert counts["ok"] in (1, 8) and counts["ok"] + counts["pending"] == 9, counts
    assert assert_done_tiles_whole(root, reference, JAN) == counts["ok"]

    # 2. The resumed run fetches the rest, then dies in the worker while writing the third batch
    #    of embeddings (batches of 2: tiles 0-3 done, 4-5 written but not marked).
    run(tmp, JAN, shim, kill="embed:6")
    emb = TileStore.open(str(root / EMBEDDINGS.format(w=JAN)), "embeddings")
    assert emb.status_counts()["ok"] == 4
    assert TileStore.open(str(root / PATCHES[1].format(w=JAN)), "patches").status_counts()["ok"] == 7
    assert assert_done_tiles_whole(root, reference, JAN) == 9 + 7 + 4

    # 3. Resumed again: embeddings finish, then the cube write dies before its second block (the
    #    window's feature-map shard is written, its pooled plane not): the window is not marked.
    run(tmp, JAN, shim, kill="cube:2")
    assert TileStore.open(str(root / EMBEDDINGS.format(w=JAN)), "embeddings").status_counts()["ok"] == 9
    for group in CUBE_GROUPS:
        assert JAN_INDEX not in read_window_state(str(root / CUBE), group)

    # 4. The last run completes: every store and the cube equal the uninterrupted run's.
    run(tmp, JAN, shim)
    assert_same_as(root, reference, JAN)
    assert_cube_window_same(root, reference, JAN_INDEX)


def test_sigkilled_model_worker_is_retried_and_the_run_ends_like_an_uninterrupted_one(tmp_path, shim, reference):
    """One real run (its own process; the model worker a Pipes subprocess): the worker of the
    embeddings step is SIGKILLed alone, mid-write (an OOM kill). The step's RetryPolicy retries it in
    the same run, the store resumes, and the run succeeds with the numbers and stores of an
    uninterrupted run."""
    import json

    tmp, marker, result = tmp_path / "run", tmp_path / "killed", tmp_path / "result.json"
    # One I/O thread in the worker: the kill point ("the write that reaches the 6th tile") is defined in
    # write order, which several writer threads do not keep; resuming after a kill with several writers
    # is what the uninterrupted comparison below checks in the other tests of this file.
    finish(start(tmp, JAN, shim, kill="worker:6", result=result,
                 env_extra={"RS_EMBED_TEST_KILL_ONCE": str(marker), "RS_EMBED_STEP_RETRY_DELAY_S": "1",
                            "RS_EMBED_IO_THREADS": "1"}),
           expect_kill=False)
    # The kill landed mid-write: batches of 2, tiles 0-3 marked ok, 4-5 written but not marked.
    killed = json.loads(marker.read_text())
    assert killed["status_counts"]["ok"] == 4 and killed["status_counts"]["pending"] == 5, killed
    assert killed["arrays_written_unmarked"] == [4, 5], killed
    outcome = json.loads(result.read_text())
    assert outcome["success"] is True
    assert outcome["step_retries"] == {"terrafm_s2_embeddings": 1}, outcome["step_retries"]
    uninterrupted = json.loads((reference.parent.parent / "jan.json").read_text())
    assert uninterrupted["step_retries"] == {}
    assert outcome["counts"] == uninterrupted["counts"]
    assert outcome["counts"]["terrafm_s2_embeddings"] == {"tiles_ok": 9, "tiles_no_data": 0, "tiles_failed": 0}
    root = tmp / "store"
    assert_same_as(root, reference, JAN)
    assert_cube_window_same(root, reference, JAN_INDEX)


def test_two_runs_of_one_partition_at_once_write_one_after_the_other(tmp_path, shim, reference):
    """Two runs of the same region x window started together: one holds the partition's lease, the
    other waits for it (logging which run writes), then finds every store done. Both succeed, and
    every store equals a single run's."""
    import json

    tmp = tmp_path / "run"
    procs = [start(tmp, JAN, shim, result=tmp_path / f"{name}.json") for name in ("a", "b")]
    for proc in procs:
        finish(proc, expect_kill=False)
    outcomes = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")}
    assert all(o["success"] for o in outcomes.values())
    logs = {name: next(tmp_path.glob(f"run-{JAN}-full-{name}.log")).read_text() for name in ("a", "b")}
    waited = [name for name, text in logs.items() if "is being written by run" in text]
    assert len(waited) == 1, "exactly one run waited for the other"
    other = outcomes["b" if waited == ["a"] else "a"]["run_id"]
    assert f"crash|{JAN} is being written by run {other}" in logs[waited[0]]
    # The run that waited found everything done: it fetched and embedded nothing.
    first = "b" if waited == ["a"] else "a"
    assert outcomes[waited[0]]["work"]["s2_patches"] == {"tiles_fetched_now": 0}
    assert outcomes[waited[0]]["work"]["terrafm_s2_embeddings"] == {"tiles_embedded_now": 0}
    assert outcomes[first]["work"]["s2_patches"] == {"tiles_fetched_now": 9 + 7}
    assert outcomes[first]["work"]["terrafm_s2_embeddings"] == {"tiles_embedded_now": 9}
    assert outcomes["a"]["counts"] == outcomes["b"]["counts"]
    assert_same_as(tmp / "store", reference, JAN)
    assert_cube_window_same(tmp / "store", reference, JAN_INDEX)


def test_second_run_of_a_running_partition_fails_naming_the_running_run(tmp_path, shim):
    """With RS_EMBED_LEASE_WAIT_S=0 the second run does not wait: it fails at once, and its error
    names the run that holds the partition and what to do."""
    import json

    tmp = tmp_path / "run"
    env = {"RS_EMBED_LEASE_WAIT_S": "0"}
    procs = [start(tmp, JAN, shim, result=tmp_path / f"{name}.json", env_extra=env) for name in ("a", "b")]
    rcs = [proc.wait(timeout=300) for proc in procs]
    outcomes = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")}
    assert sorted(o["success"] for o in outcomes.values()) == [False, True], rcs
    (loser,) = [n for n, o in outcomes.items() if not o["success"]]
    winner = outcomes["b" if loser == "a" else "a"]["run_id"]
    errors = " ".join(outcomes[loser]["errors"])
    assert f"crash|{JAN} is being written by run {winner}" in errors, errors
    assert "One run writes a region x window at a time" in errors and f"Wait for run {winner}" in errors


def test_two_windows_written_concurrently(tmp_path, concurrent):
    """Two runs (January, February) wrote one cube at the same time: each window equals what a
    single writer writes from the same embeddings into a fresh cube, and the metadata that xarray
    reads (consolidated) agrees with the arrays."""
    import geopandas as gpd
    import xarray as xr

    root = concurrent
    cube = zarr.open_group(str(root / CUBE), mode="r")
    starts = _window_starts(cube)
    assert starts[:2] == [JAN, FEB]
    for index, window in enumerate((JAN, FEB)):
        grid = gpd.read_parquet(root / f"tile_grid/crash/{window}.parquet")
        tiles = grid[grid["size_px"] == 224][["tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m"]]
        emb = TileStore.open(str(root / EMBEDDINGS.format(w=window)), "embeddings")
        assert (emb.statuses() == STATUS_CODES["ok"]).all()
        ids = emb.tile_ids
        single = tmp_path / f"single-{window}.zarr"
        write_cube_window(str(single), CubeWindowWrite(
            tiles=tiles.to_dict("records"), pooled=dict(zip(ids, emb.read("pooled", range(len(ids))))),
            reader=CallableGrids(grids=lambda tid, emb=emb, ids=ids: emb.read("grid", [ids.index(tid)])[0]),
            window_index=index, window_starts=starts, attrs={}, fingerprint=cube.attrs["fingerprint"],
            provenance=read_window_state(str(root / CUBE), CUBE_GROUPS[0])[index]))
        for group in CUBE_GROUPS:
            a = cube[group]["embedding"][index]
            b = zarr.open_group(str(single), mode="r")[group]["embedding"][index]
            assert np.isfinite(a).all(), (group, window)
            assert np.array_equal(a, b), (group, window)
    for group in CUBE_GROUPS:
        assert sorted(read_window_state(str(root / CUBE), group)) == [0, 1]
        ds = xr.open_zarr(root / CUBE, group=group)  # consolidated metadata, as users open it
        assert ds["window_filled"].values[:3].tolist() == [1, 1, 0]
        assert ds.sizes["time"] == cube[group]["embedding"].shape[0] == cube[group]["time"].shape[0]
    assert not np.array_equal(cube[CUBE_GROUPS[0]]["embedding"][0], cube[CUBE_GROUPS[0]]["embedding"][1])


def _window_starts(cube: zarr.Group) -> list[str]:
    import datetime as dt

    days = cube[CUBE_GROUPS[0]]["time"][:]
    return [(dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat() for d in days]


WRITER = """
import sys, numpy as np
from rs_embed_pipeline.stores import ArraySpec, TileStore
uri = sys.argv[1]
store = TileStore.create_or_open(uri, "patches", tile_ids=[f"t{i}" for i in range(64)],
    arrays=[ArraySpec("data", (4, 256, 256), ("band", "y", "x"))], fingerprint="f", attrs={})
todo = np.flatnonzero(store.statuses() != 1)
print("ready", flush=True)
for i in todo:
    store.write_tile(int(i), "ok", {"i": int(i)}, data=np.random.default_rng(int(i)).random((4, 256, 256), dtype=np.float32))
"""


def test_sigkill_at_random_moments_never_leaves_a_half_written_tile(tmp_path):
    """Real SIGKILLs at arbitrary moments while tiles (1 MiB chunks) are being written: a tile
    marked ok always reads back whole and exact (atomic chunk writes + status written last)."""
    uri = str(tmp_path / "kill.zarr")
    rng = np.random.default_rng(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, uri], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = TileStore.open(uri, "patches")
        for i in np.flatnonzero(store.statuses() == 1):
            expected = np.random.default_rng(int(i)).random((4, 256, 256), dtype=np.float32)
            assert np.array_equal(store.read("data", [i])[0], expected), f"tile {i} after kill {attempt}"
            assert store.tile_meta(int(i)) == {"i": int(i)}
    # Finishing the job afterwards leaves every tile whole.
    subprocess.run([sys.executable, "-c", WRITER, uri], env=env, check=True, capture_output=True)
    store = TileStore.open(uri, "patches")
    assert (store.statuses() == 1).all()
    for i in range(64):
        assert np.array_equal(store.read("data", [i])[0],
                              np.random.default_rng(i).random((4, 256, 256), dtype=np.float32))
