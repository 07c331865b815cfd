"""Patch stores in their own type: S2 DN as uint16 codes (exact for half-integer DN in range),
float32 stores of earlier versions read as before, and a store whose dtype does not match its
fingerprint refused untouched."""

from __future__ import annotations

import numpy as np
import pytest

from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore
from rs_embed_pipeline.stores.patch_encoding import FLOAT32, S2_DN_HALF_UINT16, encoding_for, encoding_named


def test_s2_codes_are_exact_for_half_integer_dn_in_range():
    dn = np.array([[-1000.0, -999.5, -1.0, 0.0, 0.5, 1234.0, 9999.5, 31767.5]], np.float32)
    codes, adjusted = S2_DN_HALF_UINT16.encode(dn)
    assert codes.dtype == np.uint16 and codes.tolist() == [[0, 1, 1998, 2000, 2001, 4468, 21999, 65535]]
    assert adjusted.tolist() == [0]
    np.testing.assert_array_equal(S2_DN_HALF_UINT16.decode(codes), dn)
    assert S2_DN_HALF_UINT16.value_range == (-1000.0, 31767.5)


def test_values_the_codes_cannot_hold_are_clamped_rounded_and_counted():
    dn = np.array([[-2000.0, 40000.0, 100.25, np.nan], [1.0, 2.0, 3.0, 4.0]], np.float32)
    codes, adjusted = S2_DN_HALF_UINT16.encode(dn)
    assert adjusted.tolist() == [4, 0]
    assert S2_DN_HALF_UINT16.decode(codes)[0].tolist() == [-1000.0, 31767.5, 100.0, 0.0]


def test_encoding_choice_follows_modality_and_fill_value():
    assert encoding_for("s2") is S2_DN_HALF_UINT16
    assert encoding_for("s2", -1000.0) is S2_DN_HALF_UINT16
    assert encoding_for("s2", float("nan")) is FLOAT32  # NaN fill: float32, exact
    assert encoding_for("s2", -9999.0) is FLOAT32
    assert encoding_for("s1") is FLOAT32
    assert encoding_named(None) is FLOAT32
    with pytest.raises(ValueError, match=r"unknown patch encoding 'int8'; valid: float32, s2_dn_half_uint16"):
        encoding_named("int8")


def _create(uri, encoding, fingerprint="f1"):
    return TileStore.create_or_open(
        uri, "patches", tile_ids=["a", "b"],
        arrays=[ArraySpec("data", (2, 4, 4), ("band", "y", "x"), encoding=encoding)],
        fingerprint=fingerprint, attrs={"data_encoding": encoding.name} if encoding else {})


def test_store_holds_codes_and_reads_provider_values(tmp_path):
    uri = str(tmp_path / "p.zarr")
    store = _create(uri, S2_DN_HALF_UINT16)
    dn = np.arange(64, dtype=np.float32).reshape(2, 2, 4, 4) * 10.5 - 999.5
    codes, _ = S2_DN_HALF_UINT16.encode(dn)
    store.write_tiles([0, 1], ["ok", "ok"], [{}, {}], data=codes)
    reopened = TileStore.open(uri, "patches")
    assert reopened.group["data"].dtype == np.uint16
    assert reopened.encoding("data") is S2_DN_HALF_UINT16
    assert reopened.read_stored("data", [1]).dtype == np.uint16
    np.testing.assert_array_equal(reopened.read("data", [0, 1]), dn)
    with pytest.raises(ValueError, match=r"stores uint16 codes \(s2_dn_half_uint16\); encode the values first"):
        store.write_tiles([0], ["ok"], [{}], data=dn[:1])


def test_float32_store_of_earlier_versions_reads_and_refuses_reuse_without_rebuild(tmp_path):
    uri = str(tmp_path / "old.zarr")
    old = _create(uri, None)  # no encoding attribute: the layout before encodings
    old.write_tiles([0, 1], ["ok", "ok"], [{}, {}], data=np.full((2, 2, 4, 4), 12.5, np.float32))
    assert TileStore.open(uri, "patches").encoding("data") is FLOAT32
    np.testing.assert_array_equal(TileStore.open(uri, "patches").read("data", [0]), 12.5)
    with pytest.raises(StoreError, match=r"holds float32, expected uint16 \(encoding s2_dn_half_uint16\)\. "
                                         r"Nothing was changed; use rebuild"):
        _create(uri, S2_DN_HALF_UINT16)
    np.testing.assert_array_equal(TileStore.open(uri, "patches").read("data", [0]), 12.5)  # untouched
    rebuilt = TileStore.create_or_open(
        uri, "patches", tile_ids=["a", "b"],
        arrays=[ArraySpec("data", (2, 4, 4), ("band", "y", "x"), encoding=S2_DN_HALF_UINT16)],
        fingerprint="f2", attrs={"data_encoding": S2_DN_HALF_UINT16.name}, rebuild=True)
    assert rebuilt.group["data"].dtype == np.uint16 and rebuilt.status_counts()["pending"] == 2


def test_store_whose_dtype_does_not_match_its_fingerprint_is_refused_untouched(tmp_path):
    uri = str(tmp_path / "p.zarr")
    store = _create(uri, S2_DN_HALF_UINT16)
    store.group.attrs["settings"] = {"data_encoding": "float32"}  # written by something else
    before = dict(store.group.attrs)
    with pytest.raises(StoreError, match=r"does not match its fingerprint: its fingerprint's settings say "
                                         r"data_encoding='float32' but the array says encoding='s2_dn_half_uint16'"):
        TileStore.open(uri, "patches").encoding("data")
    assert dict(TileStore.open(uri, "patches").group.attrs) == before
    store.group["data"].attrs["encoding"] = "float32"
    with pytest.raises(StoreError, match=r"the array holds uint16 where its encoding 'float32' stores float32"):
        TileStore.open(uri, "patches").encoding("data")


# ------------------------------------------------------------------ row differences (#21 bytes target)
def _filtered_store(uri: str, filter: str | None = "delta_y") -> TileStore:
    return TileStore.create_or_open(
        uri, "patches", tile_ids=["a", "b", "c"],
        arrays=[ArraySpec("data", (2, 5, 4), ("band", "y", "x"), encoding=S2_DN_HALF_UINT16, filter=filter)],
        fingerprint="p", attrs={"data_encoding": S2_DN_HALF_UINT16.name})


def test_row_differences_are_stored_and_undone_on_read(tmp_path):
    from rs_embed_pipeline.stores.patch_encoding import apply_filter, undo_filter

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2 ** 16, size=(3, 2, 5, 4)).astype(np.uint16)  # wrapping differences included
    assert S2_DN_HALF_UINT16.store_filter == "delta_y" and FLOAT32.store_filter is None
    np.testing.assert_array_equal(undo_filter(apply_filter(codes, "delta_y"), "delta_y"), codes)
    store = _filtered_store(str(tmp_path / "p.zarr"))
    store.write_tiles([2, 0], ["ok", "ok"], [{}, {}], data=codes[:2])
    store.write_tile(1, "ok", {}, data=codes[2])
    raw = np.asarray(store.group["data"][:])
    np.testing.assert_array_equal(raw[0, :, 0], codes[1, :, 0])  # the first row as it is
    np.testing.assert_array_equal(raw[0, :, 1:], codes[1, :, 1:] - codes[1, :, :-1])  # then differences
    np.testing.assert_array_equal(store.read_stored("data", [2, 0, 1]), codes)
    np.testing.assert_array_equal(store.read("data", [1]), S2_DN_HALF_UINT16.decode(codes[2:3]))
    assert store.group["data"].attrs["filter"] == "delta_y"
    old = _filtered_store(str(tmp_path / "old.zarr"), filter=None)  # uint16 stores before the filter
    old.write_tiles([0], ["ok"], [{}], data=codes[:1])
    assert "filter" not in old.group["data"].attrs
    np.testing.assert_array_equal(np.asarray(old.group["data"][0]), codes[0])
    np.testing.assert_array_equal(TileStore.open(str(tmp_path / "old.zarr"), "patches").read_stored("data", [0]),
                                  codes[:1])


def test_unknown_filter_is_refused_and_a_filter_needs_its_encoding(tmp_path):
    store = _filtered_store(str(tmp_path / "p.zarr"))
    store.group["data"].attrs["filter"] = "zigzag"
    with pytest.raises(StoreError, match="unknown patch filter 'zigzag'; valid: delta_y"):
        store.read_stored("data", [0])
    with pytest.raises(ValueError, match="filter 'delta_y' applies to the codes of an encoding"):
        ArraySpec("data", (2, 5, 4), ("band", "y", "x"), encoding=FLOAT32, filter="delta_y")
