"""Products of each cube, per model x modality: GeoParquet, COGs and a STAC catalog.

Thin assets: they resolve partitions, gather the partition's facts (tile grid, cube window, run
settings, scene ids) and call :mod:`rs_embed_pipeline.products`. Files live under
``<store>/products/<model>_<modality>/``::

    geoparquet/<region>/<window>.parquet          pooled embeddings, one row per tile (GeoParquet 1.1)
    cog/<region>/<window>/<EPSG>_{grid,pooled}.tif  one COG per cube window, zone and kind
    stac/catalog.json, collection.json, items/<region>_<window>.json
"""

import dataclasses
import json
from typing import Any

import dagster as dg
import numpy as np

from rs_embed_pipeline.assets.embeddings import (
    EmbeddingSpec,
    _stores,
    run_metadata,
)
from rs_embed_pipeline.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.metadata import add_partition_metadata, json_value, path_value
from rs_embed_pipeline.partitions import BACKFILL_POLICY, RegionWindow, region_windows
from rs_embed_pipeline.products import cog, geoparquet, stac_catalog
from rs_embed_pipeline.products.reader import (
    CubeReadError,
    cube_zones,
    tile_vectors,
    window_dataset,
)
from rs_embed_pipeline.resources import (
    CODE_VERSION,
    PipelineStore,
    TerraFMResource,
    ThorResource,
)
from rs_embed_pipeline.stores import StoreError, TileStore
from rs_embed_pipeline.stores.cube import model_url


@dataclasses.dataclass
class PartitionFacts:
    """What every product of one partition needs, read once."""

    part: RegionWindow
    model_id: str
    cube_uri: str
    products_uri: str
    tiles: Any                      # tile_grid rows at this model's tile size (GeoDataFrame)
    meta: dict[str, Any]            # run_metadata(): model, weights, normalization, provider ...
    adapter_settings: dict[str, Any]
    provider: dict[str, Any]
    scene_ids: dict[str, list[str]]  # tile_id -> scenes composited for it


def products_root(store: PipelineStore, model_id: str, modality: str) -> str:
    return f"{store.layout.root.rstrip('/')}/products/{model_id}_{modality}"


def _scene_ids(patches: TileStore) -> dict[str, list[str]]:
    raw = np.asarray(patches.group["tile_meta"][:]).tolist()
    out = {}
    for tid, text in zip(patches.tile_ids, raw):
        meta = json.loads(str(text)) if text else {}
        out[tid] = [str(s) for s in meta.get("scene_ids", [])]
    return out


def partition_facts(spec: EmbeddingSpec, store: PipelineStore, adapter: Any, part: RegionWindow) -> PartitionFacts:
    model_id = adapter.store_model_id
    uris = _stores(spec, store, adapter, part)
    try:
        emb = TileStore.open(uris["embeddings_uri"], "embeddings", storage_options=store.storage_options)
        patches = TileStore.open(uris["patches_uri"], "patches", storage_options=store.storage_options)
    except StoreError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    grid_df = read_tile_grid(store, part.region, part.window)
    adapter_settings = dict(emb.settings.get("adapter", {}))
    return PartitionFacts(
        part=part, model_id=model_id, cube_uri=store.layout.cube(model_id, spec.modality, part.region),
        products_uri=products_root(store, model_id, spec.modality),
        tiles=grid_df[grid_df["size_px"] == adapter.tile_size_px],
        meta=run_metadata(adapter_settings, patches), adapter_settings=adapter_settings,
        provider=dict(patches.settings.get("provider", {})), scene_ids=_scene_ids(patches),
    )


def _geoparquet_uri(facts: PartitionFacts) -> str:
    return f"{facts.products_uri}/geoparquet/{facts.part.region}/{facts.part.window}.parquet"


def _cog_uri(facts: PartitionFacts, zone: str, kind: str) -> str:
    return f"{facts.products_uri}/cog/{facts.part.region}/{facts.part.window}/{zone}_{kind}.tif"


def _zones(facts: PartitionFacts) -> list[str]:
    return [f"EPSG{e}" for e in sorted({int(v) for v in facts.tiles["utm_epsg"]})]


def build_product_assets(spec: EmbeddingSpec, partitions_def: dg.MultiPartitionsDefinition,
                         retry_policy: dg.RetryPolicy | None = None) -> list[dg.AssetsDefinition]:
    """GeoParquet, COG and STAC assets of one model x modality (each rewrites its files: idempotent)."""
    cube_name = f"{spec.name}_cube"
    parquet_name, cog_name, stac_name = f"{spec.name}_geoparquet", f"{spec.name}_cog", f"{spec.name}_stac"
    common = dict(partitions_def=partitions_def, backfill_policy=BACKFILL_POLICY, group_name="products",
                  owners=["team:embeddings"], code_version=CODE_VERSION, retry_policy=retry_policy)

    def each_partition(context: dg.AssetExecutionContext, store: PipelineStore, adapter: Any, produce):
        per_partition, results = {}, []
        for part in region_windows(partitions_def, context.partition_keys):
            facts = partition_facts(spec, store, adapter, part)
            try:
                md, result = produce(facts)
            except CubeReadError as exc:  # the cube window is missing: re-running cannot help
                raise dg.Failure(str(exc), allow_retries=False) from exc
            per_partition[part.key] = md
            results.append(result)
            context.log.info(f"{context.asset_key.to_user_string()} {part.key}: {result}")
        add_partition_metadata(context, per_partition)
        return results

    @dg.asset(name=parquet_name, deps=[cube_name, "tile_grid"], kinds={"parquet", "duckdb"}, **common,
              description=(f"{spec.title} pooled embeddings as GeoParquet 1.1, one file per region x window: "
                           "one row per tile (footprint in EPSG:4326, centre lon/lat, window, fixed-size float32 "
                           "vector, model and weights sha256, source scenes, deterministic unique_id), bbox "
                           "covering column, rows in Hilbert order. Reads in DuckDB, GeoPandas, LanceDB, pgvector."))
    def pooled_geoparquet(context: dg.AssetExecutionContext, store: PipelineStore, terrafm: TerraFMResource,
                          thor: ThorResource) -> dg.MaterializeResult:
        def produce(facts: PartitionFacts):
            vectors = tile_vectors(facts.cube_uri, facts.tiles, facts.part.start, store.storage_options)
            dims = _pooled_dim(facts, store)
            table = geoparquet.pooled_table(
                facts.tiles, vectors, window_start=facts.part.start, window_end=facts.part.end,
                model_id=facts.model_id, weights_sha256=facts.meta["weights_sha256"], modality=spec.modality,
                dimensions=dims, scene_ids=facts.scene_ids)
            out = geoparquet.write_geoparquet(table, _geoparquet_uri(facts), store.storage_options)
            return ({"rows": out["rows"], "row_groups": out["row_groups"], "bytes": out["bytes"],
                     "store_uri": path_value(out["uri"])}, out)

        results = each_partition(context, store, spec.adapter(terrafm, thor), produce)
        return dg.MaterializeResult(metadata={
            "geoparquet_version": geoparquet.GEOPARQUET_VERSION,
            "dimensions": int(results[0]["dimensions"]) if results else 0,
            "rows_total": sum(r["rows"] for r in results),
            "columns": json_value(["unique_id", "tile_id", "window_start", "window_end", "utm_epsg", "centre_lon",
                                   "centre_lat", "model_id", "weights_sha256", "modality", "source_scene_ids",
                                   "embedding", "bbox", "geometry"]),
        })

    @dg.asset(name=cog_name, deps=[cube_name, "tile_grid"], kinds={"geotiff", "gdal"}, **common,
              description=(f"{spec.title} cube windows as Cloud-Optimized GeoTIFFs for GIS tools: one file per "
                           "region x window x UTM zone x (grid | pooled), north-up, embedding features as bands, "
                           "CRS and NaN nodata, internal tiles of 64-256 px (at most 16 MiB each), ZSTD + float "
                           "predictor, overviews that average and re-normalise the vectors."))
    def cube_cogs(context: dg.AssetExecutionContext, store: PipelineStore, terrafm: TerraFMResource,
                  thor: ThorResource) -> dg.MaterializeResult:
        def produce(facts: PartitionFacts):
            files = []
            present = set(cube_zones(facts.cube_uri, store.storage_options))
            for zone in (z for z in _zones(facts) if z in present):
                for kind in ("grid", "pooled"):
                    ds = window_dataset(facts.cube_uri, zone, kind, facts.part.start, store.storage_options)
                    x0, cell, _, y0, _, _ = (float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split())
                    files.append(cog.write_cog(
                        _cog_uri(facts, zone, kind), np.asarray(ds["embedding"].values), epsg=int(zone[4:]),
                        left=x0, top=y0, cell_m=cell, storage_options=store.storage_options,
                        tags={"model_id": facts.model_id, "weights_sha256": facts.meta["weights_sha256"],
                              "modality": spec.modality, "region": facts.part.region,
                              "window_start": facts.part.start, "window_end": facts.part.end, "cube_kind": kind,
                              "random_weights": str(facts.meta["random_weights"]).lower(),
                              "synthetic_imagery": str(facts.meta["synthetic_imagery"]).lower()}))
            return ({"files": len(files), "bytes": sum(f["bytes"] for f in files),
                     "store_uri": path_value(f"{facts.products_uri}/cog/{facts.part.region}/{facts.part.window}")},
                    {"files": files})

        results = each_partition(context, store, spec.adapter(terrafm, thor), produce)
        files = [f for r in results for f in r["files"]]
        return dg.MaterializeResult(metadata={
            "cog_files": json_value([{k: f[k] for k in ("uri", "bands", "height", "width", "overviews", "block_size",
                                                        "bytes")} for f in files]),
            "compression": cog.COMPRESS, "block_size": max((f["block_size"] for f in files), default=cog.BLOCK_SIZE),
        })

    @dg.asset(name=stac_name, deps=[cube_name, parquet_name, cog_name, "tile_grid"], kinds={"stac", "json"}, **common,
              description=(f"{spec.title} static STAC catalog (STAC {stac_catalog.STAC_VERSION}, Embedding extension "
                           "v0.0.1): a Collection "
                           "with emb:type, emb:dimensions, emb:chip_layout, gsd, data_type and links to the model "
                           "and source data; one Item per region x window with the cube as its `embeddings` asset, "
                           "the GeoParquet and COGs, runtime and processing metadata and the source scene ids."))
    def stac_catalog_asset(context: dg.AssetExecutionContext, store: PipelineStore, terrafm: TerraFMResource,
                           thor: ThorResource) -> dg.MaterializeResult:
        adapter = spec.adapter(terrafm, thor)
        state: dict[str, Any] = {}

        def produce(facts: PartitionFacts):
            stac_uri = f"{facts.products_uri}/stac"
            items_dir = f"{stac_uri}/items"
            zones = [z for z in _zones(facts) if z in set(cube_zones(facts.cube_uri, store.storage_options))]
            if not zones:
                raise CubeReadError(f"Cube {facts.cube_uri} has no group for {facts.part.key}")
            grid = window_dataset(facts.cube_uri, zones[0], "grid", facts.part.start, store.storage_options)
            embeddings_href = f"{facts.cube_uri}/{zones[0]}/grid" if len(zones) == 1 else facts.cube_uri
            extra = {"geoparquet": {"href": _geoparquet_uri(facts), "type": stac_catalog.PARQUET_MEDIA_TYPE,
                                    "roles": ["data"], "title": "Pooled embeddings, one row per tile (GeoParquet 1.1)",
                                    # The Collection's chip layout is the feature map's; these chips are tiles.
                                    "description": f"One pooled vector per {adapter.tile_size_px} px tile "
                                                   f"(the chip of this asset), footprints in EPSG:4326."}}
            for zone in zones:
                for kind in ("grid", "pooled"):
                    extra[f"cog_{zone}_{kind}"] = {"href": _cog_uri(facts, zone, kind),
                                                   "type": stac_catalog.COG_MEDIA_TYPE, "roles": ["data"],
                                                   "title": f"{kind} embeddings of {zone} as a COG (features as bands)"}
            m = facts.meta
            collection = str(m["collection"])
            source_href = stac_catalog.source_data_href(facts.provider, collection)
            scene_ids = [s for t in facts.tiles["tile_id"] for s in facts.scene_ids.get(str(t), [])]
            item = stac_catalog.build_item(
                item_id=f"{facts.part.region}_{facts.part.window}", collection_id=f"{facts.model_id}_{spec.modality}",
                region=facts.part.region, window_start=facts.part.start, window_end=facts.part.end,
                footprints=list(facts.tiles.geometry), item_dir=items_dir, embeddings_href=embeddings_href,
                zones=zones, model_href=model_url(facts.model_id), source_href=source_href,
                runtime_parameters={k: m[k] for k in ("normalization", "group_merge", "image_size", "patch_size",
                                                       "ground_cover_m", "s2_branch", "composite", "cloudy_pct",
                                                       "scale_m", "pooling", "grid_kind", "orbit")},
                scene_ids=scene_ids,
                scene_hrefs=stac_catalog.source_scene_hrefs(facts.provider, collection, scene_ids),
                properties={"rs_embed:model_id": facts.model_id, "rs_embed:weights_sha256": m["weights_sha256"],
                            "rs_embed:random_weights": m["random_weights"],
                            "rs_embed:synthetic_imagery": m["synthetic_imagery"],
                            "rs_embed:provider": m["provider"], "rs_embed:collection": collection,
                            "rs_embed:tiles": len(facts.tiles), **_stac_quantization(grid.attrs)},
                extra_assets=extra)
            stac_catalog.write_item(stac_uri, item, store.storage_options)
            d_grid = int(grid.sizes["feature"])
            cells = int(grid.attrs.get("cells_per_tile") or 1)
            state.update(stac_uri=stac_uri, dims=d_grid, chip_px=int(adapter.tile_size_px) // cells,
                         gsd=float(m["scale_m"]), data_type=str(grid.attrs.get("geoemb:data_type", "float32")),
                         model_id=facts.model_id, grid_id=f"rs_embed_pipeline UTM lattice p{adapter.tile_size_px} "
                                                          f"s{m['scale_m']:g} (tile ids: grid.py)")
            state.setdefault("sources", set()).add(source_href)
            return {"item": f"{facts.part.region}_{facts.part.window}", "store_uri": path_value(stac_uri)}, item["id"]

        each_partition(context, store, adapter, produce)
        title = f"{spec.title} embeddings ({state['model_id']})"
        # Runs of other partitions write their Items concurrently: the Collection is rebuilt until the
        # Items listed after writing it are the ones it was built from (the last writer lists them all).
        items: dict[str, Any] = {}
        for _ in range(5):
            items = stac_catalog.read_items(state["stac_uri"], store.storage_options)
            collection = stac_catalog.build_collection(
                collection_id=f"{state['model_id']}_{spec.modality}", title=title,
                description=(f"{spec.title} embeddings computed by rs_embed_pipeline per region and time window: "
                             "Zarr cubes (feature maps and pooled vectors per UTM zone), pooled GeoParquet and COGs."),
                items=items, dimensions=state["dims"], chip_px=state["chip_px"], gsd=state["gsd"],
                data_type=state["data_type"], grid_id=state["grid_id"], model_href=model_url(state["model_id"]),
                source_hrefs=sorted(state["sources"] | {link["href"] for it in items.values() for link in it["links"]
                                                        if link["rel"] == "emb:source-data"
                                                        and link.get("title") == stac_catalog.SOURCE_COLLECTION_TITLE}))
            paths = stac_catalog.write_collection(state["stac_uri"], collection, title, store.storage_options)
            if set(stac_catalog.read_items(state["stac_uri"], store.storage_options)) == set(items):
                break
        return dg.MaterializeResult(metadata={
            "stac_version": stac_catalog.STAC_VERSION, "embedding_extension": stac_catalog.EMB_EXTENSION,
            "items_total": len(items), "catalog": path_value(paths["catalog"]),
        })

    return [pooled_geoparquet, cube_cogs, stac_catalog_asset]


def _stac_quantization(attrs: dict) -> dict[str, Any]:
    """``emb:quantization`` of an int8 cube (its scales live in the cube, per cell or feature)."""
    q = attrs.get("geoemb:quantization")
    if not q:
        return {}
    return {"emb:quantization": {k: str(q[k]) for k in ("method", "original_dtype", "quantized_dtype") if k in q}}


def _pooled_dim(facts: PartitionFacts, store: PipelineStore) -> int:
    zones = cube_zones(facts.cube_uri, store.storage_options)
    if not zones:
        raise CubeReadError(f"Cube {facts.cube_uri} has no UTM-zone group: materialize the cube first")
    ds = window_dataset(facts.cube_uri, zones[0], "pooled", facts.part.start, store.storage_options)
    return int(ds.sizes["feature"])
