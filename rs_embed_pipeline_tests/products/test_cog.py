"""COG export: rasterio/GDAL open it with the cube's CRS, transform, bands and values;
rioxarray reads the cube's own CRS and transform from spatial_ref."""

import numpy as np
import pytest
import rasterio
import xarray as xr

from rs_embed_pipeline.products import cog
from rs_embed_pipeline.stores.cube.reader import window_dataset
from rs_embed_pipeline_tests.products.conftest import (
    CELLS,
    COLS,
    D_GRID,
    ROWS,
    TILE_M,
    WINDOW_STARTS,
)


@pytest.fixture(scope="module")
def written(tiny_cube, tmp_path_factory):
    ds = window_dataset(tiny_cube, "EPSG32632", "grid", WINDOW_STARTS[2])
    x0, cell, _, y0, _, _ = (float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split())
    path = str(tmp_path_factory.mktemp("cog") / "EPSG32632_grid.tif")
    info = cog.write_cog(path, ds["embedding"].values, epsg=32632, left=x0, top=y0, cell_m=cell, block_size=16,
                         factors=[2, 4], tags={"model_id": "terrafm_b", "window_start": WINDOW_STARTS[2]})
    return path, info, ds


def test_rasterio_opens_it_north_up_with_crs_bands_and_values(written):
    path, info, ds = written
    assert (info["bands"], info["overviews"], info["block_size"]) == (D_GRID, [2, 4], 16)
    cell = TILE_M / CELLS
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32632
        assert src.count == D_GRID and (src.height, src.width) == (len(ROWS) * CELLS, len(COLS) * CELLS)
        t = src.transform
        assert (t.a, t.b, t.d, t.e) == (cell, 0.0, 0.0, -cell), "north-up, negative y resolution"
        assert (t.c, t.f) == (COLS[0] * TILE_M, max(ROWS) * TILE_M)
        assert np.isnan(src.nodata) and src.dtypes[0] == "float32"
        assert src.descriptions[0] == "feature_000" and src.tags()["model_id"] == "terrafm_b"
        assert src.profile["tiled"] and src.block_shapes[0] == (16, 16)
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "ZSTD" and structure["PREDICTOR"] == "3"
        assert src.overviews(1) == [2, 4]
        data = src.read()
    expected = np.moveaxis(ds["embedding"].values, -1, 0)
    np.testing.assert_array_equal(data, expected)  # NaN where the cube has no tile, in the same places
    assert np.isnan(data[:, -CELLS:, :CELLS]).all()  # the south-west tile has no embedding in this window


def test_overviews_average_and_renormalise(written):
    path, _, ds = written
    full = np.moveaxis(ds["embedding"].values, -1, 0)
    with rasterio.open(path, overview_level=0) as src:
        level = src.read()
    np.testing.assert_allclose(level, cog.renormalised_mean(full), rtol=1e-6)
    # One block by hand: the mean of its four vectors, rescaled to their mean length.
    block = full[:, :2, :2].reshape(D_GRID, 4)
    mean = block.mean(axis=1)
    want = mean * np.linalg.norm(block, axis=0).mean() / np.linalg.norm(mean)
    np.testing.assert_allclose(level[:, 0, 0], want, rtol=1e-5)


def test_renormalised_mean_keeps_unit_vectors_unit_and_skips_nodata():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(8, 4, 6))
    v /= np.linalg.norm(v, axis=0, keepdims=True)
    v[:, 0, 0] = np.nan
    v[:, 2:, 4:] = np.nan  # a whole 2 x 2 block without data
    out = cog.renormalised_mean(v.astype(np.float32))
    assert out.shape == (8, 2, 3)
    assert np.isnan(out[:, 1, 2]).all()
    np.testing.assert_allclose(np.linalg.norm(out[:, :, :2], axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0] / np.linalg.norm(out[:, 0, 0]),
                               np.nanmean(v[:, :2, :2].reshape(8, 4)[:, 1:], axis=1)
                               / np.linalg.norm(np.nanmean(v[:, :2, :2].reshape(8, 4)[:, 1:], axis=1)), rtol=1e-5)


def test_overview_factors_follow_the_block_size():
    assert cog.overview_factors(100, 100, 256) == []
    assert cog.overview_factors(1000, 300, 256) == [2, 4]


def test_rioxarray_reads_the_cubes_crs_and_transform(tiny_cube):
    import rioxarray  # noqa: F401 - registers the .rio accessor

    ds = xr.open_zarr(tiny_cube, group="EPSG32632/grid", consolidated=False)
    emb = ds["embedding"]
    assert emb.rio.crs.to_epsg() == 32632
    cell = TILE_M / CELLS
    assert tuple(emb.rio.transform())[:6] == (cell, 0.0, COLS[0] * TILE_M, 0.0, -cell, max(ROWS) * TILE_M)
    assert tuple(emb.rio.transform(recalc=True))[:6] == tuple(emb.rio.transform())[:6]
    assert emb.rio.x_dim == "x" and emb.rio.y_dim == "y"


def test_block_size_keeps_a_block_under_16_mib():
    assert cog.block_size_for(64) == 256 and cog.block_size_for(6) == 256
    assert cog.block_size_for(256) == 128 and cog.block_size_for(768) == 64 and cog.block_size_for(4096) == 64
    for bands in (64, 256, 768):
        side = cog.block_size_for(bands)
        assert side * side * 4 * bands <= cog.MAX_BLOCK_BYTES


def test_wide_vectors_get_small_blocks_and_any_power_of_two_overviews(tmp_path):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(40, 24, 300)).astype(np.float32)   # [y, x, feature]
    features[:8, :8] = np.nan
    path = str(tmp_path / "sub" / "wide.tif")
    info = cog.write_cog(path, features, epsg=32631, left=500000.0, top=5000000.0, cell_m=160.0, factors=[2, 8])
    assert info["block_size"] == 64 and info["overviews"] == [2, 8]
    bands = np.moveaxis(features, -1, 0)
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (64, 64) and src.overviews(1) == [2, 8]
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(src.read(), bands)
    with rasterio.open(path, overview_level=1) as src:   # factor 8 = three 2 x 2 averagings
        want = cog.renormalised_mean(cog.renormalised_mean(cog.renormalised_mean(bands)))
        np.testing.assert_allclose(src.read(), want, rtol=1e-6)
        data = src.read()
        assert src.shape == (5, 3) and np.isnan(data[:, 0, 0]).all()  # its 8 x 8 cells are all nodata
        assert np.isfinite(data[:, 1:, :]).all() and np.isfinite(data[:, :, 1:]).all()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["wide.tif"]  # no temporary files left
    with pytest.raises(ValueError, match=r"increasing powers of two .* got \[2, 6\]"):
        cog.write_cog(path, features, epsg=32631, left=0.0, top=0.0, cell_m=160.0, factors=[2, 6])


def test_rewriting_gives_the_same_bytes(written, tmp_path):
    path, info, ds = written
    again = str(tmp_path / "again.tif")
    x0, cell, _, y0, _, _ = (float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split())
    cog.write_cog(again, ds["embedding"].values, epsg=32632, left=x0, top=y0, cell_m=cell, block_size=16,
                  factors=[2, 4], tags={"model_id": "terrafm_b", "window_start": WINDOW_STARTS[2]})
    with open(path, "rb") as a, open(again, "rb") as b:
        first, second = a.read(), b.read()
    assert first == second and info["bytes"] == len(second)
