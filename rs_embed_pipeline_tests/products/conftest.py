"""A tiny cube built directly with the cube writer (no models, no Dagster): 2 x 2 zone-32632 tiles
of 32 px at 10 m, feature maps 4 x 4 x 6, pooled vectors of 5, four quarterly windows of which
0 and 2 are filled (window 2 misses one tile) and 1 and 3 are not."""

from __future__ import annotations

import numpy as np
import pytest

from rs_embed_pipeline.core.grid import tile_id

# The pipeline tests' fixtures (synthetic catalog, worker environment), for the product pipeline test.
from rs_embed_pipeline_tests.pipeline.conftest import synthetic_catalog, worker_python  # noqa: F401

EPSG = 32632
SIZE_PX, SCALE_M = 32, 10.0
TILE_M = SIZE_PX * SCALE_M
COLS, ROWS = (1000, 1001, 1002), (16100, 16101)   # x0 = 320 km.., y0 = 5152 km..: near Lausanne
D_GRID, CELLS, D_POOLED = 6, 4, 5
WINDOW_STARTS = ["2024-01-01", "2024-04-01", "2024-07-01", "2024-10-01"]
FILLED = (0, 2)
MISSING = {2: {tile_id(EPSG, SIZE_PX, SCALE_M, COLS[0], ROWS[0])}}  # window -> tiles without an embedding


def tiny_tiles() -> list[dict]:
    return [{"tile_id": tile_id(EPSG, SIZE_PX, SCALE_M, c, r), "utm_epsg": EPSG, "x0": c * TILE_M,
             "y0": r * TILE_M, "size_px": SIZE_PX, "scale_m": SCALE_M}
            for r in sorted(ROWS, reverse=True) for c in COLS]


def tile_vectors(window: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(window)
    pooled, grids = {}, {}
    for t in tiny_tiles():
        if t["tile_id"] in MISSING.get(window, set()):
            continue
        pooled[t["tile_id"]] = rng.normal(size=D_POOLED).astype(np.float32)
        grids[t["tile_id"]] = rng.normal(size=(D_GRID, CELLS, CELLS)).astype(np.float32)
    return pooled, grids


CUBE_ATTRS = {"title": "tiny test cube", "model_id": "terrafm_b", "modality": "s2", "region": "tiny",
              "source": "rs_embed_pipeline", "random_weights": True, "weights_sha256": "ab" * 32}


def write_tiny_cube(uri: str, windows=FILLED) -> None:
    from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window

    for w in windows:
        pooled, grids = tile_vectors(w)
        write_cube_window(uri, CubeWindowWrite(
            tiles=tiny_tiles(), pooled=pooled, reader=CallableGrids(grids=grids.__getitem__), window_index=w,
            window_starts=WINDOW_STARTS, attrs=CUBE_ATTRS, fingerprint="tiny",
            provenance={"tiles_ok": len(pooled), "scene_ids": [f"S2_{w}_a", f"S2_{w}_b"]},
            grid_shape=(D_GRID, CELLS, CELLS), pooled_dim=D_POOLED))


@pytest.fixture(scope="session")
def tiny_cube(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("cube") / "tiny.zarr")
    write_tiny_cube(uri)
    return uri


def tiny_grid():
    """The tiny tiles as tile_grid rows (GeoDataFrame, footprints in EPSG:4326 as grid.py makes them)."""
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(EPSG, 4326, always_xy=True)
    rows = []
    for t in tiny_tiles():
        box = shapely.segmentize(shapely.box(t["x0"], t["y0"] - TILE_M, t["x0"] + TILE_M, t["y0"]), TILE_M / 4)
        rows.append({**t, "geometry": shapely.transform(box, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))})
    return gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")


def duckdb_spatial():
    """A DuckDB connection with the spatial extension from the duckdb-extension-spatial wheel
    (DuckDB's own download cannot reach its server here)."""
    from pathlib import Path

    import duckdb
    import duckdb_extension_spatial

    found = sorted(Path(duckdb_extension_spatial.__file__).parent.rglob("spatial.duckdb_extension"))
    assert found, "duckdb-extension-spatial ships no spatial.duckdb_extension"
    con = duckdb.connect()
    con.execute(f"INSTALL '{found[0]}'")
    con.execute("LOAD spatial")
    return con
