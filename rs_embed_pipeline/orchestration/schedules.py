"""Jobs and schedules: build the latest complete window of every configured region."""


import dagster as dg

from rs_embed_pipeline.orchestration.partitions import CADENCE_CRONS
from rs_embed_pipeline.core.regions import PipelineConfig

# Run two days after a window closes, so that late-arriving scenes of its last days are ingested.
SCHEDULE_DELAY_DAYS = 2


def build_embedding_job(
    partitions_def: dg.MultiPartitionsDefinition,
    name: str = "build_embeddings",
    executor_def: "dg.ExecutorDefinition | None" = None,
    description: str = "Tile grid -> patches -> embeddings -> cubes for one region and time window.",
) -> "dg.UnresolvedAssetJobDefinition":
    """The whole graph; the executor is chosen in definitions.py (see executors.py)."""
    return dg.define_asset_job(
        name=name,
        selection=dg.AssetSelection.all(),
        description=description,
        executor_def=executor_def,
    )


def build_latest_window_schedule(
    config: PipelineConfig,
    partitions_def: dg.MultiPartitionsDefinition,
    job: "dg.JobDefinition",
) -> dg.ScheduleDefinition:
    windows_def = partitions_def.get_partitions_def_for_dimension("window")
    regions_def = partitions_def.get_partitions_def_for_dimension("region")
    minute, hour, _, month, dow = CADENCE_CRONS[config.cadence].split()
    cron = f"{minute} {hour} {1 + SCHEDULE_DELAY_DAYS} {month} {dow}"

    @dg.schedule(name="latest_window_all_regions", cron_schedule=cron, job=job,
                 default_status=dg.DefaultScheduleStatus.STOPPED)
    def latest_window_all_regions(context: dg.ScheduleEvaluationContext):
        """Every configured region, for the most recent complete time window."""
        windows = windows_def.get_partition_keys(current_time=context.scheduled_execution_time)
        if not windows:
            return dg.SkipReason("No complete time window yet")
        window = windows[-1]
        return [
            dg.RunRequest(
                run_key=f"{region}|{window}",
                partition_key=dg.MultiPartitionKey({"region": region, "window": window}),
            )
            for region in regions_def.get_partition_keys()  # split regions: one run per cell
        ]

    return latest_window_all_regions
