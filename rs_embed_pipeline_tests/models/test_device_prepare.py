"""The device path (``adapter.prepare_encoded``: store codes uploaded, decoded and normalised with torch
ops) against the numpy reference (``adapter.prepare``) on every reference fixture, and through the
worker on a uint16-encoded patch store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_embed_pipeline.models.errors import ModelInputError
from rs_embed_pipeline.stores.patch_encoding import FLOAT32, S2_DN_HALF_UINT16

from .conftest import CASES, assert_close

ATOL = 1e-6


@pytest.mark.parametrize("name", CASES)
def test_device_prepare_equals_numpy_on_every_fixture(cases, name):
    case = cases[name]
    adapter = case.load(**({"resize_mode": "fixed"} if case.model != "terrafm_b" else {}))  # the same at native size
    raw = case.input()
    ref = adapter.prepare(raw, case.modality)
    dev = adapter.prepare_encoded(raw, case.modality)  # float32 codes: the fixture's exact values, NaN included
    assert isinstance(dev.x, torch.Tensor) and dev.x.dtype == torch.float32
    assert tuple(dev.x.shape) == ref.x.shape
    np.testing.assert_allclose(dev.x.numpy(), ref.x, rtol=0, atol=ATOL)
    assert dev.meta["normalization"] == ref.meta["normalization"]
    if "s1_p99_log1p" in ref.meta:
        np.testing.assert_allclose(dev.meta["s1_p99_log1p"], ref.meta["s1_p99_log1p"], rtol=1e-6)
    out_ref, out_dev = adapter.run(ref, "both"), adapter.run(dev, "both")
    # S1: torch's float32 log1p is an ulp off numpy's on ~10 % of values (prepared within 2e-7, the
    # outputs within 1e-5); the worker prepares S1 on the host. S2 is equal bit for bit.
    atol = ATOL if case.modality == "s2" else 1e-5
    np.testing.assert_allclose(out_dev.pooled, out_ref.pooled, rtol=0, atol=atol)
    np.testing.assert_allclose(out_dev.grid, out_ref.grid, rtol=0, atol=atol)
    # conformance on the device path: the fixture's expected outputs within its tolerance
    assert_close(out_dev.pooled, case.expected("pooled.npy"), case.atol, case.rtol, f"{name} pooled (device)")


@pytest.mark.parametrize("name", [c for c in CASES if "_s2_" in c])
def test_uint16_codes_on_device_equal_their_host_decoding(cases, name):
    case = cases[name]
    adapter = case.load(**({"resize_mode": "fixed"} if case.model != "terrafm_b" else {}))
    raw = case.input()
    codes, adjusted = S2_DN_HALF_UINT16.encode(raw)
    # the fixtures' NaN and non-half-integer pixels are the adjusted ones (NaN -> 0 DN, others rounded)
    assert adjusted.sum() == int((~np.isfinite(raw) | (np.nan_to_num(raw) * 2 != np.round(np.nan_to_num(raw) * 2))).sum())
    assert adjusted.sum() > 0
    values = S2_DN_HALF_UINT16.decode(codes)
    ref = adapter.prepare(values, "s2")
    dev = adapter.prepare_encoded(codes, "s2", scale_factor=0.5, add_offset=-1000.0)
    np.testing.assert_array_equal(dev.x.numpy(), ref.x)  # the same float32 operations: bit for bit


def test_device_prepare_picks_channels_and_refuses_bad_input(cases):
    case = cases["terrafm_s2_l2a"]
    adapter = case.load()
    raw = np.nan_to_num(case.input())
    shuffled = raw[:, ::-1].copy()
    dev = adapter.prepare_encoded(shuffled, "s2", channels=list(range(11, -1, -1)))
    np.testing.assert_array_equal(dev.x.numpy(), adapter.prepare(raw, "s2").x)
    with pytest.raises(ModelInputError, match=r"expects C=12 channels"):
        adapter.prepare_encoded(raw[:, :10], "s2")
    with pytest.raises(ModelInputError, match=r"unit-scaled reflectance"):  # the reference's own message
        adapter.prepare_encoded(np.clip(raw, 0, 10000) / np.float32(10000), "s2")
    with pytest.raises(ModelInputError, match=r"contain no finite value"):
        adapter.prepare_encoded(np.full_like(raw, np.nan), "s2")


def test_worker_embeds_a_uint16_store_as_the_float32_store(tmp_path, cases):
    from rs_embed_pipeline.core.vocabulary import S2_BANDS
    from rs_embed_pipeline.stores import ArraySpec, TileStore
    from rs_embed_pipeline.worker.embed import embed_store

    case = cases["terrafm_s2_l2a"]
    adapter = case.load(batch_size=2)
    raw = np.nan_to_num(case.input())[:, :, :224, :224]
    raw = np.concatenate([raw, raw[:, :, ::-1]])  # 4 tiles
    uris = {}
    for enc in (FLOAT32, S2_DN_HALF_UINT16):
        uri = str(tmp_path / f"{enc.name}.zarr")
        store = TileStore.create_or_open(
            uri, "patches", tile_ids=[f"t{i}" for i in range(4)],
            arrays=[ArraySpec("data", (12, 224, 224), ("band", "y", "x"), encoding=enc),
                    ArraySpec("valid", (224, 224), ("y", "x"), dtype="bool", fill_value=False)],
            fingerprint=enc.name, attrs={"bands": list(S2_BANDS), "size_px": 224, "scale_m": 10.0,
                                         "data_encoding": enc.name})
        codes, _ = enc.encode(raw)
        store.write_tiles(range(4), ["ok"] * 4, [{}] * 4, data=codes, valid=np.ones((4, 224, 224), bool))
        result = embed_store(adapter, "s2", uri, str(tmp_path / f"emb_{enc.name}.zarr"), batch_size=2,
                             code_version="t", io_threads=2)
        assert result.counts["ok"] == 4
        uris[enc.name] = str(tmp_path / f"emb_{enc.name}.zarr")
    a, b = (TileStore.open(u, "embeddings") for u in uris.values())
    np.testing.assert_allclose(b.read("pooled", range(4)), a.read("pooled", range(4)), rtol=0, atol=ATOL)
    np.testing.assert_allclose(b.read("grid", range(4)), a.read("grid", range(4)), rtol=0, atol=ATOL)
    expected = adapter.embed(raw, "s2", "pooled").pooled
    np.testing.assert_allclose(b.read("pooled", range(4)), expected, rtol=0, atol=ATOL)
