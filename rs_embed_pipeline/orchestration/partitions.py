"""Partitions: region x time window (docs/architecture.md). Tiles live inside a run, never as partitions.

The region dimension holds one key per :class:`~rs_embed_pipeline.core.regions.RegionPartition`:
a region's name, or ``<name>-<cell id>`` per cell of a region with ``split_km``. Split cells depend
on the tile sizes in use, so :func:`build_partitions` takes the region partitions the code
location computed from its plan, and remembers the definition per regions file for the processes
that resolve a run's partitions without the plan (the store's leases: :func:`partitions_for_config`).
The number of region x window partitions per asset is capped at load (:func:`check_partition_budget`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from rs_embed_pipeline.core.regions import ConfigError, PipelineConfig, RegionPartition, load_pipeline_config

CADENCE_CRONS = {
    "monthly": "0 0 1 * *",
    "quarterly": "0 0 1 1,4,7,10 *",
    "yearly": "0 0 1 1 *",
}
WINDOW_FORMAT = "%Y-%m-%d"
# Partitions per backfill run, for every asset: one run's batch fetches, embeds and writes together
# (a single model load in the worker), small enough that a failed run costs little rework.
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=4)


# The definitions build_partitions made, by regions file: a process that loaded the code location
# (run and step processes do, before any resource starts) resolves keys of split regions with them.
_BUILT: dict[str, dg.MultiPartitionsDefinition] = {}


def _config_key(path: str | Path) -> str:
    return os.path.abspath(str(path))


def build_partitions(config: PipelineConfig,
                     region_partitions: Sequence[RegionPartition] | None = None) -> dg.MultiPartitionsDefinition:
    """Region x window; ``region_partitions``: ``config.partitions(plan.tile_sizes())``, needed
    when a region is split (without it, every region must be unsplit: its keys are its names)."""
    windows = dg.TimeWindowPartitionsDefinition(
        cron_schedule=CADENCE_CRONS[config.cadence],
        start=config.start,
        fmt=WINDOW_FORMAT,
    )
    if region_partitions is None:
        split = [r.name for r in config.regions if r.split_km is not None]
        if split:
            raise ValueError(f"{config.path}: region(s) {split} have split_km: their partitions depend on the "
                             "tile sizes in use; pass config.partitions(tile_sizes)")
        keys = config.region_names
    else:
        keys = [p.key for p in region_partitions]
    regions = dg.StaticPartitionsDefinition(keys)
    partitions_def = dg.MultiPartitionsDefinition({"region": regions, "window": windows})
    _BUILT[_config_key(config.path)] = partitions_def
    return partitions_def


def partitions_for_config(path: str | Path) -> dg.MultiPartitionsDefinition:
    """The partitions this process's code location built for the regions file ``path``; a process
    that did not load it gets them built from the file (possible only without split regions)."""
    built = _BUILT.get(_config_key(path))
    return built if built is not None else build_partitions(load_pipeline_config(path))


def check_partition_budget(config: PipelineConfig, partitions_def: dg.MultiPartitionsDefinition,
                           limit: int) -> int:
    """The number of region x window partitions per asset (with the windows complete now);
    ConfigError naming the count, the limit and the ways out when it exceeds ``limit``. Past
    about 100,000 per asset Dagster's UI, code server and SQLite storage degrade (README,
    "Continental builds")."""
    regions = partitions_def.get_partitions_def_for_dimension("region").get_num_partitions()
    windows = partitions_def.get_partitions_def_for_dimension("window").get_num_partitions()
    count = regions * windows
    if count > limit:
        raise ConfigError(
            f"{config.path}: {count:,} region x window partitions per asset ({regions:,} region partitions x "
            f"{windows} {config.cadence} windows since {config.start}) exceed the limit of {limit:,} "
            f"(RS_EMBED_MAX_PARTITIONS). Ways out: a larger split_km (cells twice as wide make about 4x fewer "
            f"partitions), a yearly cadence (4x fewer windows than quarterly), a later time_windows.start, "
            f"fewer regions, or one code location per part of the area; raise RS_EMBED_MAX_PARTITIONS only "
            f"for an instance sized for it (Dagster advises at most 100,000 partitions per asset).")
    return count


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
