"""Embedding grids stored as float32, float16 or bfloat16 (stores/grid_dtype.py): exact widening on
read, round to nearest even on write, the cube's reader getting float32, and bad values refused."""

from __future__ import annotations

import numpy as np
import pytest

from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore
from rs_embed_pipeline.stores import grid_dtype as G
from rs_embed_pipeline.stores.cube import TileStoreGrids


def _store(uri: str, grid_dtype: str) -> TileStore:
    return TileStore.create_or_open(
        uri, "embeddings", tile_ids=["a", "b", "c"],
        arrays=[ArraySpec("grid", (3, 2, 2), ("feature", "gy", "gx"), fill_value=np.nan, stored_type=grid_dtype)],
        fingerprint="f", attrs={"grid_dtype": grid_dtype})


def test_bfloat16_rounds_to_nearest_even_and_widens_exactly():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9, -2.5, np.inf, np.nan, np.finfo(np.float32).max], np.float32)
    bits = G.to_stored(x, "bfloat16")
    assert bits.dtype == np.uint16
    back = G.to_float32(bits, "bfloat16")
    # ties go to the even mantissa: 1 + 2^-8 -> 1, 1 + 3*2^-8 -> 1 + 2^-6; 1 + 2^-9 -> 1
    np.testing.assert_array_equal(back[:5], [1.0, 1.0, 1.0 + 2 ** -6, 1.0, -2.5])
    assert np.isposinf(back[5]) and np.isnan(back[6]) and np.isposinf(back[7])  # float32 max rounds past bfloat16 max (3.3895e38)
    assert G.nonfinite_count(bits, "bfloat16") == 3


@pytest.mark.parametrize("grid_dtype, numpy_dtype", [("float32", "float32"), ("float16", "float16"),
                                                     ("bfloat16", "uint16")])
def test_store_holds_the_type_and_reads_float32(tmp_path, grid_dtype, numpy_dtype):
    store = _store(str(tmp_path / "e.zarr"), grid_dtype)
    values = np.random.default_rng(0).normal(size=(3, 3, 2, 2)).astype(np.float32)
    store.write_tiles([0, 1, 2], ["ok"] * 3, [{}] * 3, grid=G.to_stored(values, grid_dtype))
    assert str(store.group["grid"].dtype) == numpy_dtype and store.stored_type("grid") == grid_dtype
    read = store.read("grid", [0, 1, 2])
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, G.to_float32(G.to_stored(values, grid_dtype), grid_dtype))
    # the cube writer's reader gets those float32 values in the order asked (the cube stays float32)
    np.testing.assert_array_equal(TileStoreGrids(store).read_grids(["c", "a"]), read[[2, 0]])
    tol = {"float32": 0, "float16": 2 ** -11, "bfloat16": 2 ** -8}[grid_dtype]
    assert np.all(np.abs(read - values) <= tol * np.abs(values))


def test_float_values_into_a_bfloat16_grid_are_refused(tmp_path):
    store = _store(str(tmp_path / "e.zarr"), "bfloat16")
    with pytest.raises(ValueError, match=r"stores bfloat16 values as their uint16 bits, got float32: convert with "
                                         r"stores.grid_dtype.to_stored"):
        store.write_tiles([0], ["ok"], [{}], grid=np.ones((1, 3, 2, 2), np.float32))
    assert store.status_counts()["ok"] == 0


def test_unknown_grid_dtype_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"grid_dtype 'float64' is not one of float32, float16, bfloat16"):
        _store(str(tmp_path / "e.zarr"), "float64")
    store = _store(str(tmp_path / "f.zarr"), "float16")
    store.group["grid"].attrs["stored_type"] = "int4"
    with pytest.raises(StoreError, match=r"does not match its fingerprint: grid_dtype 'int4' is not one of "
                                         r"float32, float16, bfloat16\. Nothing was changed"):
        store.read("grid", [0])
