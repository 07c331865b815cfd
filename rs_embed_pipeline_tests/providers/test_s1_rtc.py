"""Issue #22 case 5: Planetary Computer's ``sentinel-1-rtc`` (linear gamma0, float32, nodata -32768)
read over HTTP from nginx (Range requests, as from Azure Blob) through a STAC API laid out like
Planetary Computer's: recorded as ``s1_backscatter: gamma0_rtc``, orbit filtering, same-day passes
merged first-valid-first; the planetary-computer preset's S1 is RTC; the SAS subscription key is
read once by settings and handed to the signing SDK.

Item and asset fields are Planetary Computer's (planetary-computer-tasks
datasets/sentinel-1-rtc/collection/template.json ``item_assets``; its example items' properties:
``sar:*``, ``sat:orbit_state``, ``sar:product_type`` GRD)."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from rs_embed_pipeline.providers import StacProvider
from rs_embed_pipeline.providers.catalogs import CATALOG_PRESETS, s1_backscatter


pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore:Support for class-based `config` is deprecated")]  # planetary-computer 1.0

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_CONF = """{user} worker_processes 1; daemon off; pid {w}/nginx.pid; error_log {w}/error.log;
events {{ worker_connections 64; }}
http {{ access_log {w}/access.log; client_body_temp_path {w}/t1; proxy_temp_path {w}/t2;
  fastcgi_temp_path {w}/t3; uwsgi_temp_path {w}/t4; scgi_temp_path {w}/t5;
  types {{ image/tiff tif; }} server {{ listen 127.0.0.1:{port}; root {www}; location / {{ }} }} }}
"""
# properties of a Planetary Computer sentinel-1-rtc item (its example items), per scene below
PC_PROPERTIES = {
    "sar:frequency_band": "C", "sar:center_frequency": 5.405, "sar:observation_direction": "right",
    "sar:instrument_mode": "IW", "sar:polarizations": ["VV", "VH"], "sar:product_type": "GRD",
    "sar:resolution_range": 20, "sar:resolution_azimuth": 22, "sar:pixel_spacing_range": 10,
    "sar:pixel_spacing_azimuth": 10, "sar:looks_range": 5, "sar:looks_azimuth": 1,
    "sar:looks_equivalent_number": 4.4, "sat:platform_international_designator": "2014-016A",
    "platform": "SENTINEL-1A", "constellation": "Sentinel-1", "s1:resolution": "high",
}
PC_ASSET = {"type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
            "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10}]}


@pytest.fixture
def nginx(tmp_path):
    if not Path(NGINX).exists():
        pytest.skip("nginx not installed (make system-packages: nginx-light)")
    www, work = tmp_path / "www", tmp_path / "nginx"
    www.mkdir()
    work.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # as root, nginx's workers would run as nobody, who cannot enter pytest's 0700 tmp dirs
    user = "user root;" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(_CONF.format(user=user, w=work, www=www, port=port))
    proc = subprocess.Popen([NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    (www / "ok").write_text("ok")
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/ok", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    yield www, base, work / "access.log"
    proc.terminate()
    proc.wait(10)


def _cog(src: str, dst: Path, fn) -> None:
    with rasterio.open(src) as ds:
        profile, arr = ds.profile, ds.read(1)
    profile.update(driver="GTiff", nodata=-32768.0, dtype="float32")
    tmp = dst.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as out:
        out.write(fn(arr).astype(np.float32), 1)
    rasterio.shutil.copy(tmp, dst, driver="COG")
    tmp.unlink()


@pytest.fixture
def pc_rtc(nginx, synthetic_catalog, stac_api):
    """Three PC-like RTC scenes of one day over the synthetic area: two frames of one descending
    pass (the first with no data in its lower half, the second in its upper half) and an
    ascending pass; COGs behind nginx, items behind a STAC API."""
    import pystac

    www, base, log = nginx
    src = next(iter(pystac.Catalog.from_file(str(synthetic_catalog)).get_child("synthetic-s1-grd").get_items()))
    src.make_asset_hrefs_absolute()
    day = "2024-01-05"
    scenes = [("S1A_IW_GRDH_1SDV_20240105T052010_20240105T052035_051970_0647A1_rtc", f"{day}T05:20:10Z",
               "descending", lambda a, h: np.where(np.arange(a.shape[0])[:, None] < h, a * 1.25, -32768)),
              ("S1A_IW_GRDH_1SDV_20240105T052035_20240105T052100_051970_0647A1_rtc", f"{day}T05:20:35Z",
               "descending", lambda a, h: np.where(np.arange(a.shape[0])[:, None] >= h, a * 1.5, -32768)),
              ("S1A_IW_GRDH_1SDV_20240105T165012_20240105T165037_051977_0647E0_rtc", f"{day}T16:50:12Z",
               "ascending", lambda a, h: a * 2.0)]
    items = []
    for sid, when, orbit, fn in scenes:
        d = src.to_dict(include_self_link=False, transform_hrefs=False)
        d.update(id=sid, collection="sentinel-1-rtc", links=[], stac_version="1.0.0")
        d["properties"] = {**PC_PROPERTIES, "datetime": when, "sat:orbit_state": orbit,
                           "proj:epsg": int(str(src.properties.get("proj:code") or src.properties["proj:epsg"]).split(":")[-1])}
        d["stac_extensions"] = ["https://stac-extensions.github.io/sar/v1.0.0/schema.json",
                                "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"]
        assets = {}
        for key in ("vv", "vh"):
            with rasterio.open(d["assets"][key]["href"]) as ds:
                half = ds.height // 2
            name = f"{sid}_{key}.tif"
            _cog(d["assets"][key]["href"], www / name, lambda a, fn=fn, half=half: fn(a, half))
            assets[key] = {**copy.deepcopy(PC_ASSET), "href": f"{base}/{name}",
                           "title": f"{key.upper()}: terrain-corrected gamma naught"}
        d["assets"] = assets
        items.append(d)
    coll = {"type": "Collection", "id": "sentinel-1-rtc", "stac_version": "1.0.0", "description": "test copy",
            "license": "CC-BY-4.0", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                       "temporal": {"interval": [["2014-10-10T00:28:21Z", None]]}}}
    api = stac_api(items, [coll])
    return api, items, www, log, (day, "2024-01-06")


def _native(www: Path, item: dict, key: str, tile) -> np.ndarray:
    with rasterio.open(www / Path(item["assets"][key]["href"]).name) as ds:
        T = tile.size_px * tile.scale_m
        win = rasterio.windows.from_bounds(tile.x0, tile.y0 - T, tile.x0 + T, tile.y0, ds.transform)
        return ds.read(1, window=win.round_offsets().round_lengths())


def test_rtc_gamma0_over_http_orbits_and_same_day_passes(pc_rtc, inner_tiles):
    api, items, www, log, (s, e) = pc_rtc
    prov = StacProvider(api_url=api.url, collection=None, s1_collection="sentinel-1-rtc", max_workers=2)
    tiles = inner_tiles
    desc = {p.tile_id: p for p in prov.fetch_patches(tiles, s, e, "s1", orbit="DESCENDING", composite="mosaic")}
    assert api.searches[-1]["query"] == {"sat:orbit_state": {"eq": "descending"}}
    assert any(".tif" in line for line in log.read_text().splitlines())  # read over HTTP
    for _, t in tiles.iterrows():
        p = desc[t["tile_id"]]
        assert p.status == "ok" and p.valid.all()  # -32768 is nodata, never a value
        assert p.meta["s1_backscatter"] == "gamma0_rtc" and p.meta["s1_source_units"] == "linear gamma0 (RTC)"
        assert p.meta["image_count"] == 2 and p.meta["n_dates"] == 1  # one pass, two frames: one plane
        assert p.meta["harmonization"][0]["bands"]["VV"]["nodata"] == -32768.0
        # each pixel from the first frame that has data there (time order), exact float32
        for b, key in enumerate(("vv", "vh")):
            first, second = _native(www, items[0], key, t), _native(www, items[1], key, t)
            want = np.where(first != -32768, first, second)
            np.testing.assert_array_equal(p.data[b], want)
    asc = {p.tile_id: p for p in prov.fetch_patches(tiles, s, e, "s1", orbit="ASCENDING")}
    for _, t in tiles.iterrows():
        p = asc[t["tile_id"]]
        assert p.meta["scene_ids"] == [items[2]["id"]] and p.meta["orbit"] == "ASCENDING"
        np.testing.assert_array_equal(p.data[0], _native(www, items[2], "vv", t))
    both = next(iter(prov.fetch_patches(tiles.iloc[:1], s, e, "s1")))
    assert both.meta["image_count"] == 3 and both.meta["n_dates"] == 1  # one solar day: first valid wins
    assert prov.describe()["collections"]["s1"]["s1_backscatter"] == "gamma0_rtc"


def test_units_presets_and_subscription_key(monkeypatch):
    assert s1_backscatter("sentinel-1-rtc") == "gamma0_rtc"
    assert s1_backscatter("synthetic-s1-grd") == "sigma0"
    assert CATALOG_PRESETS["planetary-computer"]["s1_collection"] == "sentinel-1-rtc"  # TerraFM's RTC
    assert CATALOG_PRESETS["earth-search-c1"]["s1_collection"] is None

    class RTCItem:
        id, properties = "x", {"sar:product_type": "RTC"}
    from rs_embed_pipeline.providers.catalogs import check_s1_collection
    with pytest.raises(ValueError, match=r"item x of S1 collection 'my-sigma0' holds radiometrically terrain-"
                                         r"corrected gamma0 \(sar:product_type RTC\) in a sigma0 collection"):
        check_s1_collection("my-sigma0", RTCItem())

    import planetary_computer.settings as pcs

    from rs_embed_pipeline.orchestration.definitions import resources_for
    from rs_embed_pipeline.orchestration.settings import Settings

    before = pcs.Settings.get().subscription_key
    try:
        settings = Settings.from_env({"PC_SDK_SUBSCRIPTION_KEY": " key-123 "})
        assert settings.pc_subscription_key == "key-123"
        assert Settings.from_env({}).pc_subscription_key is None
        resources = resources_for(settings)
        assert pcs.Settings.get().subscription_key == "key-123"  # handed to the SDK's token requests
        assert "key-123" not in repr(resources["imagery"])  # never in a resource's config
    finally:
        pcs.Settings.get().subscription_key = before
