"""Cubes written directly with the cube writer (no models, no Dagster) for the answers tests:
3 x 2 zone-32632 tiles of 32 px at 10 m, feature maps 4 x 4 x D, pooled vectors of D, quarterly
windows. Vectors are random around a common direction (as real embeddings are: all cosines > 0)."""

from __future__ import annotations

import numpy as np

from rs_embed_pipeline.core.grid import tile_id

EPSG = 32632
SIZE_PX, SCALE_M = 32, 10.0
TILE_M = SIZE_PX * SCALE_M
COLS, ROWS = (1000, 1001, 1002), (16100, 16101)
CELLS = 4
WINDOW_STARTS = ["2024-01-01", "2024-04-01", "2024-07-01", "2024-10-01"]
ATTRS = {"title": "answers test cube", "model_id": "terrafm_b", "modality": "s2", "region": "tiny",
         "source": "rs_embed_pipeline", "random_weights": True, "weights_sha256": "cd" * 32}


def tiles() -> list[dict]:
    return [{"tile_id": tile_id(EPSG, SIZE_PX, SCALE_M, c, r), "utm_epsg": EPSG, "x0": c * TILE_M,
             "y0": r * TILE_M, "size_px": SIZE_PX, "scale_m": SCALE_M}
            for r in sorted(ROWS, reverse=True) for c in COLS]


def vectors(window: int, dim: int, missing: set[str] = frozenset(), seed: int = 0):
    rng = np.random.default_rng([seed, window])
    common = np.random.default_rng(seed).normal(size=dim).astype(np.float32) * 2
    pooled, grids = {}, {}
    for t in tiles():
        if t["tile_id"] in missing:
            continue
        pooled[t["tile_id"]] = (common + rng.normal(size=dim)).astype(np.float32)
        grid = common[:, None, None] + rng.normal(size=(dim, CELLS, CELLS))
        grid[0] *= 40  # one large feature (ViTs have a few): per-cell scales must cope
        grids[t["tile_id"]] = grid.astype(np.float32)
    return pooled, grids


def write(uri: str, window: int, pooled, grids, quantization: str = "none", rebuild: bool = False,
          layout: str = "chunked"):
    """One window of the answers cube. ``layout``: the layout before sharding by default, so these
    tests keep covering cubes written before it (and count stored chunks per tile); the sharded
    layout is covered by rs_embed_pipeline_tests/stores/test_cube_sharded.py."""
    from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window

    dim = next(iter(grids.values())).shape[0] if grids else 8
    return write_cube_window(uri, CubeWindowWrite(
        tiles=tiles(), pooled=pooled, reader=CallableGrids(grids=grids.__getitem__), window_index=window,
        window_starts=WINDOW_STARTS, attrs=ATTRS, fingerprint="answers", provenance={"tiles_ok": len(pooled)},
        grid_shape=(dim, CELLS, CELLS), pooled_dim=dim, quantization=quantization, rebuild=rebuild,
        layout=layout))
