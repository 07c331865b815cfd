"""Whole-build progress read from the Dagster instance (issue 19 point 5): partitions done /
failed / pending per asset and window, tiles per second and ETA, failed partitions with reasons."""

import dagster as dg
import pytest

from rs_embed_pipeline.cli.build_status import render
from rs_embed_pipeline.orchestration.progress import build_status
from rs_embed_pipeline_tests.pipeline.conftest import build_test_definitions

Q1, Q2, Q3 = "2024-01-01", "2024-04-01", "2024-07-01"


def _key(window: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"region": "tiny", "window": window})


@pytest.fixture(scope="module")
def built(tmp_path_factory, synthetic_catalog, worker_python):
    """Q1 and Q2 fetched (two runs, Q2 without imagery), Q3's patches run without its tile grid."""
    defs, _ = build_test_definitions(tmp_path_factory.mktemp("status"), synthetic_catalog, worker_python)
    jobs = [dg.define_asset_job("grid_and_s2", selection=["tile_grid", "s2_patches"]),
            dg.define_asset_job("s2_only", selection=["s2_patches"])]
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=jobs))
    with dg.instance_for_test() as instance:
        for window in (Q1, Q2):
            assert defs.resolve_job_def("grid_and_s2").execute_in_process(
                partition_key=_key(window), instance=instance).success
        failed = defs.resolve_job_def("s2_only").execute_in_process(
            partition_key=_key(Q3), instance=instance, raise_on_error=False)
        assert not failed.success
        yield {"defs": defs, "instance": instance, "failed_run": failed.run_id}


def test_partitions_done_failed_pending_per_asset_and_window(built):
    status = build_status(built["instance"], built["defs"], assets=["tile_grid", "s2_patches", "s1_patches"])
    assert sorted(status["assets"]) == ["s1_patches", "s2_patches", "tile_grid"]
    s2 = status["assets"]["s2_patches"]
    n_windows = len(s2["by_window"])
    assert n_windows >= 4  # quarterly windows from 2024-01-01 to now
    assert s2["by_window"][Q1] == {"done": 1, "failed": 0, "in_progress": 0, "pending": 0}
    assert s2["by_window"][Q2] == {"done": 1, "failed": 0, "in_progress": 0, "pending": 0}
    assert s2["by_window"][Q3] == {"done": 0, "failed": 1, "in_progress": 0, "pending": 0}
    assert s2["total"] == {"done": 2, "failed": 1, "in_progress": 0, "pending": n_windows - 3}
    grid = status["assets"]["tile_grid"]
    assert grid["total"] == {"done": 2, "failed": 0, "in_progress": 0, "pending": n_windows - 2}
    assert status["assets"]["s1_patches"]["total"]["pending"] == n_windows


def test_tiles_per_second_and_eta_follow_the_materializations(built):
    instance = built["instance"]
    s2 = build_status(instance, built["defs"], assets=["s2_patches"])["assets"]["s2_patches"]
    records = instance.fetch_materializations(dg.AssetKey("s2_patches"), limit=10).records
    assert len(records) == 2
    tiles = sum(int(r.asset_materialization.metadata[k].value) for r in records
                for k in ("tiles_ok", "tiles_no_data", "tiles_failed"))
    assert s2["tiles_done"] == tiles >= 2
    span = max(r.timestamp for r in records) - min(r.timestamp for r in records)
    assert s2["tiles_per_s"] == pytest.approx(tiles / span, rel=1e-3)
    remaining = s2["total"]["pending"] + s2["total"]["failed"]
    assert s2["eta_s"] == pytest.approx(remaining * (tiles / 2) / (tiles / span), abs=0.051)  # 0.1 s rounding


def test_failed_partitions_carry_the_step_error(built):
    status = build_status(built["instance"], built["defs"], windows=[Q3])
    failed = {(f["asset"], f["partition"]): f for f in status["failed"]}
    s2 = failed[("s2_patches", f"tiny|{Q3}")]
    assert s2["run_id"] == built["failed_run"]
    # the step's RetryPolicy retried it: the reason names that and the last attempt's error
    assert s2["reason"].startswith("Exceeded max_retries of 2: ")
    assert "Tile grid" in s2["reason"] and "is missing; materialize tile_grid for tiny|2024-07-01 first" in s2["reason"]
    # windows narrow every asset to Q3; tile_grid was never asked for it
    assert status["assets"]["tile_grid"]["by_window"] == {Q3: {"done": 0, "failed": 0, "in_progress": 0, "pending": 1}}
    text = render(status)
    assert f"s2_patches tiny|{Q3} (run {built['failed_run'][:8]}): " in text
    assert "Failed partitions (" in text


def test_unknown_asset_is_an_error_naming_the_valid_ones(built):
    with pytest.raises(ValueError, match=r"unknown asset\(s\) \['s3_patches'\]; valid: .*s2_patches"):
        build_status(built["instance"], built["defs"], assets=["s3_patches"])
