"""Products of each cube, per model x modality: GeoParquet, COGs and a STAC catalog.

Thin assets: for each partition they gather its facts once (:class:`PartitionFacts`: tile grid,
cube, run settings, scene ids), write one product from them (the ``write_*`` steps below, which
call :mod:`rs_embed_pipeline.products`) and shape metadata. They need only the store: the model's
tile size and store id come from the plan's spec. Files live under
``<store>/products/<model>_<modality>/``::

    geoparquet/<region>/<window>.parquet          pooled embeddings, one row per tile (GeoParquet 1.1)
    geoparquet_dataset/window_start=<window>/<region>.parquet  the same bytes, as one Hive-partitioned dataset
    cog/<region>/<window>/<EPSG>_{grid,pooled}.tif  one COG per cube window, zone and kind
    vrt/<region>/<window>/<EPSG>_{grid,pooled}.vrt  GDAL VRT over the COGs of a split region's cells
    stac/catalog.json, collection.json, items/<region>_<window>.json, items.parquet (stac-geoparquet)
"""

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
import numpy as np

from rs_embed_pipeline.orchestration.assets.per_model import cube_uri, model_tiles, partition_job, spec_asset, store_array
from rs_embed_pipeline.orchestration.metadata import add_partition_metadata, json_value, path_value, run_metadata
from rs_embed_pipeline.orchestration.partitions import RegionWindow, region_windows
from rs_embed_pipeline.orchestration.plan import EmbeddingSpec
from rs_embed_pipeline.products import cog, geoparquet, stac_catalog, vrt
from rs_embed_pipeline.stores.cube.reader import CubeReadError, cube_zones, tile_vectors, window_dataset
from rs_embed_pipeline.orchestration.resources import PipelineStore
from rs_embed_pipeline.stores import StoreError, TileStore
from rs_embed_pipeline.stores.cube import model_url
from rs_embed_pipeline.stores.cube.mosaic import base_region

GEOPARQUET_COLUMNS = ["unique_id", "tile_id", "window_start", "window_end", "utm_epsg", "centre_lon", "centre_lat",
                      "model_id", "weights_sha256", "modality", "source_scene_ids", "embedding", "bbox", "geometry"]
# Runtime parameters of a STAC Item (emb:runtime_parameters), from the run metadata.
STAC_RUNTIME_PARAMETERS = ("normalization", "group_merge", "image_size", "patch_size", "ground_cover_m", "s2_branch",
                           "composite", "cloudy_pct", "scale_m", "pooling", "grid_kind", "orbit")
GEOPARQUET_DATASET = "geoparquet_dataset"
# Runs of other partitions write their Items concurrently: the Collection is rebuilt until the Items
# listed after writing it are the ones it was built from (the last writer lists them all).
COLLECTION_ATTEMPTS = 5

# The metadata of a partition without a tile of the model's size: nothing to write.
NO_TILES = "no tile of this model's size in the partition: nothing written"


def _descriptions(title: str) -> dict[str, str]:
    return {
        "geoparquet": f"{title} pooled embeddings as GeoParquet 1.1, one file per region x window: one row per "
                      "tile (footprint in EPSG:4326, centre lon/lat, window, fixed-size float32 vector, model and "
                      "weights sha256, source scenes, deterministic unique_id), bbox covering column, rows in "
                      "Hilbert order. Reads in DuckDB, GeoPandas, LanceDB, pgvector. The same files also form one "
                      f"Hive-partitioned dataset ({GEOPARQUET_DATASET}/window_start=<window>/<region>.parquet) "
                      "that DuckDB prunes by window and bbox.",
        "cog": f"{title} cube windows as Cloud-Optimized GeoTIFFs for GIS tools: one file per region x window x "
               "UTM zone x (grid | pooled), north-up, embedding features as bands, CRS and NaN nodata, internal "
               "tiles of 64-256 px (at most 16 MiB each), ZSTD + float predictor, overviews that average and "
               "re-normalise the vectors.",
        "stac": f"{title} static STAC catalog (STAC {stac_catalog.STAC_VERSION}, Embedding extension v0.0.1): a "
                "Collection with emb:type, emb:dimensions, emb:chip_layout, gsd, data_type and links to the model "
                "and source data; one Item per region x window with the cube as its `embeddings` asset, the "
                "GeoParquet and COGs, runtime and processing metadata and the source scene ids; the Items also "
                "as one stac-geoparquet file (stac/items.parquet).",
    }


def build_product_assets(spec: EmbeddingSpec, partitions_def: dg.MultiPartitionsDefinition,
                         retry_policy: dg.RetryPolicy | None = None) -> list[dg.AssetsDefinition]:
    """GeoParquet, COG and STAC assets of one model x modality (each rewrites its files: idempotent)."""
    cube_name = f"{spec.name}_cube"
    parquet_name, cog_name, stac_name = f"{spec.name}_geoparquet", f"{spec.name}_cog", f"{spec.name}_stac"
    about = _descriptions(spec.title)
    common: dict[str, Any] = dict(partitions_def=partitions_def, group_name="products", retry_policy=retry_policy)

    def each_partition(context: dg.AssetExecutionContext, store: PipelineStore,
                       write: Callable[["PartitionFacts"], tuple[dict[str, Any], Any]]) -> list[Any]:
        """``write`` every partition of the run; its metadata on that partition, its results returned."""
        per_partition, results = {}, []
        for part in region_windows(partitions_def, context.partition_keys):
            facts = partition_facts(spec, store, part)
            if not len(facts.tiles):  # a split region's cell may hold tiles of other models' sizes only
                per_partition[part.key] = {"tiles": 0, "skipped": NO_TILES}
                context.log.info(f"{context.asset_key.to_user_string()} {part.key}: {NO_TILES}")
                continue
            try:
                md, result = write(facts)
            except CubeReadError as exc:  # the cube window is missing: re-running cannot help
                raise dg.Failure(str(exc), allow_retries=False) from exc
            per_partition[part.key] = md
            results.append(result)
            context.log.info(f"{context.asset_key.to_user_string()} {part.key}: {result}")
        add_partition_metadata(context, per_partition)
        return results

    @spec_asset(name=parquet_name, deps=[cube_name, "tile_grid"], kinds={"parquet", "duckdb"},
                description=about["geoparquet"], **common)
    def pooled_geoparquet(context: dg.AssetExecutionContext, store: PipelineStore) -> dg.MaterializeResult:
        written = each_partition(context, store, write_pooled_geoparquet)
        return dg.MaterializeResult(metadata={
            "geoparquet_version": geoparquet.GEOPARQUET_VERSION,
            "dimensions": int(written[0]["dimensions"]) if written else 0,
            "rows_total": sum(r["rows"] for r in written),
            "columns": json_value(GEOPARQUET_COLUMNS),
            "dataset": path_value(f"{products_root(store, spec.store_model_id, spec.modality)}/{GEOPARQUET_DATASET}"),
        })

    @spec_asset(name=cog_name, deps=[cube_name, "tile_grid"], kinds={"geotiff", "gdal"},
                description=about["cog"], **common)
    def cube_cogs(context: dg.AssetExecutionContext, store: PipelineStore) -> dg.MaterializeResult:
        files = [f for per_window in each_partition(context, store, write_cube_cogs) for f in per_window]
        return dg.MaterializeResult(metadata={
            "cog_files": json_value([{k: f[k] for k in ("uri", "bands", "height", "width", "overviews", "block_size",
                                                        "bytes")} for f in files]),
            "compression": cog.COMPRESS, "block_size": max((f["block_size"] for f in files), default=cog.BLOCK_SIZE),
        })

    @spec_asset(name=stac_name, deps=[cube_name, parquet_name, cog_name, "tile_grid"], kinds={"stac", "json"},
                description=about["stac"], **common)
    def stac_catalog_asset(context: dg.AssetExecutionContext, store: PipelineStore) -> dg.MaterializeResult:
        written: list[StacItemFacts] = each_partition(context, store, write_stac_item)
        if not written:
            return dg.MaterializeResult(metadata={"items_total": 0, "skipped": NO_TILES})
        items, paths = write_stac_collection(spec, written, store.storage_options)
        vrts = write_region_vrts(spec, store, region_windows(partitions_def, context.partition_keys))
        return dg.MaterializeResult(metadata={
            "stac_version": stac_catalog.STAC_VERSION, "embedding_extension": stac_catalog.EMB_EXTENSION,
            "items_total": len(items), "catalog": path_value(paths["catalog"]),
            "items_geoparquet": path_value(paths["items_geoparquet"]),
            "vrt_files": json_value([{k: f[k] for k in ("path", "sources", "bytes")} for f in vrts]),
        })

    return [pooled_geoparquet, cube_cogs, stac_catalog_asset]


# ---------------------------------------------------------------------------------------- one partition's facts
@dataclasses.dataclass
class PartitionFacts:
    """What every product of one partition needs, read once."""

    spec: EmbeddingSpec
    part: RegionWindow
    cube_uri: str
    products_uri: str
    tiles: Any                      # tile_grid rows at this model's tile size (GeoDataFrame)
    meta: dict[str, Any]            # run_metadata(): model, weights, normalization, provider ...
    adapter_settings: dict[str, Any]
    provider: dict[str, Any]
    scene_ids: dict[str, list[str]]  # tile_id -> scenes composited for it
    storage_options: dict[str, Any] | None

    @property
    def model_id(self) -> str:
        return self.spec.store_model_id

    @property
    def geoparquet_uri(self) -> str:
        return f"{self.products_uri}/geoparquet/{self.part.region}/{self.part.window}.parquet"

    @property
    def dataset_uri(self) -> str:
        """The partition's file in the Hive-partitioned GeoParquet dataset (same bytes as geoparquet_uri)."""
        return f"{self.products_uri}/{GEOPARQUET_DATASET}/{geoparquet.dataset_path(self.part.start, self.part.region)}"

    @property
    def cog_dir(self) -> str:
        return f"{self.products_uri}/cog/{self.part.region}/{self.part.window}"

    def cog_uri(self, zone: str, kind: str) -> str:
        return f"{self.cog_dir}/{zone}_{kind}.tif"

    def zones_in_cube(self) -> list[str]:
        """The UTM zones of the partition's tiles that have a group in the cube (``EPSG32632`` ...)."""
        present = set(cube_zones(self.cube_uri, self.storage_options))
        return [z for z in (f"EPSG{e}" for e in sorted({int(v) for v in self.tiles["utm_epsg"]})) if z in present]

    def window(self, zone: str, kind: str) -> Any:
        """The partition's window of one zone and kind of the cube (xarray Dataset, no time dim)."""
        return window_dataset(self.cube_uri, zone, kind, self.part.start, self.storage_options)


def products_root(store: PipelineStore, model_id: str, modality: str) -> str:
    return f"{store.layout.root.rstrip('/')}/products/{model_id}_{modality}"


def partition_facts(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow) -> PartitionFacts:
    job = partition_job(spec, store, part)
    try:
        emb = TileStore.open(job.embeddings_uri, "embeddings", storage_options=store.storage_options)
        patches = TileStore.open(job.patches_uri, "patches", storage_options=store.storage_options)
    except StoreError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    adapter_settings = dict(emb.settings.get("adapter", {}))
    return PartitionFacts(
        spec=spec, part=part, cube_uri=cube_uri(spec, store, part.region),
        products_uri=products_root(store, spec.store_model_id, spec.modality), tiles=model_tiles(spec, store, part),
        meta=run_metadata(adapter_settings, patches), adapter_settings=adapter_settings,
        provider=dict(patches.settings.get("provider", {})), scene_ids=_scene_ids(patches),
        storage_options=store.storage_options,
    )


def _scene_ids(patches: TileStore) -> dict[str, list[str]]:
    raw = np.asarray(store_array(patches, "tile_meta")[:]).tolist()
    out = {}
    for tid, text in zip(patches.tile_ids, raw):
        meta = json.loads(str(text)) if text else {}
        out[tid] = [str(s) for s in meta.get("scene_ids", [])]
    return out


# ----------------------------------------------------------------------------------- one partition's products
def write_pooled_geoparquet(facts: PartitionFacts) -> tuple[dict[str, Any], dict[str, Any]]:
    """The partition's pooled vectors as one GeoParquet file, a row per tile."""
    zones = cube_zones(facts.cube_uri, facts.storage_options)
    if not zones:
        raise CubeReadError(f"Cube {facts.cube_uri} has no UTM-zone group: materialize the cube first")
    table = geoparquet.pooled_table(
        facts.tiles, tile_vectors(facts.cube_uri, facts.tiles, facts.part.start, facts.storage_options),
        window_start=facts.part.start, window_end=facts.part.end, model_id=facts.model_id,
        weights_sha256=facts.meta["weights_sha256"], modality=facts.spec.modality,
        dimensions=int(facts.window(zones[0], "pooled").sizes["feature"]), scene_ids=facts.scene_ids)
    out = geoparquet.write_geoparquet(table, facts.geoparquet_uri, facts.storage_options,
                                      also_to=[facts.dataset_uri])
    return ({"rows": out["rows"], "row_groups": out["row_groups"], "bytes": out["bytes"],
             "store_uri": path_value(out["uri"]), "dataset_uri": path_value(facts.dataset_uri)}, out)


def write_cube_cogs(facts: PartitionFacts) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One COG per zone and kind (grid, pooled) of the partition's cube window."""
    files = []
    for zone in facts.zones_in_cube():
        for kind in ("grid", "pooled"):
            ds = facts.window(zone, kind)
            x0, cell, _, y0, _, _ = (float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split())
            files.append(cog.write_cog(
                facts.cog_uri(zone, kind), np.asarray(ds["embedding"].values), epsg=int(zone[4:]),
                left=x0, top=y0, cell_m=cell, storage_options=facts.storage_options,
                tags={"model_id": facts.model_id, "weights_sha256": facts.meta["weights_sha256"],
                      "modality": facts.spec.modality, "region": facts.part.region,
                      "window_start": facts.part.start, "window_end": facts.part.end, "cube_kind": kind,
                      "random_weights": str(facts.meta["random_weights"]).lower(),
                      "synthetic_imagery": str(facts.meta["synthetic_imagery"]).lower()}))
    return ({"files": len(files), "bytes": sum(f["bytes"] for f in files), "store_uri": path_value(facts.cog_dir)},
            files)


@dataclasses.dataclass(frozen=True)
class StacItemFacts:
    """What the Collection needs from one written Item."""

    stac_uri: str
    dims: int
    chip_px: int
    gsd: float
    data_type: str
    source_href: str


def write_stac_item(facts: PartitionFacts) -> tuple[dict[str, Any], StacItemFacts]:
    """The partition's STAC Item: the cube as its ``embeddings`` asset, the GeoParquet and COGs."""
    spec, part, m = facts.spec, facts.part, facts.meta
    stac_uri = f"{facts.products_uri}/stac"
    zones = facts.zones_in_cube()
    if not zones:
        raise CubeReadError(f"Cube {facts.cube_uri} has no group for {part.key}")
    grid = facts.window(zones[0], "grid")
    collection = str(m["collection"])
    source_href = stac_catalog.source_data_href(facts.provider, collection)
    scene_ids = [s for t in facts.tiles["tile_id"] for s in facts.scene_ids.get(str(t), [])]
    item = stac_catalog.build_item(
        item_id=f"{part.region}_{part.window}", collection_id=f"{facts.model_id}_{spec.modality}",
        region=part.region, window_start=part.start, window_end=part.end,
        footprints=list(facts.tiles.geometry), item_dir=f"{stac_uri}/items",
        embeddings_href=f"{facts.cube_uri}/{zones[0]}/grid" if len(zones) == 1 else facts.cube_uri,
        zones=zones, model_href=model_url(facts.model_id), source_href=source_href,
        runtime_parameters={k: m[k] for k in STAC_RUNTIME_PARAMETERS}, scene_ids=scene_ids,
        scene_hrefs=stac_catalog.source_scene_hrefs(facts.provider, collection, scene_ids),
        properties={"rs_embed:model_id": facts.model_id, "rs_embed:weights_sha256": m["weights_sha256"],
                    "rs_embed:random_weights": m["random_weights"], "rs_embed:synthetic_imagery": m["synthetic_imagery"],
                    "rs_embed:provider": m["provider"], "rs_embed:collection": collection,
                    "rs_embed:tiles": len(facts.tiles), **_stac_quantization(grid.attrs)},
        extra_assets=_stac_file_assets(facts, zones))
    stac_catalog.write_item(stac_uri, item, facts.storage_options)
    cells = int(grid.attrs.get("cells_per_tile") or 1)
    return ({"item": item["id"], "store_uri": path_value(stac_uri)},
            StacItemFacts(stac_uri=stac_uri, dims=int(grid.sizes["feature"]), chip_px=spec.tile_size_px // cells,
                          gsd=float(m["scale_m"]), data_type=str(grid.attrs.get("geoemb:data_type", "float32")),
                          source_href=source_href))


def _stac_file_assets(facts: PartitionFacts, zones: list[str]) -> dict[str, dict[str, Any]]:
    """The Item's GeoParquet and COG assets (next to the cube)."""
    assets = {"geoparquet": {
        "href": facts.geoparquet_uri, "type": stac_catalog.PARQUET_MEDIA_TYPE, "roles": ["data"],
        "title": "Pooled embeddings, one row per tile (GeoParquet 1.1)",
        # The Collection's chip layout is the feature map's; these chips are tiles.
        "description": f"One pooled vector per {facts.spec.tile_size_px} px tile (the chip of this asset), "
                       f"footprints in EPSG:4326."}}
    for zone in zones:
        for kind in ("grid", "pooled"):
            assets[f"cog_{zone}_{kind}"] = {"href": facts.cog_uri(zone, kind), "type": stac_catalog.COG_MEDIA_TYPE,
                                            "roles": ["data"],
                                            "title": f"{kind} embeddings of {zone} as a COG (features as bands)"}
            region = base_region(facts.part.region)
            assets[f"vrt_{zone}_{kind}"] = {
                "href": f"{facts.products_uri}/{vrt.vrt_path(region, facts.part.window, zone, kind)}",
                "type": vrt.VRT_MEDIA_TYPE, "roles": ["data"],
                "title": f"{kind} embeddings of {zone}, every cell of region {region} in this window (GDAL VRT "
                         "over the cells' COGs)"}
    return assets


def write_region_vrts(spec: EmbeddingSpec, store: PipelineStore, parts: list[RegionWindow]) -> list[dict[str, Any]]:
    """The VRTs of the (region, window) pairs of the run's partitions, over every cell's COG present
    (this run's and others'; a cell written later is added by its own run's STAC step)."""
    products = products_root(store, spec.store_model_id, spec.modality)
    cubes = store.layout.cubes(spec.store_model_id, spec.modality)
    out: list[dict[str, Any]] = []
    for region, window in sorted({(base_region(p.region), p.window) for p in parts}):
        out.extend(vrt.write_region_vrts(products, cubes, region, window, store.storage_options,
                                         metadata={"model_id": spec.store_model_id, "modality": spec.modality}))
    return out


def _stac_quantization(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``emb:quantization`` of an int8 cube (its scales live in the cube, per cell or feature)."""
    q = attrs.get("geoemb:quantization")
    if not q:
        return {}
    return {"emb:quantization": {k: str(q[k]) for k in ("method", "original_dtype", "quantized_dtype") if k in q}}


def write_stac_collection(spec: EmbeddingSpec, written: list[StacItemFacts],
                          storage_options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The Collection and catalog over every Item in the catalog (this run's and others'); the
    Items it lists and the paths written."""
    last = written[-1]
    title = f"{spec.title} embeddings ({spec.store_model_id})"
    items: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for _ in range(COLLECTION_ATTEMPTS):
        items = stac_catalog.read_items(last.stac_uri, storage_options)
        sources = {w.source_href for w in written} | {
            link["href"] for it in items.values() for link in it["links"]
            if link["rel"] == "emb:source-data" and link.get("title") == stac_catalog.SOURCE_COLLECTION_TITLE}
        collection = stac_catalog.build_collection(
            collection_id=f"{spec.store_model_id}_{spec.modality}", title=title,
            description=(f"{spec.title} embeddings computed by rs_embed_pipeline per region and time window: "
                         "Zarr cubes (feature maps and pooled vectors per UTM zone), pooled GeoParquet and COGs."),
            items=items, dimensions=last.dims, chip_px=last.chip_px, gsd=last.gsd, data_type=last.data_type,
            grid_id=f"rs_embed_pipeline UTM lattice p{spec.tile_size_px} s{last.gsd:g} (tile ids: grid.py)",
            model_href=model_url(spec.store_model_id), source_hrefs=sorted(sources),
            assets=_collection_assets(spec))
        paths = stac_catalog.write_collection(last.stac_uri, collection, title, storage_options)
        paths["items_geoparquet"] = stac_catalog.write_items_geoparquet(
            last.stac_uri, list(items.values()), collection, storage_options)["uri"]
        if set(stac_catalog.read_items(last.stac_uri, storage_options)) == set(items):
            break
    return items, paths


def _collection_assets(spec: EmbeddingSpec) -> dict[str, dict[str, Any]]:
    """The Collection's whole-build assets: its Items as stac-geoparquet, the pooled GeoParquet dataset."""
    return {
        "geoparquet-items": {
            "href": f"./{stac_catalog.ITEMS_GEOPARQUET}", "type": stac_catalog.PARQUET_MEDIA_TYPE,
            "roles": ["stac-items"], "title": "Every Item of this Collection (stac-geoparquet 1.0.0)"},
        "geoparquet-dataset": {
            "href": f"../{GEOPARQUET_DATASET}/", "type": stac_catalog.PARQUET_MEDIA_TYPE, "roles": ["data"],
            "title": f"{spec.title} pooled embeddings of every region and window (GeoParquet 1.1)",
            "description": "Hive-partitioned: window_start=<window>/<region>.parquet; read "
                           "'<href>**/*.parquet' with hive_partitioning and filter on window_start and bbox."},
    }
