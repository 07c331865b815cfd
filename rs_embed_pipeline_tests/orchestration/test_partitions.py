"""Region x window partitions with split regions, and the partition budget (issue 19 points 1-3)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
import yaml

from rs_embed_pipeline.core.grid import bbox_aoi
from rs_embed_pipeline.core.regions import ConfigError, PipelineConfig, Region, RegionPartition, load_pipeline_config
from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.orchestration.partitions import (
    build_partitions,
    check_partition_budget,
    partitions_for_config,
    region_windows,
)
from rs_embed_pipeline.orchestration.settings import DEFAULT_MAX_PARTITIONS, Settings

SPLIT_AOI = [6.55, 46.45, 6.75, 46.60]  # about 15 x 17 km near Lausanne
PLAN_SIZES = [(224, 10.0), (288, 10.0)]  # the default plan: TerraFM-B and THOR tiles


def _quarters_ago(n: int) -> str:
    """The start of the quarter ``n`` quarters before the current one: ``n`` complete windows today."""
    today = dt.date.today()
    index = today.year * 4 + (today.month - 1) // 3 - n
    return f"{index // 4}-{(index % 4) * 3 + 1:02d}-01"


def _write(path, regions, start="2024-01-01", cadence="quarterly"):
    path.write_text(yaml.safe_dump({"time_windows": {"cadence": cadence, "start": start}, "regions": regions}))
    return path


def _settings(config, **env) -> Settings:
    return Settings.from_env({"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": "/tmp/unused-store", **env})


def test_100_001_partitions_are_refused_naming_count_limit_and_ways_out(tmp_path):
    aoi = bbox_aoi(6.6, 46.5, 6.61, 46.51)
    regions = tuple(Region(f"r{i}", aoi) for i in range(9091))
    config = PipelineConfig(path=tmp_path / "p.yaml", cadence="quarterly", start=_quarters_ago(11), regions=regions)
    partitions = build_partitions(config, [RegionPartition(r.name, r) for r in regions])
    with pytest.raises(ConfigError) as refused:
        check_partition_budget(config, partitions, DEFAULT_MAX_PARTITIONS)
    message = str(refused.value)
    assert (f"100,001 region x window partitions per asset (9,091 region partitions x 11 quarterly windows since "
            f"{config.start}) exceed the limit of 100,000 (RS_EMBED_MAX_PARTITIONS)") in message
    for way_out in ("a larger split_km", "a yearly cadence", "a later time_windows.start"):
        assert way_out in message
    one_fewer = config.__class__(config.path, config.cadence, config.start, regions[:-1])
    assert check_partition_budget(one_fewer, build_partitions(one_fewer), DEFAULT_MAX_PARTITIONS) == 99_990


def test_the_budget_is_a_setting():
    assert Settings.from_env({}).max_partitions == DEFAULT_MAX_PARTITIONS == 100_000
    assert Settings.from_env({"RS_EMBED_MAX_PARTITIONS": "250000"}).max_partitions == 250_000
    with pytest.raises(ValueError, match=r"RS_EMBED_MAX_PARTITIONS='lots' is invalid; valid values: an integer >= 1"):
        Settings.from_env({"RS_EMBED_MAX_PARTITIONS": "lots"})


def test_a_split_region_loads_as_one_region_partition_per_cell(tmp_path):
    config_path = _write(tmp_path / "p.yaml", [
        {"name": "demo", "bbox": [6.6, 46.5, 6.64, 46.528]},
        {"name": "vaud", "bbox": SPLIT_AOI, "split_km": 5},
    ], start=_quarters_ago(2))
    defs = build_definitions(_settings(config_path))
    partitions = defs.resolve_asset_graph().get(dg.AssetKey("s2_patches")).partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    keys = partitions.get_partitions_def_for_dimension("region").get_partition_keys()
    expected = [p.key for p in load_pipeline_config(config_path).partitions(PLAN_SIZES)]
    assert keys == expected and keys[0] == "demo" and len(keys) == 1 + 16
    assert all(k.startswith("vaud-32N-E0") for k in keys[1:])
    # the store's leases resolve a run's keys with the definitions the code location built
    assert partitions_for_config(config_path) is partitions
    (part,) = region_windows(partitions, [f"{keys[3]}|{_quarters_ago(2)}"])
    assert part.region == keys[3] and part.window == _quarters_ago(2)
    # the schedule requests the latest window of every cell
    schedule = defs.resolve_schedule_def("latest_window_all_regions")
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime.now(dt.UTC),
                                        repository_def=defs.get_repository_def())
    requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert sorted(r.partition_key.keys_by_dimension["region"] for r in requests) == sorted(keys)


def test_a_split_build_over_the_budget_is_refused_at_load(tmp_path):
    config_path = _write(tmp_path / "p.yaml", [{"name": "vaud", "bbox": SPLIT_AOI, "split_km": 5}],
                         start=_quarters_ago(2))
    with pytest.raises(ConfigError, match=r"32 region x window partitions per asset \(16 region partitions x 2 "
                                          r"quarterly windows since .*\) exceed the limit of 31"):
        build_definitions(_settings(config_path, RS_EMBED_MAX_PARTITIONS="31"))
    build_definitions(_settings(config_path, RS_EMBED_MAX_PARTITIONS="32"))  # at the limit: loads


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "vaud", "bbox": SPLIT_AOI, "split_km": 2},
     r"region 'vaud' has split_km 2, which must be larger than the largest tile's ground size, 2.88 km "
     r"\(288 px x 10 m\)"),
    ({"name": "vaud", "bbox": SPLIT_AOI, "split": 20},
     r"region 'vaud' has unknown key\(s\) 'split'; valid keys: name, description, bbox, geojson, split_km"),
])
def test_bad_split_config_fails_the_load(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        build_definitions(_settings(_write(tmp_path / "p.yaml", [entry])))


def test_build_partitions_without_the_plan_refuses_a_split_region(tmp_path):
    config = PipelineConfig(path=tmp_path / "p.yaml", cadence="yearly", start="2024-01-01",
                            regions=(Region("vaud", bbox_aoi(*SPLIT_AOI), split_km=5),))
    with pytest.raises(ValueError, match=r"region\(s\) \['vaud'\] have split_km: their partitions depend on the "
                                         r"tile sizes in use"):
        build_partitions(config)
