"""Dagster resources: the store, the imagery providers and the model adapters.

Which provider, store root and worker are used in a deployment is chosen in one place,
``definitions.py``, from :class:`rs_embed_pipeline.orchestration.settings.Settings`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dagster as dg
from pydantic import Field

from rs_embed_pipeline.orchestration.knob_table import field_default, knob_field
from rs_embed_pipeline.orchestration.leases import DEFAULT_TTL_S, DEFAULT_WAIT_S, LeaseBusy, partition_leases
from rs_embed_pipeline.providers.base import PatchProvider
from rs_embed_pipeline.stores import StoreLayout
from rs_embed_pipeline.core.vocabulary import MODALITIES
from rs_embed_pipeline.core.regions import load_pipeline_config
from rs_embed_pipeline.models.registry import families
from rs_embed_pipeline.models.thor.spec import canonical_group_merge, canonical_thor_normalization, canonical_thor_variant
from rs_embed_pipeline.orchestration.partitions import build_partitions, region_windows
from rs_embed_pipeline.orchestration.settings import worker_environment
from rs_embed_pipeline.providers import LocalStacProvider, StacProvider
from rs_embed_pipeline.providers.catalogs import CatalogConfigError, resolve_catalog
from rs_embed_pipeline.providers.local_catalogs.user_scenes import catalog_collections
from rs_embed_pipeline.providers.sensor_options import (
    EarthEngineSensorOptions,
    SensorOptionError,
    SensorOptions,
    parse_cloudy_pct,
)
from rs_embed_pipeline.providers.stac import PATCH_URL_SIGNERS
from rs_embed_pipeline.stores.remote import check_storage_options
from rs_embed_pipeline.worker.protocol import EmbedRequest, read_messages

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from rs_embed_pipeline.worker.protocol import PartitionJob, WorkerReport

CODE_VERSION = "1"  # bump when a change alters stored numbers; it is part of every store fingerprint
DEFAULT_FETCH_WORKERS: int = field_default("ModelResource", "fetch_workers")  # a provider's threads, no model's given


class ResourceFieldError(ValueError):
    """An invalid value of a resource field; ``field`` names the field, as the validator that checked
    it knows it (like :class:`~rs_embed_pipeline.providers.catalogs.CatalogConfigError`'s). The
    message is the check's own; :func:`definitions.validate_resources` prefixes the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@contextlib.contextmanager
def checking(field: str) -> Iterator[None]:
    """A ``ValueError`` raised inside becomes a :class:`ResourceFieldError` naming ``field``, its
    message unchanged; one that already names its field passes through."""
    try:
        yield
    except ValueError as exc:
        if isinstance(getattr(exc, "field", None), str):
            raise
        raise ResourceFieldError(field, str(exc)) from exc


class PipelineStore(dg.ConfigurableResource):
    """Root of the patch, embedding and cube stores: a local directory or ``s3://bucket/prefix``."""

    root: str = Field(description="Directory or s3://bucket/prefix holding every store.")
    storage_options_json: str | None = Field(
        default=None,
        description="JSON fsspec storage options (e.g. an S3 endpoint_url); credentials come "
        "from the standard AWS environment (keys, AWS_PROFILE, IRSA, ECS task role), never from "
        "here: options holding credentials are refused.",
    )

    lease_wait_s: float = Field(
        default=DEFAULT_WAIT_S, description="A step waits this long for another run writing the same region x "
        "window (leases.py), then fails naming that run; 0: fail at once.")
    lease_ttl_s: float = Field(
        default=DEFAULT_TTL_S, description="A writer's lease lapses this long after its last heartbeat (a killed "
        "step); a retried step of the same run re-enters at once.")
    regions_config: str | None = Field(
        default=None, description="The regions / time-window YAML (RS_EMBED_CONFIG), to resolve a run's "
        "partitions for the leases; None: no leases (set by definitions.py).")

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(self.root)

    @contextlib.contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext):
        """Hold the lease of every region x window of the run while a step uses the store (one
        writer per partition: rs_embed_pipeline.orchestration.leases)."""
        run = context.run
        parts = self._run_partitions(run) if run is not None else []
        if run is None or not parts:
            yield self
            return
        steps = list(run.step_keys_to_execute or [])
        log = context.log.info if context.log else print
        try:
            with partition_leases(self.root, parts, run_id=run.run_id,
                                  step=",".join(steps) if 0 < len(steps) <= 3 else "run", wait_s=self.lease_wait_s,
                                  ttl_s=self.lease_ttl_s, storage_options=self.storage_options, log=log):
                yield self
        except LeaseBusy as busy:
            raise dg.Failure(
                f"{busy}. One run writes a region x window at a time: this step waited {self.lease_wait_s:.0f} s "
                f"(PipelineStore.lease_wait_s). Wait for run {busy.run_id} to finish, or terminate it; a killed "
                f"run's lease lapses {self.lease_ttl_s:.0f} s after its last heartbeat.",
                metadata={"running_run_id": str(busy.run_id), "partition": busy.key},
            ) from None

    def _run_partitions(self, run: Any) -> list[tuple[str, str]]:
        if not self.regions_config:  # no regions file: no leases
            return []
        partitions_def = build_partitions(load_pipeline_config(Path(self.regions_config)))
        subset = run.get_resolved_partitions_subset_for_events(partitions_def)
        if subset is None:
            return []
        keys = list(subset.get_partition_keys())
        return [(p.region, p.window) for p in region_windows(partitions_def, keys)]

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """Non-secret fsspec options; credentials in them are refused (stores/remote.py)."""
        return check_storage_options(json.loads(self.storage_options_json) if self.storage_options_json else None)


# --------------------------------------------------------------------------------------- imagery
class ImageryResource(dg.ConfigurableResource):
    """Shared sensor settings of every provider (rs-embed's sensor options; recorded on the patch
    materializations and, through the patch store, on every embeddings / cube materialization)."""

    # Defaults and descriptions: the knob table (config/knobs.yaml), which docs/knobs.md is generated from.
    cloudy_pct: float = knob_field("ImageryResource", "cloudy_pct")
    composite: str = knob_field("ImageryResource", "composite")
    s1_orbit: str | None = knob_field("ImageryResource", "s1_orbit")
    fill_value: float = knob_field("ImageryResource", "fill_value")
    use_float_linear: bool = knob_field("ImageryResource", "use_float_linear")
    check_input: bool = knob_field("ImageryResource", "check_input")
    check_raise: bool = knob_field("ImageryResource", "check_raise")
    max_failure_fraction: float = knob_field("ImageryResource", "max_failure_fraction")

    provider_name: str = "abstract"
    #: the class :meth:`sensor_options` parses into (the Earth Engine resource's has more options)
    sensor_options_class: ClassVar[type[SensorOptions]] = SensorOptions

    def build(self, fetch_workers: int | None = None) -> PatchProvider:  # pragma: no cover - overridden
        """The provider; ``fetch_workers``: the models' fetch_workers (threads), where it applies."""
        raise NotImplementedError

    def validate_settings(self) -> None:
        """Check the provider-specific fields (at code-location load, :func:`definitions.validate_resources`,
        and again in :meth:`build`); raises ``ValueError`` with a ``field`` attribute naming the field."""

    def sensor_options(self, modality: str) -> SensorOptions:
        """The sensor options of ``modality``, parsed once from the fields by the providers' parser
        (:class:`~rs_embed_pipeline.providers.sensor_options.SensorOptions`) and passed as this object
        down to ``fetch_patches(..., options=...)``; ``.as_dict()`` is what the patch stores and the
        run metadata record. Invalid values raise :class:`ResourceFieldError` naming the field and
        the valid values (rs-embed's messages)."""
        options: dict[str, Any] = {"composite": self.composite, "fill_value": float(self.fill_value)}
        if modality == "s2":
            options["cloudy_pct"] = self.cloudy_pct  # as configured: it is part of the store fingerprints
        else:
            if self.s1_orbit:
                options["orbit"] = self.s1_orbit
            options["use_float_linear"] = self.use_float_linear
        options.update(self._own_sensor_options(modality))
        try:
            parsed = self.sensor_options_class.parse(modality, options)
            parse_cloudy_pct(self.cloudy_pct)  # shared by both modalities' settings: checked for S1 too
        except SensorOptionError as exc:
            raise ResourceFieldError(_SENSOR_OPTION_FIELDS.get(exc.option, "sensor options"),
                                     _rs_embed_message(exc)) from None
        return parsed

    def _own_sensor_options(self, modality: str) -> dict[str, Any]:
        """Options of this provider's own (:attr:`sensor_options_class`), from its fields; none here."""
        return {}


# The resource field behind each sensor option that sensor_options parses.
_SENSOR_OPTION_FIELDS = {"composite": "composite", "cloudy_pct": "cloudy_pct", "orbit": "s1_orbit",
                         "fill_value": "fill_value", "use_float_linear": "use_float_linear",
                         "require_iw": "s1_require_iw", "relax_iw_on_empty": "s1_relax_iw_on_empty"}


def _rs_embed_message(exc: Any) -> str:
    """rs-embed's wording of an invalid sensor option (users find these messages in its docs)."""
    use = " or ".join(repr(v) for v in (exc.valid or []) if v is not None)
    if exc.option == "composite":
        return f"Unknown composite={exc.value!r}. Use {use}."
    if exc.option == "orbit":
        return f"Unknown S1 orbit={exc.value!r}. Use {use}."
    if exc.option == "cloudy_pct":
        return f"cloudy_pct must be within [0, 100], got {exc.value}"
    return str(exc)


class LocalStacImagery(ImageryResource):
    """A static STAC catalog of COGs: the synthetic demo catalog, one built from your own GeoTIFF
    scenes (``python -m rs_embed_pipeline.providers.local_catalogs.user_scenes``), or a local mirror laid out like
    a real catalog (``catalog_preset``)."""

    catalog_path: str
    max_workers: int | None = knob_field("LocalStacImagery", "max_workers")
    catalog_preset: str | None = knob_field("LocalStacImagery", "catalog_preset")
    s2_collection: str | None = knob_field("LocalStacImagery", "s2_collection")
    s1_collection: str | None = knob_field("LocalStacImagery", "s1_collection")
    s2_assets: dict[str, str] | None = knob_field("LocalStacImagery", "s2_assets")
    mask_asset: str | None = knob_field("LocalStacImagery", "mask_asset")
    provider_name: str = "local_stac"

    def catalog(self) -> dict[str, Any]:
        """The resolved catalog settings (fields over the preset; providers/catalogs.py)."""
        return resolve_catalog(self.catalog_preset, s2_collection=self.s2_collection,
                               s1_collection=self.s1_collection, s2_assets=self.s2_assets,
                               mask_asset=self.mask_asset)

    def validate_settings(self) -> None:
        self.catalog()

    def build(self, fetch_workers: int | None = None) -> PatchProvider:
        cat = self.catalog()
        found = catalog_collections(self.catalog_path)
        mask = cat["mask_asset"] if cat["mask_asset"] is not None else found["mask_asset"]
        return LocalStacProvider(
            self.catalog_path,
            s2_collection=cat["collection"] or found["s2_collection"],
            s1_collection=cat["s1_collection"] or found["s1_collection"],
            s2_assets=cat["s2_assets"],
            mask_asset=None if str(mask).lower() == "none" else mask,
            max_workers=self.max_workers or fetch_workers or DEFAULT_FETCH_WORKERS,
        )


class StacImagery(ImageryResource):
    """A STAC API: Earth Search Sentinel-2 L2A collection 1 by default, or another known catalog
    (``catalog_preset``); each catalog field set here wins over the preset's."""

    catalog_preset: str = knob_field("StacImagery", "catalog_preset")
    api_url: str | None = knob_field("StacImagery", "api_url")
    collection: str | None = knob_field("StacImagery", "collection")
    s1_collection: str | None = knob_field("StacImagery", "s1_collection")
    s2_assets: dict[str, str] | None = knob_field("StacImagery", "s2_assets")
    mask_asset: str | None = knob_field("StacImagery", "mask_asset")
    patch_url: str | None = knob_field("StacImagery", "patch_url")
    max_workers: int | None = knob_field("StacImagery", "max_workers")
    provider_name: str = "stac"

    def catalog(self) -> dict[str, Any]:
        """The resolved catalog settings (fields over the preset; providers/catalogs.py)."""
        return resolve_catalog(self.catalog_preset, api_url=self.api_url, s2_collection=self.collection,
                               s1_collection=self.s1_collection, s2_assets=self.s2_assets,
                               mask_asset=self.mask_asset, patch_url=self.patch_url)

    def validate_settings(self) -> None:
        sign = self.catalog()["patch_url"]
        if sign is not None:  # the signing package must be installed where the fetch runs
            import importlib.util

            module, _, package = PATCH_URL_SIGNERS[sign]
            if importlib.util.find_spec(module) is None:
                raise CatalogConfigError("patch_url", f"patch_url {sign!r} needs the {package!r} package "
                                         f"(pip install {package}), or patch_url 'none'")

    def build(self, fetch_workers: int | None = None) -> PatchProvider:
        self.validate_settings()
        cat = self.catalog()
        mask = cat["mask_asset"]
        return StacProvider(api_url=cat["api_url"], collection=cat["collection"], s1_collection=cat["s1_collection"],
                            s2_assets=cat["s2_assets"], mask_asset=None if str(mask).lower() == "none" else mask,
                            patch_url=cat["patch_url"],
                            max_workers=self.max_workers or fetch_workers or DEFAULT_FETCH_WORKERS)


class EarthEngineImagery(ImageryResource):
    """Google Earth Engine through computePixels; quota-aware (see the providers/gee/ package)."""

    project: str | None = None
    api_url: str | None = None
    credentials_file: str | None = None
    max_concurrent_requests: int = 40
    max_requests_per_second: float = 100
    anonymous: bool = Field(
        default=False, description="No credentials: only for a local Earth Engine stand-in (tests)."
    )
    s1_require_iw: bool = knob_field("EarthEngineImagery", "s1_require_iw")
    s1_relax_iw_on_empty: bool = knob_field("EarthEngineImagery", "s1_relax_iw_on_empty")
    provider_name: str = "gee"

    sensor_options_class: ClassVar[type[SensorOptions]] = EarthEngineSensorOptions

    def _own_sensor_options(self, modality: str) -> dict[str, Any]:
        # S2's Cloud Score+ settings are the provider's (GEEProvider arguments), not the resource's
        if modality == "s1":
            return {"require_iw": self.s1_require_iw, "relax_iw_on_empty": self.s1_relax_iw_on_empty}
        return {}

    def build(self, fetch_workers: int | None = None) -> PatchProvider:
        # Earth Engine's concurrency is max_concurrent_requests (its quota); fetch_workers does not apply.
        from rs_embed_pipeline.providers import GEEProvider

        return GEEProvider(
            project=self.project,
            api_url=self.api_url,
            credentials_file=self.credentials_file,
            credentials="anonymous" if self.anonymous else None,
            max_concurrent_requests=self.max_concurrent_requests,
            max_requests_per_second=self.max_requests_per_second,
        )


# --------------------------------------------------------------------------------------- models
class ModelResource(dg.ConfigurableResource):
    """A model adapter: its settings, and how to run it in the worker environment via Pipes."""

    # Defaults and descriptions: the knob table (config/knobs.yaml), which docs/knobs.md is generated from.
    checkpoint: str | None = knob_field("ModelResource", "checkpoint")
    allow_random_weights: bool = knob_field("ModelResource", "allow_random_weights")
    device: str = knob_field("ModelResource", "device")
    batch_size: int | None = knob_field("ModelResource", "batch_size")
    precision: str = knob_field("ModelResource", "precision")
    cache_dir: str | None = knob_field("ModelResource", "cache_dir")
    arch_json: str | None = knob_field("ModelResource", "arch_json")
    worker_python: str = knob_field("ModelResource", "worker_python")
    scale_m: float = knob_field("ModelResource", "scale_m")
    fetch_workers: int = knob_field("ModelResource", "fetch_workers")
    modalities: list[str] = knob_field("ModelResource", "modalities")

    model_id: str = "abstract"

    @property
    def store_model_id(self) -> str:
        """Model id in store paths (``embeddings/<id>_<modality>/...``)."""
        return self.model_id

    def validate_settings(self) -> None:
        """Catch invalid values in the orchestrator (before a worker starts), naming the valid ones;
        raises :class:`ResourceFieldError` naming the field."""
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ResourceFieldError(
                "modalities", f"{type(self).__name__}.modalities {self.modalities!r}: use 's2' and/or 's1'")
        if self.batch_size is not None and self.batch_size < 1:
            raise ResourceFieldError("batch_size", f"batch_size must be an integer >= 1 or None, got {self.batch_size}")
        if self.fetch_workers < 1:
            raise ResourceFieldError("fetch_workers", f"fetch_workers must be an integer >= 1, got {self.fetch_workers}")

    @property
    def title(self) -> str:  # pragma: no cover - overridden
        """The model's name in asset descriptions and STAC titles, e.g. ``TerraFM-B``."""
        raise NotImplementedError

    @property
    def tile_size_px(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def model_options(self) -> dict[str, Any]:
        return {}

    def adapter_options(self) -> dict[str, Any]:
        """``load_adapter`` options; ``use_env=False``: the worker ignores the knob environment
        variables, the resource config (whose defaults came from them, settings.py) decides."""
        self.validate_settings()
        options: dict[str, Any] = {
            "use_env": False,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "precision": self.precision,
            "allow_random_weights": self.allow_random_weights,
            **self.model_options(),
        }
        if self.batch_size:
            options["batch_size"] = self.batch_size
        if self.cache_dir:
            options["cache_dir"] = self.cache_dir
        if self.arch_json:
            options["arch"] = json.loads(self.arch_json)
        return options

    def run_worker(
        self,
        context: dg.AssetExecutionContext,
        pipes_client: dg.PipesSubprocessClient,
        *,
        modality: str,
        partitions: Sequence[PartitionJob],
        rebuild: bool = False,
        force: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> WorkerReport:
        """Embed ``partitions`` in the worker environment (Pipes); its results and store failures."""
        request = EmbedRequest(model=self.model_id, modality=modality, partitions=tuple(partitions),
                               adapter_options=self.adapter_options(), code_version=CODE_VERSION,
                               rebuild=rebuild, force=force, storage_options=storage_options)
        invocation = pipes_client.run(
            context=context,
            command=[self.worker_python, "-m", "rs_embed_pipeline.worker.embed"],
            extras=request.to_extras(),
            env=worker_environment(),  # from a source checkout: PYTHONPATH with the checkout (settings.py)
        )
        return read_messages(invocation.get_custom_messages())


class TerraFMResource(ModelResource):
    """TerraFM-B (MBZUAI): 224 px tiles, S2 (12 bands) and S1 (VV, VH)."""

    s2_branch: str = knob_field("TerraFMResource", "s2_branch")
    model_id: str = "terrafm_b"

    @property
    def title(self) -> str:
        return "TerraFM-B"

    @property
    def tile_size_px(self) -> int:
        return 224

    def model_options(self) -> dict[str, Any]:
        return {"s2_branch": self.s2_branch}


class ThorResource(ModelResource):
    """THOR 1.0 (FM4CS; base by default) via the TerraTorch-compatible encoder: 288 px tiles at 10 m."""

    model_key: str = knob_field("ThorResource", "model_key")
    pretrained: bool = knob_field("ThorResource", "pretrained")
    normalization: str = knob_field("ThorResource", "normalization")
    patch_size: int = knob_field("ThorResource", "patch_size")
    image_size: int = knob_field("ThorResource", "image_size")
    group_merge: str = knob_field("ThorResource", "group_merge")
    modalities: list[str] = knob_field("ThorResource", "modalities")
    model_id: str = "thor_1_0_base"

    @property
    def title(self) -> str:
        return f"THOR 1.0 {self.variant}"

    @property
    def tile_size_px(self) -> int:
        return self.image_size

    @property
    def variant(self) -> str:
        return canonical_thor_variant(self.model_key)

    @property
    def store_model_id(self) -> str:
        return f"thor_1_0_{self.variant}"

    def validate_settings(self) -> None:
        super().validate_settings()
        with checking("group_merge"):
            canonical_group_merge(self.group_merge)
        with checking("normalization"):
            canonical_thor_normalization(self.normalization)
        with checking("model_key"):
            if self.variant not in ("tiny", "small", "base", "large"):  # pragma: no cover - variant raises first
                raise ValueError(self.model_key)
        if self.patch_size < 1 or self.image_size < 1:
            raise ResourceFieldError("patch_size" if self.patch_size < 1 else "image_size",
                                     f"patch_size and image_size must be >= 1, got {self.patch_size}, {self.image_size}")

    def model_options(self) -> dict[str, Any]:
        return {
            "variant": self.model_key,
            "pretrained": self.pretrained,
            "normalization": self.normalization,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "group_merge": self.group_merge,
            "scale_m": self.scale_m,
        }


#: The Dagster resource class of each registered model family (``models/registry.py``), under the
#: family's name, which is also its resource key and asset-name prefix. A family registered without
#: one here fails the code location's load, naming it.
MODEL_RESOURCE_CLASSES: dict[str, type[ModelResource]] = {"terrafm": TerraFMResource, "thor": ThorResource}


def model_resource_classes() -> dict[str, type[ModelResource]]:
    """``{family name: resource class}`` for every registered family, in registration order."""
    missing = [f.name for f in families() if f.name not in MODEL_RESOURCE_CLASSES]
    if missing:
        raise ValueError(f"Model famil{'y' if len(missing) == 1 else 'ies'} {missing} registered in "
                         "rs_embed_pipeline.models.registry without a Dagster resource class: add one to "
                         "rs_embed_pipeline.orchestration.resources.MODEL_RESOURCE_CLASSES")
    return {f.name: MODEL_RESOURCE_CLASSES[f.name] for f in families()}
