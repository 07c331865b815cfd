"""StacProvider against a STAC API served on 127.0.0.1 (see conftest.StacApiServer)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from rs_embed_pipeline.providers import LocalStacProvider, ProviderError, StacProvider

from .conftest import static_catalog

# a spurious cross-thread NotGeoreferencedWarning from rasterio.warp (results are checked exactly);
# affine's and shapely's deprecations inside odc-geo / rasterio: pyproject.toml filterwarnings
pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]

START, END = "2024-01-01", "2024-04-01"


def _read_window(href, row):
    T = row.size_px * row.scale_m
    with rasterio.open(href) as src:
        win = from_bounds(row.x0, row.y0 - T, row.x0 + T, row.y0, src.transform)
        return src.read(1, window=win.round_offsets().round_lengths()).astype(np.float64)


def _clear_item(items):
    clear = sorted(
        (d for d in items if d["properties"]["eo:cloud_cover"] == 0),
        key=lambda d: d["properties"]["datetime"],
    )
    return clear[0]


def _day_window(item_dict):
    day = item_dict["properties"]["datetime"][:10]
    y, m, d = (int(v) for v in day.split("-"))
    import datetime as dt

    nxt = dt.date(y, m, d) + dt.timedelta(days=1)
    return day, nxt.isoformat()


def test_search_and_harmonization(stac_api, es_items, inner_tiles, tmp_path):
    items, coll = es_items()
    api = stac_api(items, [coll])
    prov = StacProvider(api_url=api.url, max_workers=2, page_size=2)
    tiles = inner_tiles.iloc[:3]
    patches = list(
        prov.fetch_patches(
            tiles, START, END, "s2", bands=["B4", "B2", "B11"], cloudy_pct=25, composite="median"
        )
    )
    assert sorted(p.tile_id for p in patches) == sorted(tiles["tile_id"])
    assert all(p.status == "ok" and p.data.shape == (3, 32, 32) for p in patches)

    # the request the server saw: POST /search with collections, bbox, end-exclusive datetime
    # and the cloud-cover query; pagination (page_size=2) followed the "next" token
    searches = api.searches
    assert searches, api.requests
    first = searches[0]
    assert first["collections"] == ["sentinel-2-c1-l2a"]
    assert first["query"] == {"eo:cloud_cover": {"lte": 25.0}}
    assert first["datetime"] == "2024-01-01T00:00:00Z/2024-03-31T23:59:59.999999Z"
    b = first["bbox"]
    fp = tiles.geometry.total_bounds
    assert b[0] <= fp[0] and b[1] <= fp[1] and b[2] >= fp[2] and b[3] >= fp[3]
    assert any("token" in s for s in searches)
    assert any(m == "GET" and path == "/" for m, path, _ in api.requests)

    meta = patches[0].meta
    kept = [d["id"] for d in items if d["properties"]["eo:cloud_cover"] <= 25]
    assert sorted(meta["scene_ids"]) == sorted(kept) and meta["image_count"] == len(kept)
    assert meta["provider"] == "stac" and meta["collection"] == "sentinel-2-c1-l2a"
    assert meta["cloudy_pct"] == 25.0 and meta["synthetic"] is False
    assert meta["assets"] == ["red", "blue", "swir16"]
    assert meta["harmonization"][0]["bands"]["B4"]["offset"] == -0.1

    # the same pixels through the static catalog: identical numbers (one shared path)
    local = {
        p.tile_id: p
        for p in LocalStacProvider(
            static_catalog(items, tmp_path),
            s2_collection="sentinel-2-c1-l2a",
            max_workers=1,
        ).fetch_patches(tiles, START, END, "s2", bands=["B4", "B2", "B11"], cloudy_pct=25)
    }
    for p in patches:
        np.testing.assert_array_equal(p.data, local[p.tile_id].data)
        np.testing.assert_array_equal(p.valid, local[p.tile_id].valid)


@pytest.mark.parametrize("offset", [-0.1, 0.0, -0.05])
def test_offset_read_from_each_item(stac_api, es_items, inner_tiles, offset):
    # the pixels are the same; only raster:bands offset differs -> (DN*scale+offset)*10000
    items, coll = es_items(offset=offset)
    api = stac_api(items, [coll])
    prov = StacProvider(api_url=api.url, max_workers=1)
    item = _clear_item(items)
    s, e = _day_window(item)
    row = inner_tiles.iloc[0]
    (p,) = prov.fetch_patches(
        inner_tiles.iloc[:1], s, e, "s2", bands=["B2", "B8"], composite="mosaic"
    )
    assert p.status == "ok" and p.meta["scene_ids"] == [item["id"]]
    for i, key in enumerate(["blue", "nir"]):
        raw = _read_window(item["assets"][key]["href"], row)
        expected = (raw * 0.0001 + offset) * 10000
        np.testing.assert_allclose(p.data[i], expected, atol=0.01)
    assert api.searches[0]["datetime"].startswith(s)


def test_mixed_baselines_in_one_window(stac_api, es_items, inner_tiles):
    # half the items say offset -0.1, the others 0 (older baseline): each is harmonised alone
    items, coll = es_items()
    old, _ = es_items(offset=0.0)
    mixed = [old[i] if i % 2 else items[i] for i in range(len(items))]
    api = stac_api(mixed, [coll])
    prov = StacProvider(api_url=api.url, max_workers=1)
    (p,) = prov.fetch_patches(inner_tiles.iloc[:1], START, END, "s2", bands=["B2"])
    assert p.status == "ok"
    groups = p.meta["harmonization"]
    assert sorted(g["bands"]["B2"]["offset"] for g in groups) == [-0.1, 0.0]
    assert sum(len(g["items"]) for g in groups) == p.meta["image_count"]


def test_end_exclusive(stac_api, es_items, inner_tiles):
    items, coll = es_items()
    # an item exactly at the window end must not be used
    item = _clear_item(items)
    t = item["properties"]["datetime"]
    api = stac_api(items, [coll])
    prov = StacProvider(api_url=api.url, max_workers=1)
    (p,) = prov.fetch_patches(inner_tiles.iloc[:1], "2023-12-01", t, "s2", bands=["B2"])
    assert item["id"] not in p.meta["scene_ids"]


def test_no_items_and_unreachable_api(stac_api, es_items, inner_tiles):
    items, coll = es_items()
    api = stac_api(items, [coll])
    prov = StacProvider(api_url=api.url, max_workers=1)
    patches = list(prov.fetch_patches(inner_tiles.iloc[:2], "2022-01-01", "2022-04-01", "s2"))
    assert [p.status for p in patches] == ["no_data", "no_data"]

    api.fail_search = True
    prov = StacProvider(api_url=api.url, max_workers=1, search_retries=0)
    patches = list(prov.fetch_patches(inner_tiles.iloc[:2], START, END, "s2"))
    assert [p.status for p in patches] == ["failed", "failed"]
    assert "item search failed" in patches[0].meta["reason"]

    with socket.socket() as s:  # a closed port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prov = StacProvider(
        api_url=f"http://127.0.0.1:{port}", max_workers=1, search_retries=0, timeout=2
    )
    patches = list(prov.fetch_patches(inner_tiles.iloc[:1], START, END, "s2"))
    assert patches[0].status == "failed"


def test_stac_provider_validation_and_describe():
    prov = StacProvider(api_url="http://127.0.0.1:9")
    with pytest.raises(ProviderError, match="no collection configured for modality 's1'"):
        prov.fetch_patches([], START, END, "s1")
    with pytest.raises(ProviderError, match="unknown composite"):
        prov.fetch_patches([], START, END, "s2", composite="max")
    d = prov.describe()
    assert d["api_url"] == "http://127.0.0.1:9"
    assert d["collections"]["s2"]["collection"] == "sentinel-2-c1-l2a"
    assert d["collections"]["s2"]["assets"]["B8A"] == "nir08"
    assert d["collections"]["s2"]["mask_asset"] == "scl"
    assert StacProvider().api_url == "https://earth-search.aws.element84.com/v1"


def test_search_bboxes_split_at_antimeridian():
    from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
    from rs_embed_pipeline.providers.stac.items import search_bboxes as _search_bboxes

    g = build_tile_grid(bbox_aoi(179.98, -16.8, -179.98, -16.79), 32, 10)
    boxes = _search_bboxes(list(g.geometry))
    assert len(boxes) == 2
    east, west = sorted(boxes, key=lambda b: -b[0])
    assert east[0] > 179.9 and east[2] == pytest.approx(180.0)
    assert west[0] == pytest.approx(-180.0) and west[2] < -179.9
    g = build_tile_grid(bbox_aoi(14.9, 45.0, 14.91, 45.01), 32, 10)
    (b,) = _search_bboxes(list(g.geometry))
    assert b[0] < 14.9 and b[2] > 14.91
