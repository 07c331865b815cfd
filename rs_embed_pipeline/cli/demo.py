"""The offline demo: synthetic catalog -> one region x window materialized end to end.

``make demo`` runs ``python -m rs_embed_pipeline.cli.demo`` after building both environments. With no
credentials and no network it

1. generates the deterministic synthetic STAC catalog (labelled synthetic everywhere) around the
   ``demo`` region, unless it exists already;
2. materializes every asset of the ``demo`` region for the window 2024-01-01 .. 2024-04-01 into the
   Dagster instance at ``$DAGSTER_HOME`` (so ``make ui`` shows the run, lineage and metadata);
3. prints where each cube is, whether the models ran on pretrained or RANDOM weights, and how to
   open the UI.

Pretrained weights are used when they are in the Hugging Face cache or at ``--terrafm-checkpoint``
/ ``--thor-checkpoint``; without them the models run on random weights, which the log, the
metadata and this summary say loudly.

``--split`` (``make demo DEMO_ARGS=--split``) is the continental variant: the same AOI split into
6 km cells (``config/pipeline_split.yaml``, ``split_km: 6``: four region partitions), TerraFM-B S2
and its products built for each cell into ``<store>/split``, then the mosaic over the cells' cubes,
the VRT over their COGs, a DuckDB query over the whole Hive-partitioned GeoParquet dataset and the
stac-geoparquet Items are printed (README "Continental builds: one dataset over the cells").
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, cast

import dagster as dg
import rasterio
import xarray as xr

from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog
from rs_embed_pipeline.core.regions import load_pipeline_config
from rs_embed_pipeline.orchestration.settings import Settings
from rs_embed_pipeline.orchestration.definitions import build_definitions, resources_for
from rs_embed_pipeline.orchestration.resources import ModelResource
from rs_embed_pipeline.products import open_mosaic, stac_catalog, vrt
from rs_embed_pipeline.products.similarity import index_uri, load_index, search
from rs_embed_pipeline.stores.layout import StoreLayout

DEMO_REGION = "demo"
DEMO_WINDOW = "2024-01-01"
DEMO_WINDOW_END = "2024-04-01"
# The synthetic rasters reach one THOR tile beyond the AOI so that edge tiles are fully covered.
CATALOG_PAD_M = 3000.0
# Answers (README "Asking the cubes"): a second window for the change asset, with a new pond planted
# in the SYNTHETIC imagery from its first day on (window 1's imagery is unchanged); the THOR cube is
# stored as int8 to show compact cubes next to float32 ones.
CHANGE_WINDOW = "2024-04-01"
CATALOG_END = "2024-07-01"
DEMO_POND = {"lon": 6.62, "lat": 46.514, "half_size_m": 300.0, "start": CHANGE_WINDOW,
             "reflectance": {"B1": 200, "B2": 400, "B3": 300, "B4": 150, "B5": 120, "B6": 100, "B7": 100,
                             "B8": 80, "B8A": 80, "B9": 50, "B11": 30, "B12": 20}}
INT8_CUBE = ("thor_s2_cube", "int8_per_cell")
CHANGE_CHAIN = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube", "terrafm_s2_search_index",
                "terrafm_s2_change"]
# --split: the demo AOI in 6 km cells, one model x modality and its products per cell, in its own store
# (the mosaic and the dataset are over every cube and file of the store's region "demo").
SPLIT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "pipeline_split.yaml"
SPLIT_STORE = "split"
SPLIT_CHAIN = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube", "terrafm_s2_geoparquet",
               "terrafm_s2_cog", "terrafm_s2_stac"]
SPLIT_MODEL, SPLIT_MODALITY = "terrafm_b", "s2"
SPLIT_POINT = (6.62, 46.514)  # lon, lat: the DuckDB query's point (the planted pond's place)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terrafm-checkpoint", default=None)
    parser.add_argument("--thor-checkpoint", default=None)
    parser.add_argument("--regenerate-catalog", action="store_true")
    parser.add_argument("--split", action="store_true",
                        help="Build the AOI split into 6 km cells (TerraFM-B S2 and its products, in <store>/split) "
                             "and print the mosaic, the VRT and a DuckDB query over the whole dataset")
    args = parser.parse_args(argv)

    os.environ.setdefault("RS_EMBED_ALLOW_RANDOM_WEIGHTS", "1")
    # Offline by default: pretrained weights come from the Hugging Face cache only (HF_HUB_OFFLINE=0
    # lets the workers download them), so a machine without network does not wait on timeouts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings.from_env()
    if settings.provider != "local_stac":
        print(f"The demo runs on the synthetic local catalog; RS_EMBED_PROVIDER={settings.provider} is ignored.")
        os.environ["RS_EMBED_PROVIDER"] = "local_stac"
        settings = Settings.from_env()
    config = load_pipeline_config(settings.config_path)
    region = config.region(DEMO_REGION)

    catalog = Path(settings.local_catalog)
    if args.regenerate_catalog or not catalog.exists() or not _catalog_reaches(catalog, CATALOG_END):
        print(f"Generating the synthetic demo catalog (SYNTHETIC imagery) at {catalog.parent} ...")
        generate_synthetic_catalog(catalog.parent, region.aoi.bounds, DEMO_WINDOW, CATALOG_END,
                                   seed=0, pad_m=CATALOG_PAD_M, planted=[DEMO_POND])

    if args.split:
        settings = split_settings(settings)
    resources = resources_for(settings)
    for key, checkpoint in (("terrafm", args.terrafm_checkpoint), ("thor", args.thor_checkpoint)):
        if checkpoint:
            model = cast(ModelResource, resources[key])  # resources_for's model resources
            resources[key] = model.model_copy(update={"checkpoint": checkpoint})
    if args.split:
        cells = build_split(settings, resources, dg.DagsterInstance.get())
        if not cells:
            print("The split demo FAILED; see the log above or the run in the UI (make ui).")
            return 1
        print_split(split_summary(settings.store_root, cells))
        return 0
    defs = build_definitions(settings, resources=resources)
    job = defs.resolve_job_def("build_embeddings")
    partition = dg.MultiPartitionKey({"region": DEMO_REGION, "window": DEMO_WINDOW})
    instance = dg.DagsterInstance.get()
    print(f"Materializing {partition} (Dagster instance: {os.environ.get('DAGSTER_HOME')}) ...")
    result = job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False,
                                    run_config=_int8_run_config(settings))
    if not result.success:
        print("The demo run FAILED; see the log above or the run in the UI (make ui).")
        return 1
    change_job = dg.Definitions.merge(defs, dg.Definitions(jobs=[dg.define_asset_job(
        "demo_change_window", selection=CHANGE_CHAIN,
        description="The demo's second window for terrafm_s2 (search index and change vs the first)")])
    ).resolve_job_def("demo_change_window")
    window2 = dg.MultiPartitionKey({"region": DEMO_REGION, "window": CHANGE_WINDOW})
    print(f"Materializing {window2} for terrafm_s2 (change between windows) ...")
    result2 = change_job.execute_in_process(partition_key=window2, instance=instance, raise_on_error=False)
    if not result2.success:
        print("The demo's second window FAILED; see the log above or the run in the UI (make ui).")
        return 1

    print("\n=== rs_embed_pipeline demo: done ===")
    print(f"Region {DEMO_REGION!r}, window {DEMO_WINDOW} .. {DEMO_WINDOW_END} (end exclusive), "
          "imagery: SYNTHETIC local STAC catalog")
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        name = mat.asset_key.to_user_string()
        if not name.endswith("_cube"):
            continue
        md = mat.metadata
        random = md["random_weights"].value if "random_weights" in md else None
        weights = "RANDOM WEIGHTS (not pretrained)" if random else f"pretrained, sha256 {str(md['weights_sha256'].value)[:12]}"
        print(f"  {name:18s} {md['store_uri'].value}  [{weights}]")
    print_products(result)
    print_answers(result, result2, settings.store_root)
    print("\nOpen a cube:  .venv/bin/python -c \"import xarray as xr; "
          "print(xr.open_datatree('data/cubes/terrafm_b_s2/demo.zarr', engine='zarr'))\"")
    print("Open the UI:  make ui   then browse http://127.0.0.1:3000 (Assets -> lineage)")
    return 0


def print_products(result) -> None:
    """Where the GeoParquet, COG and STAC products of the run are (README: Using the embeddings anywhere)."""
    products = [(e.materialization.asset_key.to_user_string(), e.materialization.metadata)
                for e in result.get_asset_materialization_events()
                if e.materialization.asset_key.to_user_string().endswith(("_geoparquet", "_cog", "_stac"))]
    if not products:
        return
    print("Products (GeoParquet for DuckDB / GeoPandas, COGs for GIS, STAC catalog):")
    for name, md in sorted(products, key=lambda p: p[0]):
        where = md["catalog"].value if "catalog" in md else md["store_uri"].value
        print(f"  {name:22s} {where}")


def _catalog_reaches(catalog: Path, end: str) -> bool:
    """Whether an existing demo catalog covers the windows up to ``end`` (older ones stop at Q1)."""
    import json

    try:
        doc = json.loads((catalog.parent / "synthetic-s2-l2a" / "collection.json").read_text())
        return str(doc["extent"]["temporal"]["interval"][0][1])[:10] >= end
    except (OSError, KeyError, ValueError, IndexError):
        return False


def _int8_run_config(settings: Settings) -> dict:
    """The int8 cube's config; rebuild when an earlier demo stored that cube otherwise (float32)."""
    import json

    asset, scheme = INT8_CUBE
    cube = Path(StoreLayout(settings.store_root).cube("thor_1_0_base", "s2", DEMO_REGION))
    rebuild = False
    for doc in cube.glob("EPSG*/grid/embedding/zarr.json"):
        rebuild = rebuild or json.loads(doc.read_text()).get("attributes", {}).get("quantization", "none") != scheme
    return {"ops": {asset: {"config": {"quantization": scheme, "rebuild": rebuild}}}}


def print_answers(result, result2, store_root: str) -> None:
    """One similarity search, the change between the two windows, the int8 cube's accuracy."""
    for event in result.get_asset_materialization_events():
        md = event.materialization.metadata
        if event.materialization.asset_key.to_user_string() == INT8_CUBE[0] and "quantization" in md:
            print(f"Compact cube: {INT8_CUBE[0]} stored as {md['quantization'].value}; lowest cosine of a cell "
                  f"to its float32 embedding 1 - {1 - md['quantization_min_cosine'].value:.1e}")
    index = load_index(index_uri(store_root, "terrafm_b", "s2", DEMO_REGION, DEMO_WINDOW, "grid"))
    centre = int(((index.cells["x"] - index.cells["x"].mean()) ** 2
                  + (index.cells["y"] - index.cells["y"].mean()) ** 2).to_numpy().argmin())
    lon, lat = index.footprints([centre]).iloc[0].centroid.coords[0]
    hits = search(index, lon=lon, lat=lat, k=5)
    print(f"Similarity search (python -m rs_embed_pipeline.cli.search --model terrafm_b --modality s2 --region "
          f"{DEMO_REGION} --window {DEMO_WINDOW} --lon {lon:.5f} --lat {lat:.5f} --k 5): "
          f"{index.method} search over {len(index)} cells, {hits.attrs['query_ms']:.2f} ms")
    for row in hits.itertuples():
        print(f"  {row.rank}  {row.score:.6f}  {row.cell_id}")
    for event in result2.get_asset_materialization_events():
        md = event.materialization.metadata
        if event.materialization.asset_key.to_user_string() == "terrafm_s2_change":
            print(f"Change {CHANGE_WINDOW} vs {md['baseline_window'].value} (terrafm_s2; a pond was planted in the "
                  f"SYNTHETIC imagery at {DEMO_POND['lon']}, {DEMO_POND['lat']}): {md['changed_cells'].value} of "
                  f"{md['cells_compared'].value} cells above the threshold, median distance "
                  f"{md['median_distance'].value:.5f}, p99 {md['p99_distance'].value:.5f}; "
                  f"{md['store_uri'].value}")


def split_settings(settings: Settings) -> Settings:
    """The split demo's settings: the split config, its own store, the demo's synthetic catalog."""
    return Settings.from_env({**os.environ, "RS_EMBED_CONFIG": str(SPLIT_CONFIG),
                              "RS_EMBED_STORE": f"{settings.store_root.rstrip('/')}/{SPLIT_STORE}",
                              "RS_EMBED_LOCAL_CATALOG": settings.local_catalog})


def build_split(settings: Settings, resources: dict[str, Any], instance: dg.DagsterInstance) -> list[str]:
    """Materialize SPLIT_CHAIN for every cell of the split demo region in DEMO_WINDOW, one run per
    cell (as a backfill would); the cells' region keys, or ``[]`` when a run failed."""
    defs = dg.Definitions.merge(build_definitions(settings, resources=resources), dg.Definitions(jobs=[
        dg.define_asset_job("demo_split", selection=SPLIT_CHAIN,
                            description="The split demo: TerraFM-B S2 and its products per cell")]))
    job = defs.resolve_job_def("demo_split")
    parts = cast(dg.MultiPartitionsDefinition, job.partitions_def)
    cells = sorted(k for k in parts.get_partitions_def_for_dimension("region").get_partition_keys()
                   if k.startswith(f"{DEMO_REGION}-"))
    print(f"Materializing {len(cells)} cells of region {DEMO_REGION!r} (split_km in {settings.config_path}) "
          f"for window {DEMO_WINDOW} into {settings.store_root} ...")
    for cell in cells:
        key = dg.MultiPartitionKey({"region": cell, "window": DEMO_WINDOW})
        if not job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False).success:
            print(f"The run of {key} FAILED")
            return []
    return cells


@dataclasses.dataclass
class SplitSummary:
    """What the split demo shows: one dataset over the cells, in three forms."""

    cells: list[str]
    mosaic: xr.Dataset                  # open_mosaic over the cells' cubes (lazy)
    vrt_path: str
    vrt_shape: tuple[int, int, int]     # bands, height, width
    vrt_sources: int                    # COGs (cells) behind the VRT
    dataset_glob: str
    dataset_sql: str
    dataset_rows: list[tuple[Any, ...]]  # per window: window_start, tiles, files
    point_sql: str
    point_rows: list[tuple[Any, ...]]    # tiles whose bbox holds SPLIT_POINT: tile_id, cell file
    items_path: str
    items: list[tuple[Any, ...]]         # stac-geoparquet rows: id, start_datetime


def split_summary(store_root: str, cells: list[str]) -> SplitSummary:
    """Open the split build as one dataset: the mosaic, the VRT, DuckDB over the GeoParquet dataset
    and the Items file."""
    # duckdb: the test extra's client (`make demo` installs it), not a dependency of the pipeline.
    import duckdb

    layout = StoreLayout(store_root)
    mosaic = open_mosaic(layout.cubes(SPLIT_MODEL, SPLIT_MODALITY), region=DEMO_REGION, windows=DEMO_WINDOW)
    products = f"{store_root.rstrip('/')}/products/{SPLIT_MODEL}_{SPLIT_MODALITY}"
    zone = str(mosaic.attrs["zone"])
    vrt_file = f"{products}/{vrt.vrt_path(DEMO_REGION, DEMO_WINDOW, zone, 'grid')}"
    with rasterio.open(vrt_file) as src:
        shape = (src.count, src.height, src.width)
    sources = Path(vrt_file).read_text().count("<SimpleSource>") // shape[0]
    files = f"{products}/geoparquet_dataset/**/*.parquet"
    con = duckdb.connect()
    dataset_sql = (f"SELECT window_start::VARCHAR, count(*) AS tiles, count(DISTINCT filename) AS files "
                   f"FROM read_parquet('{files}', hive_partitioning=true, filename=true) "
                   "GROUP BY window_start ORDER BY window_start")
    lon, lat = SPLIT_POINT
    point_sql = (f"SELECT tile_id, parse_filename(filename, true) AS cell "
                 f"FROM read_parquet('{files}', hive_partitioning=true, filename=true) "
                 f"WHERE window_start = DATE '{DEMO_WINDOW}' AND bbox.xmin <= {lon} AND bbox.xmax >= {lon} "
                 f"AND bbox.ymin <= {lat} AND bbox.ymax >= {lat} ORDER BY tile_id")
    items_path = f"{products}/stac/{stac_catalog.ITEMS_GEOPARQUET}"
    return SplitSummary(
        cells=cells, mosaic=mosaic, vrt_path=vrt_file, vrt_shape=shape, vrt_sources=sources, dataset_glob=files,
        dataset_sql=dataset_sql, dataset_rows=con.execute(dataset_sql).fetchall(), point_sql=point_sql,
        point_rows=con.execute(point_sql).fetchall(), items_path=items_path,
        items=con.execute(f"SELECT id, start_datetime::VARCHAR FROM read_parquet('{items_path}') "
                          "ORDER BY id").fetchall())


def print_split(s: SplitSummary) -> None:
    """The split demo's summary: the cells, then the three ways to read them as one dataset."""
    emb = s.mosaic["embedding"]
    print(f"\n=== rs_embed_pipeline demo --split: {len(s.cells)} cells of region {DEMO_REGION!r}, window "
          f"{DEMO_WINDOW} (SYNTHETIC imagery, {SPLIT_MODEL} {SPLIT_MODALITY}) ===")
    for cell in s.cells:
        print(f"  {cell}")
    print(f"Mosaic (open_mosaic): {dict(emb.sizes)} {emb.dtype}, zone {s.mosaic.attrs['zone']}, "
          f"{len(s.mosaic.attrs['mosaic_cubes'])} cubes, filled in {int(s.mosaic['cells_filled'][0])} of them")
    print(f"VRT over the cells' COGs: {s.vrt_path}\n  {s.vrt_shape[0]} bands x {s.vrt_shape[1]} x {s.vrt_shape[2]} "
          f"px from {s.vrt_sources} COGs (gdalinfo / QGIS / rasterio.open)")
    print(f"DuckDB over the whole GeoParquet dataset ({s.dataset_glob}):\n  {s.dataset_sql}")
    for row in s.dataset_rows:
        print(f"  -> window {row[0]}: {row[1]} tiles in {row[2]} files")
    print(f"  {s.point_sql}")
    for row in s.point_rows:
        print(f"  -> {row[0]}  ({row[1]})")
    print(f"STAC Items as stac-geoparquet ({s.items_path}): {len(s.items)} Items, e.g. {s.items[0][0]}")


if __name__ == "__main__":
    sys.exit(main())
