"""The tile grid: which stable, UTM-aligned tiles cover each region, per tile size in use."""


import io
import time
from collections.abc import Sequence
from typing import Any

import dagster as dg
import geopandas as gpd
import pandas as pd

from rs_embed_pipeline.orchestration.executors import STEP_RETRY_POLICY
from rs_embed_pipeline.orchestration.metadata import add_partition_metadata, json_value, path_value
from rs_embed_pipeline.orchestration.partitions import BACKFILL_POLICY, region_windows
from rs_embed_pipeline.core.regions import RegionPartition
from rs_embed_pipeline.orchestration.resources import CODE_VERSION, PipelineStore
from rs_embed_pipeline.stores.files import read_bytes, write_bytes_atomic


def write_tile_grid(store: PipelineStore, region: str, window: str, grid: gpd.GeoDataFrame) -> str:
    """Write the partition's grid as GeoParquet in one atomic put; returns its URI."""
    uri = store.layout.tile_grid(region, window)
    buf = io.BytesIO()
    grid.to_parquet(buf, index=False)
    write_bytes_atomic(uri, buf.getvalue(), store.storage_options)
    return uri


def read_tile_grid(store: PipelineStore, region: str, window: str) -> gpd.GeoDataFrame:
    uri = store.layout.tile_grid(region, window)
    try:
        payload = read_bytes(uri, store.storage_options)
    except FileNotFoundError as exc:
        raise dg.Failure(f"Tile grid {uri} is missing; materialize tile_grid for {region}|{window} first") from exc
    return gpd.read_parquet(io.BytesIO(payload))


# The GeoParquet's columns (docs/architecture.md), shown on the asset's page ("Columns").
TILE_GRID_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("tile_id", "string", description="Global, stable id: UTM zone, tile size, scale and "
                   "lattice position; overlapping regions share ids."),
    dg.TableColumn("utm_epsg", "int", description="EPSG code of the tile's UTM zone."),
    dg.TableColumn("x0", "float", description="Upper-left corner easting, metres, in utm_epsg."),
    dg.TableColumn("y0", "float", description="Upper-left corner northing, metres, in utm_epsg."),
    dg.TableColumn("size_px", "int", description="Tile side in pixels (one grid per model tile size)."),
    dg.TableColumn("scale_m", "float", description="Pixel size in metres."),
    dg.TableColumn("geometry", "polygon", description="Footprint in EPSG:4326 (GeoParquet geometry)."),
    dg.TableColumn("col", "int", description="Lattice column of the tile in its UTM zone (encoded in tile_id)."),
    dg.TableColumn("row", "int", description="Lattice row of the tile in its UTM zone (encoded in tile_id)."),
])


def build_tile_grid_asset(region_partitions: Sequence[RegionPartition], partitions_def: dg.MultiPartitionsDefinition,
                          *, tile_sizes: Sequence[tuple[int, float]],
                          retry_policy: dg.RetryPolicy | None = None) -> dg.AssetsDefinition:
    """The ``tile_grid`` asset over ``tile_sizes``: (size_px, scale_m) of every model's native tile,
    one grid per distinct size (``PipelinePlan.tile_sizes()``, docs/architecture.md), for the
    region partitions ``region_partitions`` (``PipelineConfig.partitions``: whole regions, or the
    cells of a split one, each with its cell's tiles)."""
    sizes = sorted(set(tile_sizes))
    by_key = {p.key: p for p in region_partitions}

    @dg.asset(
        name="tile_grid",
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        retry_policy=retry_policy or STEP_RETRY_POLICY,
        group_name="inputs",
        kinds={"geopandas", "parquet"},
        owners=["team:embeddings"],
        code_version=CODE_VERSION,  # the tile lattice is part of every stored number
        metadata={"dagster/column_schema": TILE_GRID_SCHEMA},
    )
    def tile_grid(context: dg.AssetExecutionContext, store: PipelineStore) -> dg.MaterializeResult:
        """GeoParquet of the global, stable, UTM-aligned tiles covering the region's AOI.

        One row per tile and tile size in use (TerraFM-B 224 px, THOR 288 px at 10 m): tile_id,
        utm_epsg, x0/y0 (upper-left corner, metres, tile UTM CRS), size_px, scale_m and the
        footprint in EPSG:4326. Tile ids depend only on the lattice, so overlapping regions share them.
        A cell of a split region holds the region's tiles whose centre lies in the cell.
        """
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []
        for part in region_windows(partitions_def, context.partition_keys):
            grids = [by_key[part.region].tile_grid(size, scale) for size, scale in sizes]
            grid = gpd.GeoDataFrame(pd.concat(grids, ignore_index=True), crs="EPSG:4326")
            if grid.empty:
                raise dg.Failure(f"Region {part.region!r}: the AOI produced no tiles; check its geometry")
            uri = write_tile_grid(store, part.region, part.window, grid)
            per_size = grid.groupby("size_px").size().to_dict()
            rows.append({"partition": part.key, "uri": uri, "tiles": len(grid),
                         "zones": sorted(int(z) for z in grid["utm_epsg"].unique()),
                         "per_size": {int(k): int(v) for k, v in per_size.items()}})
            context.log.info(f"{part.key}: {len(grid)} tiles {per_size} -> {uri}")
        add_partition_metadata(context, {r["partition"]: {
            "tiles": r["tiles"],
            "dagster/row_count": r["tiles"],
            "dagster/uri": str(r["uri"]),
            "dagster/column_schema": TILE_GRID_SCHEMA,
            "tiles_per_size": json_value({str(k): v for k, v in r["per_size"].items()}),
            "utm_zones": json_value(r["zones"]),
            "store_uri": path_value(r["uri"]),
        } for r in rows})
        return dg.MaterializeResult(
            metadata={
                "partitions_in_run": json_value([r["partition"] for r in rows]),
                "wall_seconds": round(time.perf_counter() - t0, 3),
            }
        )

    return tile_grid
