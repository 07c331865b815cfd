"""How far a histogram median is from the exact median on the same scenes (issue #22 case 8).

The STAC providers and the Earth Engine stand-in compute the exact per-pixel median of the valid
observations (``providers/composite.py``; equal to ``np.nanmedian``). Earth Engine's
``ee.Reducer.median(maxBuckets, minBucketWidth, maxRaw)`` is documented as exact "for small
numbers of inputs (up to maxRaw)" and "derived from a histogram" beyond, with ``maxBuckets``
"rounded up to a power of 2" and bucket widths powers of 2 unless ``minBucketWidth`` is set; the
defaults are not documented (null). This script takes the synthetic catalog's Sentinel-2 scenes
(one quarter, a 5-day revisit), computes per pixel and band the exact median of the clear
observations (SCL mask, harmonized DN) and a histogram median that follows that description
(bucket width the smallest power of 2 that spans the pixel's values in ``max_buckets`` buckets,
the median interpolated linearly inside the bucket holding the middle rank), and prints the
differences in DN. It models the documented behaviour; it is not Earth Engine's code, and no
live Earth Engine answer is compared here (no network).

    .venv/bin/python benchmarks/bench_median_exactness.py [--km 1.0] [--buckets 64 256 1024]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START, END = "2024-01-01", "2024-04-01"
LON, LAT = 14.90, 45.00
BANDS = {"B2": "blue", "B4": "red", "B8": "nir", "B11": "swir16"}


def _stack(catalog: Path) -> dict[str, np.ndarray]:
    """Per band: harmonized DN [T, H, W] float64 with NaN where SCL masks or nodata."""
    import pystac
    import rasterio

    from rs_embed_pipeline.providers.catalogs import SCL_INVALID_CLASSES

    items = sorted(pystac.Catalog.from_file(str(catalog)).get_child("synthetic-s2-l2a").get_items(),
                   key=lambda it: it.datetime)
    out: dict[str, list[np.ndarray]] = {b: [] for b in BANDS}
    for it in items:
        it.make_asset_hrefs_absolute()
        with rasterio.open(it.assets["scl"].href) as ds:
            scl = ds.read(1)
        for band, key in BANDS.items():
            asset = it.assets[key]
            rb = asset.extra_fields["raster:bands"][0]
            with rasterio.open(asset.href) as ds:
                raw = ds.read(1)
                if ds.res[0] != 10:  # 20 m: nearest to 10 m, as the providers read it
                    f = int(ds.res[0] // 10)
                    raw = np.repeat(np.repeat(raw, f, 0), f, 1)
            h, w = min(raw.shape[0], scl.shape[0] * 2), min(raw.shape[1], scl.shape[1] * 2)
            s = np.repeat(np.repeat(scl, 2, 0), 2, 1)[:h, :w]
            v = np.maximum((raw[:h, :w] * rb["scale"] + rb["offset"]) * 10000, 0.0)
            v[(raw[:h, :w] == rb["nodata"]) | np.isin(s, SCL_INVALID_CLASSES)] = np.nan
            out[band].append(v)
    shape = np.min([a.shape for a in out["B2"]], axis=0)
    return {b: np.stack([a[: shape[0], : shape[1]] for a in arrs]) for b, arrs in out.items()}


def histogram_median(values: np.ndarray, max_buckets: int) -> np.ndarray:
    """Per pixel ([T, N] values, NaN = no observation): the median from a histogram of at most
    ``max_buckets`` buckets of a power-of-2 width anchored at a multiple of it, interpolated inside
    the bucket holding rank n/2."""
    n = np.sum(~np.isnan(values), axis=0)
    lo, hi = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    span = np.maximum(hi - lo, 1e-9)
    width = 2.0 ** np.ceil(np.log2(span / max_buckets))
    start = np.floor(lo / width) * width
    idx = np.floor((values - start) / width)
    out = np.empty(values.shape[1])
    for j in range(values.shape[1]):
        k = idx[:, j][~np.isnan(idx[:, j])].astype(np.int64)
        counts = np.bincount(k)
        cum = np.cumsum(counts)
        target = n[j] / 2.0
        b = int(np.searchsorted(cum, target))
        below = cum[b - 1] if b > 0 else 0
        frac = (target - below) / counts[b] if counts[b] else 0.0
        out[j] = start[j] + (b + frac) * width[j]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--km", type=float, default=1.0, help="side of the synthetic area")
    ap.add_argument("--buckets", type=int, nargs="+", default=[64, 256, 1024])
    args = ap.parse_args(argv)
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    dlat = args.km / 111.32
    dlon = args.km / (111.32 * math.cos(math.radians(LAT)))
    with tempfile.TemporaryDirectory() as tmp:
        cat = generate_synthetic_catalog(Path(tmp), (LON, LAT, LON + dlon, LAT + dlat), START, END, seed=0,
                                         s2_revisit_days=5, s1=False)
        stacks = _stack(cat)
    t = next(iter(stacks.values())).shape[0]
    print(f"synthetic S2, {START} .. {END}, 5-day revisit: {t} scenes, {args.km:g} km a side, SCL-masked")
    print(f"{'band':5} {'buckets':>7} {'pixels':>7} {'obs/px':>6} {'exact==hist':>11} {'mean |d| DN':>11} "
          f"{'p99 |d| DN':>10} {'max |d| DN':>10} {'max |d| %':>9}")
    for band, v in stacks.items():
        flat = v.reshape(v.shape[0], -1)
        keep = np.sum(~np.isnan(flat), axis=0) > 0
        flat = flat[:, keep]
        exact = np.nanmedian(flat, axis=0)
        for nb in args.buckets:
            d = np.abs(histogram_median(flat, nb) - exact)
            rel = d / np.maximum(exact, 1.0) * 100
            print(f"{band:5} {nb:7d} {flat.shape[1]:7d} {np.mean(np.sum(~np.isnan(flat), axis=0)):6.1f} "
                  f"{np.mean(d < 0.5):11.1%} {d.mean():11.2f} {np.percentile(d, 99):10.1f} {d.max():10.1f} "
                  f"{rel.max():9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
