"""Region splitting (issue 19): cells of a global per-zone grid, each holding the tiles centred in it,
and the config keys checked at load (rs_embed_pipeline.core.grid.Cell, core.regions)."""

from __future__ import annotations

import math

import pyproj
import pytest
import yaml
from shapely.geometry import MultiPolygon, Polygon, box

from rs_embed_pipeline.core.grid import Cell, bbox_aoi, build_tile_grid, cell_ids_of_tiles, split_cells
from rs_embed_pipeline.core.regions import ConfigError, load_pipeline_config

# Every tile size in use (TerraFM-B 224 px, THOR 288 px at 10 m) and a small one that does not
# divide the cells, so that tile centres fall near cell edges.
SIZES = [(224, 10.0), (288, 10.0), (50, 10.0)]


def _zone_boundary_aoi() -> MultiPolygon:
    """Across the UTM 31 / 32 boundary (6 E), with a hole (about 15 x 17 km, in zone 32), and an
    island in zone 32."""
    outer = [(5.7, 46.0), (6.35, 46.0), (6.35, 46.35), (5.7, 46.35)]
    hole = [(6.05, 46.1), (6.25, 46.1), (6.25, 46.25), (6.05, 46.25)]
    return MultiPolygon([Polygon(outer, [hole]), box(6.42, 46.05, 6.5, 46.12)])


def _assert_cells_partition_the_tiles(aoi, side_km: int) -> list[Cell]:
    cells = split_cells(aoi, SIZES, side_km)
    for size_px, scale_m in SIZES:
        whole = build_tile_grid(aoi, size_px, scale_m)
        parts = {c.cell_id: build_tile_grid(aoi, size_px, scale_m, cell=c) for c in cells}
        ids = [t for grid in parts.values() for t in grid["tile_id"]]
        assert len(ids) == len(set(ids)) == len(whole), (size_px, len(ids), len(whole))  # each tile once
        assert set(ids) == set(whole["tile_id"])  # none left out
        for cid, grid in parts.items():  # each in the cell that holds its centre, same footprint
            assert set(cell_ids_of_tiles(grid, side_km)) <= {cid}
            merged = grid.merge(whole, on="tile_id", suffixes=("", "_whole"))
            assert len(merged) == len(grid)
            assert merged.geometry.geom_equals(merged["geometry_whole"]).all()
    # every cell holds at least one tile of some size: no partition without work
    for cell in cells:
        assert sum(len(build_tile_grid(aoi, s, m, cell=cell)) for s, m in SIZES) > 0, cell.cell_id
    return cells


def test_cells_hold_exactly_the_aoi_tiles_across_a_zone_boundary_with_a_hole_and_an_island():
    cells = _assert_cells_partition_the_tiles(_zone_boundary_aoi(), 10)
    assert {c.utm_epsg for c in cells} == {32631, 32632}
    assert len(cells) == len({c.cell_id for c in cells})
    # 5 km cells inside the hole (with the half-tile margin of their tiles) have no partition
    outer, island = _zone_boundary_aoi().geoms
    filled = set(split_cells(Polygon(outer.exterior), SIZES, 5))
    holed = set(split_cells(outer, SIZES, 5))
    swallowed = filled - holed
    assert holed < filled and swallowed
    hole = box(6.05, 46.1, 6.25, 46.25)
    for cell in swallowed:  # each lies in the hole: the whole AOI has no tile centred there
        assert cell.utm_epsg == 32632
        for size_px, scale_m in SIZES:
            assert build_tile_grid(outer, size_px, scale_m, cell=cell).empty
            assert not build_tile_grid(hole, size_px, scale_m, cell=cell).empty


def test_cells_across_the_antimeridian_and_the_equator():
    aoi = bbox_aoi(179.8, -0.15, -179.85, 0.12)  # zones 60 and 1, both hemispheres
    cells = _assert_cells_partition_the_tiles(aoi, 5)
    assert {c.utm_epsg for c in cells} == {32660, 32760, 32601, 32701}
    assert {c.cell_id[:3] for c in cells} == {"60N", "60S", "01N", "01S"}


def test_cell_id_is_the_corner_in_km_with_the_false_northing_in_the_south():
    # Cape Town: zone 34 south; northings of EPSG 32734 include the 10 000 km false northing
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32734", always_xy=True).transform(18.42, -33.92)
    (cell,) = split_cells(bbox_aoi(18.419, -33.921, 18.421, -33.919), [(10, 10.0)], 20)
    assert cell.cell_id == f"34S-E{math.floor(x / 20000) * 20:04d}-N{math.floor(y / 20000) * 20:05d}"
    assert cell.cell_id == "34S-E0260-N06240"
    assert Cell.from_id(cell.cell_id, 20) == cell
    assert cell.bounds == (260000.0, 6240000.0, 280000.0, 6260000.0)
    with pytest.raises(ValueError, match="not a cell id of a 20 km lattice: '34S-E0270-N06240'"):
        Cell.from_id("34S-E0270-N06240", 20)
    with pytest.raises(ValueError, match="not a cell id"):
        Cell.from_id("34s-e0260-n06240", 20)


def test_names_are_stable_when_the_aoi_grows():
    small = bbox_aoi(6.60, 46.50, 6.70, 46.56)
    grown = MultiPolygon([box(6.45, 46.40, 6.90, 46.70), box(7.2, 46.8, 7.3, 46.9)])
    before = {c.cell_id: c for c in split_cells(small, SIZES, 8)}
    after = {c.cell_id: c for c in split_cells(grown, SIZES, 8)}
    assert set(before) < set(after)  # adds cells, renames none
    for cid, cell in before.items():
        assert after[cid] == cell
        for size_px, scale_m in SIZES:  # a cell keeps its tiles (and may gain some)
            old = set(build_tile_grid(small, size_px, scale_m, cell=cell)["tile_id"])
            assert old <= set(build_tile_grid(grown, size_px, scale_m, cell=cell)["tile_id"])


def test_no_cell_where_the_aoi_has_no_tile():
    # two 1 km islands 60 km apart: only the cells of their tiles, nothing in between
    aoi = MultiPolygon([box(6.600, 46.500, 6.613, 46.509), box(7.400, 46.500, 7.413, 46.509)])
    cells = _assert_cells_partition_the_tiles(aoi, 10)
    assert 2 <= len(cells) <= 8
    xs = sorted(c.i for c in cells)
    assert xs[-1] - xs[0] >= 5 and not any(xs[0] + 2 < i < xs[-1] - 2 for i in xs)


def test_cells_must_be_larger_than_the_largest_tile():
    with pytest.raises(ValueError, match=r"cells of 2 km are not larger than the largest tile \(2.88 km\)"):
        split_cells(bbox_aoi(6.6, 46.5, 6.7, 46.6), [(224, 10.0), (288, 10.0)], 2)


# ---------------------------------------------------------------------------------------- config


def _config(tmp_path, regions, windows=None, **top):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"time_windows": windows or {"cadence": "quarterly", "start": "2024-01-01"},
                                    "regions": regions, **top}))
    return path


def test_split_region_partitions_are_named_after_their_cells(tmp_path):
    config = load_pipeline_config(_config(tmp_path, [
        {"name": "demo", "bbox": [6.6, 46.5, 6.64, 46.528]},
        {"name": "alps", "bbox": [6.60, 46.50, 6.70, 46.56], "split_km": 8},
    ]))
    assert config.region("alps").split_km == 8
    parts = config.partitions([(224, 10.0), (288, 10.0)])
    assert parts[0].key == "demo" and parts[0].cell is None
    cells = split_cells(config.region("alps").aoi, [(224, 10.0), (288, 10.0)], 8)
    assert [p.key for p in parts[1:]] == [f"alps-{c.cell_id}" for c in cells]
    assert all(p.key.startswith("alps-32N-E0") for p in parts[1:])
    assert not any(ch in p.key for p in parts for ch in "|,[]")  # Dagster multi-partition key rules
    # the whole region's partition keeps today's grid
    assert list(parts[0].tile_grid(224, 10.0)["tile_id"]) == list(
        build_tile_grid(config.region("demo").aoi, 224, 10.0)["tile_id"])


@pytest.mark.parametrize(("split_km", "message"), [
    (2, r"split_km 2, which must be larger than the largest tile's ground size, 2.88 km \(288 px x 10 m\)"),
    (2.5, r"split_km 2.5; it must be a whole number of kilometres larger than the largest tile's ground size"),
    ("20", r"split_km '20'; it must be a whole number"),
    (True, r"split_km True; it must be a whole number"),
    (0, r"split_km 0; it must be a whole number"),
])
def test_split_km_must_be_a_whole_number_larger_than_the_largest_tile(tmp_path, split_km, message):
    with pytest.raises(ConfigError, match=message):
        config = load_pipeline_config(_config(tmp_path, [{"name": "a", "bbox": [6.6, 46.5, 6.7, 46.6],
                                                          "split_km": split_km}]))
        config.partitions([(224, 10.0), (288, 10.0)])


@pytest.mark.parametrize(("regions", "windows", "top", "message"), [
    ([{"name": "a", "bbox": [6.6, 46.5, 6.7, 46.6], "splitkm": 20}], None, {},
     r"region 'a' has unknown key\(s\) 'splitkm'; valid keys: name, description, bbox, geojson, split_km"),
    ([{"name": "a", "bbox": [6.6, 46.5, 6.7, 46.6]}], {"cadense": "yearly"}, {},
     r"time_windows has unknown key\(s\) 'cadense'; valid keys: cadence, start"),
    ([{"name": "a", "bbox": [6.6, 46.5, 6.7, 46.6]}], None, {"region": []},
     r"the top level has unknown key\(s\) 'region'; valid keys: time_windows, regions"),
    ([{"name": "a", "bbox": [6.6, 46.5, 6.7, 46.6]}], ["quarterly"], {},
     r"time_windows must be a mapping with keys cadence, start"),
])
def test_unknown_keys_are_errors_naming_the_valid_ones(tmp_path, regions, windows, top, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(_config(tmp_path, regions, windows, **top))


def test_a_split_region_beyond_utm_coverage_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"region 'arctic' has an invalid AOI: .*outside UTM coverage \[-80.0, 84.0\]"):
        load_pipeline_config(_config(tmp_path, [{"name": "arctic", "bbox": [10, 83, 20, 85], "split_km": 50}]))
