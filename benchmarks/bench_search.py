"""Similarity search over >= 100k cells: exact numpy (baseline) vs FAISS HNSW (the index asset's
choice above ``ANN_MIN_CELLS``) vs FAISS IVF-Flat, in one run on the same vectors.

    .venv/bin/python benchmarks/bench_search.py [--cells 100000] [--dim 768] [--queries 200]

Vectors: ``--clusters`` Gaussian clusters (land-cover-like classes) plus noise, L2-normalised, the
way the index stores cube cells. Prints, per method: build seconds, query milliseconds (median and
p95 over single top-k queries, as the CLI / function issue them, including exact re-scoring for the
ANN methods), recall@k against exact search, and each figure's ratio to the exact baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd


def _vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + rng.normal(scale=1.2, size=(n, dim)).astype(np.float32)
    x[:, :4] += 6.0  # a few large shared features, as ViT embeddings have: all cosines are high
    return x


def _time_queries(fn, queries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    found, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(fn(q))
        times.append((time.perf_counter() - t0) * 1e3)
    return found, np.asarray(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768, help="768: TerraFM-B / THOR base embeddings")
    ap.add_argument("--clusters", type=int, default=64)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import faiss

    from rs_embed_pipeline.products import similarity as S

    faiss.omp_set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, faiss {faiss.__version__}, "
          f"{args.threads} threads")
    raw = _vectors(args.cells, args.dim, args.clusters, seed=0)
    t0 = time.perf_counter()
    vectors = S._normalise(raw)
    norm_s = time.perf_counter() - t0
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(len(vectors))], "tile_id": "t", "epsg": 32632,
                          "iy": 0, "ix": np.arange(len(vectors)), "x": 0.0, "y": 0.0, "cell_m": 160.0})
    rng = np.random.default_rng(1)
    picks = rng.choice(len(vectors), args.queries, replace=False)
    queries = vectors[picks]
    print(f"{args.cells} cells x {args.dim} features, float32 {vectors.nbytes / 2**20:.0f} MiB, "
          f"{args.queries} single queries, top-{args.k}")

    exact = S.SearchIndex(cells=cells, vectors=vectors, window="w", kind="grid")
    truth, t_exact = _time_queries(lambda q: exact.top_k(q, args.k)[0], queries)
    rows = [("exact (numpy, baseline)", norm_s, t_exact, 1.0)]

    t0 = time.perf_counter()
    hnsw = S.SearchIndex(cells=cells, vectors=vectors, window="w", kind="grid", ann=S._hnsw(vectors))
    build = time.perf_counter() - t0
    found, t_hnsw = _time_queries(lambda q: hnsw.top_k(q, args.k)[0], queries)
    rows.append((f"FAISS HNSW M={S.HNSW_M} ef={S.HNSW_EF_SEARCH} (chosen)", build, t_hnsw,
                 np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth)])))
    own_first = np.mean([hnsw.top_k(q, args.k, must_include=int(i))[0][0] == i for q, i in zip(queries, picks)])

    nlist = int(4 * np.sqrt(args.cells))
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[rng.choice(len(vectors), min(len(vectors), 40 * nlist), replace=False)])
    ivf.add(vectors)
    ivf.nprobe = 16
    build_ivf = time.perf_counter() - t0

    def ivf_query(q):
        _, idx = ivf.search(q[None], 4 * args.k)
        idx = idx[0][idx[0] >= 0]
        return idx[np.argsort(-(vectors[idx] @ q))[:args.k]]

    found, t_ivf = _time_queries(ivf_query, queries)
    rows.append((f"FAISS IVF-Flat nlist={nlist} nprobe=16", build_ivf, t_ivf,
                 np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth)])))

    base = float(np.median(t_exact))
    print(f"\n{'method':44s} {'build s':>8s} {'query ms (median / p95)':>24s} {'speed-up':>9s} {'recall@k':>9s}")
    for name, b, t, recall in rows:
        med, p95 = float(np.median(t)), float(np.percentile(t, 95))
        print(f"{name:44s} {b:8.2f} {med:11.3f} / {p95:9.3f} {base / med:8.1f}x {recall:9.3f}")
    print(f"\nHNSW: the query cell comes first in {own_first:.0%} of point queries (must_include).")


if __name__ == "__main__":
    main()
