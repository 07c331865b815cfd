"""The product writers and the reader against S3 (a moto server on 127.0.0.1): cube read, GeoParquet,
COG and STAC files written through fsspec, with relative links between them."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from rs_embed_pipeline.products import cog, geoparquet, open_cube, stac_catalog
from rs_embed_pipeline.stores.cube.reader import tile_vectors, window_dataset
from rs_embed_pipeline_tests.pipeline.servers import close_s3_filesystems, moto_server
from rs_embed_pipeline_tests.products.conftest import (
    D_POOLED,
    WINDOW_STARTS,
    tiny_grid,
    write_tiny_cube,
)
from rs_embed_pipeline_tests.products.conftest import tile_vectors as written


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import boto3
    import s3fs

    logs = tmp_path_factory.mktemp("moto")
    with moto_server(logs) as endpoint, pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
                            "AWS_CONFIG_FILE": str(logs / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(logs / "none"),
                            "AWS_EC2_METADATA_DISABLED": "true"}.items():
            mp.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket="products")
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield s3fs.S3FileSystem()
        finally:
            close_s3_filesystems()


def test_products_round_trip_on_s3(s3):
    root = "s3://products/root"
    cube_uri = f"{root}/cubes/terrafm_b_s2/tiny.zarr"
    write_tiny_cube(cube_uri)
    assert open_cube(cube_uri).sizes["time"] == 2

    grid = tiny_grid()
    vectors = tile_vectors(cube_uri, grid, WINDOW_STARTS[0])
    expected, _ = written(0)
    assert set(vectors) == set(expected)
    table = geoparquet.pooled_table(grid, vectors, window_start=WINDOW_STARTS[0], window_end=WINDOW_STARTS[1],
                                    model_id="terrafm_b", weights_sha256="ab" * 32, modality="s2", dimensions=D_POOLED)
    gpq_uri = f"{root}/products/terrafm_b_s2/geoparquet/tiny/{WINDOW_STARTS[0]}.parquet"
    geoparquet.write_geoparquet(table, gpq_uri)
    back = pq.read_table(io.BytesIO(s3.cat_file(gpq_uri)))
    assert back.num_rows == len(expected) and b"geo" in back.schema.metadata

    ds = window_dataset(cube_uri, "EPSG32632", "grid", WINDOW_STARTS[0])
    x0, cell, _, y0, _, _ = (float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split())
    cog_uri = f"{root}/products/terrafm_b_s2/cog/tiny/{WINDOW_STARTS[0]}/EPSG32632_grid.tif"
    cog.write_cog(cog_uri, ds["embedding"].values, epsg=32632, left=x0, top=y0, cell_m=cell)
    with rasterio.MemoryFile(s3.cat_file(cog_uri)) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 32632
        np.testing.assert_array_equal(src.read(), np.moveaxis(ds["embedding"].values, -1, 0))

    stac_uri = f"{root}/products/terrafm_b_s2/stac"
    item = stac_catalog.build_item(
        item_id="tiny_2024-01-01", collection_id="terrafm_b_s2", region="tiny", window_start=WINDOW_STARTS[0],
        window_end=WINDOW_STARTS[1], footprints=list(grid.geometry), item_dir=f"{stac_uri}/items",
        embeddings_href=f"{cube_uri}/EPSG32632/grid", zones=["EPSG32632"], model_href="https://huggingface.co/MBZUAI/TerraFM",
        source_href="urn:rs-embed-pipeline:collection:synthetic", runtime_parameters={"normalization": "none"},
        scene_ids=["S2_b", "S2_a", "S2_a"], extra_assets={"geoparquet": {"href": gpq_uri, "roles": ["data"]}})
    stac_catalog.write_item(stac_uri, item)
    items = stac_catalog.read_items(stac_uri)
    assert list(items) == ["./items/tiny_2024-01-01.json"]
    assert items["./items/tiny_2024-01-01.json"]["assets"]["embeddings"]["href"] == \
        "../../../../cubes/terrafm_b_s2/tiny.zarr/EPSG32632/grid"
    assert items["./items/tiny_2024-01-01.json"]["properties"]["rs_embed:source_scene_ids"] == ["S2_a", "S2_b"]
    collection = stac_catalog.build_collection(
        collection_id="terrafm_b_s2", title="t", description="d", items=items, dimensions=6, chip_px=8, gsd=10.0,
        data_type="float32", grid_id="g", model_href="https://huggingface.co/MBZUAI/TerraFM", source_hrefs=["urn:x:y"])
    paths = stac_catalog.write_collection(stac_uri, collection, "t")
    doc = json.loads(s3.cat_file(paths["collection"]))
    assert doc["extent"]["spatial"]["bbox"][0] == item["bbox"] and doc["emb:temporal_resolution"] == "quarterly"
    assert json.loads(s3.cat_file(paths["catalog"]))["links"][1] == {"rel": "child", "href": "./collection.json",
                                                                      "type": "application/json"}
