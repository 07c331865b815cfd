"""Fetch speed of the STAC providers on the local synthetic catalog, as a ratio to the pure decode.

    .venv/bin/python benchmarks/bench_fetch.py                    # ~7 x 7 km, one quarter, 12 bands
    .venv/bin/python benchmarks/bench_fetch.py --km 3 --workdir /tmp/bench_fetch

What it measures, in one run on one machine:

* **fetch**: ``LocalStacProvider.fetch_patches`` for every tile of the region at both model tile
  sizes (224 px TerraFM, 288 px THOR) in ONE call, 12 S2 bands, median composite, one thread
  (``max_workers=1``), then again at the default workers (4): ms per tile and tiles/s.
* **decode** (the baseline): windowed rasterio reads of every asset the fetch reads (12 bands +
  SCL) of every scene it used, each once, over the region covered by the tiles (at the assets'
  native resolution), on one thread: the least any fetch of these pixels can cost.
* the ratio fetch / decode (target <= 4x) and how many tiles each size has.

The synthetic catalog (``rs_embed_pipeline.providers.local_catalogs.synthetic``: per-band COGs, uint16, 256 px
internal tiles, DEFLATE, 10 / 20 / 60 m bands) is generated once under ``--workdir``.

    .venv/bin/python benchmarks/bench_fetch.py --http             # ~9 x 9 km over HTTP
    .venv/bin/python benchmarks/bench_fetch.py --http --gdal GDAL_NUM_THREADS=ALL_CPUS \
        --gdal GDAL_HTTP_MULTIRANGE=PARALLEL                        # the GDAL settings before

**--http**: the synthetic scenes re-encoded like Earth Search C1 (one COG per band, uint16, 1024 px
internal tiles, DEFLATE, overviews, 10 / 20 / 60 m), served with Range support by nginx (Debian
``nginx-light``, started and stopped by the script on a free 127.0.0.1 port; its access log counts
requests and body bytes), items from a small STAC API over HTTP (the tests' ``StacApiServer``:
landing page, conformance, ``/search`` with bbox / datetime / query / paging, as pystac-client
calls it; not pgstac: the API answers one search per fetch and none of the figures below, which
count only the COG requests nginx served, depend on how the API stores its items);
``StacProvider`` fetches every tile of the region at both sizes in one call, in a fresh process per
run (cold GDAL cache). Printed: ms per tile on one thread, tiles/s at the default workers, HTTP
requests and bytes, each as a ratio to the minimum for the region (every internal COG tile that
intersects it once plus the header of each file; one request per row of such tiles plus one for
the header) and to the bytes the tiles need at native resolution (uncompressed).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START, END = "2024-01-01", "2024-04-01"
LON, LAT = 14.90, 45.00  # UTM 33N


def _bbox(km: float) -> tuple[float, float, float, float]:
    dlat = km / 111.32
    dlon = km / (111.32 * math.cos(math.radians(LAT)))
    return (LON, LAT, LON + dlon, LAT + dlat)


def _decode(items_by_id, keys, bounds) -> tuple[float, int]:
    """Seconds and pixels of windowed reads of ``keys`` of every item over ``bounds`` (UTM)."""
    import rasterio
    from rasterio.windows import from_bounds

    t0 = time.perf_counter()
    pixels = 0
    for item in items_by_id.values():
        for k in keys:
            with rasterio.open(item.assets[k].href) as src:
                win = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
                arr = src.read(1, window=win, boundless=False)
                pixels += arr.size
    return time.perf_counter() - t0, pixels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--km", type=float, default=7.0, help="region side (km)")
    p.add_argument("--workdir", default="/tmp/rs_embed_bench_fetch")
    p.add_argument("--revisit-days", type=int, default=10, help="S2 revisit of the synthetic catalog")
    p.add_argument("--workers", type=int, default=4, help="default-workers run")
    p.add_argument("--repeat", type=int, default=3, help="best of N for each timing")
    args = p.parse_args()

    import pandas as pd
    import pystac

    from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
    from rs_embed_pipeline.providers import S2_BANDS, LocalStacProvider
    from rs_embed_pipeline.providers.stac import EARTH_SEARCH_S2_ASSETS
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    bbox = _bbox(args.km)
    work = Path(args.workdir) / f"km{args.km:g}_r{args.revisit_days}"
    catalog = work / "catalog.json"
    if not catalog.exists():
        t = time.perf_counter()
        generate_synthetic_catalog(work, bbox, START, END, seed=0, s2_revisit_days=args.revisit_days,
                                   s1=False, pad_m=600.0)
        print(f"generated the synthetic catalog in {time.perf_counter() - t:.1f} s: {catalog}")
    aoi = bbox_aoi(*bbox)
    tiles = pd.concat([build_tile_grid(aoi, 224, 10.0), build_tile_grid(aoi, 288, 10.0)], ignore_index=True)
    n = len(tiles)
    counts = tiles["size_px"].value_counts().sort_index().to_dict()

    def fetch(workers: int) -> tuple[float, dict]:
        prov = LocalStacProvider(catalog, max_workers=workers)
        t0 = time.perf_counter()
        got = {q.tile_id: q for q in prov.fetch_patches(tiles, START, END, "s2", bands=list(S2_BANDS))}
        return time.perf_counter() - t0, got

    _, patches = fetch(1)  # warm-up: imports, catalog parse, GDAL, page cache
    statuses: dict[str, int] = {}
    for q in patches.values():
        statuses[q.status] = statuses.get(q.status, 0) + 1

    # baseline: the scenes the fetch used, every asset once, over the tiles' extent
    cat = pystac.read_file(str(catalog))
    items = {}
    for it in cat.get_items(recursive=True):
        it.make_asset_hrefs_absolute()
        items[it.id] = it
    used = {sid for q in patches.values() for sid in q.meta.get("scene_ids", [])}
    used_items = {i: items[i] for i in sorted(used)}
    T = tiles["size_px"] * tiles["scale_m"]
    bounds = (float(tiles["x0"].min()), float((tiles["y0"] - T).min()),
              float((tiles["x0"] + T).max()), float(tiles["y0"].max()))
    keys = [EARTH_SEARCH_S2_ASSETS[b] for b in S2_BANDS] + ["scl"]
    _decode(used_items, keys, bounds)  # warm-up, as for the fetch
    # interleaved, best of N each: a shared machine's noise hits both alike
    decode_s, one, many = math.inf, math.inf, math.inf
    for _ in range(args.repeat):
        d, decode_px = _decode(used_items, keys, bounds)
        decode_s = min(decode_s, d)
        one = min(one, fetch(1)[0])
        many = min(many, fetch(args.workers)[0])

    print(f"bench_fetch: synthetic catalog, {args.km:g} x {args.km:g} km, {START}..{END} "
          f"({len(used_items)} scenes used), 12 S2 bands, median; {platform.machine()}, "
          f"{os.cpu_count()} CPU(s)")
    print(f"  tiles                 {n} in one fetch ({', '.join(f'{c} x {s} px' for s, c in counts.items())}); "
          f"status {statuses}")
    print(f"  decode baseline       {decode_s * 1e3:8.0f} ms  ({len(used_items)} scenes x {len(keys)} assets, "
          f"{decode_px / 1e6:.1f} M native pixels, windowed rasterio reads, one thread)")
    print(f"  fetch, 1 thread       {one * 1e3:8.0f} ms  = {one / n * 1e3:6.1f} ms per tile, "
          f"{one / decode_s:5.2f} x the decode")
    print(f"  fetch, {args.workers} workers     {many * 1e3:8.0f} ms  = {n / many:6.1f} tiles/s, "
          f"{many / decode_s:5.2f} x the decode")


# --------------------------------------------------------------------------------------------
# the HTTP archive: per-band COGs like Earth Search C1 behind nginx, items from a STAC API
# --------------------------------------------------------------------------------------------

_NGINX_CONF = """
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx_error.log;
events {{ worker_connections 512; }}
http {{
    log_format rsbench '$request_uri $status $body_bytes_sent "$http_range"';
    access_log {work}/access.log rsbench;
    client_body_temp_path {work}/tmp_body;
    proxy_temp_path {work}/tmp_proxy;
    fastcgi_temp_path {work}/tmp_fcgi;
    uwsgi_temp_path {work}/tmp_uwsgi;
    scgi_temp_path {work}/tmp_scgi;
    default_type application/octet-stream;
    types {{ image/tiff tif; }}
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{ }}
    }}
}}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _build_archive(work: Path, km: float) -> Path:
    """Synthetic S2 scenes re-encoded like Earth Search C1: one COG per band, uint16, 1024 px
    internal tiles, DEFLATE, overviews, 10 / 20 / 60 m; returns the served folder."""
    import rasterio.shutil

    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    www = work / "www"
    if (www / "done").exists():
        return www
    src = work / "src"
    # revisit 30 days: 3 acquisitions in the quarter
    generate_synthetic_catalog(src, _bbox(km), START, END, seed=1, s2_revisit_days=30, s1=False, pad_m=3000.0)
    for tif in sorted(src.rglob("*.tif")):
        out = www / tif.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        rasterio.shutil.copy(str(tif), str(out), driver="COG", blocksize=1024, compress="DEFLATE",
                             predictor=2, overviews="AUTO", resampling="AVERAGE")
    (www / "done").write_text("ok")
    return www


def _cog_minimum(path: str, bounds) -> dict[str, int]:
    """The least an archive read of ``bounds`` costs in one COG: its header (everything before
    the first tile's data), every internal tile intersecting the bounds once, one request per
    row of such tiles (consecutive tiles of a row merge) plus one for the header; and the bytes
    of those pixels uncompressed at native resolution."""
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(path) as src:
        bw, bh = src.block_shapes[0][1], src.block_shapes[0][0]
        win = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        c0, r0 = max(int(win.col_off), 0), max(int(win.row_off), 0)
        c1 = min(int(win.col_off + win.width), src.width)
        r1 = min(int(win.row_off + win.height), src.height)
        first = []
        for level in range(len(src.overviews(1)) + 1):
            with rasterio.open(path, overview_level=level - 1) if level else rasterio.open(path) as lv:
                first.append(int(lv.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)))
        tiles = 0
        nbytes = min(first)
        rows = range(r0 // bh, (r1 - 1) // bh + 1)
        cols = range(c0 // bw, (c1 - 1) // bw + 1)
        for by in rows:
            for bx in cols:
                nbytes += int(src.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
                tiles += 1
        native = (c1 - c0) * (r1 - r0) * np.dtype(src.dtypes[0]).itemsize
    return {"bytes": nbytes, "requests": 1 + len(rows), "tiles": tiles, "native_bytes": native}


def _http_child(args) -> None:
    """One fetch in a fresh process (cold GDAL cache): prints JSON timings and scene ids."""
    import json

    import pandas as pd

    from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
    from rs_embed_pipeline.providers import S2_BANDS, StacProvider

    aoi = bbox_aoi(*_bbox(args.km))
    tiles = pd.concat([build_tile_grid(aoi, 224, 10.0), build_tile_grid(aoi, 288, 10.0)], ignore_index=True)
    overrides = dict(kv.split("=", 1) for kv in args.gdal)
    prov = StacProvider(api_url=args.http_child, max_workers=args.workers, cloudy_pct=None, rio_config=overrides)
    t0 = time.perf_counter()
    got = list(prov.fetch_patches(tiles, START, END, "s2", bands=list(S2_BANDS)))
    elapsed = time.perf_counter() - t0
    print("RESULT " + json.dumps({
        "elapsed_s": elapsed, "tiles": len(tiles), "statuses": [q.status for q in got],
        "scene_ids": sorted({i for q in got for i in q.meta.get("scene_ids", [])}),
        "bounds": [float(tiles["x0"].min()), float((tiles["y0"] - tiles["size_px"] * tiles["scale_m"]).min()),
                   float((tiles["x0"] + tiles["size_px"] * tiles["scale_m"]).max()), float(tiles["y0"].max())],
        "gdal": prov.stats()["config"]["gdal"],
    }))


def http_main(args) -> None:
    import json
    import shutil
    import subprocess

    from rs_embed_pipeline.providers import S2_BANDS
    from rs_embed_pipeline.providers.stac import EARTH_SEARCH_S2_ASSETS
    from rs_embed_pipeline_tests.providers.conftest import (
        StacApiServer,
        earth_search_items,
    )

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx not found: `make system-packages` installs it (Debian nginx-light)")
    work = Path(args.workdir) / f"http_km{args.km:g}"
    www = _build_archive(work, args.km)
    port = _free_port()
    for d in ("tmp_body", "tmp_proxy", "tmp_fcgi", "tmp_uwsgi", "tmp_scgi"):
        (work / d).mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(work=work, www=www, port=port))
    log_path = work / "access.log"
    server = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                import urllib.request

                urllib.request.urlopen(base + "/done", timeout=1).read()
                break
            except Exception:
                time.sleep(0.05)
        items, coll = earth_search_items(work / "src" / "catalog.json")
        for d in items:
            for a in d["assets"].values():
                a["href"] = base + "/" + str(Path(a["href"]).relative_to(work / "src"))
        with StacApiServer(items, [coll]) as api:
            def run(workers: int) -> dict:
                log_path.write_text("")  # nginx appends to the truncated file
                seen = len(api.requests)
                out = subprocess.run(
                    [sys.executable, __file__, "--km", str(args.km), "--workers", str(workers),
                     "--http-child", api.url, *(f"--gdal={kv}" for kv in args.gdal)],
                    capture_output=True, text=True, check=True)
                res = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])
                lines = [ln.split() for ln in log_path.read_text().splitlines() if ln.strip()]
                res["requests"] = sum(1 for ln in lines if ln[0].endswith(".tif"))
                # GDAL's HEAD per file (its size; 0 body bytes): counted, and shown apart
                res["heads"] = sum(1 for ln in lines if ln[0].endswith(".tif") and ln[1] == "200" and ln[2] == "0")
                res["bytes"] = sum(int(ln[2]) for ln in lines if ln[0].endswith(".tif"))
                # the STAC API answered over HTTP too (landing page, conformance, searches)
                res["api_requests"] = len(api.requests) - seen
                res["api_searches"] = sum(1 for _, path, _ in api.requests[seen:] if path == "/search")
                return res

            one = min((run(1) for _ in range(args.repeat)), key=lambda r: r["elapsed_s"])
            many = min((run(args.workers) for _ in range(args.repeat)), key=lambda r: r["elapsed_s"])
    finally:
        server.terminate()
        server.wait(timeout=10)

    keys = [EARTH_SEARCH_S2_ASSETS[b] for b in S2_BANDS] + ["scl"]
    by_id = {d["id"]: d for d in items}
    minimum = {"bytes": 0, "requests": 0, "tiles": 0, "native_bytes": 0}
    for sid in one["scene_ids"]:
        for k in keys:
            href = by_id[sid]["assets"][k]["href"].replace(base + "/", "")
            m = _cog_minimum(str(www / href), one["bounds"])
            for f in minimum:
                minimum[f] += m[f]
    n = one["tiles"]
    print(f"bench_fetch --http: StacProvider, tiny STAC API + nginx {port} serving per-band COGs "
          f"(uint16, 1024 px tiles, DEFLATE, overviews), {args.km:g} x {args.km:g} km, "
          f"{len(one['scene_ids'])} dates, 12 bands + SCL; {os.cpu_count()} CPU(s)")
    print(f"  tiles                 {n} in one fetch (224 and 288 px), {one['statuses'].count('ok')} ok")
    print(f"  STAC API              {one['api_requests']} HTTP requests to {api.url} "
          f"({one['api_searches']} item searches); COG reads from nginx below")
    print(f"  fetch, 1 thread       {one['elapsed_s'] * 1e3:8.0f} ms = {one['elapsed_s'] / n * 1e3:.1f} ms per tile")
    print(f"  fetch, {args.workers} workers     {many['elapsed_s'] * 1e3:8.0f} ms = {n / many['elapsed_s']:.1f} tiles/s")
    print(f"  HTTP requests         {one['requests']:8d}    minimum {minimum['requests']} "
          f"(one header + one per row of COG tiles, per file): {one['requests'] / minimum['requests']:.2f} x "
          f"({one['heads']} of them GDAL's body-less HEAD per file: "
          f"{(one['requests'] - one['heads']) / minimum['requests']:.2f} x without them)")
    print(f"  bytes transferred     {one['bytes']:8d}    minimum {minimum['bytes']} (header + every "
          f"intersecting COG tile once): {one['bytes'] / minimum['bytes']:.2f} x; "
          f"{one['bytes'] / minimum['native_bytes']:.2f} x the tiles' pixels at native resolution "
          f"({minimum['native_bytes']} B uncompressed)")


if __name__ == "__main__":
    if "--http-child" in sys.argv or "--http" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--http", action="store_true")
        ap.add_argument("--http-child", default=None)
        ap.add_argument("--km", type=float, default=9.0)
        ap.add_argument("--workdir", default="/tmp/rs_embed_bench_fetch")
        ap.add_argument("--workers", type=int, default=4)
        ap.add_argument("--repeat", type=int, default=1)
        ap.add_argument("--gdal", action="append", default=[], metavar="KEY=VALUE",
                        help="GDAL option over providers/gdal_env.py, e.g. --gdal GDAL_NUM_THREADS=ALL_CPUS")
        a = ap.parse_args()
        _http_child(a) if a.http_child else http_main(a)
    else:
        main()
