"""LocalStacProvider on the synthetic catalog (the shared odc-stac path)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
from rasterio.windows import from_bounds

from rs_embed_pipeline.providers import (
    S2_BANDS,
    LocalStacProvider,
    Patch,
    ProviderError,
)
from rs_embed_pipeline.providers.local_catalogs.synthetic import (
    S2_BAND_BASE_DN,
    S2_BAND_HALF_RANGE_DN,
    S2_DN_OFFSET,
)

# third-party noise from odc-geo / rasterio internals (affine `*`, shapely.ops.transform, and a
# spurious cross-thread NotGeoreferencedWarning from rasterio.warp; results are checked exactly)
pytestmark = [
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]

START, END = "2024-01-01", "2024-04-01"  # the synthetic_catalog fixture's window


def _read_window(href: str, row, upsample: int = 1) -> np.ndarray:
    T = row.size_px * row.scale_m
    with rasterio.open(href) as src:
        win = from_bounds(row.x0, row.y0 - T, row.x0 + T, row.y0, src.transform)
        arr = src.read(1, window=win.round_offsets().round_lengths())
    if upsample > 1:
        arr = np.repeat(np.repeat(arr, upsample, 0), upsample, 1)
    return arr


def _by_id(patches):
    out = {p.tile_id: p for p in patches}
    assert len(out) == len(patches)
    return out


def _s2_items(catalog):
    cat = pystac.read_file(str(catalog))
    items = list(cat.get_child("synthetic-s2-l2a").get_items())
    for it in items:
        it.make_asset_hrefs_absolute()
    return sorted(items, key=lambda i: i.datetime)


def _one_day(item):
    d = item.datetime.date()
    return str(d), str(d + pd.Timedelta(days=1))


@pytest.fixture(scope="module")
def provider(synthetic_catalog):
    return LocalStacProvider(synthetic_catalog, max_workers=2)


def test_shapes_band_order_and_units(provider, inner_tiles):
    tiles = inner_tiles.iloc[:2]
    bands = ["B12", "B2", "B8A", "B4", "B1"]
    patches = list(provider.fetch_patches(tiles, "2024-01-01", "2024-04-01", "s2", bands=bands))
    assert sorted(p.tile_id for p in patches) == sorted(tiles["tile_id"])
    for p in patches:
        assert isinstance(p, Patch) and p.status == "ok"
        assert p.data.shape == (5, 32, 32) and p.data.dtype == np.float32
        assert p.valid.shape == (32, 32) and p.valid.dtype == bool
        assert p.valid.mean() > 0.9
        for i, b in enumerate(bands):
            v = p.data[i][p.valid]
            assert np.all(np.abs(v - S2_BAND_BASE_DN[b]) < S2_BAND_HALF_RANGE_DN), b
        assert (p.data[:, ~p.valid] == 0).all()
        m = p.meta
        assert m["provider"] == "local_stac" and m["collection"] == "synthetic-s2-l2a"
        assert m["bands"] == bands and m["composite"] == "median" and m["cloudy_pct"] == 30.0
        assert m["synthetic"] is True and m["image_count"] == len(m["scene_ids"]) >= 3
        assert m["crs"] == "EPSG:32633"
        json.dumps(m)  # stores can write provenance as JSON attributes
        # the overcast date (eo:cloud_cover > 30) was filtered out
        assert "synthetic_S2_32633_20240215" not in m["scene_ids"]


def test_exact_provider_units_single_date(provider, inner_tiles, synthetic_catalog):
    item = [it for it in _s2_items(synthetic_catalog) if it.properties["eo:cloud_cover"] == 0][0]
    s, e = _one_day(item)
    row = inner_tiles.iloc[0]
    (p,) = provider.fetch_patches(
        inner_tiles.iloc[:1], s, e, "s2", bands=["B2", "B8", "B11"], composite="mosaic"
    )
    assert p.status == "ok" and p.meta["scene_ids"] == [item.id] and p.meta["n_dates"] == 1
    assert p.valid.all()
    for i, key in enumerate(["blue", "nir"]):
        raw = _read_window(item.assets[key].href, row).astype(np.float64)
        # (DN * 0.0001 - 0.1) * 10000 == DN - 1000
        np.testing.assert_allclose(p.data[i], raw - S2_DN_OFFSET, atol=1e-3)
    h = p.meta["harmonization"][0]["bands"]["B2"]
    assert h == {"scale": 0.0001, "offset": -0.1, "nodata": 0.0}
    # the 20 m band is bilinear-resampled, close to its 2x-upsampled raw values
    raw11 = _read_window(item.assets["swir16"].href, row, upsample=2).astype(np.float64)
    assert np.abs(p.data[2] - (raw11 - S2_DN_OFFSET)).mean() < 30


def test_cloud_mask_matches_scl(provider, inner_tiles, synthetic_catalog):
    items = [it for it in _s2_items(synthetic_catalog) if 0 < it.properties["eo:cloud_cover"] <= 30]
    assert items
    n_masked = 0
    for item in items:
        s, e = _one_day(item)
        got = _by_id(
            list(provider.fetch_patches(inner_tiles, s, e, "s2", bands=["B4"], composite="mosaic"))
        )
        for row in inner_tiles.itertuples():
            p = got[row.tile_id]
            scl = _read_window(item.assets["scl"].href, row, upsample=2)
            expected = ~np.isin(scl, (0, 3, 8, 9, 10))
            if not expected.any():
                assert p.status == "no_data"
                continue
            np.testing.assert_array_equal(p.valid, expected)
            n_masked += int((~expected).sum())
    assert n_masked > 0, "no cloudy pixel over the test tiles: test is vacuous"


def test_median_vs_mosaic(provider, inner_tiles):
    tiles = inner_tiles.iloc[:2]
    med = _by_id(list(provider.fetch_patches(tiles, START, END, "s2", bands=["B3", "B8"])))
    mos = _by_id(
        list(
            provider.fetch_patches(tiles, START, END, "s2", bands=["B3", "B8"], composite="mosaic")
        )
    )
    for tid in tiles["tile_id"]:
        a, b = med[tid], mos[tid]
        assert a.status == b.status == "ok"
        np.testing.assert_array_equal(a.valid, b.valid)
        assert a.meta["composite"] == "median" and b.meta["composite"] == "mosaic"
        assert not np.allclose(a.data[:, a.valid], b.data[:, b.valid])


def test_mosaic_is_latest_valid(provider, inner_tiles, synthetic_catalog):
    row = inner_tiles.iloc[1]
    (p,) = provider.fetch_patches(
        inner_tiles.iloc[1:2], START, END, "s2", bands=["B2"], composite="mosaic"
    )
    # recompute from the COGs: latest date whose SCL is valid
    items = [it for it in _s2_items(synthetic_catalog) if it.properties["eo:cloud_cover"] <= 30]
    expected = np.zeros((32, 32))
    for it in items:  # ascending in time
        ok = ~np.isin(_read_window(it.assets["scl"].href, row, upsample=2), (0, 3, 8, 9, 10))
        raw = _read_window(it.assets["blue"].href, row).astype(np.float64) - S2_DN_OFFSET
        expected = np.where(ok, raw, expected)
    np.testing.assert_allclose(p.data[0], expected, atol=1e-3)


def test_no_data_window_and_outside_tiles(provider, inner_tiles, grid):
    patches = list(provider.fetch_patches(inner_tiles.iloc[:2], "2023-01-01", "2023-04-01", "s2"))
    assert [p.status for p in patches] == ["no_data", "no_data"]
    for p in patches:
        assert p.data.shape == (12, 32, 32) and not p.data.any() and not p.valid.any()
        assert "no item" in p.meta["reason"] and p.meta["image_count"] == 0
    # a far-away tile of the same lattice has no item either
    far = grid.iloc[:1].copy()
    far["tile_id"] = "far"
    far["x0"] = far["x0"] + 224000.0
    far["geometry"] = None
    (p,) = provider.fetch_patches(far, START, END, "s2", bands=["B4"])
    assert p.status == "no_data"


def test_failed_tile_does_not_stop_others(provider, inner_tiles):
    good = inner_tiles.iloc[:2]
    bad_crs = inner_tiles.iloc[2:3].copy()
    bad_crs["tile_id"] = "bad_crs"
    bad_crs["utm_epsg"] = 99999  # no such CRS: the odc-stac load raises
    missing = pd.DataFrame([{"tile_id": "missing_cols", "size_px": 32}])
    tiles = pd.concat([good, bad_crs], ignore_index=True)
    rows = tiles.to_dict("records") + missing.to_dict("records")
    got = _by_id(list(provider.fetch_patches(rows, START, END, "s2", bands=["B4"])))
    assert {t: p.status for t, p in got.items()} == {
        good.iloc[0].tile_id: "ok",
        good.iloc[1].tile_id: "ok",
        "bad_crs": "failed",
        "missing_cols": "failed",
    }
    assert got["bad_crs"].meta["reason"] and "99999" in got["bad_crs"].meta["reason"]
    assert "bad tile row" in got["missing_cols"].meta["reason"]
    assert got["bad_crs"].data.shape == (1, 32, 32) and not got["bad_crs"].valid.any()


def test_tile_rows_checked_alike_by_every_provider(provider, inner_tiles):
    """STAC and Earth Engine read tile rows through one Tile: the same columns, the same checks,
    the same reasons (a bad row fails alone)."""
    from rs_embed_pipeline.core.grid import Tile

    row = inner_tiles.iloc[0].to_dict()
    tile = Tile.from_row(row)
    assert (tile.size_px, tile.scale_m) == (32, 10.0)
    zero = {**row, "tile_id": "zero", "size_px": 0}
    with pytest.raises(ValueError, match=r"size_px \(0\) and scale_m \(10.0\) must be > 0"):
        Tile.from_row(zero)
    got = _by_id(list(provider.fetch_patches([row, zero], START, END, "s2", bands=["B4"])))
    assert got[row["tile_id"]].status == "ok" and got["zero"].status == "failed"
    assert got["zero"].meta["reason"] == "bad tile row: ValueError: size_px (0) and scale_m (10.0) must be > 0"


def test_s1(provider, inner_tiles):
    patches = list(provider.fetch_patches(inner_tiles.iloc[:2], START, END, "s1"))
    for p in patches:
        assert p.status == "ok" and p.data.shape == (2, 32, 32) and p.valid.all()
        vv, vh = p.data
        assert (vv > 0.005).all() and (vv < 1).all() and (vh < vv).all()
        assert p.meta["bands"] == ["VV", "VH"] and p.meta["cloudy_pct"] is None
        assert p.meta["collection"] == "synthetic-s1-grd" and p.meta["synthetic"] is True
        assert p.meta["image_count"] == 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(modality="s3"), r"unknown modality 's3'.*'s2', 's1'"),
        (dict(modality="s2", bands=["B10"]), r"unknown s2 band.*B10.*B8A"),
        (dict(modality="s1", bands=["HH"]), r"unknown s1 band.*'VV', 'VH'"),
        (dict(modality="s2", composite="mean"), r"unknown composite 'mean'.*'median', 'mosaic'"),
        (dict(modality="s2", cloud=5), r"unknown s2 sensor option.*cloudy_pct"),
        (dict(modality="s2", cloudy_pct=150), r"cloudy_pct"),
        (dict(modality="s2", bands=["B2", "B2"]), r"duplicate"),
    ],
)
def test_validation_errors_raise_at_call(provider, inner_tiles, kwargs, match):
    with pytest.raises(ProviderError, match=match):
        provider.fetch_patches(inner_tiles.iloc[:1], START, END, **kwargs)


def test_s1_orbit_and_option_sets(provider, inner_tiles, synthetic_catalog):
    cat = pystac.read_file(str(synthetic_catalog))
    s1 = list(cat.get_child("synthetic-s1-grd").get_items())
    desc = sorted(i.id for i in s1 if i.properties["sat:orbit_state"] == "descending")
    assert 0 < len(desc) < len(s1)
    (p,) = provider.fetch_patches(inner_tiles.iloc[:1], START, END, "s1", orbit="descending")
    assert p.status == "ok" and sorted(p.meta["scene_ids"]) == desc
    assert p.meta["orbit"] == "DESCENDING"
    with pytest.raises(ProviderError, match="unknown orbit"):
        provider.fetch_patches(inner_tiles, START, END, "s1", orbit="north")
    with pytest.raises(ProviderError, match=r"unknown s1 sensor option.*'composite', 'orbit'"):
        provider.fetch_patches(inner_tiles, START, END, "s1", cloudy_pct=10)
    with pytest.raises(ProviderError, match="unknown s2 sensor option"):
        provider.fetch_patches(inner_tiles, START, END, "s2", orbit="ASCENDING")
    # cloudy_pct=None: no cloud-cover filter (the overcast date is used, and masked by SCL)
    (p,) = provider.fetch_patches(
        inner_tiles.iloc[:1], START, END, "s2", bands=["B4"], cloudy_pct=None
    )
    assert "synthetic_S2_32633_20240215" in p.meta["scene_ids"]
    assert p.meta["cloudy_pct"] is None and p.meta["cloud_filter"] is None


def test_end_before_start_and_unconfigured_modality(synthetic_catalog, inner_tiles):
    p = LocalStacProvider(synthetic_catalog, s1_collection=None)
    with pytest.raises(ProviderError, match="after start"):
        p.fetch_patches(inner_tiles, END, START, "s2")
    with pytest.raises(ProviderError, match="no collection configured"):
        p.fetch_patches(inner_tiles, START, END, "s1")
    with pytest.raises(ProviderError, match="unknown composite"):
        LocalStacProvider(synthetic_catalog, composite="max")


def test_missing_catalog_fails_tiles(tmp_path, inner_tiles):
    p = LocalStacProvider(tmp_path / "nope" / "catalog.json")
    patches = list(p.fetch_patches(inner_tiles.iloc[:2], START, END, "s2"))
    assert [x.status for x in patches] == ["failed", "failed"]
    assert "not found" in patches[0].meta["reason"]


def test_describe_and_all_bands(provider):
    d = provider.describe()
    assert d["provider"] == "local_stac" and d["composite"] == "median"
    assert d["collections"]["s2"]["collection"] == "synthetic-s2-l2a"
    assert set(d["collections"]["s2"]["assets"]) == set(S2_BANDS)
    assert d["catalog_path"].endswith("catalog.json")


def test_package_exports():
    import rs_embed_pipeline.providers as P

    for name in (
        "Patch",
        "ProviderError",
        "S2_BANDS",
        "S1_BANDS",
        "StacProvider",
        "LocalStacProvider",
        "PatchProvider",
    ):
        assert hasattr(P, name)
    assert "GEEProvider" in P.__all__
    with pytest.raises(AttributeError):
        P.NoSuchThing  # noqa: B018


def test_a_failed_block_is_read_once_the_asset_owns_tile_retries(synthetic_catalog, inner_tiles, monkeypatch):
    """One retry owner per failure class (docs/architecture.md): the provider reads a block once and
    returns its tiles failed with the reason; the patches asset requests them again."""
    p = LocalStacProvider(synthetic_catalog, max_workers=1)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise OSError("read refused")

    monkeypatch.setattr(p, "_load_block", broken)
    got = list(p.fetch_patches(inner_tiles.iloc[:2], START, END, "s2", bands=["B4"]))
    assert [x.status for x in got] == ["failed", "failed"]
    assert all(x.meta["reason"] == "OSError: read refused" for x in got)
    assert len(calls) == 1  # the two adjacent tiles share one block, read once, not retried here
    assert "tile_retries" not in p.describe() and "tile_retries" not in p.stats()["config"]


def test_remote_read_options_are_refused_for_local_files(tmp_path):
    """A local catalog has no URL signing or HTTP read settings: such options name the valid ones."""
    from rs_embed_pipeline.providers.stac import LocalStacProvider

    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['patch_url', 'rio_config'\]; valid: "
                                        r"max_workers, cloudy_pct, composite, max_block_px"):
        LocalStacProvider(tmp_path / "catalog.json", patch_url="none", rio_config={})
