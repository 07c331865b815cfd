"""int8 cubes, search and change on cubes written directly with the cube writer (no models)."""

import numpy as np
import pytest
import xarray as xr
import zarr

from rs_embed_pipeline.products import open_cube
from rs_embed_pipeline.stores.cube import codec as Q
from rs_embed_pipeline.products import similarity as S
from rs_embed_pipeline.products.change import ChangeError, change_between, cosine_distance, write_change
from rs_embed_pipeline.stores.cube import CubeError
from rs_embed_pipeline_tests.products.answers import cubes as C

DIM = 32


@pytest.fixture(scope="module")
def cubes(tmp_path_factory):
    """The same two windows (one with a missing tile) as float32, int8_per_cell and int8_per_feature."""
    root = tmp_path_factory.mktemp("answers_cubes")
    missing = {C.tiles()[0]["tile_id"]}
    out = {}
    for scheme in Q.SCHEMES:
        uri = str(root / f"{scheme}.zarr")
        out[scheme] = {"uri": uri, "written": [C.write(uri, w, *C.vectors(w, DIM, missing if w == 1 else set()),
                                                       quantization=scheme) for w in (0, 1)]}
    return out


@pytest.mark.parametrize("scheme", ["int8_per_cell", "int8_per_feature"])
def test_int8_cube_reads_back_close_to_float32(cubes, scheme):
    ref = open_cube(cubes["none"]["uri"])
    got = open_cube(cubes[scheme]["uri"])
    assert got["embedding"].dtype == np.float32 and got["embedding"].dims == ("time", "y", "x", "feature")
    a, b = ref["embedding"].values, got["embedding"].values
    assert np.array_equal(np.isnan(a), np.isnan(b)), "cells without an embedding stay NaN"
    cos = Q.cosine_per_cell(a, b)
    assert np.nanmin(cos) >= 0.999
    for kind in ("grid", "pooled"):
        raw = xr.open_zarr(cubes[scheme]["uri"], group=f"EPSG32632/{kind}", consolidated=False)
        assert raw["embedding"].dtype == np.int8 and raw["embedding"].attrs["quantization"] == scheme
        assert raw.attrs["quantization"]["scheme"] == scheme
        assert raw.attrs["geoemb:quantization"]["method"] == Q.geoemb_quantization(scheme)["method"]
        assert raw.attrs["geoemb:quantization"]["quantized_dtype"] == "int8"
        assert set(Q.quantized_arrays(scheme)) <= set(raw.data_vars)
    written = cubes[scheme]["written"][0].quantization
    assert written.scheme == scheme and written.min_cosine_grid >= 0.999


def test_int8_storage_is_smaller_and_missing_tiles_store_nothing(cubes):
    f32 = Q.storage_bytes(cubes["none"]["uri"], "EPSG32632/grid")
    i8 = Q.storage_bytes(cubes["int8_per_cell"]["uri"], "EPSG32632/grid")
    assert i8 < 0.45 * f32
    # Window 1 misses tile 0: its chunks (int8 fill -128, scale NaN) are not stored.
    chunks = zarr.open_group(cubes["int8_per_cell"]["uri"], mode="r")["EPSG32632/grid/embedding"].nchunks_initialized
    assert chunks == 6 + 5


def test_search_top10_overlap_with_float32(cubes):
    ref = S.build_index(cubes["none"]["uri"], C.WINDOW_STARTS[0])
    for scheme in ("int8_per_cell", "int8_per_feature"):
        idx = S.build_index(cubes[scheme]["uri"], C.WINDOW_STARTS[0])
        overlaps = [len(set(ref.top_k(ref.vectors[i], 10)[0]) & set(idx.top_k(idx.vectors[i], 10)[0])) / 10
                    for i in range(0, len(ref), 3)]
        assert np.mean(overlaps) >= 0.95, (scheme, np.mean(overlaps))


def test_changing_quantization_needs_rebuild(cubes, tmp_path):
    uri = str(tmp_path / "c.zarr")
    C.write(uri, 0, *C.vectors(0, DIM))
    with pytest.raises(CubeError, match="rebuild"):
        C.write(uri, 1, *C.vectors(1, DIM), quantization="int8_per_cell")
    assert open_cube(uri)["embedding"].dtype == np.float32 and open_cube(uri).sizes["time"] == 1
    C.write(uri, 0, *C.vectors(0, DIM), quantization="int8_per_cell", rebuild=True)
    assert xr.open_zarr(uri, group="EPSG32632/grid", consolidated=False)["embedding"].dtype == np.int8
    with pytest.raises(Q.QuantizationError, match="valid: none, int8_per_cell, int8_per_feature"):
        C.write(uri, 0, *C.vectors(0, DIM), quantization="int4")


def test_dequantize_is_identity_for_float32(cubes):
    ds = xr.open_zarr(cubes["none"]["uri"], group="EPSG32632/grid", consolidated=False)
    assert Q.dequantize(ds) is ds


def test_quantizers_roundtrip_numpy():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(5, 7, 48)).astype(np.float32)
    v[1, 2] = np.nan
    v[0, 0] = 0.0
    q, scale = Q.quantize_per_cell(v)
    assert q.dtype == np.int8 and q[1, 2].tolist() == [Q.INT8_FILL] * 48 and np.isnan(scale[1, 2])
    assert np.abs(q[np.isfinite(scale)]).max() <= Q.QMAX
    back = Q.dequantize_array(q, scale)
    assert np.isnan(back[1, 2]).all() and np.array_equal(back[0, 0], np.zeros(48))
    assert np.nanmin(Q.cosine_per_cell(v, back)) >= 0.9999 - 1e-4
    scale_f, offset_f = Q.per_feature_params(*Q.feature_range(v))
    back_f = Q.dequantize_array(Q.quantize_per_feature(v, scale_f, offset_f), scale_f, offset_f, per_cell=False)
    assert np.nanmax(np.abs(back_f - v)) <= scale_f.max() / 2 + 1e-6


def test_search_exact_and_hnsw_agree_and_query_cell_is_first(cubes):
    exact = S.build_index(cubes["int8_per_cell"]["uri"], C.WINDOW_STARTS[1], ann="exact")
    hnsw = S.build_index(cubes["int8_per_cell"]["uri"], C.WINDOW_STARTS[1], ann="hnsw")
    assert hnsw.method == "hnsw" and len(exact) == len(hnsw) == 5 * 16, "tile 0 has no embedding in window 1"
    for i in range(0, len(exact), 7):
        e, h = exact.top_k(exact.vectors[i], 10, must_include=i), hnsw.top_k(hnsw.vectors[i], 10, must_include=i)
        assert e[0][0] == h[0][0] == i and np.isclose(e[1][0], 1.0)
        assert len(set(e[0]) & set(h[0])) >= 9
        assert np.all(np.diff(e[1][1:]) <= 1e-7), "scores decrease"


def test_search_index_roundtrip_and_query_errors(cubes, tmp_path):
    idx = S.build_index(cubes["int8_per_cell"]["uri"], C.WINDOW_STARTS[0], ann="hnsw")
    S.save_index(idx, str(tmp_path / "idx"))
    back = S.load_index(str(tmp_path / "idx"))
    assert back.method == "hnsw" and back.cells.equals(idx.cells) and np.array_equal(back.vectors, idx.vectors)
    cell = back.cells["cell_id"].iat[17]
    hits = S.search(back, cell_id=cell, k=4)
    assert hits["cell_id"].iat[0] == cell and list(hits["rank"]) == [1, 2, 3, 4]
    with pytest.raises(S.SearchError, match="exactly one query"):
        S.search(back, cell_id=cell, tile_id=C.tiles()[1]["tile_id"])
    with pytest.raises(S.SearchError, match="is not on a cell"):
        S.search(back, lon=0.0, lat=0.0)
    with pytest.raises(S.SearchError, match="has no embedding in window"):
        S.search(back, tile_id="32632_p32_s10_c09999_r09999")
    with pytest.raises(S.SearchError, match="k must be at least 1"):
        S.search(back, cell_id=cell, k=0)
    with pytest.raises(S.SearchError, match="No search index"):
        S.load_index(str(tmp_path / "nothing"))
    with pytest.raises(S.SearchError, match="valid: grid, pooled"):
        S.build_index(cubes["none"]["uri"], C.WINDOW_STARTS[0], kind="pixels")


def test_cosine_distance_and_change_between(cubes, tmp_path):
    a = np.array([[1.0, 0.0], [1.0, 1.0], [np.nan, 1.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 1.0]], dtype=np.float32)
    assert np.allclose(cosine_distance(a, b)[:2], [0.0, 2.0]) and np.isnan(cosine_distance(a, b)[2])
    result = change_between(cubes["int8_per_feature"]["uri"], C.WINDOW_STARTS[1], C.WINDOW_STARTS[0])
    dist = result.zones["EPSG32632"]["cosine_distance"].values
    assert dist.shape == (8, 12) and np.isnan(dist[:4, :4]).all(), "tile 0 has no embedding in window 1"
    assert np.isfinite(dist[:, 4:]).all() and (dist[:, 4:] > 0).all()
    summary = result.summary(threshold=0.5)
    assert summary["cells"] == 80 and 0 <= summary["changed_share"] <= 1
    write_change(result, str(tmp_path / "change.zarr"), threshold=0.5)
    ds = xr.open_zarr(tmp_path / "change.zarr", group="EPSG32632/grid", consolidated=False)
    assert set(np.unique(ds["changed"].values)) <= {-1, 0, 1} and (ds["changed"].values[:4, :4] == -1).all()
    with pytest.raises(ChangeError, match="filled windows: 2024-01-01, 2024-04-01"):
        change_between(cubes["none"]["uri"], C.WINDOW_STARTS[2], C.WINDOW_STARTS[0])


def test_int8_time_axis_grows_with_its_scale_arrays(tmp_path):
    """A window beyond the allocated time axis grows every time array, the scales included."""
    from rs_embed_pipeline.stores.cube import TIME_BLOCK, CallableGrids, CubeWindowWrite, write_cube_window

    starts = [f"{2024 + i // 4}-{1 + 3 * (i % 4):02d}-01" for i in range(64)]
    uri = str(tmp_path / "grow.zarr")
    for window in (0, TIME_BLOCK + 3):
        pooled, grids = C.vectors(window, 8)
        write_cube_window(uri, CubeWindowWrite(
            tiles=C.tiles(), pooled=pooled, reader=CallableGrids(grids=grids.__getitem__), window_index=window,
            window_starts=starts, windows_in_range=2, attrs=C.ATTRS, fingerprint="grow",
            quantization="int8_per_cell"))
    raw = xr.open_zarr(uri, group="EPSG32632/grid", consolidated=False)
    assert raw["embedding"].shape[0] == raw["embedding_scale"].shape[0] == raw["time"].shape[0] > TIME_BLOCK + 3
    ds = open_cube(uri)
    assert [str(t)[:10] for t in ds["time"].values] == [starts[0], starts[TIME_BLOCK + 3]]
    assert np.isfinite(ds["embedding"].values).all()


def test_the_change_store_finds_its_cube_after_a_copy(cubes, tmp_path):
    """Issue 24: the stored ``cube`` attribute is relative to the change store, so a copied store tree
    (cubes and change together) points at the copy, not at the old place."""
    import shutil

    from rs_embed_pipeline.products.change import change_cube_uri

    root = tmp_path / "store"
    cube = root / "cubes" / "terrafm_b_s2" / "demo.zarr"
    shutil.copytree(cubes["none"]["uri"], cube)
    store = root / "change" / "terrafm_b_s2" / "demo" / f"{C.WINDOW_STARTS[1]}.zarr"
    write_change(change_between(str(cube), C.WINDOW_STARTS[1], C.WINDOW_STARTS[0]), str(store), threshold=0.5)
    attr = xr.open_zarr(store, group="EPSG32632/grid", consolidated=False).attrs["cube"]
    assert attr == "../../../../cubes/terrafm_b_s2/demo.zarr"
    copy = tmp_path / "copied"
    shutil.copytree(root, copy)
    shutil.rmtree(root)
    moved = copy / "change" / "terrafm_b_s2" / "demo" / f"{C.WINDOW_STARTS[1]}.zarr"
    assert change_cube_uri(str(moved), attr) == str(copy / "cubes" / "terrafm_b_s2" / "demo.zarr")
    assert open_cube(change_cube_uri(str(moved), attr)).sizes["time"] >= 2
    assert change_cube_uri("s3://b/p/change/m_s2/r/w.zarr", attr) == "s3://b/p/cubes/terrafm_b_s2/demo.zarr"
    assert change_cube_uri(str(moved), "/old/place/demo.zarr") == "/old/place/demo.zarr"
