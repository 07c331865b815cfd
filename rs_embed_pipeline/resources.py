"""Dagster resources: the store, the imagery providers and the model adapters.

Which provider, store root and worker are used in a deployment is chosen in one place,
``definitions.py``, from :class:`rs_embed_pipeline.settings.Settings`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from rs_embed_pipeline.providers.base import PatchProvider
from rs_embed_pipeline.stores import StoreLayout

CODE_VERSION = "1"  # bump when a change alters stored numbers; it is part of every store fingerprint
COMPOSITES = ("median", "mosaic")
S1_ORBITS = ("ASCENDING", "DESCENDING")
MODALITIES = ("s2", "s1")
DEFAULT_FETCH_WORKERS = 8


class PipelineStore(dg.ConfigurableResource):
    """Root of the patch, embedding and cube stores: a local directory or ``s3://bucket/prefix``."""

    root: str = Field(description="Directory or s3://bucket/prefix holding every store.")
    storage_options_json: Optional[str] = Field(
        default=None,
        description="JSON fsspec storage options (e.g. an S3 endpoint_url); credentials come "
        "from the standard AWS environment (keys, AWS_PROFILE, IRSA, ECS task role), never from "
        "here: options holding credentials are refused.",
    )

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(self.root)

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """Non-secret fsspec options; credentials in them are refused (stores/remote.py)."""
        from rs_embed_pipeline.stores.remote import check_storage_options

        return check_storage_options(json.loads(self.storage_options_json) if self.storage_options_json else None)


# --------------------------------------------------------------------------------------- imagery
class ImageryResource(dg.ConfigurableResource):
    """Shared sensor settings of every provider (rs-embed's sensor options; recorded on the patch
    materializations and, through the patch store, on every embeddings / cube materialization)."""

    cloudy_pct: float = Field(default=30, description="S2 scenes with more cloud (%) are dropped.")
    composite: str = Field(default="median", description="median | mosaic (latest valid on top).")
    s1_orbit: Optional[str] = Field(default=None, description="ASCENDING | DESCENDING | None (both).")
    fill_value: float = Field(
        default=0.0, description="Value written to pixels without a valid observation (S2 and S1; the "
        "valid mask still marks them).")
    use_float_linear: bool = Field(
        default=True, description="S1: the source holds linear sigma0 power (Earth Engine S1_GRD_FLOAT). "
        "False: it holds dB (S1_GRD, dB GeoTIFFs), converted to linear power 10**(dB/10) before compositing.")
    check_input: bool = Field(
        default=True, description="Inspect every fetched patch (channels, value range, fill/NaN fraction, "
        "constant tiles, unit mismatches): flags in tile_meta['input_check'] and the input_inspection check.")
    check_raise: bool = Field(
        default=False, description="A flagged patch fails the input_inspection check with ERROR severity, "
        "which blocks the embeddings downstream; False: the check warns.")
    max_failure_fraction: float = Field(
        default=0.1, description="A patch asset fails when more tiles than this fraction fail."
    )

    provider_name: str = "abstract"

    def build(self, fetch_workers: int | None = None) -> PatchProvider:  # pragma: no cover - overridden
        """The provider; ``fetch_workers``: the models' fetch_workers (threads), where it applies."""
        raise NotImplementedError

    def sensor_options(self, modality: str) -> dict[str, Any]:
        """Options for ``fetch_patches``; invalid values raise with the valid ones (rs-embed's messages)."""
        if self.composite not in COMPOSITES:
            raise ValueError(f"Unknown composite={self.composite!r}. Use 'median' or 'mosaic'.")
        if not 0 <= float(self.cloudy_pct) <= 100:
            raise ValueError(f"cloudy_pct must be within [0, 100], got {self.cloudy_pct}")
        options: dict[str, Any] = {"composite": self.composite, "fill_value": float(self.fill_value)}
        if modality == "s2":
            options["cloudy_pct"] = self.cloudy_pct
            return options
        if self.s1_orbit:
            orbit = str(self.s1_orbit).strip().upper()
            if orbit not in S1_ORBITS:
                raise ValueError(f"Unknown S1 orbit={self.s1_orbit!r}. Use 'ASCENDING' or 'DESCENDING'.")
            options["orbit"] = orbit
        options["use_float_linear"] = bool(self.use_float_linear)
        return options


class LocalStacImagery(ImageryResource):
    """A static STAC catalog of COGs: the synthetic demo catalog, or one built from your own GeoTIFF
    scenes (``python -m rs_embed_pipeline.providers.user_scenes``)."""

    catalog_path: str
    max_workers: Optional[int] = Field(
        default=None, description="Fetch threads; None: the fetch_workers of the model adapters.")
    s2_collection: Optional[str] = Field(
        default=None, description="S2 collection id; None: the catalog's own (user-scene catalogs record "
        "theirs), else synthetic-s2-l2a.")
    s1_collection: Optional[str] = Field(
        default=None, description="S1 collection id; None: the catalog's own, else synthetic-s1-grd.")
    mask_asset: Optional[str] = Field(
        default=None, description="S2 SCL asset key; None: the catalog's own choice, else 'scl'; "
        "'none' disables SCL masking.")
    provider_name: str = "local_stac"

    def build(self, fetch_workers: int | None = None) -> PatchProvider:
        from rs_embed_pipeline.providers import LocalStacProvider
        from rs_embed_pipeline.providers.user_scenes import catalog_collections

        found = catalog_collections(self.catalog_path)
        mask = self.mask_asset if self.mask_asset is not None else found["mask_asset"]
        return LocalStacProvider(
            self.catalog_path,
            s2_collection=self.s2_collection or found["s2_collection"],
            s1_collection=self.s1_collection or found["s1_collection"],
            mask_asset=None if str(mask).lower() == "none" else mask,
            max_workers=self.max_workers or fetch_workers or DEFAULT_FETCH_WORKERS,
        )


class StacImagery(ImageryResource):
    """A STAC API, by default Earth Search Sentinel-2 L2A collection 1."""

    api_url: str = "https://earth-search.aws.element84.com/v1"
    collection: str = "sentinel-2-c1-l2a"
    max_workers: Optional[int] = Field(
        default=None, description="Fetch threads; None: the fetch_workers of the model adapters.")
    provider_name: str = "stac"

    def build(self, fetch_workers: int | None = None) -> PatchProvider:
        from rs_embed_pipeline.providers import StacProvider

        return StacProvider(api_url=self.api_url, collection=self.collection,
                            max_workers=self.max_workers or fetch_workers or DEFAULT_FETCH_WORKERS)


class EarthEngineImagery(ImageryResource):
    """Google Earth Engine through computePixels; quota-aware (see providers/gee.py)."""

    project: Optional[str] = None
    api_url: Optional[str] = None
    credentials_file: Optional[str] = None
    max_concurrent_requests: int = 40
    max_requests_per_second: float = 100
    anonymous: bool = Field(
        default=False, description="No credentials: only for a local Earth Engine stand-in (tests)."
    )
    s1_require_iw: bool = Field(default=True, description="S1: keep only IW-mode scenes.")
    s1_relax_iw_on_empty: bool = Field(
        default=True, description="S1: when a tile has no IW scene, retry without the IW filter.")
    provider_name: str = "gee"

    def sensor_options(self, modality: str) -> dict[str, Any]:
        options = super().sensor_options(modality)
        if modality == "s1":
            options["require_iw"] = bool(self.s1_require_iw)
            options["relax_iw_on_empty"] = bool(self.s1_relax_iw_on_empty)
        return options

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
class ModelAdapterResource(dg.ConfigurableResource):
    """A model adapter: its settings, and how to run it in the worker environment via Pipes."""

    checkpoint: Optional[str] = Field(
        default=None, description="Local weights file; None: Hugging Face hub (cache first)."
    )
    allow_random_weights: bool = Field(
        default=False, description="Explicit opt-in to random weights (labelled in logs and metadata)."
    )
    device: str = Field(default="auto", description="auto (cuda > cpu) | cpu | cuda")
    batch_size: Optional[int] = Field(
        default=None, description="Tiles per forward pass; None: 8 on CPU, 64 (TerraFM) / 32 (THOR) on CUDA.")
    precision: str = Field(default="fp32", description="fp32 | bf16 (autocast, CUDA only)")
    cache_dir: Optional[str] = Field(default=None, description="Hugging Face cache directory.")
    arch_json: Optional[str] = Field(
        default=None, description="Reduced architecture (a fixture's case.json 'arch'); tests only."
    )
    worker_python: str = Field(description="Python interpreter of the worker environment.")
    scale_m: float = Field(default=10.0, description="Ground sampling distance of the input tiles.")
    fetch_workers: int = Field(
        default=DEFAULT_FETCH_WORKERS, description="Threads fetching this model's patches (LocalStac / STAC "
        "providers; Earth Engine uses max_concurrent_requests).")
    modalities: list[str] = Field(
        default=["s2", "s1"], description="Modalities this model embeds; each gets its embeddings and cube "
        "assets (definitions) and its tile size among the fetched patches.")

    model_id: str = "abstract"

    @property
    def store_model_id(self) -> str:
        """Model id in store paths (``embeddings/<id>_<modality>/...``)."""
        return self.model_id

    def validate_settings(self) -> None:
        """Catch invalid values in the orchestrator (before a worker starts), naming the valid ones."""
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ValueError(f"{type(self).__name__}.modalities {self.modalities!r}: use 's2' and/or 's1'")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 or None, got {self.batch_size}")
        if self.fetch_workers < 1:
            raise ValueError(f"fetch_workers must be an integer >= 1, got {self.fetch_workers}")

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
        extras: dict[str, Any],
    ) -> dg.PipesClientCompletedInvocation:
        # From a source checkout the worker imports this very tree (its venv may lack an install).
        # From an installed package the parent dir is site-packages: never put that on the worker's path.
        source_root = Path(__file__).resolve().parent.parent
        env = {}
        if (source_root / "pyproject.toml").exists():
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source_root), os.environ.get("PYTHONPATH")]))
        return pipes_client.run(
            context=context,
            command=[self.worker_python, "-m", "rs_embed_pipeline.worker.embed"],
            extras={"model": self.model_id, "adapter_options": self.adapter_options(), **extras},
            env=env,
        )


class TerraFMAdapter(ModelAdapterResource):
    """TerraFM-B (MBZUAI): 224 px tiles, S2 (12 bands) and S1 (VV, VH)."""

    s2_branch: str = Field(default="l2a", description="l2a (right for surface reflectance) | l1c (rs-embed 0.3.1)")
    model_id: str = "terrafm_b"

    @property
    def tile_size_px(self) -> int:
        return 224

    def model_options(self) -> dict[str, Any]:
        return {"s2_branch": self.s2_branch}


class ThorAdapter(ModelAdapterResource):
    """THOR 1.0 (FM4CS; base by default) via the TerraTorch-compatible encoder: 288 px tiles at 10 m."""

    model_key: str = Field(
        default="thor_v1_base", description="thor_v1_tiny | thor_v1_small | thor_v1_base | thor_v1_large "
        "(weights FM4CS/THOR-1.0-<size>, thor_v1_vit_<size>.pt).")
    pretrained: bool = Field(
        default=True, description="False with no checkpoint: random init without a hub lookup (labelled).")
    normalization: str = Field(default="thor_stats", description="thor_stats | unit_scale | none")
    patch_size: int = Field(default=16, description="FlexiViT patch size (16 native, 8 finer).")
    image_size: int = Field(default=288, description="Tile side in pixels; ground cover = scale_m x image_size.")
    group_merge: str = Field(default="mean", description="mean | sum | concat")
    modalities: list[str] = Field(
        default=["s2"], description="Modalities THOR embeds: ['s2'] (default) or ['s2', 's1'] (adds the "
        "thor_s1_embeddings / thor_s1_cube assets).")
    model_id: str = "thor_1_0_base"

    @property
    def tile_size_px(self) -> int:
        return self.image_size

    @property
    def variant(self) -> str:
        from rs_embed_pipeline.models.knobs import canonical_thor_variant

        return canonical_thor_variant(self.model_key)

    @property
    def store_model_id(self) -> str:
        return f"thor_1_0_{self.variant}"

    def validate_settings(self) -> None:
        from rs_embed_pipeline.models.knobs import canonical_group_merge, canonical_thor_normalization

        super().validate_settings()
        canonical_group_merge(self.group_merge)
        canonical_thor_normalization(self.normalization)
        if self.variant not in ("tiny", "small", "base", "large"):  # pragma: no cover - variant raises first
            raise ValueError(self.model_key)
        if self.patch_size < 1 or self.image_size < 1:
            raise ValueError(f"patch_size and image_size must be >= 1, got {self.patch_size}, {self.image_size}")

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
