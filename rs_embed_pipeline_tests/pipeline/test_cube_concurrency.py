"""Writers of different windows of one cube, in separate processes, at the same time: on a local
disk and on S3 (moto), with the time axis growing under them. The cube must end exactly as one
writer leaves it (values, markers, shapes, consolidated metadata)."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from rs_embed_pipeline.stores.cube import (
    TIME_ARRAYS, CallableGrids, CubeError, CubeWindowWrite, read_window_state, write_cube_window,
)
from rs_embed_pipeline_tests.pipeline import cube_hammer as H
from rs_embed_pipeline_tests.pipeline.conftest import REPO

GROUPS = ["EPSG32632/grid", "EPSG32632/pooled"]
# Windows 30+ lie beyond the axis allocated at creation (4 windows in range -> 16): writers grow
# it (to 48, then 64) while the other writes.
WRITER_A = [0, 30, 2, 45]
WRITER_B = [1, 31, 3, 40]


def hammer(uri: str, tmp: Path, repeats: int, options: dict | None = None, env: dict | None = None) -> float:
    go = tmp / "go"
    args = [[sys.executable, "-m", "rs_embed_pipeline_tests.pipeline.cube_hammer", uri,
             ",".join(map(str, w)), str(repeats), str(go)] + ([json.dumps(options)] if options else [])
            for w in (WRITER_A, WRITER_B)]
    run_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **(env or {})}
    procs = [subprocess.Popen(a, cwd=REPO, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in args]
    for proc in procs:  # both have imported zarr & co.: start them together
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
    t0 = time.monotonic()
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return time.monotonic() - t0


def open_root(uri: str, options: dict | None, consolidated: bool) -> zarr.Group:
    return zarr.open_group(uri, mode="r", use_consolidated=consolidated, storage_options=options)


def snapshot(uri: str, options: dict | None = None) -> dict[str, object]:
    """Every key of the cube: chunk bytes, and metadata documents parsed (formatting aside).
    Leftover temporary files of killed writers are not keys."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **(options or {}))
    out: dict[str, object] = {}
    for path in fs.find(root):
        key = path[len(root.rstrip("/")) + 1:]
        if key.endswith(".partial"):
            continue
        data = fs.cat_file(path)
        out[key] = json.loads(data) if key.endswith("zarr.json") else data
    return out


def assert_same_cube(uri: str, ref: str, options: dict | None = None) -> None:
    """Key for key, byte for byte (metadata documents as parsed JSON) what one writer leaves."""
    got, want = snapshot(uri, options), snapshot(ref)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key
    for group in GROUPS:
        assert sorted(read_window_state(ref, group)) == sorted(WRITER_A + WRITER_B)
        # xarray's default view (consolidated metadata) shows the same shapes as the arrays
        consolidated, fresh = open_root(ref, None, True)[group], open_root(ref, None, False)[group]
        for name in TIME_ARRAYS:
            assert consolidated[name].shape == fresh[name].shape


@pytest.fixture(scope="module")
def single_writer(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("single") / "cube.zarr")
    for window in WRITER_A + WRITER_B:
        H.write_window(uri, window)
    return uri


def test_single_writer_cube(single_writer):
    root = zarr.open_group(single_writer, mode="r")
    emb = root["EPSG32632/grid/embedding"]
    assert emb.shape == (64, 12, 12, 6)  # 16 at creation, grown to keep the margin beyond window 45
    for window in WRITER_A + WRITER_B:
        _, grids = H.window_values(window)
        k = window % 9  # the tile without an embedding: column k // 3, northing row k % 3
        r, c = 2 - k % 3, k // 3
        assert np.isnan(emb[window, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]).all()
        assert np.isfinite(emb[window]).sum() == 8 * 4 * 4 * 6  # 8 of 9 tiles have an embedding
        tid = H.tiles()[(k + 1) % 9]["tile_id"]
        k1 = (k + 1) % 9
        r, c = 2 - k1 % 3, k1 // 3
        assert np.array_equal(emb[window, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4], np.moveaxis(grids[tid], 0, -1))
    assert root["EPSG32632/grid/window_filled"][:].sum() == 8


def test_two_processes_hammering_different_windows_local(tmp_path, single_writer):
    uri = str(tmp_path / "cube.zarr")
    hammer(uri, tmp_path, repeats=3)
    assert_same_cube(uri, single_writer)


def test_two_processes_hammering_different_windows_s3(tmp_path, single_writer):
    pytest.importorskip("s3fs")
    from rs_embed_pipeline_tests.pipeline.servers import moto_server

    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_server(tmp_path) as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket="cubes")
        options = {"endpoint_url": endpoint}
        uri = "s3://cubes/region.zarr"
        old = {k: os.environ.get(k) for k in creds}
        os.environ.update(creds)
        try:
            hammer(uri, tmp_path, repeats=1, options=options, env=creds)
            assert_same_cube(uri, single_writer, options)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def test_rewriting_a_window_is_idempotent_and_clears_stale_tiles(tmp_path):
    uri = str(tmp_path / "cube.zarr")
    H.write_window(uri, 2)
    first = open_root(uri, None, False)["EPSG32632/grid/embedding"][2]
    H.write_window(uri, 2)
    assert np.array_equal(open_root(uri, None, False)["EPSG32632/grid/embedding"][2], first, equal_nan=True)
    # The same window from other embeddings (one tile fewer): that tile is NaN afterwards, and the
    # provenance says where the window came from.
    pooled, grids = H.window_values(2)
    dropped = sorted(pooled)[0]
    del pooled[dropped]
    write_cube_window(uri, CubeWindowWrite(
        tiles=H.tiles(), pooled=pooled, reader=CallableGrids(grids=grids.__getitem__), window_index=2,
        window_starts=H.WINDOW_STARTS, windows_in_range=H.IN_RANGE, attrs={"title": "hammer"},
        fingerprint="hammer-v1", provenance={"window": 2, "rebuilt": True}))
    assert read_window_state(uri, GROUPS[0])[2] == {"window": 2, "rebuilt": True}
    after = open_root(uri, None, False)["EPSG32632/pooled/embedding"][2]
    assert np.isnan(after).all(axis=-1).sum() == 2  # the window's own gap and the dropped tile


def test_cube_with_other_settings_or_not_a_cube_is_refused_and_untouched(tmp_path):
    uri = str(tmp_path / "cube.zarr")
    H.write_window(uri, 0)
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    pooled, grids = H.window_values(1)
    request = CubeWindowWrite(tiles=H.tiles(), pooled=pooled, reader=CallableGrids(grids=grids.__getitem__),
                              window_index=1, window_starts=H.WINDOW_STARTS, attrs={})
    with pytest.raises(CubeError, match="was built with other settings"):
        write_cube_window(uri, dataclasses.replace(request, fingerprint="other-model"))
    with pytest.raises(CubeError, match="time axis that differs"):
        write_cube_window(uri, dataclasses.replace(request, fingerprint="hammer-v1",
                                                   window_starts=H.WINDOW_STARTS[1:]))
    moved = [{**t, "x0": t["x0"] + 10.0} for t in H.tiles()]
    with pytest.raises(CubeError, match="coordinates differ"):
        write_cube_window(uri, dataclasses.replace(request, fingerprint="hammer-v1", tiles=moved))
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w", attributes={"title": "someone else's"})
    with pytest.raises(CubeError, match="is not a cube"):
        write_cube_window(str(foreign), dataclasses.replace(request, fingerprint="hammer-v1"))
    assert zarr.open_group(str(foreign), mode="r").attrs["title"] == "someone else's"
    # rebuild replaces it
    write_cube_window(uri, dataclasses.replace(request, fingerprint="other-model", rebuild=True))
    assert open_root(uri, None, False).attrs["fingerprint"] == "other-model"
    assert sorted(read_window_state(uri, GROUPS[0])) == [1]
