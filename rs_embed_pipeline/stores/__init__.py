"""Zarr v3 stores shared by the orchestrator and the model worker (no Dagster, no torch here)."""

from rs_embed_pipeline.stores.layout import StoreLayout
from rs_embed_pipeline.stores.tile_store import (
    STATUS_CODES,
    STATUS_NAMES,
    ArraySpec,
    StoreError,
    TileStore,
)

__all__ = ["STATUS_CODES", "STATUS_NAMES", "ArraySpec", "StoreError", "StoreLayout", "TileStore"]
