"""open_cube: only filled windows, zone and kind choices with clear errors, band-first option."""

import numpy as np
import pytest

from rs_embed_pipeline.products import open_cube
from rs_embed_pipeline.stores.cube.reader import CubeReadError
from rs_embed_pipeline_tests.products.conftest import (
    CELLS,
    COLS,
    D_GRID,
    D_POOLED,
    FILLED,
    MISSING,
    ROWS,
    TILE_M,
    WINDOW_STARTS,
    tile_vectors,
    tiny_tiles,
    write_tiny_cube,
)


def test_only_filled_windows_with_their_values(tiny_cube):
    ds = open_cube(tiny_cube)
    assert ds["embedding"].dims == ("time", "y", "x", "feature")
    assert [str(t)[:10] for t in ds["time"].values] == [WINDOW_STARTS[w] for w in FILLED]
    assert ds["window_filled"].values.tolist() == [1, 1]
    assert ds.sizes["feature"] == D_GRID and ds.sizes["x"] == len(COLS) * CELLS and ds.sizes["y"] == len(ROWS) * CELLS
    # The north-west tile's feature map sits in the first rows/columns, as written.
    north_west = tiny_tiles()[0]["tile_id"]
    _, grids = tile_vectors(0)
    block = ds["embedding"].isel(time=0, y=slice(0, CELLS), x=slice(0, CELLS)).values
    np.testing.assert_array_equal(block, np.moveaxis(grids[north_west], 0, -1))
    raw = open_cube(tiny_cube, filled_only=False)
    assert raw.sizes["time"] >= len(WINDOW_STARTS) and np.isnan(raw["embedding"].isel(time=1).values).all()


def test_pooled_kind_point_lookup(tiny_cube):
    ds = open_cube(tiny_cube, zone="32632", kind="pooled")
    assert ds.sizes["feature"] == D_POOLED and ds.attrs["zone"] == "EPSG32632"
    pooled, _ = tile_vectors(2)
    t = tiny_tiles()[4]  # southern row, middle column
    vec = ds["embedding"].sel(x=t["x0"] + TILE_M / 2, y=t["y0"] - TILE_M / 2, method="nearest").isel(time=1)
    np.testing.assert_array_equal(vec.values, pooled[t["tile_id"]])
    missing = next(iter(MISSING[2]))
    m = next(t for t in tiny_tiles() if t["tile_id"] == missing)
    assert np.isnan(ds["embedding"].sel(x=m["x0"] + 1, y=m["y0"] - 1, method="nearest").isel(time=1).values).all()


def test_feature_first_transpose(tiny_cube):
    ds = open_cube(tiny_cube, feature_first=True)
    assert ds["embedding"].dims == ("time", "feature", "y", "x")
    np.testing.assert_array_equal(ds["embedding"].values, open_cube(tiny_cube)["embedding"].values.transpose(0, 3, 1, 2))


def test_errors_name_the_choices(tiny_cube, tmp_path):
    with pytest.raises(CubeReadError, match="valid kinds: grid, pooled"):
        open_cube(tiny_cube, kind="mosaic")
    with pytest.raises(CubeReadError, match="no zone 'EPSG32633'; its zones: EPSG32632"):
        open_cube(tiny_cube, zone="EPSG32633")
    with pytest.raises(CubeReadError, match="No cube at"):
        open_cube(str(tmp_path / "missing.zarr"))


def test_several_zones_need_a_zone(tmp_path):
    from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window
    from rs_embed_pipeline_tests.products.conftest import CUBE_ATTRS

    uri = str(tmp_path / "two.zarr")
    write_tiny_cube(uri, windows=(0,))
    other = [{**t, "utm_epsg": 32631, "tile_id": t["tile_id"].replace("32632", "32631")} for t in tiny_tiles()[:1]]
    write_cube_window(uri, CubeWindowWrite(
        tiles=tiny_tiles() + other, pooled={other[0]["tile_id"]: np.ones(D_POOLED, np.float32)},
        reader=CallableGrids(grids=lambda tid: np.ones((D_GRID, CELLS, CELLS), np.float32)), window_index=1,
        window_starts=WINDOW_STARTS, attrs=CUBE_ATTRS, fingerprint="tiny",
        grid_shape=(D_GRID, CELLS, CELLS), pooled_dim=D_POOLED))
    with pytest.raises(CubeReadError, match=r"several UTM zones \(EPSG32631, EPSG32632\); pass zone="):
        open_cube(uri)
    assert open_cube(uri, zone="EPSG32631").sizes["time"] == 1


def test_unfilled_window_is_a_clear_error(tiny_cube):
    from rs_embed_pipeline.stores.cube.reader import window_dataset

    with pytest.raises(CubeReadError, match=r"Window 2024-04-01 of .* is not filled; filled windows: 2024-01-01, 2024-07-01"):
        window_dataset(tiny_cube, "EPSG32632", "pooled", WINDOW_STARTS[1])


def test_int8_cube_reads_as_float32_with_geoemb_quantization(tmp_path):
    """A cube stored int8 (H5's quantization) reads back as float32 through open_cube, and its groups
    carry geoemb:quantization and geoemb:data_type int8."""
    import zarr

    from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window
    from rs_embed_pipeline_tests.products.conftest import CUBE_ATTRS

    uri = str(tmp_path / "int8.zarr")
    pooled, grids = tile_vectors(0)
    write_cube_window(uri, CubeWindowWrite(
        tiles=tiny_tiles(), pooled=pooled, reader=CallableGrids(grids=grids.__getitem__), window_index=0,
        window_starts=WINDOW_STARTS, attrs=CUBE_ATTRS, fingerprint="tiny",
        grid_shape=(D_GRID, CELLS, CELLS), pooled_dim=D_POOLED, quantization="int8_per_cell"))
    attrs = dict(zarr.open_group(uri, mode="r")["EPSG32632/pooled"].attrs)
    assert attrs["geoemb:data_type"] == "int8" and attrs["geoemb:quantization"]["original_dtype"] == "float32"
    ds = open_cube(uri, kind="pooled")
    assert ds["embedding"].dtype == np.float32
    t = tiny_tiles()[0]
    vec = ds["embedding"].sel(x=t["x0"] + TILE_M / 2, y=t["y0"] - TILE_M / 2).isel(time=0).values
    np.testing.assert_allclose(vec, pooled[t["tile_id"]], atol=np.abs(pooled[t["tile_id"]]).max() / 127)
    q = attrs["geoemb:quantization"]
    assert set(q) <= {"method", "original_dtype", "quantized_dtype", "scale", "link"}  # the convention's fields
    assert q["quantized_dtype"] == "int8" and q["scale"] == {"type": "array", "array_name": "embedding_scale"}


def test_zone_spellings(tiny_cube):
    for zone in ("EPSG32632", "32632", 32632, "EPSG:32632", "epsg32632", " EPSG32632 "):
        assert open_cube(tiny_cube, zone=zone, kind="pooled").attrs["zone"] == "EPSG32632", zone
    with pytest.raises(CubeReadError, match="no zone 'utm32N'; its zones: EPSG32632"):
        open_cube(tiny_cube, zone="utm32N")
