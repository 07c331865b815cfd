"""Block reads: tiles of every size cut out of one read per block equal single-tile reads;
block grouping; the sorting-network median equals np.nanmedian bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rs_embed_pipeline.core.grid import Tile, bbox_aoi, build_tile_grid
from rs_embed_pipeline.providers import LocalStacProvider
from rs_embed_pipeline.providers.blocks import group_blocks
from rs_embed_pipeline.providers.composite import (
    median_composite,
    mosaic_composite,
    sorting_network,
)
from rs_embed_pipeline.providers.gdal_env import GDAL_HTTP_OPTIONS, gdal_options
from rs_embed_pipeline.providers.stac import S2_NATIVE_RESOLUTION_M

from .conftest import BBOX

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]

START, END = "2024-01-01", "2024-04-01"


@pytest.fixture(scope="module")
def two_sizes(inner_tiles):
    """32 px tiles inside the rasters plus the 48 px tiles of the same area (one lattice)."""
    g48 = build_tile_grid(bbox_aoi(*BBOX), 48, 10.0)
    x0, x1 = inner_tiles["x0"].min(), inner_tiles["x0"].max() + 320
    y0, y1 = inner_tiles["y0"].min() - 320, inner_tiles["y0"].max()
    inside = (g48["x0"] >= x0) & (g48["x0"] + 480 <= x1) & (g48["y0"] <= y1) & (g48["y0"] - 480 >= y0)
    big = g48[inside]
    assert len(big) >= 1
    return pd.concat([inner_tiles, big], ignore_index=True)


def _tiles(df):
    return [Tile.from_row(r) for _, r in df.iterrows()]


def test_group_blocks_groups_sizes_and_bounds_blocks(two_sizes):
    tiles = _tiles(two_sizes)
    (block,) = group_blocks(tiles)  # the whole test region is one block, both sizes
    assert {t.size_px for t in block.tiles} == {32, 48} and len(block.tiles) == len(tiles)
    for t in tiles:
        rows, cols = block.box(t)
        assert 0 <= rows.start and rows.stop <= block.height and 0 <= cols.start and cols.stop <= block.width
        assert block.x0 + cols.start * 10 == t.x0 and block.y0 - rows.start * 10 == t.y0
    small = group_blocks(tiles, max_block_px=40)
    assert len(small) > 1
    assert sorted(t.tile_id for b in small for t in b.tiles) == sorted(t.tile_id for t in tiles)
    assert all(b.width <= 40 + 48 and b.height <= 40 + 48 for b in small)
    # another zone, or a tile off the pixel lattice, is another block
    other = tiles[0].__class__(**{**tiles[0].__dict__, "tile_id": "z", "utm_epsg": 32634})
    shifted = tiles[0].__class__(**{**tiles[0].__dict__, "tile_id": "s", "x0": tiles[0].x0 + 5.0})
    blocks = group_blocks(tiles + [other, shifted])
    assert len(blocks) == 3
    assert {b.epsg for b in blocks} == {32633, 32634}
    with pytest.raises(ValueError, match="max_block_px"):
        group_blocks(tiles, max_block_px=0)


@pytest.mark.parametrize("composite", ["median", "mosaic"])
def test_block_read_equals_single_tile_reads(synthetic_catalog, two_sizes, composite):
    """Every tile of both sizes from one block read == the same tile read alone, bit for bit for
    10, 20 and 60 m bands (nearest resampling), with identical masks and provenance."""
    bands = ["B2", "B8", "B5", "B11", "B1", "B9"]  # 10, 20 and 60 m
    prov = LocalStacProvider(synthetic_catalog, max_workers=2)
    block = {p.tile_id: p for p in prov.fetch_patches(two_sizes, START, END, "s2", bands=bands,
                                                      composite=composite)}
    assert len(block) == len(two_sizes)
    # max_block_px=1: every tile is a block of its own, i.e. read alone
    tiny = LocalStacProvider(synthetic_catalog, max_workers=2, max_block_px=1)
    alone_reads = list(tiny.fetch_patches(two_sizes, START, END, "s2", bands=bands, composite=composite))
    assert len(alone_reads) == len(two_sizes)
    for alone in alone_reads:
        got = block[alone.tile_id]
        assert got.status == alone.status == "ok"
        assert got.meta["block"]["tiles"] == len(two_sizes) and alone.meta["block"]["tiles"] == 1
        np.testing.assert_array_equal(got.valid, alone.valid)
        np.testing.assert_array_equal(got.data, alone.data)
        assert {S2_NATIVE_RESOLUTION_M[b] for b in got.meta["bands"]} == {10, 20, 60}
        assert got.meta["reader"] == "rasterio windows" and got.meta["resampling"]["rededge1"] == "nearest"
        for key in ("scene_ids", "image_count", "n_dates", "dates", "harmonization", "valid_obs_mean"):
            assert got.meta[key] == alone.meta[key], key


def test_block_read_s1_and_partial_blocks(synthetic_catalog, two_sizes):
    prov = LocalStacProvider(synthetic_catalog, max_workers=2)
    split = LocalStacProvider(synthetic_catalog, max_workers=2, max_block_px=40)
    a = {p.tile_id: p for p in prov.fetch_patches(two_sizes, START, END, "s1")}
    b = {p.tile_id: p for p in split.fetch_patches(two_sizes, START, END, "s1")}
    assert a.keys() == b.keys() and all(p.status == "ok" for p in a.values())
    for tid in a:
        np.testing.assert_array_equal(a[tid].data, b[tid].data)
    assert split.stats()["config"]["max_block_px"] == 40


def test_gdal_options_in_one_place_and_in_stats(synthetic_catalog):
    prov = LocalStacProvider(synthetic_catalog)
    gdal = prov.stats()["config"]["gdal"]
    for key in ("GDAL_DISABLE_READDIR_ON_OPEN", "GDAL_HTTP_MULTIPLEX", "GDAL_HTTP_VERSION",
                "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES", "CPL_VSIL_CURL_CACHE_SIZE",
                "CPL_VSIL_CURL_ALLOWED_EXTENSIONS", "GDAL_NUM_THREADS", "GDAL_HTTP_MAX_RETRY"):
        assert gdal[key] == GDAL_HTTP_OPTIONS[key]
    assert "gdal" not in str(prov.describe())  # operational: not in the store fingerprint
    assert gdal_options({"GDAL_HTTP_MAX_RETRY": 9})["GDAL_HTTP_MAX_RETRY"] == "9"
    with pytest.raises(ValueError, match="upper-case"):
        gdal_options({"gdal_http_max_retry": 9})


@pytest.mark.parametrize("t", [1, 2, 3, 5, 8, 12, 17, 40])
def test_median_equals_nanmedian_bit_for_bit(t):
    rng = np.random.default_rng(t)
    for values in (rng.integers(0, 12000, (t, 20, 30)).astype(np.float32),
                   (rng.random((t, 20, 30)) * 0.4).astype(np.float32)):
        ok = rng.random((t, 20, 30)) > 0.35
        valid = ok.any(axis=0)
        # what the provider computed before: np.nanmedian over NaN-masked observations
        ref = np.nanmedian(np.where((ok | ~valid[None]), values, np.nan), axis=0).astype(np.float32)
        ref = np.where(valid, ref, np.float32(-1))
        np.testing.assert_array_equal(median_composite(values, ok, -1.0), ref)


def test_sorting_network_sorts_and_mosaic_takes_latest():
    rng = np.random.default_rng(0)
    for n in range(1, 20):
        x = rng.random((n, 200))
        for a, b in sorting_network(n):
            lo, hi = np.minimum(x[a], x[b]), np.maximum(x[a], x[b])
            x[a], x[b] = lo, hi
        assert (np.diff(x, axis=0) >= 0).all(), n
    values = np.arange(3 * 4, dtype=np.float32).reshape(3, 2, 2)
    ok = np.array([[[1, 1], [0, 0]], [[0, 1], [0, 0]], [[1, 0], [0, 0]]], bool)
    out = mosaic_composite(values, ok, fill_value=-5)
    np.testing.assert_array_equal(out, [[8, 5], [-5, -5]])


def test_odc_stac_fallback_reads_the_same_pixels(synthetic_catalog, two_sizes, monkeypatch):
    """Blocks whose grids do not nest go through odc-stac (a warp, nearest): on nested grids
    both readers give the same numbers, so the reader never changes a patch."""
    import rs_embed_pipeline.providers.stac.reads as stac_mod

    bands = ["B2", "B5", "B1"]
    fast = {p.tile_id: p for p in LocalStacProvider(synthetic_catalog, max_workers=2)
            .fetch_patches(two_sizes, START, END, "s2", bands=bands)}
    monkeypatch.setattr(stac_mod, "read_nested", lambda *a, **k: None)
    slow = {p.tile_id: p for p in LocalStacProvider(synthetic_catalog, max_workers=2)
            .fetch_patches(two_sizes, START, END, "s2", bands=bands)}
    for tid, p in fast.items():
        assert p.meta["reader"] == "rasterio windows" and slow[tid].meta["reader"] == "odc-stac"
        np.testing.assert_array_equal(p.data, slow[tid].data)
        np.testing.assert_array_equal(p.valid, slow[tid].valid)


def test_median_from_raw_levels_equals_the_float_median():
    from rs_embed_pipeline.providers.composite import MedianRanks

    rng = np.random.default_rng(3)
    for t in (1, 4, 7, 10):
        raw = rng.integers(0, 65536, (t, 30, 20)).astype(np.uint16)
        raw[0, 0, :5] = 65535  # ties with the invalid sentinel
        ok = rng.random((t, 30, 20)) > 0.3
        lut = ((np.arange(65536) * 0.0001 - 0.1) * 10000).astype(np.float32)
        ranks = MedianRanks(ok)
        np.testing.assert_array_equal(ranks.median_raw(raw.copy(), lut, 7.0), ranks.median(lut[raw], 7.0))
        np.testing.assert_array_equal(ranks.median(lut[raw], 7.0), median_composite(lut[raw], ok, 7.0))


def test_scene_outside_a_tiles_footprint_does_not_leak_into_it(synthetic_catalog, inner_tiles, tmp_path):
    """An item whose footprint misses a tile (but whose raster has pixels there) is not part of
    that tile's composite in a block read, exactly as in a single-tile read."""
    import copy

    import pystac
    import shapely.geometry

    from .conftest import earth_search_items

    items, _ = earth_search_items(synthetic_catalog)
    far, near = inner_tiles.iloc[0], inner_tiles.iloc[-1]
    shrunk = copy.deepcopy(items[1])
    shrunk["geometry"] = shapely.geometry.mapping(near.geometry.buffer(-1e-5))
    shrunk["bbox"] = list(near.geometry.bounds)
    cat = pystac.Catalog(id="c", description="t")
    coll = pystac.Collection(id="s2", description="t", extent=pystac.Extent(
        pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])))
    cat.add_child(coll)
    for d in [items[0], shrunk, items[2]]:
        coll.add_item(pystac.Item.from_dict(d))
    cat.normalize_hrefs(str(tmp_path))
    cat.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
    path = tmp_path / "catalog.json"
    tiles = inner_tiles.iloc[[0, len(inner_tiles) - 1]]
    kw = dict(s2_collection="s2", s1_collection=None, cloudy_pct=None, max_workers=1)
    together = {p.tile_id: p for p in LocalStacProvider(path, **kw).fetch_patches(
        tiles, START, END, "s2", bands=["B4", "B5"])}
    alone = {p.tile_id: p for p in LocalStacProvider(path, max_block_px=1, **kw).fetch_patches(
        tiles, START, END, "s2", bands=["B4", "B5"])}
    assert shrunk["id"] not in together[far.tile_id].meta["scene_ids"]
    assert shrunk["id"] in together[near.tile_id].meta["scene_ids"]
    for tid in together:
        np.testing.assert_array_equal(together[tid].data, alone[tid].data)
        np.testing.assert_array_equal(together[tid].valid, alone[tid].valid)
        assert together[tid].meta["valid_obs_mean"] == alone[tid].meta["valid_obs_mean"]
