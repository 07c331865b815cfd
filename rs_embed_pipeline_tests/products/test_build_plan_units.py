"""The build plan's parts without a build (issue 19 point 4): windows, tiles per partition, runs,
Earth Engine requests, bad input."""

import math
from pathlib import Path

import pytest

from rs_embed_pipeline.core.grid import Tile, bbox_aoi
from rs_embed_pipeline.core.regions import PipelineConfig, Region
from rs_embed_pipeline.products import build_plan as bp

SIZES = [(224, 10.0), (288, 10.0)]
MODELS = [bp.PlannedModel("terrafm_s2", "s2", ("B2",) * 12, 224, 10.0, 768, (768, 14, 14), "terrafm"),
          bp.PlannedModel("thor_s2", "s2", ("B2",) * 12, 288, 10.0, 768, (768, 18, 18), "thor")]


def _config(split_km=5):
    region = Region("demo", bbox_aoi(6.600, 46.500, 6.640, 46.528), split_km=split_km)
    return PipelineConfig(path=Path("x.yaml"), cadence="quarterly", start="2024-01-01", regions=(region,))


def test_windows_between_and_its_errors():
    assert bp.windows_between("quarterly", "2024-01-01", "2024-07-01") == [
        ("2024-01-01", "2024-04-01"), ("2024-04-01", "2024-07-01")]
    assert bp.windows_between("yearly", "2024-01-01", "2025-06-01") == [("2024-01-01", "2025-01-01")]
    with pytest.raises(ValueError, match="cadence 'weekly' is not one of monthly, quarterly, yearly"):
        bp.windows_between("weekly", "2024-01-01", "2024-07-01")
    with pytest.raises(ValueError, match="2024-02-01 is not the start of a quarterly window"):
        bp.windows_between("quarterly", "2024-02-01", "2024-07-01")
    with pytest.raises(ValueError, match="no complete quarterly window between 2024-01-01 and 2024-02-01"):
        bp.windows_between("quarterly", "2024-01-01", "2024-02-01")


def test_partition_tiles_are_each_partitions_tile_grid():
    parts = _config().partitions(SIZES)
    tiles = bp.partition_tiles(parts, SIZES)
    assert len(parts) == 2
    for part in parts:
        for size, scale in SIZES:
            assert sorted(t.tile_id for t in tiles[part.key][size]) == sorted(part.tile_grid(size, scale)["tile_id"])


def test_plan_counts_runs_tiles_and_bytes_scale_with_windows():
    config = _config()
    parts = config.partitions(SIZES)
    imagery = bp.StacImagery(days_per_window={"s2": 18.0})
    one = bp.plan_build(config, parts, bp.windows_between("quarterly", "2024-01-01", "2024-04-01"), MODELS,
                        partitions_per_run=4, storage=bp.REAL_STORAGE, imagery=imagery)
    four = bp.plan_build(config, parts, bp.windows_between("quarterly", "2024-01-01", "2025-01-01"), MODELS,
                         partitions_per_run=4, storage=bp.REAL_STORAGE, imagery=imagery)
    assert four["partitions"] == {"regions": 2, "windows": 4, "per_asset": 8}
    assert four["runs"]["backfill_runs"] == 2
    assert four["tiles"]["by_model"] == {"terrafm_s2": 16, "thor_s2": 20}
    # full-size TerraFM-B grid: 768 x 14 x 14 float32 per tile, stored at the float ratio
    grid = 768 * 14 * 14 * 4 * bp.REAL_STORAGE.float_ratio
    assert four["bytes"]["by_store"]["terrafm_s2_embeddings"] == pytest.approx(
        16 * (grid + 768 * 4 * bp.REAL_STORAGE.float_ratio) + 8 * bp.REAL_STORAGE.embedding_store, abs=1)
    assert four["imagery"]["s2"]["reads"] == 4 * one["imagery"]["s2"]["reads"] > 0
    # one read per block, solar day and asset: 12 bands + SCL
    assert one["imagery"]["s2"]["reads"] % 13 == 0
    assert four["model_time"]["by_model"]["thor_s2"]["seconds"]["cpu-2core-bf16"] == pytest.approx(20 / 3.56, abs=0.01)
    assert "ESTIMATE" in four["model_time"]["sources"]["gpu-a100-fp16 (estimate)"]


def test_earth_engine_requests_follow_the_providers_packing():
    tiles = [Tile(tile_id=f"t{c}_{r}", utm_epsg=32632, x0=300000.0 + c * 2240, y0=5000000.0 - r * 2240,
                  size_px=224, scale_m=10.0) for c in range(10) for r in range(8)]
    ee = bp.EarthEngine(max_concurrent_requests=40, max_requests_per_second=100.0, latency_s=2.0)
    # 80 tiles, at most ceil(80 / 40) = 2 tiles per request: 40 requests per window
    got = bp.ee_estimate({224: tiles}, 12, ee, windows=3)
    # plus one scene-list query per window (providers/gee: one per fetch_patches call)
    assert (got["pixel_requests"], got["scene_queries"], got["requests"]) == (120, 3, 123)
    assert bp.ee_estimate({224: []}, 12, ee, windows=3)["requests"] == 0
    assert bp.ee_seconds(120, ee) == pytest.approx(max(120 * 2.0 / 40, 120 / 100.0))
    assert math.isclose(bp.ee_seconds(10_000, bp.EarthEngine(latency_s=0.1)), 100.0)  # rate-bound
    assert bp.ee_seconds(1, ee) == pytest.approx(2 * 2.0)  # a scene list, then pixels: two round trips
    assert bp.ee_seconds(0, ee) == 0.0


@pytest.mark.parametrize(("regions", "windows", "runs"), [(2, 2, 2), (2, 4, 2), (5, 3, 6), (1, 9, 3), (100, 10, 250)])
def test_backfill_runs_are_the_runs_dagster_requests(regions, windows, runs):
    """backfill_runs against Dagster's own run requests for a backfill of every partition (the
    function the backfill daemon calls), so a Dagster upgrade that groups differently fails here.
    5 x 3 is the case the flat count ceil(15 / 4) = 4 got wrong: Dagster groups by window."""
    import dagster as dg
    from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests_with_backfill_policies
    from dagster._core.definitions.events import AssetKeyPartitionKey

    pdef = dg.MultiPartitionsDefinition({
        "region": dg.StaticPartitionsDefinition([f"r{i}" for i in range(regions)]),
        "window": dg.TimeWindowPartitionsDefinition(cron_schedule="0 0 1 * *", start="2020-01-01", fmt="%Y-%m-%d",
                                                    end=f"{2020 + windows // 12}-{windows % 12 + 1:02d}-01")})
    assert pdef.get_num_partitions() == regions * windows

    @dg.asset(partitions_def=pdef, backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=4))
    def grid() -> None: ...

    graph = dg.Definitions(assets=[grid]).get_repository_def().asset_graph
    requests = build_run_requests_with_backfill_policies(
        [AssetKeyPartitionKey(grid.key, k) for k in pdef.get_partition_keys()], graph, dg.DagsterInstance.ephemeral())
    covered = [k for r in requests for k in pdef.get_partition_keys_in_range(dg.PartitionKeyRange(
        r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]))]
    assert sorted(covered) == sorted(pdef.get_partition_keys())   # each partition once
    assert max(len(pdef.get_partition_keys_in_range(dg.PartitionKeyRange(
        r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])))
        for r in requests) <= 4
    assert len(requests) == runs == bp.backfill_runs(regions, windows, 4)
    assert bp.backfill_runs(0, windows, 4) == 0
