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


class PipelineStore(dg.ConfigurableResource):
    """Root of the patch, embedding and cube stores: a local directory or ``s3://bucket/prefix``."""

    root: str = Field(description="Directory or s3://bucket/prefix holding every store.")
    storage_options_json: Optional[str] = Field(
        default=None,
        description="JSON fsspec storage options (e.g. an S3 endpoint_url); credentials come "
        "from the standard AWS environment, never from here.",
    )

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(self.root)

    @property
    def storage_options(self) -> dict[str, Any] | None:
        return json.loads(self.storage_options_json) if self.storage_options_json else None


# --------------------------------------------------------------------------------------- imagery
class ImageryResource(dg.ConfigurableResource):
    """Shared sensor settings of every provider (recorded on the patch materializations)."""

    cloudy_pct: float = Field(default=30, description="S2 scenes with more cloud (%) are dropped.")
    composite: str = Field(default="median", description="median | mosaic (latest valid on top).")
    s1_orbit: Optional[str] = Field(default=None, description="ASCENDING | DESCENDING | None (both).")
    max_failure_fraction: float = Field(
        default=0.1, description="A patch asset fails when more tiles than this fraction fail."
    )

    provider_name: str = "abstract"

    def build(self) -> PatchProvider:  # pragma: no cover - overridden
        raise NotImplementedError

    def sensor_options(self, modality: str) -> dict[str, Any]:
        if self.composite not in COMPOSITES:
            raise ValueError(f"composite {self.composite!r} is not one of {', '.join(COMPOSITES)}")
        options: dict[str, Any] = {"composite": self.composite}
        if modality == "s2":
            options["cloudy_pct"] = self.cloudy_pct
        elif self.s1_orbit:
            options["orbit"] = self.s1_orbit
        return options


class LocalStacImagery(ImageryResource):
    """A static STAC catalog of COGs (the offline default: the synthetic demo catalog)."""

    catalog_path: str
    max_workers: int = 4
    provider_name: str = "local_stac"

    def build(self) -> PatchProvider:
        from rs_embed_pipeline.providers import LocalStacProvider

        return LocalStacProvider(self.catalog_path, max_workers=self.max_workers)


class StacImagery(ImageryResource):
    """A STAC API, by default Earth Search Sentinel-2 L2A collection 1."""

    api_url: str = "https://earth-search.aws.element84.com/v1"
    collection: str = "sentinel-2-c1-l2a"
    max_workers: int = 8
    provider_name: str = "stac"

    def build(self) -> PatchProvider:
        from rs_embed_pipeline.providers import StacProvider

        return StacProvider(api_url=self.api_url, collection=self.collection, max_workers=self.max_workers)


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
    provider_name: str = "gee"

    def build(self) -> PatchProvider:
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
    batch_size: Optional[int] = Field(default=None, description="Tiles per forward pass.")
    precision: str = Field(default="fp32", description="fp32 | bf16 (autocast, CUDA only)")
    cache_dir: Optional[str] = Field(default=None, description="Hugging Face cache directory.")
    arch_json: Optional[str] = Field(
        default=None, description="Reduced architecture (a fixture's case.json 'arch'); tests only."
    )
    worker_python: str = Field(description="Python interpreter of the worker environment.")
    scale_m: float = Field(default=10.0, description="Ground sampling distance of the input tiles.")

    model_id: str = "abstract"

    @property
    def tile_size_px(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def model_options(self) -> dict[str, Any]:
        return {}

    def adapter_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
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
        repo = str(Path(__file__).resolve().parent.parent)
        pythonpath = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
        return pipes_client.run(
            context=context,
            command=[self.worker_python, "-m", "rs_embed_pipeline.worker.embed"],
            extras={"model": self.model_id, "adapter_options": self.adapter_options(), **extras},
            env={"PYTHONPATH": pythonpath},
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
    """THOR 1.0 base (FM4CS) via the TerraTorch-compatible encoder: 288 px tiles at 10 m."""

    normalization: str = Field(default="thor_stats", description="thor_stats | unit_scale | none")
    patch_size: int = Field(default=16, description="FlexiViT patch size (16 native, 8 finer).")
    image_size: int = Field(default=288, description="Tile side in pixels; ground cover = scale_m x image_size.")
    group_merge: str = Field(default="mean", description="mean | sum | concat")
    model_id: str = "thor_1_0_base"

    @property
    def tile_size_px(self) -> int:
        return self.image_size

    def model_options(self) -> dict[str, Any]:
        return {
            "normalization": self.normalization,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "group_merge": self.group_merge,
            "scale_m": self.scale_m,
        }
