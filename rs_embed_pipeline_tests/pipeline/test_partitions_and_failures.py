"""Backfill batches, empty windows, resume, corrupt stores and the schedule."""

import datetime as dt
import json

import dagster as dg
import numpy as np
import pytest
import xarray as xr
import zarr

from rs_embed_pipeline.stores import STATUS_CODES, TileStore
from rs_embed_pipeline_tests.pipeline.conftest import build_test_definitions

S2_CHAIN = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube"]
Q1 = dg.MultiPartitionKey({"region": "tiny", "window": "2024-01-01"})
Q2 = dg.MultiPartitionKey({"region": "tiny", "window": "2024-04-01"})


def _job(defs: dg.Definitions, selection: list[str]) -> dg.JobDefinition:
    job = dg.define_asset_job("under_test", selection=selection)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("under_test")


@pytest.fixture
def env(tmp_path, synthetic_catalog, worker_python):
    defs, store_root = build_test_definitions(tmp_path, synthetic_catalog, worker_python)
    with dg.instance_for_test() as instance:
        yield {"defs": defs, "store": store_root, "instance": instance}


def test_backfill_batch_of_two_windows_one_without_imagery(env):
    """One run, two partitions (asset bodies loop over partition_keys); Q2 has no imagery at all."""
    result = _job(env["defs"], S2_CHAIN).execute_in_process(
        instance=env["instance"],
        tags={"dagster/asset_partition_range_start": str(Q1), "dagster/asset_partition_range_end": str(Q2)},
    )
    assert result.success
    store = env["store"]
    q1 = TileStore.open(str(store / "patches/s2/tiny/2024-01-01/p224.zarr"), "patches")
    q2 = TileStore.open(str(store / "patches/s2/tiny/2024-04-01/p224.zarr"), "patches")
    assert q1.status_counts()["ok"] == len(q1.tile_ids) >= 1
    assert q2.status_counts()["no_data"] == len(q2.tile_ids)
    assert "no" in q2.tile_meta(0)["reason"].lower()
    emb_q2 = TileStore.open(str(store / "embeddings/terrafm_b_s2/tiny/2024-04-01.zarr"), "embeddings")
    assert emb_q2.status_counts()["no_data"] == len(q2.tile_ids)

    mats = [e.materialization for e in result.get_asset_materialization_events()
            if e.materialization.asset_key == dg.AssetKey("terrafm_s2_embeddings")]
    assert sorted(str(m.partition) for m in mats) == sorted([str(Q1), str(Q2)])
    table = mats[0].metadata["tile_status"].value
    assert {r.data["partition"] for r in table.records} == {str(Q1), str(Q2)}

    cube = xr.open_zarr(store / "cubes/terrafm_b_s2/tiny.zarr", group="EPSG32632/grid")
    assert [str(t)[:10] for t in cube["time"].values[:2]] == ["2024-01-01", "2024-04-01"]
    # Both windows were written; the one without imagery is all NaN (no chunk stored).
    assert cube["window_filled"].values[:3].tolist() == [1, 1, 0]
    assert np.isfinite(cube["embedding"].isel(time=0).values).all()
    assert np.isnan(cube["embedding"].isel(time=1).values).all()

    # The UI plots metadata over partitions: every partition of the batch has the same keys, and
    # the per-partition values (tile counts, preview) are its own, not the batch's.
    by_asset: dict = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        by_asset.setdefault(mat.asset_key.to_user_string(), {})[str(mat.partition)] = mat.metadata
    for name, per_partition in by_asset.items():
        assert set(per_partition) == {str(Q1), str(Q2)}, name
        assert set(per_partition[str(Q1)]) == set(per_partition[str(Q2)]), name
    for name in S2_CHAIN[1:]:
        assert by_asset[name][str(Q1)]["tiles_ok"].value >= 1, name
        assert by_asset[name][str(Q2)]["tiles_ok"].value == 0, name
    assert by_asset["tile_grid"][str(Q1)]["tiles"].value == by_asset["tile_grid"][str(Q2)]["tiles"].value >= 2
    assert "data:image/png" in by_asset["terrafm_s2_cube"][str(Q1)]["preview"].value
    assert "data:image/png" not in by_asset["terrafm_s2_cube"][str(Q2)]["preview"].value

    # The checks speak per partition: Q2 has no imagery, so coverage fails and names Q2 alone,
    # although over the whole batch half the tiles have imagery (which used to pass).
    checks = {(e.asset_check_evaluation_data.asset_check_key.asset_key.to_user_string(),
               e.asset_check_evaluation_data.asset_check_key.name): e.asset_check_evaluation_data
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    for asset, check in (("s2_patches", "valid_coverage"), ("terrafm_s2_cube", "coverage")):
        evaluation = checks[(asset, check)]
        assert not evaluation.passed, (asset, check)
        assert evaluation.metadata["failing_partitions"].value == [str(Q2)], (asset, check)
        assert evaluation.metadata["coverage_per_partition"].value == {str(Q1): 1.0, str(Q2): 0.0}, (asset, check)
        assert evaluation.metadata["min_coverage"].value == 0.0
        assert str(Q2) in evaluation.description and str(Q1) not in evaluation.description
    finite = checks[("terrafm_s2_embeddings", "all_values_finite")]
    assert finite.passed and finite.metadata["failing_partitions"].value == []
    assert finite.metadata["nonfinite_per_partition"].value == {str(Q1): 0, str(Q2): 0}


def test_appending_a_window_keeps_earlier_chunks(env, synthetic_catalog):
    job = _job(env["defs"], S2_CHAIN)
    assert job.execute_in_process(instance=env["instance"], partition_key=Q1).success
    cube_path = env["store"] / "cubes/terrafm_b_s2/tiny.zarr"
    # Data chunks live under c/ (zarr v3); only the array's zarr.json (its shape) may change.
    chunk_files = sorted(p for p in (cube_path / "EPSG32632/grid/embedding/c").rglob("*") if p.is_file())
    assert chunk_files
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in chunk_files}
    # The synthetic catalog covers Q1 only, so window 2024-07-01 is written directly by the cube writer.
    from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window

    import geopandas as gpd

    grid = gpd.read_parquet(env["store"] / "tile_grid/tiny/2024-01-01.parquet")
    tiles = grid[grid["size_px"] == 224][["tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m"]].to_dict("records")
    emb = TileStore.open(str(env["store"] / "embeddings/terrafm_b_s2/tiny/2024-01-01.zarr"), "embeddings")
    ids = emb.tile_ids
    pooled = dict(zip(ids, emb.read("pooled", range(len(ids)))))
    write_cube_window(str(cube_path), CubeWindowWrite(
        tiles=tiles, pooled=pooled, reader=CallableGrids(grids=lambda tid: emb.read("grid", [ids.index(tid)])[0] * 2),
        window_index=2, window_starts=["2024-01-01", "2024-04-01", "2024-07-01"], attrs={}))
    for path, (mtime, payload) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == payload, f"{path} was rewritten"
    cube = xr.open_zarr(cube_path, group="EPSG32632/grid")
    assert [str(t)[:10] for t in cube["time"].values[:3]] == ["2024-01-01", "2024-04-01", "2024-07-01"]
    assert cube["window_filled"].values[:3].tolist() == [1, 0, 1]
    assert np.isnan(cube["embedding"].isel(time=1).values).all()
    np.testing.assert_allclose(cube["embedding"].isel(time=2).values, 2 * cube["embedding"].isel(time=0).values)


def test_rerun_skips_done_tiles_and_refuses_other_settings(env):
    job = _job(env["defs"], ["tile_grid", "s2_patches"])
    assert job.execute_in_process(instance=env["instance"], partition_key=Q1).success
    path = env["store"] / "patches/s2/tiny/2024-01-01/p224.zarr"
    store = TileStore.open(str(path), "patches", mode="r+")
    # Mark one tile failed: the next run must refetch exactly that one.
    store.group["status"][0] = STATUS_CODES["failed"]
    result = job.execute_in_process(instance=env["instance"], partition_key=Q1)
    assert result.success
    assert TileStore.open(str(path), "patches").status_counts()["ok"] == len(store.tile_ids)
    mat = [e.materialization for e in result.get_asset_materialization_events()
           if e.materialization.asset_key == dg.AssetKey("s2_patches")][0]
    assert mat.metadata["tiles_fetched_now"].value == 1, "only the failed tile is refetched"

    # A store built with other settings (here: a foreign fingerprint) is refused and left untouched.
    zarr.open_group(str(path), mode="r+").attrs["fingerprint"] = "0" * 64
    result = job.execute_in_process(instance=env["instance"], partition_key=Q1, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "was built with other settings" in failure.step_failure_data.error.message
    assert zarr.open_group(str(path), mode="r").attrs["fingerprint"] == "0" * 64

    result = job.execute_in_process(
        instance=env["instance"], partition_key=Q1,
        run_config={"ops": {"s2_patches": {"config": {"rebuild": True}}}},
    )
    assert result.success
    assert zarr.open_group(str(path), mode="r").attrs["fingerprint"] != "0" * 64


def test_corrupt_store_is_detected_not_overwritten(env):
    path = env["store"] / "patches/s2/tiny/2024-01-01/p224.zarr"
    path.mkdir(parents=True)
    (path / "zarr.json").write_text("{ this is not json")
    (path / "precious.bin").write_bytes(b"keep me")
    result = _job(env["defs"], ["tile_grid", "s2_patches"]).execute_in_process(
        instance=env["instance"], partition_key=Q1, raise_on_error=False)
    assert not result.success
    message = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.message
    assert "is not a readable Zarr group" in message and "left untouched" in message
    assert (path / "precious.bin").read_bytes() == b"keep me"
    assert (path / "zarr.json").read_text() == "{ this is not json"


def test_schedule_requests_latest_complete_window_for_every_region(tmp_path, synthetic_catalog, worker_python):
    defs, _ = build_test_definitions(tmp_path, synthetic_catalog, worker_python, regions=[
        {"name": "tiny", "bbox": [6.600, 46.500, 6.612, 46.510]},
        {"name": "other", "bbox": [7.0, 46.5, 7.01, 46.51]},
    ])
    schedule = defs.resolve_schedule_def("latest_window_all_regions")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=dt.datetime(2024, 7, 3, tzinfo=dt.UTC),
            repository_def=defs.get_repository_def())
        requests = schedule.evaluate_tick(context).run_requests
    assert sorted(str(r.partition_key) for r in requests) == ["other|2024-04-01", "tiny|2024-04-01"]
    assert json.dumps(sorted(r.run_key for r in requests)) == json.dumps(["other|2024-04-01", "tiny|2024-04-01"])
