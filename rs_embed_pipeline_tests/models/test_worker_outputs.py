"""The embedding stores' outputs (pooled | grid | both) and the grid's stored type (float32 |
float16 | bfloat16): the worker casts on the model's device, stores what was asked, reads back
float32, and refuses bad values and stores that do not match their fingerprint (#21 point 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_embed_pipeline.stores import StoreError, TileStore
from rs_embed_pipeline.stores import grid_dtype as G
from rs_embed_pipeline.worker.embed import embed_store
from rs_embed_pipeline.worker.protocol import EmbedRequest, PartitionJob

from .test_worker_loop import adapter, make_patch_store  # noqa: F401 - the fixture and the store maker


def _embed(tmp_path, adapter, **kw):  # noqa: F811 - the fixture
    return embed_store(adapter, "s2", str(tmp_path / "p.zarr"), str(tmp_path / "e.zarr"), batch_size=2,
                       code_version="t", **kw)


@pytest.mark.parametrize("grid_dtype, stored, max_rel", [("float16", "float16", 2 ** -11), ("bfloat16", "uint16", 2 ** -8)])
def test_grid_stored_in_half_precision_equals_the_device_cast(tmp_path, adapter, grid_dtype, stored, max_rel):  # noqa: F811
    data = make_patch_store(str(tmp_path / "p.zarr"), 5)
    result = _embed(tmp_path, adapter, grid_dtype=grid_dtype)
    assert result.counts["ok"] == 5 and result.nonfinite_values == 0
    emb = TileStore.open(str(tmp_path / "e.zarr"), "embeddings")
    assert str(emb.group["grid"].dtype) == stored and emb.stored_type("grid") == grid_dtype
    assert emb.settings["grid_dtype"] == grid_dtype and emb.settings["outputs"] == "both"
    ref = adapter.embed(data, "s2", "both")
    grid = emb.read("grid", range(5))
    assert grid.dtype == np.float32 and grid.shape == ref.grid.shape
    # the stored values are torch's cast of the float32 grid (round to nearest even), bit for bit
    want = torch.from_numpy(ref.grid).to(getattr(torch, grid_dtype)).float().numpy()
    np.testing.assert_array_equal(grid, want)
    np.testing.assert_array_equal(G.to_float32(G.to_stored(ref.grid, grid_dtype), grid_dtype), want)  # host = device
    assert np.abs(grid - ref.grid).max() <= max_rel * np.abs(ref.grid).max()
    np.testing.assert_allclose(emb.read("pooled", range(5)), ref.pooled, rtol=1e-6, atol=1e-6)  # pooled stays float32


@pytest.mark.parametrize("outputs, arrays", [("pooled", ["pooled"]), ("grid", ["grid"])])
def test_outputs_choose_the_stored_arrays(tmp_path, adapter, outputs, arrays):  # noqa: F811
    make_patch_store(str(tmp_path / "p.zarr"), 3)
    result = _embed(tmp_path, adapter, outputs=outputs)
    assert result.counts["ok"] == 3
    emb = TileStore.open(str(tmp_path / "e.zarr"), "embeddings")
    assert sorted(emb.group.array_keys()) == sorted([*arrays, "status", "tile_id", "tile_meta"])
    assert emb.settings["outputs"] == outputs


def test_other_outputs_or_grid_type_is_another_store(tmp_path, adapter):  # noqa: F811
    make_patch_store(str(tmp_path / "p.zarr"), 3)
    first = _embed(tmp_path, adapter)
    before = TileStore.open(str(tmp_path / "e.zarr"), "embeddings").read("grid", range(3))
    with pytest.raises(StoreError, match=r"array 'grid' holds float32, expected float16 \(stored type float16\)\. "
                                         r"Nothing was changed; use rebuild .* to rewrite it"):
        _embed(tmp_path, adapter, grid_dtype="float16")
    with pytest.raises(StoreError, match=r"holds arrays \['grid'\] these settings do not write \(they write "
                                         r"\['pooled'\]\)\. Nothing was changed; use rebuild"):
        _embed(tmp_path, adapter, outputs="pooled")
    emb = TileStore.open(str(tmp_path / "e.zarr"), "embeddings")
    assert emb.fingerprint == first.fingerprint  # nothing modified
    np.testing.assert_array_equal(emb.read("grid", range(3)), before)
    # rebuild recreates it in the new layout (a pooled-only store keeps no stale grid)
    rebuilt = _embed(tmp_path, adapter, outputs="pooled", rebuild=True)
    emb = TileStore.open(str(tmp_path / "e.zarr"), "embeddings")
    assert rebuilt.fingerprint != first.fingerprint and "grid" not in emb.group and rebuilt.counts["ok"] == 3


def test_bad_outputs_and_grid_dtype_name_the_choices(tmp_path, adapter):  # noqa: F811
    make_patch_store(str(tmp_path / "p.zarr"), 2)
    with pytest.raises(ValueError, match=r"outputs 'tokens' is not one of pooled, grid, both"):
        _embed(tmp_path, adapter, outputs="tokens")
    with pytest.raises(ValueError, match=r"grid_dtype 'int8' is not one of float32, float16, bfloat16"):
        _embed(tmp_path, adapter, grid_dtype="int8")
    assert not (tmp_path / "e.zarr").exists()  # refused before any store was made
    with pytest.raises(ValueError, match=r"Unknown type 'float64' for output 'grid'; valid: float32, float16, bfloat16"):
        adapter.embed(np.full((1, 10, 64, 64), 500, np.float32), "s2", "both", {"grid": "float64"})


def test_store_whose_grid_type_does_not_match_its_fingerprint_is_refused(tmp_path, adapter):  # noqa: F811
    make_patch_store(str(tmp_path / "p.zarr"), 2)
    _embed(tmp_path, adapter, grid_dtype="float16")
    emb = TileStore.open(str(tmp_path / "e.zarr"), "embeddings", mode="r+")
    emb.group["grid"].attrs["stored_type"] = "bfloat16"  # something else rewrote the attribute
    with pytest.raises(StoreError, match=r"does not match its fingerprint: the array holds float16 where its "
                                         r"stored_type 'bfloat16' stores uint16"):
        _embed(tmp_path, adapter, grid_dtype="float16")
    emb.group["grid"].attrs["stored_type"] = "float16"
    settings = emb.settings
    emb.group.attrs["settings"] = {**settings, "grid_dtype": "float32"}
    with pytest.raises(StoreError, match=r"fingerprint's settings say grid_dtype='float32' but the array holds "
                                         r"'float16' \(choices: float32, float16, bfloat16\)"):
        _embed(tmp_path, adapter, grid_dtype="float16")
    assert TileStore.open(str(tmp_path / "e.zarr"), "embeddings").status_counts()["ok"] == 2  # nothing modified


def test_request_carries_outputs_grid_dtype_and_io_threads():
    request = EmbedRequest(model="terrafm_b", modality="s2", partitions=(PartitionJob("r|w", "p", "e"),),
                           outputs="pooled", grid_dtype="bfloat16", io_threads=2)
    back = EmbedRequest.from_extras(request.to_extras())
    assert (back.outputs, back.grid_dtype, back.io_threads) == ("pooled", "bfloat16", 2)
    old = EmbedRequest.from_extras({"model": "terrafm_b", "modality": "s2", "partitions": []})
    assert (old.outputs, old.grid_dtype, old.io_threads) == ("both", "float32", None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nonfinite_per_row_counts_as_every_value_does(dtype):
    # the fast check (a row's values times 0, summed) then an exact count of the rows it flags: equal
    # to counting every value, with finite extremes (no overflow) and mixed +inf / -inf / NaN rows
    from rs_embed_pipeline.models.adapters import nonfinite_per_row

    big = torch.finfo(dtype).max
    x = torch.randn(6, 3, 4, 4).to(dtype)
    x[0] = big  # finite: 0
    x[1, 0, 0, 0], x[1, 2, 3, 3] = float("inf"), float("-inf")  # 2
    x[2, 1] = float("nan")  # 16
    x[3, 0, 1, 1], x[3, 0, 1, 2], x[3, 0, 1, 3] = float("nan"), float("inf"), -big  # 2
    x[4] = -big
    got = nonfinite_per_row(x)
    assert got.dtype == torch.int64
    assert got.tolist() == (~torch.isfinite(x)).reshape(6, -1).sum(dim=1).tolist() == [0, 2, 16, 2, 0, 0]
    assert nonfinite_per_row(torch.ones(3, 5, dtype=dtype)).tolist() == [0, 0, 0]


# Full size (seeded random weights: no pretrained weights offline), on the reference fixtures' inputs:
# the README's "Grid stored type" figures (bench_embed_loop.py --grid-error) within these bounds.
FULL_SIZE_GRID = {"terrafm_s2_l2a": ("terrafm_b", {}), "thor_s2_p16": ("thor_1_0_base", {"patch_size": 16, "pretrained": False})}
# stored type -> (largest error / largest |value|, RMS error / RMS value, lowest cosine of a cell's feature vector)
GRID_BOUNDS = {"float16": (2 ** -11, 3e-4, 0.99999), "bfloat16": (2 ** -8, 2.5e-3, 0.99999)}


@pytest.mark.parametrize("name", list(FULL_SIZE_GRID))
def test_full_size_grid_stored_types_stay_within_the_readmes_error(cases, name):
    from rs_embed_pipeline.models import load_adapter

    model, options = FULL_SIZE_GRID[name]
    torch.manual_seed(0)
    full = load_adapter(model, device="cpu", allow_random_weights=True, precision="fp32", **options)
    grid = full.embed(cases[name].input(), "s2", "grid").grid  # [tile, feature, gy, gx] float32
    assert grid.shape[1] == 768 and np.isfinite(grid).all()
    for grid_dtype, (max_rel, rms_rel, min_cos) in GRID_BOUNDS.items():
        back = G.to_float32(G.to_stored(grid, grid_dtype), grid_dtype)
        err = back.astype(np.float64) - grid
        assert np.abs(err).max() <= max_rel * np.abs(grid).max(), grid_dtype
        assert np.sqrt((err ** 2).mean() / (grid.astype(np.float64) ** 2).mean()) <= rms_rel, grid_dtype
        a = np.moveaxis(grid, 1, -1).reshape(-1, grid.shape[1]).astype(np.float64)
        b = np.moveaxis(back, 1, -1).reshape(-1, grid.shape[1]).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= min_cos, (grid_dtype, cos.min())
        assert np.abs(err).max() > 0, f"{grid_dtype}: the cast changed nothing"
