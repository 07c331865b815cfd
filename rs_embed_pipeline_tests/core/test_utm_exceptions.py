"""Issue #22 case 7: the tile grid follows the UTM zone exceptions that MGRS, and so Sentinel-2's
tiling grid, draws (Norway 32V from 3 E, Svalbard 31X / 33X / 35X / 37X), so that tiles there lie
in the zone of the scenes over them; region cells follow the same zones."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid, cell_ids_of_tiles, split_cells, utm_epsg_for

from .test_split_regions import SIZES, _assert_cells_partition_the_tiles


@pytest.mark.parametrize(("lon", "lat", "epsg"), [
    (5.32, 60.39, 32632),   # Bergen: MGRS 32V (standard strip: 31)
    (2.0, 60.0, 32631),     # west of 3 E in band V: still 31V
    (5.0, 55.9, 32631),     # south of band V: the standard strip
    (5.0, 64.1, 32631),     # north of band V (band W): the standard strip
    (15.63, 78.22, 32633),  # Longyearbyen: 33X
    (20.0, 78.0, 32633),    # 33X reaches 21 E (standard strip: 34)
    (22.0, 79.0, 32635),    # 35X from 21 E (standard: 34)
    (8.0, 80.0, 32631),     # 31X reaches 9 E (standard: 32)
    (34.0, 80.0, 32637),    # 37X from 33 E (standard: 36)
    (20.0, 71.9, 32634),    # south of band X: the standard strip
    (20.0, -78.0, 32734),   # the south has no exception
])
def test_zone_of_a_point_follows_mgrs(lon, lat, epsg):
    assert utm_epsg_for(lon, lat) == epsg


def test_tiles_in_norway_and_svalbard_lie_in_the_sentinel2_zone():
    bergen = build_tile_grid(bbox_aoi(5.30, 60.38, 5.34, 60.40), 224, 10)
    assert set(bergen["utm_epsg"]) == {32632}
    assert bergen["tile_id"].str.startswith("32632_p224_s10_").all()
    svalbard = build_tile_grid(bbox_aoi(19.95, 78.00, 20.05, 78.02), 224, 10)
    assert set(svalbard["utm_epsg"]) == {32633}
    # across 3 E inside band V: each side in its MGRS zone, tiles overlapping at the boundary
    across = build_tile_grid(bbox_aoi(2.98, 60.0, 3.02, 60.01), 224, 10)
    assert set(across["utm_epsg"]) == {32631, 32632}
    west, east = (across[across["utm_epsg"] == e] for e in (32631, 32632))
    assert west.geometry.bounds["minx"].min() < 3.0 < east.geometry.bounds["maxx"].max()
    assert (west.geometry.bounds["minx"] < 3.0).all() and (east.geometry.bounds["maxx"] > 3.0).all()
    # the band edge at 64 N: zone 32 below, zone 31 above, for the same longitude
    edge = build_tile_grid(bbox_aoi(4.0, 63.99, 4.05, 64.01), 224, 10)
    assert set(edge["utm_epsg"]) == {32631, 32632}
    assert edge[edge["utm_epsg"] == 32632].geometry.bounds["miny"].min() < 64.0
    assert edge[edge["utm_epsg"] == 32631].geometry.bounds["maxy"].max() > 64.0


def test_region_cells_follow_the_same_zones():
    aoi = box(2.9, 60.0, 3.2, 60.1)  # across 3 E in band V
    cells = _assert_cells_partition_the_tiles(aoi, 10)
    assert {c.utm_epsg for c in cells} == {32631, 32632}
    svalbard = bbox_aoi(20.9, 78.0, 21.1, 78.05)  # across 21 E in band X: 33X | 35X
    cells = split_cells(svalbard, SIZES, 10)
    assert {c.utm_epsg for c in cells} == {32633, 32635}
    for size_px, scale_m in SIZES:
        grid = build_tile_grid(svalbard, size_px, scale_m)
        assert set(grid["utm_epsg"]) == {32633, 32635}
        assert set(cell_ids_of_tiles(grid, 10)) <= {c.cell_id for c in cells}
