"""int8 cubes vs float32: storage, accuracy per cell, similarity-search agreement, write time.

    # the demo region (after `make demo`): its embedding store re-written as three cubes
    .venv/bin/python benchmarks/bench_quantize.py --store data --region demo --window 2024-01-01
    # a bench region: N tiles of 768-feature, 14 x 14 feature maps (ViT-like statistics)
    .venv/bin/python benchmarks/bench_quantize.py --synthetic-tiles 100

Writes the same window as float32 (baseline), ``int8_per_cell`` and ``int8_per_feature`` cubes with
the pipeline's cube writer into a temporary folder, reads them back with ``open_cube`` and prints,
per scheme: bytes on disk of the grid group's embedding arrays and the ratio to float32, the lowest
and mean cosine of a cell to its float32 vector, the top-10 overlap of exact similarity search with
float32's (mean and worst over the query cells), and the write time with its ratio to float32.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


TIE_TOLERANCE = 1e-6  # cosine differences below this are ties for float32 vectors (eps 1.2e-7 x 768 terms)


def _demo_source(store: str, model: str, modality: str, region: str, window: str):
    import geopandas as gpd

    from rs_embed_pipeline.stores import TileStore
    from rs_embed_pipeline.stores.layout import StoreLayout

    layout = StoreLayout(store)
    emb = TileStore.open(layout.embeddings(model, modality, region, window), "embeddings")
    ids = emb.tile_ids
    ok = emb.indices_with_status("ok")
    pooled = dict(zip([ids[i] for i in ok], emb.read("pooled", ok)))
    grids = dict(zip([ids[i] for i in ok], emb.read("grid", ok)))
    size = int(emb.settings.get("patches", {}).get("size_px") or 0) or None
    grid = gpd.read_parquet(layout.tile_grid(region, window))
    if size is None:
        size = int(grid[grid["tile_id"].isin(list(pooled))]["size_px"].iloc[0])
    tiles = grid[grid["size_px"] == size][["tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m"]].to_dict("records")
    return tiles, pooled, grids, f"{region} {window} ({model} {modality}, {len(pooled)} tiles)"


def _synthetic_source(n_tiles: int, dim: int, cells: int, seed: int = 0):
    from rs_embed_pipeline.core.grid import tile_id

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_tiles)))
    common = rng.normal(size=dim).astype(np.float32)
    outliers = np.zeros(dim, dtype=np.float32)
    outliers[rng.choice(dim, 6, replace=False)] = rng.normal(scale=25, size=6)  # ViT-like large features
    classes = rng.normal(size=(24, dim)).astype(np.float32)
    tiles, pooled, grids = [], {}, {}
    for i in range(n_tiles):
        col, row = 141 + i % side, 2301 - i // side
        tid = tile_id(32632, 224, 10.0, col, row)
        tiles.append({"tile_id": tid, "utm_epsg": 32632, "x0": col * 2240.0, "y0": row * 2240.0, "size_px": 224,
                      "scale_m": 10.0})
        labels = rng.integers(0, len(classes), (cells, cells))
        g = common + outliers + classes[labels] + 0.5 * rng.normal(size=(cells, cells, dim))
        grids[tid] = np.moveaxis(g.astype(np.float32), -1, 0)
        pooled[tid] = grids[tid].mean(axis=(1, 2))
    return tiles, pooled, grids, f"synthetic bench region ({n_tiles} tiles, {dim} features, {cells} x {cells} cells)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data")
    ap.add_argument("--model", default="terrafm_b")
    ap.add_argument("--modality", default="s2")
    ap.add_argument("--region", default="demo")
    ap.add_argument("--window", default="2024-01-01")
    ap.add_argument("--synthetic-tiles", type=int, default=0, help="use a synthetic bench region of N tiles")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=400)
    args = ap.parse_args()

    from rs_embed_pipeline.products import open_cube
    from rs_embed_pipeline.stores.cube import codec as Q
    from rs_embed_pipeline.products.similarity import SearchIndex, cells_of, window_of, _normalise
    from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window

    if args.synthetic_tiles:
        tiles, pooled, grids, what = _synthetic_source(args.synthetic_tiles, args.dim, 14)
    else:
        tiles, pooled, grids, what = _demo_source(args.store, args.model, args.modality, args.region, args.window)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; source: {what}")
    starts = ["2024-01-01", "2024-04-01"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_quantize_"))
    results = {}
    for scheme in Q.SCHEMES:
        uri = str(tmp / f"{scheme}.zarr")
        t0 = time.perf_counter()
        write_cube_window(uri, CubeWindowWrite(
            tiles=tiles, pooled=pooled, reader=CallableGrids(grids=grids.__getitem__), window_index=0,
            window_starts=starts, attrs={"model_id": args.model, "modality": args.modality},
            fingerprint="bench", quantization=scheme))
        seconds = time.perf_counter() - t0
        zone = sorted(p.name for p in Path(uri).glob("EPSG*"))[0]
        ds = window_of(open_cube(uri, zone=zone), starts[0])
        table, vec = cells_of(ds, "grid", int(zone[4:]))
        results[scheme] = {"seconds": seconds, "bytes": Q.storage_bytes(uri, f"{zone}/grid"), "vectors": vec,
                           "index": SearchIndex(cells=table, vectors=_normalise(vec), window=starts[0], kind="grid")}
    ref = results["none"]
    n = len(ref["vectors"])
    rng = np.random.default_rng(0)
    picks = rng.choice(n, min(n, args.queries), replace=False)
    truth = [set(ref["index"].top_k(ref["index"].vectors[i], 10)[0].tolist()) for i in picks]
    # The metric's own noise floor: float32 search against float64 search of the same vectors.
    v64 = ref["vectors"].astype(np.float64)
    v64 /= np.linalg.norm(v64, axis=1, keepdims=True)
    f64 = [len(t & set(np.argsort(-(v64 @ v64[i]))[:10].tolist())) / 10 for t, i in zip(truth, picks)]
    s64 = np.sort(v64[picks] @ v64.T, axis=1)[:, ::-1]
    print(f"{n} grid cells x {ref['vectors'].shape[1]} features; {len(picks)} top-10 queries; cosine between "
          f"cells: median {np.median(s64):.6f}; gap between the 10th and 11th neighbour: median "
          f"{np.median(s64[:, 10] - s64[:, 11]):.2e}; top-10 overlap of float32 with float64 search: "
          f"{np.mean(f64):.4f}\n")
    # Tie-aware overlap: a hit also counts when its exact (float64) cosine to the query is within
    # TIE_TOLERANCE of the exact 10th-best one, i.e. the two are tied at float32's resolution and no
    # search in float32 can order them. On well-separated neighbours it equals the plain overlap.
    tenth = [np.sort(v64 @ v64[i])[::-1][9] for i in picks]
    print(f"{'scheme':18s} {'bytes':>12s} {'ratio':>7s} {'min cos':>11s} {'1 - min cos':>11s} "
          f"{'top-10 overlap mean / min':>26s} {'tie-aware':>10s} {'write s':>8s} {'ratio':>6s}")
    for scheme, r in results.items():
        cos = Q.cosine_per_cell(ref["vectors"], r["vectors"])
        hits = [r["index"].top_k(r["index"].vectors[i], 10)[0] for i in picks]
        overlap = [len(t & set(h.tolist())) / 10 for t, h in zip(truth, hits)]
        tie_aware = [float(np.mean((v64[h] @ v64[i]) >= t10 - TIE_TOLERANCE))
                     for h, i, t10 in zip(hits, picks, tenth)]
        print(f"{scheme:18s} {r['bytes']:12d} {r['bytes'] / ref['bytes']:7.3f} {np.nanmin(cos):11.7f} "
              f"{1 - np.nanmin(cos):11.2e} {np.mean(overlap):13.4f} / {np.min(overlap):9.2f} "
              f"{np.mean(tie_aware):10.4f} {r['seconds']:8.2f} {r['seconds'] / ref['seconds']:6.2f}")


if __name__ == "__main__":
    main()
