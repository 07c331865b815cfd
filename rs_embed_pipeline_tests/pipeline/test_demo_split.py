"""The split demo (issue 20 point 5): ``python -m rs_embed_pipeline.cli.demo --split``'s build of the
demo AOI in 6 km cells, with the fixtures' reduced models, then its summary: the mosaic equals
each cell's cube, the VRT equals the mosaic, DuckDB over the Hive-partitioned dataset counts every
cell's tiles, the stac-geoparquet file holds one Item per cell."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from rs_embed_pipeline.cli import demo
from rs_embed_pipeline.core.regions import load_pipeline_config
from rs_embed_pipeline.orchestration.definitions import resources_for
from rs_embed_pipeline.orchestration.settings import Settings
from rs_embed_pipeline.products import open_cube
from rs_embed_pipeline_tests.pipeline.conftest import reduced_model_resources


@pytest.fixture(scope="module")
def demo_catalog(tmp_path_factory) -> Path:
    """The demo's synthetic catalog over the demo AOI (as `make demo` generates it), window 1 only."""
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    aoi = load_pipeline_config(demo.SPLIT_CONFIG).region(demo.DEMO_REGION).aoi
    return generate_synthetic_catalog(tmp_path_factory.mktemp("catalog"), aoi.bounds, demo.DEMO_WINDOW,
                                      demo.DEMO_WINDOW_END, seed=0, pad_m=demo.CATALOG_PAD_M)


def test_split_demo_builds_the_cells_and_reads_them_as_one_dataset(tmp_path, demo_catalog, worker_python, capsys):
    base = Settings.from_env({"RS_EMBED_STORE": str(tmp_path / "data"), "RS_EMBED_LOCAL_CATALOG": str(demo_catalog)})
    settings = demo.split_settings(base)
    assert settings.store_root == f"{tmp_path / 'data'}/split" and settings.config_path == demo.SPLIT_CONFIG
    resources = {**resources_for(settings), **reduced_model_resources(worker_python)}
    with dg.instance_for_test() as instance:
        cells = demo.build_split(settings, resources, instance)
    assert cells == ["demo-32N-E0312-N05148", "demo-32N-E0312-N05154", "demo-32N-E0318-N05148",
                     "demo-32N-E0318-N05154"]

    s = demo.split_summary(settings.store_root, cells)
    demo.print_split(s)
    out = capsys.readouterr().out

    # The mosaic: one raster over the four cubes, each cube's window at its place, values equal.
    assert s.mosaic.attrs["mosaic_cubes"] == sorted(cells) and s.mosaic.attrs["zone"] == "EPSG32632"
    assert int(s.mosaic["cells_filled"][0]) == 4 and s.mosaic.sizes["time"] == 1
    cubes = Path(settings.store_root) / "cubes" / "terrafm_b_s2"
    mosaic = s.mosaic["embedding"].isel(time=0)
    finite = 0
    for cell in cells:
        cube = open_cube(str(cubes / f"{cell}.zarr"))["embedding"].sel(time=demo.DEMO_WINDOW)
        part = mosaic.sel(x=cube["x"], y=cube["y"]).values
        np.testing.assert_array_equal(part, cube.values)
        finite += int(np.isfinite(cube.values).all(axis=-1).sum())
    assert finite == int(np.isfinite(mosaic.values).all(axis=-1).sum()) > 0

    # The VRT: the same raster, feature first, from the four cells' COGs.
    assert s.vrt_sources == 4 and s.vrt_shape == (mosaic.sizes["feature"], mosaic.sizes["y"], mosaic.sizes["x"])
    with rasterio.open(s.vrt_path) as src:
        np.testing.assert_array_equal(src.read(), np.moveaxis(mosaic.values, -1, 0))

    # DuckDB over the whole dataset: one file per cell, every cell's tiles (= its per-region file's rows).
    products = Path(settings.store_root) / "products" / "terrafm_b_s2"
    per_cell = {c: pq.read_metadata(products / "geoparquet" / c / f"{demo.DEMO_WINDOW}.parquet").num_rows
                for c in cells}
    assert s.dataset_rows == [(demo.DEMO_WINDOW, sum(per_cell.values()), 4)] and all(per_cell.values())
    assert s.point_rows and all(cell in cells for _, cell in s.point_rows)
    # The Items: one per cell and window, in one stac-geoparquet file next to the static tree.
    assert [i for i, _ in s.items] == [f"{c}_{demo.DEMO_WINDOW}" for c in cells]
    assert len(list((products / "stac" / "items").glob("*.json"))) == 4

    assert f"4 cells of region 'demo', window {demo.DEMO_WINDOW}" in out
    assert "4 cubes, filled in 4 of them" in out and "from 4 COGs" in out
    assert f"-> window {demo.DEMO_WINDOW}: {sum(per_cell.values())} tiles in 4 files" in out
    assert "STAC Items as stac-geoparquet" in out and "4 Items" in out
