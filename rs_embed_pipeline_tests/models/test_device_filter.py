"""The patch filter undone on the model's device (#21): the worker on a GPU uploads the row
differences as the store holds them (``TileStore.read_filtered``) and ``device_prepare.undo_filter``
sums them back there. Exact against the host's undo (``patch_encoding.undo_filter``), and the
worker's device path on a filtered store equal to its numpy path, forced on the CPU with torch ops
as ``test_device_prepare`` does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_embed_pipeline.core.vocabulary import S2_BANDS
from rs_embed_pipeline.models import device_prepare as D
from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore
from rs_embed_pipeline.stores import patch_encoding as PE
from rs_embed_pipeline.stores.patch_encoding import S2_DN_HALF_UINT16, apply_filter, undo_filter
from rs_embed_pipeline.worker.embed import EmbedPipeline, open_store_work

ATOL = 1e-6
CPU = torch.device("cpu")


def test_device_filters_are_the_stores_filters():
    assert D.FILTERS == PE.FILTERS and D.ROW_DELTA == PE.ROW_DELTA


@pytest.mark.parametrize("shape", [(2, 3, 17, 5), (1, 12, 224, 224), (3, 1, 288, 4), (1, 1, 1, 9)])
def test_device_undo_equals_host_undo_exactly(shape):
    rng = np.random.default_rng(sum(shape))
    codes = rng.integers(0, 2**16, size=shape, dtype=np.uint16)
    codes[..., ::2, :1] = 65535  # alternating extremes: every difference wraps around 2**16
    codes[..., 1::2, :1] = 0
    stored = apply_filter(codes, PE.ROW_DELTA)
    if shape[-2] > 1:  # differences below 0 (stored as 2**16 + d) and above: both wrap back exactly
        assert (codes[..., 1:, :] < codes[..., :-1, :]).any() and (codes[..., 1:, :] > codes[..., :-1, :]).any()
    host = undo_filter(stored.copy(), PE.ROW_DELTA)
    device = D.undo_filter(D.upload(stored, CPU), PE.ROW_DELTA)  # the int16 view uploaded, as the worker does
    assert device.dtype == torch.int32
    np.testing.assert_array_equal(host, codes)
    np.testing.assert_array_equal(device.numpy(), codes.astype(np.int32))
    # decoded as the device path decodes: the host's decoding bit for bit
    np.testing.assert_array_equal(D.decode(device, 0.5, -1000.0, unsigned16=True).numpy(),
                                  S2_DN_HALF_UINT16.decode(codes))


def test_device_undo_without_a_filter_and_with_a_bad_one():
    t = D.upload(np.arange(24, dtype=np.uint16).reshape(1, 2, 3, 4), CPU)
    assert D.undo_filter(t, None) is t
    with pytest.raises(ValueError, match=r"unknown patch filter 'delta_x'; valid: delta_y"):
        D.undo_filter(t, "delta_x")
    with pytest.raises(ValueError, match=r"16-bit integer codes"):
        D.undo_filter(t.float(), PE.ROW_DELTA)


SIDES = {"terrafm_s2_l2a": 224, "thor_s2_p16": 288}


def _tiles(case, side: int) -> np.ndarray:
    """Three tiles of the fixture's S2 input at ``side`` px, in the adapter's bands; one tile alternates -1000 and 31767.5 DN rows in one band (codes 0 and
    65535: differences that wrap), the bands the adapter does not read hold other values."""
    raw = np.nan_to_num(case.input())[:, :, :side, :side]
    raw = np.concatenate([raw, raw[:1, :, ::-1]])
    raw[2, 0, ::2] = -1000.0
    raw[2, 0, 1::2] = 31767.5
    return raw


def _store(uri: str, raw: np.ndarray, bands: list[str], filter: str | None) -> None:
    n, _, side, _ = raw.shape
    full = np.full((n, len(S2_BANDS), side, side), 1234.5, np.float32)
    full[:, [list(S2_BANDS).index(b) for b in bands]] = raw
    enc = S2_DN_HALF_UINT16
    store = TileStore.create_or_open(
        uri, "patches", tile_ids=[f"t{i}" for i in range(n)],
        arrays=[ArraySpec("data", (len(S2_BANDS), side, side), ("band", "y", "x"), encoding=enc, filter=filter),
                ArraySpec("valid", (side, side), ("y", "x"), dtype="bool", fill_value=False)],
        fingerprint=enc.name, attrs={"bands": list(S2_BANDS), "size_px": side, "scale_m": 10.0,
                                     "data_encoding": enc.name})
    codes, _ = enc.encode(full)
    store.write_tiles(range(n), ["ok"] * n, [{}] * n, data=codes, valid=np.ones((n, side, side), bool))
    assert TileStore.open(uri, "patches").stored_filter("data") == filter


def _embed(adapter, patches: str, out: str, on_device: bool) -> tuple[np.ndarray, np.ndarray, EmbedPipeline]:
    work = open_store_work(adapter, "s2", patches, out, batch_size=2, code_version="t")
    pipe = EmbedPipeline(adapter, "s2", work, io_threads=1, on_device=on_device)
    run = pipe.run()
    assert run.tiles_done == len(work.patches.tile_ids) and not run.failures
    n = len(work.patches.tile_ids)
    return work.embeddings.read("pooled", range(n)), work.embeddings.read("grid", range(n)), pipe


@pytest.mark.parametrize("name", list(SIDES))
def test_device_path_on_a_filtered_store_equals_the_numpy_path(tmp_path, cases, name):
    case = cases[name]
    adapter = case.load(batch_size=2, **({"resize_mode": "fixed"} if case.model != "terrafm_b" else {}))
    bands = list(adapter.input_bands("s2"))
    raw = _tiles(case, SIDES[name])
    for filt in (PE.ROW_DELTA, None):
        _store(str(tmp_path / f"p_{filt}.zarr"), raw, bands, filt)
    filtered = str(tmp_path / f"p_{PE.ROW_DELTA}.zarr")
    # the device path reads the differences as stored; every other reader sees the codes
    store = TileStore.open(filtered, "patches")
    as_stored, filt = store.read_filtered("data", range(3))
    assert filt == PE.ROW_DELTA
    codes = store.read_stored("data", range(3))
    assert not np.array_equal(as_stored, codes)
    np.testing.assert_array_equal(undo_filter(as_stored.copy(), filt), codes)

    host_pooled, host_grid, host = _embed(adapter, filtered, str(tmp_path / "e_host.zarr"), on_device=False)
    dev_pooled, dev_grid, dev = _embed(adapter, filtered, str(tmp_path / "e_dev.zarr"), on_device=True)
    plain_pooled, plain_grid, plain = _embed(adapter, str(tmp_path / "p_None.zarr"), str(tmp_path / "e_plain.zarr"),
                                             on_device=True)  # a store without the filter: codes as they are
    assert (host.on_device, dev.on_device, plain.on_device) == (False, True, True)
    assert (dev.filter, plain.filter) == (PE.ROW_DELTA, None)
    for pooled, grid in ((dev_pooled, dev_grid), (plain_pooled, plain_grid)):
        np.testing.assert_allclose(pooled, host_pooled, rtol=0, atol=ATOL)
        np.testing.assert_allclose(grid, host_grid, rtol=0, atol=ATOL)
    # and the numpy reference on the values (the tiles' DN, all exact codes)
    ref = adapter.embed(raw, "s2", "both")
    np.testing.assert_allclose(dev_pooled, ref.pooled, rtol=0, atol=ATOL)
    np.testing.assert_allclose(dev_grid, ref.grid, rtol=0, atol=ATOL)


def test_prepare_encoded_undoes_the_filter_and_refuses_a_bad_one(cases):
    case = cases["terrafm_s2_l2a"]
    adapter = case.load()
    raw = np.nan_to_num(case.input())
    codes, _ = S2_DN_HALF_UINT16.encode(raw)
    ref = adapter.prepare_encoded(codes, "s2", scale_factor=0.5, add_offset=-1000.0)
    dev = adapter.prepare_encoded(apply_filter(codes, PE.ROW_DELTA), "s2", scale_factor=0.5, add_offset=-1000.0,
                                  filter=PE.ROW_DELTA)
    np.testing.assert_array_equal(dev.x.numpy(), ref.x.numpy())
    np.testing.assert_array_equal(dev.x.numpy(), adapter.prepare(S2_DN_HALF_UINT16.decode(codes), "s2").x)
    with pytest.raises(ValueError, match=r"filter 'rle' .*valid: delta_y"):
        adapter.prepare_encoded(codes, "s2", scale_factor=0.5, add_offset=-1000.0, filter="rle")
    with pytest.raises(ValueError, match=r"filter 'delta_y' .*got codes of float32"):
        adapter.prepare_encoded(raw, "s2", filter=PE.ROW_DELTA)


def test_a_store_with_an_unknown_filter_is_refused_by_name(tmp_path, cases):
    case = cases["terrafm_s2_l2a"]
    adapter = case.load(batch_size=2)
    raw = _tiles(case, 224)
    uri = str(tmp_path / "p.zarr")
    _store(uri, raw, list(adapter.input_bands("s2")), PE.ROW_DELTA)
    TileStore.open(uri, "patches", mode="r+").group["data"].attrs[PE.FILTER_ATTR] = "delta_z"
    before = TileStore.open(uri, "patches").group["data"][:].copy()
    with pytest.raises(StoreError, match=r"unknown patch filter 'delta_z'; valid: delta_y"):
        TileStore.open(uri, "patches").read_filtered("data", range(3))
    for on_device in (True, False, None):
        with pytest.raises(StoreError, match=r"unknown patch filter 'delta_z'; valid: delta_y"):
            work = open_store_work(adapter, "s2", uri, str(tmp_path / "e.zarr"), batch_size=2, code_version="t")
            EmbedPipeline(adapter, "s2", work, on_device=on_device)
    np.testing.assert_array_equal(TileStore.open(uri, "patches").group["data"][:], before)  # nothing modified
