"""Benchmark GEEProvider against the Earth Engine REST stand-in (no Earth Engine, no internet).

    python benchmarks/bench_gee.py                 # 1,000 tiles, 224 px, 12 bands, defaults
    python benchmarks/bench_gee.py --latency-s 2   # simulate Earth Engine compute time

The stand-in runs in its own process (``rs_embed_pipeline_tests/providers/ee_standin.py``) so
that its numpy work does not share the provider's GIL. The provider runs at its default
settings (40 concurrent requests, 100 requests/s, 48 MiB per request, high-volume semantics),
fetching a 40 x 25 block of adjacent tiles. The stand-in computes nothing like Earth Engine:
with ``--latency-s 0`` the figures measure the client (request packing, ee serialisation, HTTP, NPY
decoding, tile cutting) plus the stand-in's synthetic pixels; ``--latency-s`` adds a fixed
server time per request to show how batching and concurrency hide Earth Engine latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rs_embed_pipeline.providers.gee import EE_MAX_REQUEST_BYTES, GEEProvider  # noqa: E402
from rs_embed_pipeline_tests.providers import ee_standin  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiles", type=int, default=1000, help="tiles (a block 40 tiles wide)")
    p.add_argument("--size-px", type=int, default=224)
    p.add_argument("--bands", type=int, default=12, help="first N Sentinel-2 bands")
    p.add_argument("--latency-s", type=float, default=0.0, help="stand-in time per request")
    p.add_argument("--images", type=int, default=1, help="scenes per tile in the window")
    p.add_argument("--composite", default="median")
    args = p.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-m", "rs_embed_pipeline_tests.providers.ee_standin", "--port", "0",
         "--latency-s", str(args.latency_s), "--images", str(args.images)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = server.stdout.readline().strip()
        if not line.startswith("READY "):
            raise SystemExit(f"stand-in did not start: {line!r}")
        url = line.split(" ", 1)[1]
        ee_standin.patch_ee_offline()

        width = 40
        rows = ee_standin.tile_rows(width, -(-args.tiles // width), size_px=args.size_px)[: args.tiles]
        bands = list(ee_standin.S2_BANDS[: args.bands])
        provider = GEEProvider(project="bench-project", api_url=url, credentials="anonymous")
        # initialise the client (discovery, algorithm list) outside the timing
        list(provider.fetch_patches(rows[:1], "2024-01-01", "2024-04-01", "s2", bands=bands))
        provider.reset_stats()

        statuses: dict[str, int] = {}
        first_s = None
        t0 = time.perf_counter()
        for patch in provider.fetch_patches(rows, "2024-01-01", "2024-04-01", "s2", bands=bands,
                                            composite=args.composite):
            statuses[patch.status] = statuses.get(patch.status, 0) + 1
            if first_s is None:
                first_s = time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        st = provider.stats()
        with urllib.request.urlopen(f"{url}/_standin/stats") as resp:
            server_stats = json.load(resp)

        n = len(rows)
        print(f"GEEProvider vs stand-in: {n} tiles x {args.size_px} px x {len(bands)} bands, "
              f"composite {args.composite}, stand-in latency {args.latency_s} s/request, "
              f"{os.cpu_count()} CPU(s)")
        print(f"  tiles/s            {n / elapsed:10.1f}   ({elapsed:.2f} s; first tile after {first_s:.2f} s)")
        print(f"  tiles by status    {statuses}")
        print(f"  requests           {st['requests']:10d}   (scene queries {st['value_requests']}, "
              f"pixel requests {st['pixel_requests']})")
        print(f"  requests per tile  {st['requests'] / n:10.3f}   "
              f"(tiles per pixel request {n / max(1, st['pixel_requests']):.1f})")
        print(f"  bytes              {st['bytes']:10d}   ({st['bytes'] / 1e6:.1f} MB NPY, "
              f"{st['bytes'] / max(1, st['pixel_requests']) / 2**20:.1f} MiB per pixel request)")
        print(f"  size errors (400)  {server_stats['size_errors']:10d}   (must be 0; the stand-in counts as Earth "
              f"Engine: pixels x sum over bands of (bytes + 1); largest request "
              f"{server_stats['max_request_bytes']} <= {EE_MAX_REQUEST_BYTES} bytes)")
        print(f"  retries            {st['retries']:10d}   (429: {st['throttled']}, 5xx: "
              f"{st['server_errors']}, too large: {st['too_large']}, failures: {st['failures']})")
        print(f"  in flight (max)    {st['max_in_flight']:10d}   (server saw {server_stats['max_in_flight']}); "
              f"rate-limit wait {st['rate_limit_wait_s']:.2f} s")
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
