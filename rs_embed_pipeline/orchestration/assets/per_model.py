"""What every per-(model, modality) asset shares: its ``@dg.asset`` arguments, and where one
partition's stores and tiles are.

The assets learn their model's tile size and store model id from their :class:`plan.EmbeddingSpec`
(decided once in ``build_definitions``), so only the embeddings asset needs the model resource.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import dagster as dg
import geopandas as gpd
import zarr

from rs_embed_pipeline.orchestration.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.orchestration.partitions import BACKFILL_POLICY, RegionWindow
from rs_embed_pipeline.orchestration.plan import EmbeddingSpec
from rs_embed_pipeline.orchestration.resources import CODE_VERSION, PipelineStore
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline.worker.protocol import PartitionJob

OWNERS = ["team:embeddings"]


def spec_asset(*, name: str, partitions_def: dg.MultiPartitionsDefinition, group_name: str,
               retry_policy: dg.RetryPolicy | None, **kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``@dg.asset`` with what every per-model asset has in common: partitions (region x window),
    the backfill policy, owners and code version; ``kwargs``: the asset's own arguments."""
    return dg.asset(name=name, partitions_def=partitions_def, backfill_policy=BACKFILL_POLICY, group_name=group_name,
                    owners=OWNERS, code_version=CODE_VERSION, retry_policy=retry_policy, **kwargs)


def partition_job(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow) -> PartitionJob:
    """The partition's patch store (at the model's tile size) and embedding store."""
    layout = store.layout
    return PartitionJob(
        key=part.key,
        patches_uri=layout.patches(spec.modality, part.region, part.window, spec.tile_size_px),
        embeddings_uri=layout.embeddings(spec.store_model_id, spec.modality, part.region, part.window),
    )


def cube_uri(spec: EmbeddingSpec, store: PipelineStore, region: str) -> str:
    """The region's cube of this model and modality."""
    return store.layout.cube(spec.store_model_id, spec.modality, region)


def model_tiles(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow) -> gpd.GeoDataFrame:
    """The partition's tile_grid rows at this model's tile size."""
    grid = read_tile_grid(store, part.region, part.window)
    return grid[grid["size_px"] == spec.tile_size_px]


def store_array(store: TileStore, name: str) -> zarr.Array:
    """A data array of a tile store (its group holds arrays only, never subgroups)."""
    return cast(zarr.Array, store.group[name])
