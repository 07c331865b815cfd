"""A synthetic catalog with planted patterns for the answers tests: region "twins", 3 x 2 TerraFM-B
tiles (224 px at 10 m: 14 x 14 grid cells of 160 m each), zone 32632.

* three "twin" tiles covered wholly by a field of one uniform spectrum, in every window: a query on
  one finds the other two (same content, and for grid cells the same position in the tile);
* a "new field" of another spectrum, 3 x 3 cells, only from 2024-04-01 (window 2): the change.
"""

from __future__ import annotations

import pyproj

from rs_embed_pipeline.core.grid import tile_id

EPSG, SIZE_PX, SCALE_M = 32632, 224, 10.0
TILE_M, CELL_M, CELLS = 2240.0, 160.0, 14
COLS, ROWS = (141, 142, 143), (2300, 2301)               # the region's lattice tiles (grid.py)
TWIN_TILES = [(141, 2301), (143, 2301), (142, 2300)]      # (col, row), wholly planted
CHANGE_TILE, CHANGE_CELL = (141, 2300), (7, 7)            # the new field's tile and centre cell (row, col)
NEW_FIELD = {"B1": 200, "B2": 400, "B3": 300, "B4": 150, "B5": 120, "B6": 100, "B7": 100,
             "B8": 80, "B8A": 80, "B9": 50, "B11": 30, "B12": 20}   # a new pond: dark in every band
WINDOW_1, WINDOW_2 = "2024-01-01", "2024-04-01"
_TO_LONLAT = pyproj.Transformer.from_crs(EPSG, 4326, always_xy=True)


def tid(col: int, row: int) -> str:
    return tile_id(EPSG, SIZE_PX, SCALE_M, col, row)


def cell_centre_utm(tile: tuple[int, int], row: int, col: int) -> tuple[float, float]:
    """Centre of grid cell (row, col) of a lattice tile (col, row): x0 = col T, y0 = row T."""
    return tile[0] * TILE_M + CELL_M * (col + 0.5), tile[1] * TILE_M - CELL_M * (row + 0.5)


def cell_centre_lonlat(tile: tuple[int, int], row: int, col: int) -> tuple[float, float]:
    return _TO_LONLAT.transform(*cell_centre_utm(tile, row, col))


def region_bbox(inset_m: float = 200.0) -> list[float]:
    """lon/lat bbox just inside the 3 x 2 tile block (so exactly these TerraFM tiles are selected)."""
    x0, x1 = COLS[0] * TILE_M + inset_m, (COLS[-1] + 1) * TILE_M - inset_m
    y0, y1 = (ROWS[0] - 1) * TILE_M + inset_m, ROWS[-1] * TILE_M - inset_m
    lons, lats = _TO_LONLAT.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
    return [round(max(lons[0], lons[3]), 6), round(max(lats[0], lats[1]), 6),
            round(min(lons[1], lons[2]), 6), round(min(lats[2], lats[3]), 6)]


def planted() -> list[dict]:
    out = []
    for tile in TWIN_TILES:
        lon, lat = _TO_LONLAT.transform(tile[0] * TILE_M + TILE_M / 2, tile[1] * TILE_M - TILE_M / 2)
        out.append({"lon": lon, "lat": lat, "half_size_m": TILE_M / 2 + 20})  # the whole tile (+ a margin)
    lon, lat = cell_centre_lonlat(CHANGE_TILE, *CHANGE_CELL)
    out.append({"lon": lon, "lat": lat, "half_size_m": 1.5 * CELL_M, "start": WINDOW_2, "reflectance": NEW_FIELD})
    return out


def block(row: int, col: int, ring: int = 1) -> set[tuple[int, int]]:
    """The (row, col) cells within ``ring`` cells of (row, col) (ring 1: the 3 x 3 field)."""
    return {(row + dr, col + dc) for dr in range(-ring, ring + 1) for dc in range(-ring, ring + 1)}
