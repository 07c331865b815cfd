"""Benchmark GEEProvider against the Earth Engine REST stand-in (no Earth Engine, no internet).

    python benchmarks/bench_gee.py                 # 1,000 tiles, 224 px, 12 bands, defaults
    python benchmarks/bench_gee.py --latency-s 2   # simulate Earth Engine compute time
    python benchmarks/bench_gee.py --payload-only --latency-s 2 --tiles 10000   # the client's ceiling

The stand-in runs in its own process (``rs_embed_pipeline_tests/providers/ee_standin.py``) so
that its numpy work does not share the provider's GIL. The provider runs at its default
settings (40 concurrent requests, 100 requests/s, 48 MiB per request, high-volume semantics),
fetching a 40 x 25 block of adjacent tiles. The stand-in computes nothing like Earth Engine:
with ``--latency-s 0`` the figures measure the client (request packing, ee serialisation, HTTP, NPY
decoding, tile cutting) plus the stand-in's synthetic pixels; ``--latency-s`` adds a fixed
server time per request to show how batching and concurrency hide Earth Engine latency.

``--payload-only`` makes the stand-in serve one precomputed NPY payload per grid shape (right
size and dtype, no per-request numpy work), so that at ``--latency-s 2`` the figure is the
client's: tiles/s is reported against the ceiling ``min(concurrency / latency, rate limit) x
tiles per pixel request``, and the client's CPU seconds per tile (this process, every thread:
request packing, HTTP, NPY decode, tile cutting) is the cost an Earth Engine build pays on its
fetch pods.
Steady state is the rate between the 10th and the 90th percentile tile (ramp-up and tail out).

``--cases`` runs several provider configurations one after the other against the same stand-in
process (default ``ee:block,rest:partition``: the earlier path -- ee.data.computePixels, one scene
query per block -- then the current one), so old and new are measured in one run; the stand-in's
own CPU seconds per tile are printed too (on 2 cores it shares the machine with the client).
A case ``transport:scene_query@REV`` runs the provider of git revision ``REV`` (this repository's
``git archive`` in a temporary directory, in its own process) against the same stand-in, e.g.
``--cases rest:partition@14dee88,rest:partition``: an earlier client and today's in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rs_embed_pipeline.providers.gee import EE_MAX_REQUEST_BYTES, GEEProvider  # noqa: E402
from rs_embed_pipeline_tests.providers import ee_standin  # noqa: E402


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(args: argparse.Namespace, url: str, server_pid: int, transport: str, scene_query: str) -> None:
    """One fetch of the benchmark's tiles with one provider configuration; prints its figures."""
    width = 40
    rows = ee_standin.tile_rows(width, -(-args.tiles // width), size_px=args.size_px)[: args.tiles]
    bands = list(ee_standin.S2_BANDS[: args.bands])
    provider = GEEProvider(project="bench-project", api_url=url, credentials="anonymous",
                           max_concurrent_requests=args.concurrency,
                           max_requests_per_second=args.rate,
                           pixel_transport=transport, scene_query=scene_query)
    # initialise the client (discovery, algorithm list) outside the timing
    list(provider.fetch_patches(rows[:1], "2024-01-01", "2024-04-01", "s2", bands=bands))
    provider.reset_stats()

    statuses: dict[str, int] = {}
    done_at: list[float] = []
    server_cpu0 = _cpu_s(server_pid)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for patch in provider.fetch_patches(rows, "2024-01-01", "2024-04-01", "s2", bands=bands,
                                        composite=args.composite):
        statuses[patch.status] = statuses.get(patch.status, 0) + 1
        done_at.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    server_cpu = _cpu_s(server_pid) - server_cpu0
    first_s = done_at[0] if done_at else float("nan")
    st = provider.stats()
    with urllib.request.urlopen(f"{url}/_standin/stats") as resp:
        server_stats = json.load(resp)

    n = len(rows)
    lo, hi = int(0.1 * n), max(int(0.9 * n) - 1, int(0.1 * n) + 1)
    steady = (hi - lo) / max(done_at[hi] - done_at[lo], 1e-9) if len(done_at) > hi else float("nan")
    tiles_per_pixel_request = n / max(1, st["pixel_requests"])
    ceiling = (min(args.concurrency / args.latency_s, args.rate) if args.latency_s > 0 else args.rate)
    ceiling_tiles = ceiling * tiles_per_pixel_request
    print(f"[pixel_transport={transport}, scene_query={scene_query}] {n} tiles x {args.size_px} px x "
          f"{len(bands)} bands, composite {args.composite}, stand-in latency {args.latency_s} s/request"
          f"{' (payload-only)' if args.payload_only else ''}, {args.concurrency} concurrent, "
          f"{args.rate:g} req/s, {os.cpu_count()} CPU(s)")
    print(f"  tiles/s            {n / elapsed:10.1f}   ({elapsed:.2f} s; first tile after {first_s:.2f} s)")
    print(f"  tiles/s steady     {steady:10.1f}   (10th-90th percentile tile; ceiling "
          f"min({args.concurrency}/{args.latency_s:g} s, {args.rate:g}/s) x {tiles_per_pixel_request:.1f} "
          f"= {ceiling_tiles:.1f}: {steady / ceiling_tiles:.0%} of it)")
    print(f"  client CPU         {cpu_s / n * 1000:10.2f}   ms per tile ({cpu_s:.1f} CPU s in this process: "
          f"packing, HTTP, NPY decode, tile cutting)")
    print(f"  stand-in CPU       {server_cpu / n * 1000:10.2f}   ms per tile ({server_cpu:.1f} CPU s in its "
          f"process: evaluating, sending)")
    print(f"  tiles by status    {statuses}")
    print(f"  requests           {st['requests']:10d}   (scene queries {st['value_requests']}, "
          f"pixel requests {st['pixel_requests']})")
    print(f"  requests per tile  {st['requests'] / n:10.4f}   "
          f"(tiles per pixel request {n / max(1, st['pixel_requests']):.1f})")
    print(f"  bytes              {st['bytes']:10d}   ({st['bytes'] / 1e6:.1f} MB NPY, "
          f"{st['bytes'] / max(1, st['pixel_requests']) / 2**20:.1f} MiB per pixel request)")
    if "answer_buffers" in st:  # revisions before the reused receive buffers do not count them
        print(f"  receive buffers    {st['answer_buffers']:10d}   (allocated for {st['pixel_requests']} answers; "
              f"the others reused one)")
    print(f"  size errors (400)  {server_stats['size_errors']:10d}   (must be 0; the stand-in counts as Earth "
          f"Engine: pixels x sum over bands of (bytes + 1); largest request "
          f"{server_stats['max_request_bytes']} <= {EE_MAX_REQUEST_BYTES} bytes)")
    print(f"  retries            {st['retries']:10d}   (429: {st['throttled']}, 5xx: "
          f"{st['server_errors']}, too large: {st['too_large']}, failures: {st['failures']})")
    print(f"  in flight (max)    {st['max_in_flight']:10d}   (server saw {server_stats['max_in_flight']}); "
          f"rate-limit wait {st['rate_limit_wait_s']:.2f} s", flush=True)


def run_case_at(rev: str, args: argparse.Namespace, url: str, server_pid: int, transport: str,
                scene_query: str) -> None:
    """:func:`run_case` of the benchmark and provider of git revision ``rev``, in a subprocess
    (its own imports, its own CPU figure) against this run's stand-in."""
    with tempfile.TemporaryDirectory(prefix="bench-gee-") as tree:
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        code = (f"import argparse, sys; sys.path.insert(0, {tree!r} + '/benchmarks'); import bench_gee as b; "
                "b.ee_standin.patch_ee_offline(); "
                f"b.run_case(argparse.Namespace(**{vars(args)!r}), {url!r}, {server_pid}, {transport!r}, {scene_query!r})"
                )
        print(f"[revision {rev}]", flush=True)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=tree)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiles", type=int, default=1000, help="tiles (a block 40 tiles wide)")
    p.add_argument("--size-px", type=int, default=224)
    p.add_argument("--bands", type=int, default=12, help="first N Sentinel-2 bands")
    p.add_argument("--latency-s", type=float, default=0.0, help="stand-in time per request")
    p.add_argument("--images", type=int, default=1, help="scenes per tile in the window")
    p.add_argument("--composite", default="median")
    p.add_argument("--payload-only", action="store_true",
                   help="stand-in serves precomputed payloads (measures the client, not the stand-in)")
    p.add_argument("--concurrency", type=int, default=40, help="max_concurrent_requests")
    p.add_argument("--rate", type=float, default=100.0, help="max_requests_per_second")
    p.add_argument("--cases", default="ee:block,rest:partition",
                   help="comma-separated pixel_transport:scene_query cases, run one after the other "
                        "against the same stand-in (default: the earlier path, then the current one); "
                        "transport:scene_query@REV: the provider of git revision REV")
    args = p.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-m", "rs_embed_pipeline_tests.providers.ee_standin", "--port", "0",
         "--latency-s", str(args.latency_s), "--images", str(args.images)]
        + (["--payload-only"] if args.payload_only else []),
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = server.stdout.readline().strip() if server.stdout else ""
        if not line.startswith("READY "):
            raise SystemExit(f"stand-in did not start: {line!r}")
        url = line.split(" ", 1)[1]
        ee_standin.patch_ee_offline()
        for case in args.cases.split(","):
            case, _, rev = case.partition("@")
            transport, scene_query = case.split(":")
            if rev:
                run_case_at(rev, args, url, server.pid, transport, scene_query)
            else:
                run_case(args, url, server.pid, transport, scene_query)
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
