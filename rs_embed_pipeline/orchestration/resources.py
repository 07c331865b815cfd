"""Dagster resources: the store, the imagery providers and the model adapters.

Which provider, store root and worker are used in a deployment is chosen in one place,
``definitions.py``, from :class:`rs_embed_pipeline.orchestration.settings.Settings`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
import inspect
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dagster as dg
from pydantic import Field

from rs_embed_pipeline.orchestration.knob_fields import knob
from rs_embed_pipeline.orchestration.leases import LeaseBusy, partition_leases
from rs_embed_pipeline.providers.base import PatchProvider
from rs_embed_pipeline.stores import StoreLayout
from rs_embed_pipeline.core.vocabulary import MODALITIES, CloudMask
from rs_embed_pipeline.models.knobs import IO_THREADS_DEFAULT
from rs_embed_pipeline.models.knobs import default as knob_default
from rs_embed_pipeline.models.registry import families
from rs_embed_pipeline.models.thor.spec import canonical_group_merge, canonical_thor_normalization, canonical_thor_variant
from rs_embed_pipeline.orchestration.partitions import partitions_for_config, region_windows
from rs_embed_pipeline.orchestration.settings import worker_environment
from rs_embed_pipeline.providers import LocalStacProvider, StacProvider
from rs_embed_pipeline.providers.gee import GEEProvider
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
import importlib.util

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from rs_embed_pipeline.worker.protocol import PartitionJob, WorkerReport

CODE_VERSION = "1"  # bump when a change alters stored numbers; it is part of every store fingerprint
# A STAC provider's threads when no model gives its fetch_workers: TerraFM's default.
DEFAULT_FETCH_WORKERS: int = knob_default("terrafm", "fetch_workers")


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

    lease_wait_s: float = knob(
        "Lease wait", default=600.0, setting="RS_EMBED_LEASE_WAIT_S",
        help="A step waits this long (seconds) for another run writing the same region x window (leases.py), then "
        "fails naming that run; 0: fail at once.",
        changes="none; a step that waited longer fails naming the run that holds the region x window")
    lease_ttl_s: float = knob(
        "Lease expiry", default=120.0, setting="RS_EMBED_LEASE_TTL_S",
        help="A writer's lease lapses this long (seconds) after its last heartbeat (a killed step); a retried "
        "step of the same run re-enters at once.",
        changes="none; how soon a killed run's region x window is free again")
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
        partitions_def = partitions_for_config(Path(self.regions_config))  # split regions: the loaded plan's cells
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

    # Each knob declared once, here (knob_fields.knob): docs/knobs.md is generated from these fields.
    # composite and s1_orbit stay str: they accept case variants, and an invalid value is refused at
    # load by sensor_options with rs-embed's message naming the field (tests assert it), which a
    # Literal would turn into a construction error (and Dagster 1.13 has no Optional[Literal]).
    cloudy_pct: float = knob("Cloud filter (S2 `cloudy_pct`)", default=30, help="S2 scenes with more cloud (%) are dropped.",
                             changes="`cloudy_pct`, patches `sensor_options`")
    composite: str = knob("Composite (S2 / S1)", default="median", help="median | mosaic (latest valid on top).",
                          changes="`composite` (`median` or `mosaic`)")
    cloud_mask: CloudMask = knob(
        "Cloud mask (S2 `cloud_mask`)", default="scl",
        help="Per-pixel S2 mask, the same in every provider: scl (SCL classes 0, 1, 3, 8, 9, 10 invalid), "
        "cloud_score_plus (Earth Engine only), none (the scene filter only, as rs-embed 0.3.1).",
        changes="`cloud_mask`, patches `sensor_options`, tile `valid` masks")
    s1_orbit: str | None = knob("S1 orbit", default=None, help="ASCENDING | DESCENDING | None (both).",
                                changes="`orbit` (`both`, `ASCENDING`, `DESCENDING`; `n/a` for S2)")
    fill_value: float = knob(
        "Fill value (S2 / S1)", default=0.0,
        help="Value written to pixels without a valid observation (S2 and S1; the valid mask still marks them).",
        changes="`fill_value`; value of pixels without a valid observation (the `valid` mask still marks them)")
    use_float_linear: bool = knob(
        "S1 linear source (`use_float_linear`)", default=True,
        help="S1: the source holds linear sigma0 power (Earth Engine S1_GRD_FLOAT). False: it holds dB (S1_GRD, dB "
        "GeoTIFFs), converted to linear power 10**(dB/10) before compositing.",
        changes="`use_float_linear` (`n/a` for S2); `False`: the source holds dB (Earth Engine `COPERNICUS/S1_GRD`, "
        "dB GeoTIFFs), converted to linear power before compositing")
    check_input: bool = knob(
        "Input inspection", env="RS_EMBED_CHECK_INPUT",
        help="Inspect every fetched patch (channels, value range, fill/NaN fraction, constant tiles, unit "
        "mismatches): flags in tile_meta['input_check'] and the input_inspection check.",
        changes="tile `tile_meta.input_check`, check `input_inspection`; library `meta.input_checks` (rs-embed's "
        "default is off)")
    check_raise: bool = knob(
        "Inspection raises", env="RS_EMBED_CHECK_RAISE",
        help="A flagged patch fails the input_inspection check with ERROR severity, which blocks the embeddings "
        "downstream; False: the check warns.",
        changes="check `input_inspection` severity ERROR (blocks the embeddings) instead of WARN; library: raises "
        "`Input inspection failed: ...` (rs-embed's default is on)")
    max_failure_fraction: float = knob(
        "Failed-tile tolerance", default=0.1, help="A patch asset fails when more tiles than this fraction fail.",
        changes="patches `failed_fraction`; above it the patches asset fails")

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
            options["cloud_mask"] = self.cloud_mask
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
_SENSOR_OPTION_FIELDS = {"composite": "composite", "cloudy_pct": "cloudy_pct", "cloud_mask": "cloud_mask", "orbit": "s1_orbit",
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


# One declaration for both STAC resources' max_workers (one knob, two classes).
_STAC_FETCH_THREADS: Any = knob(
    "STAC fetch threads", default=None, why="the models' fetch workers",
    help="Fetch threads; None: the fetch_workers of the model adapters.",
    changes="patches `provider_stats.config.max_workers`")


class LocalStacImagery(ImageryResource):
    """A static STAC catalog of COGs: the synthetic demo catalog, one built from your own GeoTIFF
    scenes (``python -m rs_embed_pipeline.providers.local_catalogs.user_scenes``), or a local mirror laid out like
    a real catalog (``catalog_preset``)."""

    catalog_path: str
    max_workers: int | None = _STAC_FETCH_THREADS
    # catalog_preset stays str: an unknown name is refused at load naming the valid ones
    # (providers/catalogs.py; tests assert it), and Dagster 1.13 has no Optional[Literal].
    catalog_preset: str | None = knob(
        "Local catalog layout", default=None,
        why="the catalog's own, else the synthetic layout: Earth Search C1 asset keys",
        help="The catalog's layout: earth-search-c1 | earth-search-l2a | planetary-computer (S2 collection, band -> "
        "asset keys, SCL key: providers/catalogs.py CATALOG_PRESETS); None: the catalog's own (user-scene catalogs "
        "record theirs), else the synthetic layout.",
        changes="patches `provider_settings.collections` (`assets`, `mask_asset`); presets `earth-search-c1`, "
        "`earth-search-l2a`, `planetary-computer` (a local mirror laid out like that catalog)")
    s2_collection: str | None = knob(
        "Local catalog collections", default=None,
        why="the preset's, else the catalog's own: user-scene catalogs record theirs; else the synthetic ids and `scl`",
        help="S2 collection id; None: the preset's, else the catalog's own (user-scene catalogs record theirs), "
        "else synthetic-s2-l2a.",
        changes="`collection`, `source`")
    s1_collection: str | None = knob(
        "Local catalog collections", default=None,
        help="S1 collection id; None: the catalog's own, else synthetic-s1-grd.")
    s2_assets: dict[str, str] | None = knob(
        "Local catalog layout", default=None,
        help="S2 band -> asset key (e.g. {'B8A': 'B8A'}), laid over the preset's map (else Earth Search C1's keys).")
    mask_asset: str | None = knob(
        "Local catalog collections", default=None,
        help="S2 SCL asset key; None: the preset's, else the catalog's own choice, else 'scl'; 'none' disables SCL "
        "masking.")
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

    # catalog_preset and patch_url stay str: an unknown name is refused at load naming the valid ones
    # (providers/catalogs.py; tests assert that message), which a Literal would turn into a
    # construction error; Dagster 1.13 has no Optional[Literal] either (patch_url).
    catalog_preset: str = knob(
        "STAC catalog preset", default="earth-search-c1", why="or `earth-search-l2a`, `planetary-computer`",
        help="earth-search-c1 | earth-search-l2a (the older Earth Search collection) | planetary-computer: the "
        "catalog's API URL, S2 collection, band -> asset keys, SCL key and URL signing (providers/catalogs.py "
        "CATALOG_PRESETS).",
        changes="patches `provider_settings` (`api_url`, `collections`, `patch_url`); sets the API URL, S2 "
        "collection, band -> asset keys, SCL key and URL signing (`providers/catalogs.py` `CATALOG_PRESETS`); an "
        "unknown name fails the load naming the valid ones")
    api_url: str | None = knob(
        "STAC catalog overrides", default=None, why="the preset's; `RS_EMBED_STAC_URL` sets `api_url`",
        help="STAC API URL; None: the preset's (RS_EMBED_STAC_URL sets it).",
        changes="patches `provider_settings.api_url`, `provider_settings.collections`; `s2_assets` entries are laid "
        "over the preset's map; `mask_asset: none` disables SCL masking; a gamma0 / uncalibrated S1 collection is "
        "refused at load")
    collection: str | None = knob("STAC catalog overrides", default=None, help="S2 collection id; None: the preset's.")
    s1_collection: str | None = knob(
        "STAC catalog overrides", default=None,
        help="S1 collection (VV, VH): calibrated linear sigma0, or Planetary Computer's sentinel-1-rtc (gamma0, "
        "recorded as s1_backscatter gamma0_rtc; the planetary-computer preset's); None: the preset's (Earth "
        "Search: none, S1 from Earth Engine). Uncalibrated DN (Earth Search sentinel-1-grd) are refused.")
    s2_assets: dict[str, str] | None = knob(
        "STAC catalog overrides", default=None,
        help="S2 band -> asset key (e.g. {'B8A': 'nir08'}), laid over the preset's map.")
    mask_asset: str | None = knob(
        "STAC catalog overrides", default=None,
        help="S2 SCL asset key; None: the preset's; 'none' disables SCL masking.")
    patch_url: str | None = knob(
        "STAC URL signing", default=None,
        why="the preset's: `planetary_computer` for Planetary Computer, else `none`",
        help="Asset href signing: none | planetary_computer (SAS tokens, package planetary-computer); None: the "
        "preset's.",
        changes="patches `provider_settings.patch_url`; `planetary_computer` signs hrefs with the "
        "`planetary-computer` package (checked at load)")
    fallback_collection: str | None = knob(
        "STAC gap fallback", default=None, why="none: a documented gap stays a gap (`scene_gap`)",
        help="S2 collection read inside the S2 collection's documented gaps (Earth Search C1: Nov 2016 - Nov 2019, "
        "2022), e.g. sentinel-2-l2a (Earth Search's legacy collection); None: no fallback.",
        changes="patches `provider_settings.fallback_collection`, tile `fallback_scenes` (one record per scene "
        "taken from it, with the gap)")
    max_workers: int | None = _STAC_FETCH_THREADS
    provider_name: str = "stac"

    def catalog(self) -> dict[str, Any]:
        """The resolved catalog settings (fields over the preset; providers/catalogs.py)."""
        return resolve_catalog(self.catalog_preset, api_url=self.api_url, s2_collection=self.collection,
                               s1_collection=self.s1_collection, s2_assets=self.s2_assets,
                               mask_asset=self.mask_asset, patch_url=self.patch_url)

    def validate_settings(self) -> None:
        sign = self.catalog()["patch_url"]
        if sign is not None:  # the signing package must be installed where the fetch runs

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
                            patch_url=cat["patch_url"], fallback_collection=self.fallback_collection,
                            max_workers=self.max_workers or fetch_workers or DEFAULT_FETCH_WORKERS)


def _key_file_project(path: str | None) -> str | None:
    """The ``project_id`` of a service-account key file; None without one (an unreadable file is the
    provider's error, with its own message)."""
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return "unchecked"  # the provider reports the file when it loads the credentials
    project = doc.get("project_id") if isinstance(doc, dict) else None
    return str(project) if project else None


def _gee_default(parameter: str) -> Any:
    """A ``GEEProvider`` argument's default: the provider declares it, the resource passes it on."""
    return inspect.signature(GEEProvider).parameters[parameter].default


class EarthEngineImagery(ImageryResource):
    """Google Earth Engine through computePixels; quota-aware (see the providers/gee/ package)."""

    project: str | None = None
    api_url: str | None = None
    credentials_file: str | None = None
    anonymous: bool = Field(
        default=False, description="No credentials: only for a local Earth Engine stand-in (tests)."
    )
    s1_require_iw: bool = knob("S1 IW only", default=True, help="S1: keep only IW-mode scenes.",
                               changes="patches `sensor_options.require_iw`, tile `s1_iw_applied`")
    s1_relax_iw_on_empty: bool = knob(
        "S1 relax IW when empty", default=True, help="S1: when a tile has no IW scene, retry without the IW filter.",
        changes="patches `sensor_options.relax_iw_on_empty`, tile `s1_iw_relaxed_on_empty`")
    # Throughput: the defaults are GEEProvider's own (library use has the same ones), passed on by build().
    max_concurrent_requests: int = knob(
        "Earth Engine concurrency", default=_gee_default("max_concurrent_requests"),
        why="Earth Engine's default quota",
        help="computePixels requests in flight at most (the fetch thread pool has the same size).",
        changes="patches `provider_stats.config.max_concurrent_requests`; no pixel changes")
    max_requests_per_second: float = knob(
        "Earth Engine request rate", default=_gee_default("max_requests_per_second"),
        why="Earth Engine's default quota", help="Token-bucket rate shared by every request.",
        changes="patches `provider_stats.config.max_requests_per_second`; no pixel changes")
    rate_burst: float | None = knob(
        "Earth Engine request rate", default=_gee_default("rate_burst"),
        help="Token-bucket capacity; None: max_requests_per_second / 10.")
    max_request_bytes: int = knob(
        "Earth Engine request size", default=_gee_default("max_request_bytes"),
        why="48 MiB, Earth Engine's computePixels limit",
        help="Bytes of one computePixels answer at most (tiles are batched into requests up to it).",
        changes="patches `provider_stats.config.max_request_bytes`, the number of requests; no pixel changes")
    max_tiles_per_request: int | None = knob(
        "Earth Engine request size", default=_gee_default("max_tiles_per_request"),
        help="Tiles batched into one request at most; None: as many as fit and keep every concurrency slot busy.")
    max_retries: int = knob(
        "Earth Engine retries", default=_gee_default("max_retries"),
        help="Retries of one request on 429 / 5xx / connection errors / quota texts (then its tiles are failed).",
        changes="patches `provider_stats.config` (`max_retries`, `backoff_base_s`, `backoff_max_s`); no pixel "
        "changes")
    backoff_base_s: float = knob(
        "Earth Engine retries", default=_gee_default("backoff_base_s"),
        help="Retry wait base * 2**attempt (jitter, at least Retry-After), seconds.")
    backoff_max_s: float = knob(
        "Earth Engine retries", default=_gee_default("backoff_max_s"), help="Cap of one retry wait, seconds.")
    request_timeout_s: float | None = knob(
        "Earth Engine request timeout", default=_gee_default("request_timeout_s"),
        help="Client deadline of one request, seconds (a request timing out twice is split); None: none.",
        changes="patches `provider_stats.config.request_timeout_s`; no pixel changes")
    provider_name: str = "gee"

    sensor_options_class: ClassVar[type[SensorOptions]] = EarthEngineSensorOptions

    def validate_settings(self) -> None:
        # Earth Engine needs a Cloud project registered for it; without one the fetch step would fail
        # after the run started. A service-account key file names its project (project_id).
        if self.project or self.anonymous or _key_file_project(self.credentials_file):
            return
        raise ResourceFieldError(
            "project", "the Earth Engine provider needs a Google Cloud project registered for Earth Engine: set "
            "EE_PROJECT=<project id> (or the imagery resource's project, or a service-account credentials_file "
            "whose project_id is used)")

    def _own_sensor_options(self, modality: str) -> dict[str, Any]:
        # S2's Cloud Score+ settings are the provider's (GEEProvider arguments), not the resource's
        if modality == "s1":
            return {"require_iw": self.s1_require_iw, "relax_iw_on_empty": self.s1_relax_iw_on_empty}
        return {}

    def build(self, fetch_workers: int | None = None) -> PatchProvider:
        # Earth Engine's concurrency is max_concurrent_requests (its quota); fetch_workers does not apply.
        return GEEProvider(
            project=self.project,
            api_url=self.api_url,
            credentials_file=self.credentials_file,
            credentials="anonymous" if self.anonymous else None,
            max_concurrent_requests=self.max_concurrent_requests,
            max_requests_per_second=self.max_requests_per_second,
            rate_burst=self.rate_burst,
            max_request_bytes=self.max_request_bytes,
            max_tiles_per_request=self.max_tiles_per_request,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            request_timeout_s=self.request_timeout_s,
        )


# --------------------------------------------------------------------------------------- models
class ModelResource(dg.ConfigurableResource):
    """A model adapter: its settings, and how to run it in the worker environment via Pipes."""

    # Each knob declared once (knob_fields.knob); docs/knobs.md documents these fields under every
    # model resource class. checkpoint, batch_size and fetch_workers are declared by each family's
    # class (their variables and defaults differ): here only their types.
    # device and precision stay str: device takes cuda:<index>, and an invalid precision is refused at
    # load naming the field (definitions.validate_resources; tests assert it). modalities stays
    # list[str]: Dagster 1.13 cannot make a config type of list[Literal[...]]; validate_settings checks it.
    checkpoint: str | None
    batch_size: int | None
    fetch_workers: int
    allow_random_weights: bool = knob(
        "Random-weights fallback", default=False, setting="RS_EMBED_ALLOW_RANDOM_WEIGHTS",
        help="Explicit opt-in to random weights (labelled in logs and metadata).",
        changes="`random_weights`, `weights_source` `RANDOM ...` when no weights are found")
    device: str = knob("Device", default="auto", setting="RS_EMBED_DEVICE", help="auto (cuda > cpu) | cpu | cuda",
                       changes="`device`; TerraFM's and THOR's batch-size defaults follow it")
    precision: str = knob(
        "Precision", default="fp32",
        help="fp32 | bf16 (autocast on CUDA, and on CPUs with native bf16; otherwise fp32 with a warning)",
        changes="`adapter_settings.precision` (bf16 autocast on CUDA and on CPUs with native bf16 (avx512_bf16 / "
        "amx_bf16), else fp32 with `precision_fallback` in metadata)")
    cache_dir: str | None = knob(
        "Hugging Face cache", default=None, env=("HUGGINGFACE_HUB_CACHE", "HF_HUB_CACHE", "HF_HOME"),
        why="huggingface_hub's default, `~/.cache/huggingface/hub`", help="Hugging Face cache directory.",
        changes="`adapter_settings.hf_cache_dir`, `weight_file` (`HF_HOME` means `$HF_HOME/hub`, huggingface_hub's "
        "rule; rs-embed passes `$HF_HOME` itself)")
    arch_json: str | None = knob(
        "Reduced test architecture", default=None, help="Reduced architecture (a fixture's case.json 'arch'); tests only.",
        changes="`adapter_settings.arch` (tests only)")
    worker_python: str = knob("Worker interpreter", setting="RS_EMBED_WORKER_PYTHON",
                              help="Python interpreter of the worker environment.", changes="none")
    scale_m: float = knob("Sensor scale (S2 / S1 `scale_m`)", default=10.0,
                          help="Ground sampling distance of the input tiles.",
                          changes="`scale_m`, `ground_cover_m`; the tile grid's pixel size")
    modalities: list[str] = knob(
        "Modality per model", default=["s2", "s1"],
        help="Modalities this model embeds; each gets its embeddings and cube assets (definitions) and its tile size "
        "among the fetched patches.",
        changes="`modality`; THOR with `s1` adds the `thor_s1_embeddings` / `thor_s1_cube` assets (definitions time)")
    outputs: Literal["pooled", "grid", "both"] = knob(
        "Embedding outputs", default="both",
        help="What the embedding stores hold: pooled [tile, D], grid [tile, D', h, w] or both. The cube (and the "
        "products from it) needs both: with pooled or grid only it fails naming this field.",
        changes="embedding store `outputs` (its arrays; part of its fingerprint unless `both`)")
    grid_dtype: Literal["float32", "float16", "bfloat16"] = knob(
        "Grid stored type", default="float32",
        help="Type of the stored grid: float32, float16 or bfloat16 (half the bytes; cast on the model's device; "
        "errors against float32 in the README). Cubes stay float32 (or int8: quantization).",
        changes="embedding store `grid_dtype` (part of its fingerprint and the cube's unless float32)")
    io_threads: int = knob(
        "Worker I/O threads", default=IO_THREADS_DEFAULT, why="a 16-core GPU box: 6 read + 6 write threads",
        help="The embed worker's threads reading and decoding patches, and as many writing embeddings (passed to "
        "the worker in its request; RS_EMBED_IO_THREADS only for direct library use).",
        changes="none; speed only")

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
        if self.io_threads < 1:
            raise ResourceFieldError("io_threads", f"io_threads must be an integer >= 1, got {self.io_threads}")

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
                               rebuild=rebuild, force=force, storage_options=storage_options, outputs=self.outputs,
                               grid_dtype=self.grid_dtype, io_threads=self.io_threads)
        invocation = pipes_client.run(
            context=context,
            command=[self.worker_python, "-m", "rs_embed_pipeline.worker.embed"],
            extras=request.to_extras(),
            env=worker_environment(),  # from a source checkout: PYTHONPATH with the checkout (settings.py)
        )
        return read_messages(invocation.get_custom_messages())


_FETCH_WORKERS_HELP = ("Threads fetching this model's patches (LocalStac / STAC providers; Earth Engine uses "
                       "max_concurrent_requests).")


class TerraFMResource(ModelResource):
    """TerraFM-B (MBZUAI): 224 px tiles, S2 (12 bands) and S1 (VV, VH)."""

    batch_size: int | None = knob(
        "TerraFM batch size", env="RS_EMBED_TERRAFM_BATCH_SIZE", why="8 on CPU, 64 on CUDA",
        help="Tiles per forward pass; None: 8 on CPU, 64 on CUDA.",
        changes="`adapter_settings.batch_size`; speed only (not in the store fingerprint)")
    fetch_workers: int = knob(
        "TerraFM fetch workers", env="RS_EMBED_TERRAFM_FETCH_WORKERS",
        help=_FETCH_WORKERS_HELP,
        changes="patches `provider_stats.config.max_workers` (LocalStac / STAC thread pool; the largest of the "
        "models embedding that modality); no pixel changes")
    checkpoint: str | None = knob(
        "TerraFM checkpoint", default=None, help="Local weights file; None: Hugging Face hub (cache first).",
        changes="`weight_file`, `weight_file_size`, `weights_sha256`, `weights_source`")
    # The TerraFM adapter's spellings (models/terrafm/spec.canonical_s2_branch), lower case.
    s2_branch: Literal["l2a", "l1c", "s2_l2a", "s2_l1c"] = knob(
        "TerraFM S2 branch", default="l2a", help="l2a (right for surface reflectance) | l1c (rs-embed 0.3.1)",
        changes="`s2_branch` (`l1c` = rs-embed 0.3.1's numbers)")
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

    # model_key, normalization and group_merge stay str: they take rs-embed's many spellings and
    # aliases (models/thor/spec.py), and an invalid value is refused at load naming the variable or
    # field (validate_settings; tests assert those messages), which a Literal would turn into a
    # construction error with pydantic's wording.
    model_key: str = knob(
        "THOR model key (variant)", env="RS_EMBED_THOR_MODEL_KEY",
        help="thor_v1_tiny | thor_v1_small | thor_v1_base | thor_v1_large (weights FM4CS/THOR-1.0-<size>, "
        "thor_v1_vit_<size>.pt).",
        changes="`model_key`, `model_id` (`thor_1_0_<size>`, also the store path), `hf_repo` `FM4CS/THOR-1.0-<size>`, "
        "`hf_file` `thor_v1_vit_<size>.pt`, embedding width")
    checkpoint: str | None = knob(
        "THOR checkpoint", env="RS_EMBED_THOR_CKPT", help="Local weights file; None: Hugging Face hub (cache first).",
        changes="`weight_file`, `weight_file_size`, `weights_sha256`, `weights_source` `local_file`")
    pretrained: bool = knob(
        "THOR pretrained", env="RS_EMBED_THOR_PRETRAINED",
        help="False with no checkpoint: random init without a hub lookup (labelled).",
        changes="`pretrained`; `False` without a checkpoint: `random_weights` true, `weights_source` `RANDOM "
        "(pretrained=False) ...`")
    image_size: int = knob("THOR image size", env="RS_EMBED_THOR_IMG",
                           help="Tile side in pixels; ground cover = scale_m x image_size.",
                           changes="`image_size`, `ground_cover_m` (= `scale_m` x image size), THOR tile size of the "
                           "tile grid and patches")
    normalization: str = knob("THOR normalization", env="RS_EMBED_THOR_NORMALIZE",
                              help="thor_stats | unit_scale | none", changes="`normalization`")
    group_merge: str = knob("THOR group merge", env="RS_EMBED_THOR_GROUP_MERGE", help="mean | sum | concat",
                            changes="`group_merge`; `concat` doubles the S2 grid's feature count")
    patch_size: int = knob("THOR patch size", env="RS_EMBED_THOR_PATCH_SIZE",
                           help="FlexiViT patch size (16 native, 8 finer).",
                           changes="`patch_size`; grid side = `ground_cover_m` / (patch size x 10 m) (rs-embed uses 8)")
    fetch_workers: int = knob(
        "THOR fetch workers", env="RS_EMBED_THOR_FETCH_WORKERS",
        help=_FETCH_WORKERS_HELP,
        changes="patches `provider_stats.config.max_workers`; no pixel changes")
    batch_size: int | None = knob(
        "THOR batch size", default=None, why="8 on CPU, 32 on CUDA",
        help="Tiles per forward pass; None: 8 on CPU, 32 on CUDA.",
        changes="`adapter_settings.batch_size`; speed only")
    modalities: list[str] = knob(
        "Modality per model", default=["s2"],
        help="Modalities THOR embeds: ['s2'] (default) or ['s2', 's1'] (adds the thor_s1_embeddings / thor_s1_cube "
        "assets).")
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
