"""The code location: assets, checks, jobs, schedules and the environment's resources."""

from __future__ import annotations

import warnings

import dagster as dg

from rs_embed_pipeline.assets.embeddings import build_embedding_assets, enabled_specs
from rs_embed_pipeline.assets.patches import build_patches_asset
from rs_embed_pipeline.assets.tile_grid import build_tile_grid_asset
from rs_embed_pipeline.executors import celery_executor, default_executor
from rs_embed_pipeline.partitions import build_partitions
from rs_embed_pipeline.regions import load_pipeline_config
from rs_embed_pipeline.resources import (
    EarthEngineImagery,
    ImageryResource,
    LocalStacImagery,
    PipelineStore,
    StacImagery,
    TerraFMAdapter,
    ThorAdapter,
)
from rs_embed_pipeline.schedules import build_embedding_job, build_latest_window_schedule
from rs_embed_pipeline.settings import Settings

# BackfillPolicy is marked beta, and it is exactly what the design asks for: say so once, here.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def imagery_for(settings: Settings) -> ImageryResource:
    knobs = dict(settings.knobs.get("imagery", {}))  # RS_EMBED_CHECK_INPUT / RS_EMBED_CHECK_RAISE
    if settings.provider == "gee":
        return EarthEngineImagery(project=settings.ee_project, **knobs)
    if settings.provider == "stac":
        return StacImagery(api_url=settings.stac_url, **knobs)
    return LocalStacImagery(catalog_path=settings.local_catalog, **knobs)


def resources_for(settings: Settings) -> dict[str, object]:
    """The one place where the environment picks its resources."""
    model_common = {
        "worker_python": settings.worker_python,
        "allow_random_weights": settings.allow_random_weights,
        "device": settings.device,
    }
    return {
        "store": PipelineStore(root=settings.store_root),
        "imagery": imagery_for(settings),
        # rs-embed knob variables (docs/knobs.md) as the fields' defaults; resource config wins.
        "terrafm": TerraFMAdapter(**model_common, **settings.knobs.get("terrafm", {})),
        "thor": ThorAdapter(**model_common, **settings.knobs.get("thor", {})),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def build_definitions(settings: Settings, resources: dict[str, object] | None = None) -> dg.Definitions:
    config = load_pipeline_config(settings.config_path)
    partitions_def = build_partitions(config)
    fetch_pool = "earth_engine" if settings.provider == "gee" else None
    resources = resources if resources is not None else resources_for(settings)
    assets = [
        build_tile_grid_asset(config, partitions_def),
        build_patches_asset("s2", partitions_def, pool=fetch_pool),
        build_patches_asset("s1", partitions_def, pool=fetch_pool),
    ]
    for spec in enabled_specs(resources):  # each model resource's modalities
        assets.extend(build_embedding_assets(spec, partitions_def))
    # The executor of each job is chosen here, and only here (executors.py).
    job = build_embedding_job(partitions_def, executor_def=default_executor(settings))
    celery_job = build_embedding_job(
        partitions_def, name="build_embeddings_celery", executor_def=celery_executor(settings),
        description="build_embeddings with each step on a Celery worker (dagster-celery; deploy/README.md).",
    )
    return dg.Definitions(
        # Code references: each asset's page shows "Source code: Open <file> in editor", the file
        # and line of its body (the editor is set in the UI's user settings).
        assets=dg.with_source_code_references(assets),
        jobs=[job, celery_job],
        schedules=[build_latest_window_schedule(config, partitions_def, job)],
        resources=resources,
    )


defs = build_definitions(Settings.from_env())
