"""COG block size for wide embeddings: one 256 px block (baseline) vs the band-count rule
(:func:`rs_embed_pipeline.products.cog.block_size_for`, 64 px for 768 features).

    .venv/bin/python benchmarks/bench_cog_blocks.py                 # 128 x 128 cells x 768 features
    .venv/bin/python benchmarks/bench_cog_blocks.py --size 96 --features 256

Writes the same random float32 feature map (cells unit-length, as embeddings often are) as two COGs
and prints, per block size: file bytes, write time, the time to read one cell's vector (a point
query) and three bands of a 64 x 64 window (a GIS preview), each with its ratio to the baseline.
Reads open the file anew each time so GDAL's block cache does not hide the decompression cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import rasterio
from rasterio.windows import Window

from rs_embed_pipeline.products import cog


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="cells per side")
    ap.add_argument("--features", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(args.size, args.size, args.features)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.size} x {args.size} cells x "
          f"{args.features} float32 features ({feats.nbytes / 2**20:.0f} MiB raw)")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, block in (("baseline 256 px", 256), (f"rule {cog.block_size_for(args.features)} px", None)):
            path = os.path.join(tmp, f"{block}.tif")
            t0 = time.perf_counter()
            info = cog.write_cog(path, feats, epsg=32632, left=300000.0, top=5200000.0, cell_m=160.0,
                                 block_size=block)
            write_s = time.perf_counter() - t0
            c = args.size // 2

            def point(path=path, c=c):
                with rasterio.open(path) as src:
                    return src.read(window=Window(c, c, 1, 1))

            def preview(path=path):
                with rasterio.open(path) as src:
                    return src.read([1, 2, 3], window=Window(0, 0, 64, 64))

            rows[label] = (info["block_size"], info["bytes"], write_s, _best(point, args.repeat),
                           _best(preview, args.repeat))
    base = next(iter(rows.values()))
    for label, (block, size, write_s, point_s, preview_s) in rows.items():
        print(f"{label:>16}: block {block:>3} px, {size / 2**20:6.1f} MiB ({size / base[1]:.2f}x), "
              f"write {write_s:6.2f} s ({write_s / base[2]:.2f}x), point vector {point_s * 1e3:7.1f} ms "
              f"({point_s / base[3]:.2f}x), 3-band 64 px preview {preview_s * 1e3:7.1f} ms "
              f"({preview_s / base[4]:.2f}x)")


if __name__ == "__main__":
    main()
