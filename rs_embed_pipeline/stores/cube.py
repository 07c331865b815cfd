"""Georeferenced embedding cubes: one Zarr v3 store per model, modality and region.

Layout of ``cubes/<model>_<modality>/<region>.zarr``::

    EPSG32632/grid     embedding (time, y, x, feature)   feature maps mosaicked at their own
                                                         resolution (tile side / grid cells)
    EPSG32632/pooled   embedding (time, y, x, feature)   one cell per tile
    (one EPSG group per UTM zone the region's tiles fall in)

Each dataset carries CF metadata that xarray and rioxarray read: ``x``/``y`` cell-centre
coordinates in metres of the tile CRS, a ``spatial_ref`` grid-mapping variable (CF attributes,
``crs_wkt``, GDAL ``GeoTransform``), ``time`` as the window start (CF units), and
``window_filled`` marking the windows that were written.

Time index i is the i-th window of the partitions definition (not the order of writes), so a
backfill may fill windows in any order, and appending a window resizes the time axis (metadata
only) and writes that window's chunks; no chunk of another window is ever rewritten. Grid chunks
hold exactly one tile of one window, so tile writes are chunk-aligned.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Sequence

import numpy as np
import zarr
from pyproj import CRS

from rs_embed_pipeline.grid import parse_tile_id

EPOCH = dt.date(1970, 1, 1)


def _days(date: str) -> int:
    return (dt.date.fromisoformat(date) - EPOCH).days


def _group_names(zone_epsgs: Sequence[int]) -> list[str]:
    return [f"EPSG{int(e)}" for e in zone_epsgs]


def _ensure_dataset(
    root: zarr.Group,
    path: str,
    *,
    epsg: int,
    x0: float,
    y0: float,
    cell_m: float,
    ny: int,
    nx: int,
    n_feature: int,
    chunk_yx: tuple[int, int],
    attrs: Mapping[str, Any],
) -> zarr.Group:
    if path in root:
        group = root[path]
        emb = group["embedding"]
        if emb.shape[1:] != (ny, nx, n_feature):
            raise ValueError(
                f"Cube group {path} has shape {emb.shape[1:]}, this window needs {(ny, nx, n_feature)}: "
                "the region's tile grid or the model output changed. Nothing was written; rebuild the cube."
            )
        return group
    group = root.require_group(path)
    crs = CRS.from_epsg(epsg)
    group.attrs.update({"Conventions": "CF-1.8", **attrs})
    xs = x0 + cell_m * (np.arange(nx) + 0.5)
    ys = y0 - cell_m * (np.arange(ny) + 0.5)
    x = group.create_array("x", shape=(nx,), dtype="float64", dimension_names=["x"],
                           attributes={"standard_name": "projection_x_coordinate", "units": "m",
                                       "long_name": "x coordinate of cell centre"})
    x[:] = xs
    y = group.create_array("y", shape=(ny,), dtype="float64", dimension_names=["y"],
                           attributes={"standard_name": "projection_y_coordinate", "units": "m",
                                       "long_name": "y coordinate of cell centre"})
    y[:] = ys
    feature = group.create_array("feature", shape=(n_feature,), dtype="int32", dimension_names=["feature"],
                                 attributes={"long_name": "embedding feature index"})
    feature[:] = np.arange(n_feature, dtype=np.int32)
    cf = crs.to_cf()
    cf.update({"crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(),
               "GeoTransform": f"{x0} {cell_m} 0.0 {y0} 0.0 {-cell_m}"})
    spatial_ref = group.create_array("spatial_ref", shape=(), dtype="int32", dimension_names=[], attributes=cf)
    spatial_ref[()] = 0
    group.create_array("time", shape=(0,), chunks=(1,), dtype="int64", dimension_names=["time"],
                       attributes={"standard_name": "time", "long_name": "time window start",
                                   "units": "days since 1970-01-01", "calendar": "proleptic_gregorian"})
    group.create_array("window_filled", shape=(0,), chunks=(1,), dtype="int8", fill_value=0,
                       dimension_names=["time"], attributes={"long_name": "1 where this window was written"})
    group.create_array(
        "embedding",
        shape=(0, ny, nx, n_feature),
        chunks=(1, *chunk_yx, n_feature),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=["time", "y", "x", "feature"],
        attributes={"grid_mapping": "spatial_ref", "coordinates": "spatial_ref",
                    "long_name": "embedding", "units": "1"},
    )
    return group


def _ensure_time(group: zarr.Group, window_index: int, window_starts: Sequence[str]) -> None:
    emb, time, filled = group["embedding"], group["time"], group["window_filled"]
    n = window_index + 1
    if emb.shape[0] < n:
        old = emb.shape[0]
        emb.resize((n, *emb.shape[1:]))
        filled.resize((n,))
        time.resize((n,))
        time[old:n] = np.asarray([_days(s) for s in window_starts[old:n]], dtype=np.int64)


def write_cube_window(
    cube_uri: str,
    *,
    tiles: Sequence[Mapping[str, Any]],
    pooled: Mapping[str, np.ndarray],
    grids: Any,
    window_index: int,
    window_starts: Sequence[str],
    attrs: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one window of a region's embeddings into its cube.

    ``tiles``: tile_grid rows (tile_id, utm_epsg, x0, y0, size_px, scale_m) of the region at this
    model's tile size; ``pooled``: tile_id -> [D] for the tiles that have an embedding;
    ``grids``: callable tile_id -> [D', h, w] (read lazily, one tile in memory at a time).
    """
    # Consolidated metadata would hand back stale array shapes while this writer resizes them.
    root = zarr.open_group(cube_uri, mode="a", use_consolidated=False,
                           storage_options=dict(storage_options or {}) or None)
    root.attrs.update({"Conventions": "CF-1.8", **attrs})
    written: dict[str, Any] = {"groups": [], "tiles_written": 0}
    zones = sorted({int(t["utm_epsg"]) for t in tiles})
    for epsg, group_name in zip(zones, _group_names(zones)):
        zone_tiles = [t for t in tiles if int(t["utm_epsg"]) == epsg]
        parsed = [parse_tile_id(str(t["tile_id"])) for t in zone_tiles]
        cols = [p["col"] for p in parsed]
        rows = [p["row"] for p in parsed]
        size_px = int(zone_tiles[0]["size_px"])
        scale_m = float(zone_tiles[0]["scale_m"])
        tile_m = size_px * scale_m
        col_min, row_max = min(cols), max(rows)
        ncol, nrow = max(cols) - col_min + 1, row_max - min(rows) + 1
        # Upper-left corner of the zone's tile block (rows count northwards in the tile id).
        left = min(float(t["x0"]) for t in zone_tiles)
        top = max(float(t["y0"]) for t in zone_tiles)

        sample = next((tid for tid in (str(t["tile_id"]) for t in zone_tiles) if tid in pooled), None)
        if sample is None:
            continue
        grid_sample = grids(sample)
        d_grid, gh, gw = grid_sample.shape
        d_pooled = int(np.asarray(pooled[sample]).shape[-1])

        grid_group = _ensure_dataset(
            root, f"{group_name}/grid", epsg=epsg, x0=left, y0=top, cell_m=tile_m / gw,
            ny=nrow * gh, nx=ncol * gw, n_feature=d_grid, chunk_yx=(gh, gw),
            attrs={**attrs, "cell_kind": "feature_map", "cells_per_tile": gw},
        )
        pooled_group = _ensure_dataset(
            root, f"{group_name}/pooled", epsg=epsg, x0=left, y0=top, cell_m=tile_m,
            ny=nrow, nx=ncol, n_feature=d_pooled, chunk_yx=(min(nrow, 64), min(ncol, 64)),
            attrs={**attrs, "cell_kind": "tile", "cells_per_tile": 1},
        )
        for group in (grid_group, pooled_group):
            _ensure_time(group, window_index, window_starts)

        plane = np.full((nrow, ncol, d_pooled), np.nan, dtype=np.float32)
        for tile, p in zip(zone_tiles, parsed):
            tid = str(tile["tile_id"])
            if tid not in pooled:
                continue
            r = row_max - p["row"]
            c = p["col"] - col_min
            plane[r, c] = pooled[tid]
            grid = grid_sample if tid == sample else grids(tid)
            grid_group["embedding"][window_index, r * gh : (r + 1) * gh, c * gw : (c + 1) * gw, :] = (
                np.moveaxis(np.asarray(grid, dtype=np.float32), 0, -1)
            )
            written["tiles_written"] += 1
        pooled_group["embedding"][window_index] = plane
        for group in (grid_group, pooled_group):
            group["window_filled"][window_index] = 1
        written["groups"].append(
            {"group": group_name, "epsg": epsg, "grid_shape": list(grid_group["embedding"].shape),
             "pooled_shape": list(pooled_group["embedding"].shape)}
        )
    # Consolidated metadata lets xarray open the cube with one read instead of one per array.
    zarr.consolidate_metadata(root.store)
    return written
