"""The cube materialization's preview: the first three principal components of a window's
embeddings, next to the window's input imagery over the same extent (markdown with inline PNGs)."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import numpy as np

from rs_embed_pipeline.products import pictures
import xarray as xr

# Grid previews read the whole feature-map mosaic; above this many tiles the pooled cube is used.
GRID_PREVIEW_MAX_TILES = 64


def cube_window_preview(cube_uri: str, group: str, epsg: int, window_index: int, *, n_tiles: int, name: str,
                        partition: str, modality: str, random_weights: bool, patches: Any, tiles: Any,
                        storage_options: Mapping[str, Any] | None = None) -> str:
    """Markdown: the PCA picture of window ``window_index`` of the zone ``group`` (its feature maps,
    or one cell per tile above :data:`GRID_PREVIEW_MAX_TILES` tiles) and the input RGB beside it.
    ``tiles``: the region's tile_grid rows (a DataFrame) at the model's tile size."""

    source = "grid" if n_tiles <= GRID_PREVIEW_MAX_TILES else "pooled"
    ds = xr.open_zarr(cube_uri, group=f"{group}/{source}", consolidated=False, storage_options=storage_options)
    plane = ds["embedding"].isel(time=window_index).values
    caption = (f"First three principal components of {name} {source} embeddings, {partition}, {group}"
               + (" (RANDOM WEIGHTS)" if random_weights else ""))
    return _with_input(plane, caption, patches, tiles, epsg, source, modality, partition)


def _with_input(plane: np.ndarray, caption: str, patches: Any, tiles: Any, epsg: int, source: str,
                modality: str, partition: str) -> str:
    """The PCA picture, and next to it the window's input imagery (RGB) over the same extent."""
    pca = pictures.pca_rgb(plane)
    images = [(pictures.png(pca), caption)]
    zone_tiles = tiles[tiles["utm_epsg"] == epsg][["tile_id", "utm_epsg"]].to_dict("records")
    # Grid previews: 4 picture pixels per feature-map cell; pooled (large regions): 4 per tile.
    rows = [int(str(t["tile_id"]).rsplit("_r", 1)[1]) for t in zone_tiles] or [0]
    side = 4 * (pca.shape[0] // (max(rows) - min(rows) + 1)) if source == "grid" else 4
    rgb = None
    if len(zone_tiles) <= 4 * GRID_PREVIEW_MAX_TILES:
        try:
            rgb = pictures.patches_rgb(patches, zone_tiles, max(4, side))
        except Exception as exc:  # a picture must never fail the cube
            rgb = None
            caption += f" (no input picture: {type(exc).__name__}: {exc})"
    if rgb is not None:
        what = "true colour B4/B3/B2" if modality == "s2" else "VV, VH, VV/VH dB"
        images.append((pictures.png(rgb), f"Input imagery ({what}), {partition}, same extent"))
        caption += f" | right: the window's input imagery ({what}), same extent"
    return pictures.markdown(images, caption)
