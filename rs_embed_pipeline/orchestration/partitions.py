"""Partitions: region x time window (docs/architecture.md). Tiles live inside a run, never as partitions."""

from __future__ import annotations

import dataclasses

import dagster as dg

from rs_embed_pipeline.core.regions import PipelineConfig

CADENCE_CRONS = {
    "monthly": "0 0 1 * *",
    "quarterly": "0 0 1 1,4,7,10 *",
    "yearly": "0 0 1 1 *",
}
WINDOW_FORMAT = "%Y-%m-%d"
# Partitions per backfill run, for every asset: one run's batch fetches, embeds and writes together
# (a single model load in the worker), small enough that a failed run costs little rework.
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=4)


def build_partitions(config: PipelineConfig) -> dg.MultiPartitionsDefinition:
    windows = dg.TimeWindowPartitionsDefinition(
        cron_schedule=CADENCE_CRONS[config.cadence],
        start=config.start,
        fmt=WINDOW_FORMAT,
    )
    regions = dg.StaticPartitionsDefinition(config.region_names)
    return dg.MultiPartitionsDefinition({"region": regions, "window": windows})


@dataclasses.dataclass(frozen=True)
class RegionWindow:
    """One partition: a region and a time window [start, end) (end exclusive)."""

    region: str
    window: str  # the window's partition key, its start date
    start: str
    end: str

    @property
    def key(self) -> str:
        return f"{self.region}|{self.window}"


def region_windows(
    partitions_def: dg.MultiPartitionsDefinition, partition_keys: list[str]
) -> list[RegionWindow]:
    """Resolve the run's partition keys (one or a backfill batch) to regions and windows."""
    windows_def = partitions_def.get_partitions_def_for_dimension("window")
    if not isinstance(windows_def, dg.TimeWindowPartitionsDefinition):  # build_partitions makes it one
        raise TypeError(f"the 'window' dimension must be time windows, got {type(windows_def).__name__}")
    resolved = []
    for key in partition_keys:
        mkey = key if isinstance(key, dg.MultiPartitionKey) else partitions_def.get_partition_key_from_str(key)
        region = mkey.keys_by_dimension["region"]
        window = mkey.keys_by_dimension["window"]
        tw = windows_def.time_window_for_partition_key(window)
        resolved.append(
            RegionWindow(
                region=region,
                window=window,
                start=tw.start.strftime(WINDOW_FORMAT),
                end=tw.end.strftime(WINDOW_FORMAT),
            )
        )
    return resolved
