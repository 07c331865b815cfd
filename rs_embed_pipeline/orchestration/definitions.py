"""The code location: assets, checks, jobs, schedules and the environment's resources.

Loading it validates every setting (settings.py) and every resource field (:func:`validate_resources`):
an invalid value fails the load, naming the variable or field and the valid values, before any run
fetches a pixel. The pipeline plan (plan.py: which model x modality assets, their tile sizes, the
patch sizes and fetch threads) is computed once here from the model resources and handed to the
asset factories. One executor (executors.py) runs every job, the implicit asset job of UI
materializations and backfills included.
"""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg

from rs_embed_pipeline.orchestration.assets.answers import build_answer_assets
from rs_embed_pipeline.orchestration.assets.embeddings import build_embedding_assets
from rs_embed_pipeline.orchestration.assets.patches import build_patches_asset
from rs_embed_pipeline.orchestration.assets.products import build_product_assets
from rs_embed_pipeline.orchestration.assets.tile_grid import build_tile_grid_asset
from rs_embed_pipeline.orchestration.executors import celery_executor, executor_for, step_retry_policy
from rs_embed_pipeline.orchestration.partitions import build_partitions, check_partition_budget
from rs_embed_pipeline.orchestration.plan import plan_pipeline
from rs_embed_pipeline.core.regions import load_pipeline_config
from rs_embed_pipeline.orchestration.resources import (
    EarthEngineImagery,
    ImageryResource,
    LocalStacImagery,
    PipelineStore,
    ModelResource,
    StacImagery,
    ThorResource,
    model_resource_classes,
)
from rs_embed_pipeline.orchestration.schedules import build_embedding_job, build_latest_window_schedule
from rs_embed_pipeline.orchestration.settings import EARTH_SEARCH_URL, Settings
from rs_embed_pipeline.providers.stac.items import configure_sas_signing
from rs_embed_pipeline.models.knobs import KNOBS
from rs_embed_pipeline.models.thor.spec import thor_normalization


def imagery_for(settings: Settings) -> ImageryResource:
    knobs = dict(settings.knobs.get("imagery", {}))  # RS_EMBED_CHECK_INPUT / RS_EMBED_CHECK_RAISE
    if settings.provider == "gee":
        return EarthEngineImagery(project=settings.ee_project, **knobs)
    if settings.provider == "stac":
        # RS_EMBED_STAC_URL overrides the catalog preset's URL; unset (Earth Search): the preset's
        return StacImagery(api_url=None if settings.stac_url == EARTH_SEARCH_URL else settings.stac_url, **knobs)
    return LocalStacImagery(catalog_path=settings.local_catalog, **knobs)


def _set(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def resources_for(settings: Settings) -> dict[str, object]:
    """The one place where the environment picks its resources."""
    # Settings left unset (None) are not passed: the field's own default applies.
    model_common: dict[str, Any] = _set({
        "worker_python": settings.worker_python,
        "allow_random_weights": settings.allow_random_weights,
        "device": settings.device,
    })
    leases = _set({"lease_wait_s": settings.lease_wait_s, "lease_ttl_s": settings.lease_ttl_s})
    configure_sas_signing(settings.pc_subscription_key)  # process-wide; never in a resource's config
    return {
        "store": PipelineStore(root=settings.store_root, regions_config=str(settings.config_path), **leases),
        "imagery": imagery_for(settings),
        # rs-embed knob variables (docs/knobs.md) as the fields' defaults; resource config wins.
        **{key: cls(**model_common, **settings.knobs.get(key, {})) for key, cls in model_resource_classes().items()},
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def _field_source(resource_key: str, field: str) -> str:
    """``RS_EMBED_...`` when an environment variable sets this resource field, else the field."""
    names = [k.env for k in KNOBS if k.resource == resource_key and k.field == field]
    return f"{names[0]} ({resource_key}.{field})" if names else f"resource field {resource_key}.{field}"


def _checked_field(exc: Exception, default: str) -> str:
    """The field a failed check names: its ``field`` attribute (resources.ResourceFieldError,
    providers.catalogs.CatalogConfigError, set by the validator that checked that field), else ``default``."""
    field = getattr(exc, "field", None)
    return field if isinstance(field, str) and field else default


def validate_resources(resources: dict[str, Any]) -> None:
    """Every resource field a run would use, checked now (at load), not in a worker after the fetch.

    Raises ``ValueError`` naming the variable (or resource field) and the valid values. The field is
    the one the failing check names (:func:`_checked_field`), never guessed from the message."""
    def fail(resource_key: str, field: str, exc: Exception) -> ValueError:
        return ValueError(f"Invalid {_field_source(resource_key, field)}: {exc}")

    store = resources.get("store")
    if isinstance(store, PipelineStore):
        try:
            _ = store.storage_options  # parses the JSON and refuses credentials
        except ValueError as exc:
            raise fail("store", "storage_options_json", exc) from None
    models = {key: r for key, r in resources.items() if isinstance(r, ModelResource)}
    modalities = sorted({m for r in models.values() for m in r.modalities}) or ["s2"]
    imagery = resources.get("imagery")
    if isinstance(imagery, ImageryResource):
        for modality in modalities:
            try:
                imagery.sensor_options(modality)
            except ValueError as exc:  # resources.ResourceFieldError: composite, cloudy_pct, s1_orbit, ...
                raise fail("imagery", _checked_field(exc, "sensor options"), exc) from None
        try:  # provider fields: catalog preset, asset maps, URL signing (providers/catalogs.py)
            imagery.validate_settings()
        except ValueError as exc:
            raise fail("imagery", _checked_field(exc, "settings"), exc) from None
    for key, model in models.items():
        try:
            model.validate_settings()
        except ValueError as exc:  # resources.ResourceFieldError, naming the field it checked
            raise fail(key, _checked_field(exc, "settings"), exc) from None
        if isinstance(model, ThorResource):
            for modality in model.modalities:  # e.g. unit_scale is S2-only
                try:
                    thor_normalization(model.normalization, modality)
                except ValueError as exc:
                    raise fail(key, "normalization", exc) from None
        if model.precision not in ("fp32", "bf16"):
            raise fail(key, "precision", ValueError(f"{model.precision!r}; valid values: fp32, bf16"))
        if str(model.device).split(":")[0] not in ("auto", "cpu", "cuda"):
            raise fail(key, "device", ValueError(f"{model.device!r}; valid values: auto, cpu, cuda, cuda:<index>"))


def _with_ee_project(imagery: Any, settings: Settings) -> Any:
    """An Earth Engine imagery resource without a project of its own gets ``EE_PROJECT`` (settings.py):
    an explicit ``project`` wins, then the variable, then (the provider) the credentials' project."""
    if not isinstance(imagery, EarthEngineImagery) or imagery.project or not settings.ee_project:
        return imagery
    return _replaced(imagery, project=settings.ee_project)


def _with_regions(store: Any, settings: Settings) -> Any:
    """The store resource with the regions file its leases resolve partitions with."""
    if not isinstance(store, PipelineStore) or store.regions_config:
        return store
    return _replaced(store, regions_config=str(settings.config_path))


def _replaced(resource: Any, **changes: Any) -> Any:
    """A copy of a (frozen) configurable resource with ``changes`` over its fields."""
    fields = {name: getattr(resource, name) for name in type(resource).model_fields}
    return type(resource)(**{**fields, **changes})


# The beta APIs this code location uses on purpose (BackfillPolicy is what docs/architecture.md asks for; code
# references feed the UI's "open in editor"): their warnings, and only theirs, are silenced while
# the definitions are built, so any other beta or deprecation warning is still seen.
BETA_APIS_IN_USE = r"(Parameter `backfill_policy`|Function `with_source_code_references`|Class `LocalFileCodeReference`|Class `CodeReferencesMetadataValue`) "


def build_definitions(settings: Settings, resources: dict[str, object] | None = None) -> dg.Definitions:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BETA_APIS_IN_USE, category=dg.BetaWarning)
        return _build_definitions(settings, resources)


def _build_definitions(settings: Settings, resources: dict[str, object] | None = None) -> dg.Definitions:
    config = load_pipeline_config(settings.config_path)
    fetch_pool = "earth_engine" if settings.provider == "gee" else None
    resources = dict(resources) if resources is not None else resources_for(settings)
    resources["store"] = _with_regions(resources.get("store"), settings)
    if "imagery" in resources:
        resources["imagery"] = _with_ee_project(resources["imagery"], settings)
    validate_resources(resources)
    retry = step_retry_policy(settings)  # every asset: a killed step resumes from its stores
    # Decided once, here: the (model, modality) pairs, their tile sizes and the fetch threads. The
    # factories get what they need from the plan, so no asset takes a model resource to learn it.
    plan = plan_pipeline(resources)
    # Split regions' cells follow the tile sizes in use (each tile in the cell holding its centre).
    region_partitions = config.partitions(plan.tile_sizes())
    partitions_def = build_partitions(config, region_partitions)
    check_partition_budget(config, partitions_def, settings.max_partitions)  # before any asset is built
    assets = [
        build_tile_grid_asset(region_partitions, partitions_def, tile_sizes=plan.tile_sizes(), retry_policy=retry),
        # Patches only for the modalities some model embeds (no S1 fetch when no model embeds S1).
        *(build_patches_asset(m, partitions_def, patch_sizes=plan.patch_sizes(m), fetch_workers=plan.fetch_workers(m),
                              pool=fetch_pool, retry_policy=retry) for m in plan.modalities),
    ]
    for spec in plan.specs:
        assets.extend(build_embedding_assets(spec, partitions_def, retry_policy=retry))
        assets.extend(build_product_assets(spec, partitions_def, retry_policy=retry))  # GeoParquet, COGs, STAC
        assets.extend(build_answer_assets(spec, partitions_def, retry_policy=retry))  # search index, change
    # One executor for every job (executors.py): jobs without their own take Definitions' executor,
    # the implicit asset job of UI materializations and backfills included.
    job = build_embedding_job(partitions_def)
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
        executor=executor_for(settings),
    )
