"""rs_embed_pipeline.core.grid: stable, UTM-aligned tile grids."""

from __future__ import annotations

import json

import numpy as np
import pyproj
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box

from rs_embed_pipeline.core.grid import (
    GRID_COLUMNS,
    Tile,
    bbox_aoi,
    build_tile_grid,
    load_aoi,
    parse_tile_id,
    tile_bounds,
    tile_id,
    utm_epsg_for,
)


def _utm_to_ll(epsg, x, y):
    tr = pyproj.Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    return tr.transform(x, y)


def test_columns_types_and_sorting():
    g = build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 224, 10)
    assert list(g.columns[: len(GRID_COLUMNS)]) == list(GRID_COLUMNS)
    assert str(g.crs).upper().endswith("4326")
    assert g["tile_id"].is_unique
    assert g["utm_epsg"].dtype == np.int64 and set(g["utm_epsg"]) == {32633}
    assert g["size_px"].dtype == np.int64 and g["scale_m"].dtype == np.float64
    assert g["x0"].dtype == np.float64 and g["y0"].dtype == np.float64
    assert list(g.index) == list(range(len(g)))
    key = list(zip(g["utm_epsg"], -g["row"], g["col"]))
    assert key == sorted(key)
    assert all(g.geometry.is_valid) and (shapely.area(g.geometry.values) > 0).all()


def test_alignment_and_id_scheme():
    g = build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 224, 10)
    T = 2240.0
    assert ((g["x0"] % T) == 0).all() and ((g["y0"] % T) == 0).all()
    for r in g.itertuples():
        assert r.tile_id == f"{r.utm_epsg}_p224_s10_c{int(r.x0 // T):05d}_r{int(r.y0 // T):05d}"
        p = parse_tile_id(r.tile_id)
        assert (p["utm_epsg"], p["size_px"], p["scale_m"]) == (r.utm_epsg, 224, 10.0)
        assert p["col"] * T == r.x0 and p["row"] * T == r.y0
    assert tile_id(32633, 288, 2.5, 7, 12) == "32633_p288_s2p5_c00007_r00012"
    assert parse_tile_id("32633_p288_s2p5_c00007_r00012")["scale_m"] == 2.5
    with pytest.raises(ValueError):
        parse_tile_id("nope")


def test_tile_is_the_grid_row_and_the_id():
    g = build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 224, 10)
    for _, r in g.iterrows():
        t = Tile.from_row(r)
        assert t == Tile.from_id(r["tile_id"]) and t.footprint is r["geometry"]
        assert (t.tile_id, t.utm_epsg, t.x0, t.y0, t.size_px, t.scale_m) == (
            r["tile_id"], r["utm_epsg"], r["x0"], r["y0"], 224, 10.0)
        assert t.bounds == tile_bounds(r) and t.crs == f"EPSG:{r['utm_epsg']}"
        assert t.transform == [10.0, 0.0, r["x0"], 0.0, -10.0, r["y0"]]
        assert Tile.from_row(t) is t
    t = Tile.from_id("32633_p288_s2p5_c00007_r00012")
    assert (t.x0, t.y0, t.size_px, t.scale_m, t.footprint) == (7 * 720.0, 12 * 720.0, 288, 2.5, None)
    square = Tile.from_id(g["tile_id"].iloc[0]).with_footprint().footprint
    assert square.geom_type == "Polygon" and square.buffer(1e-6).covers(g.geometry.iloc[0].buffer(-1e-6))
    with pytest.raises(ValueError, match="not a tile id"):
        Tile.from_id("nope")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['x0'\]"):
        Tile.from_row({k: v for k, v in g.iloc[0].items() if k != "x0"})
    with pytest.raises(ValueError, match="x0 / y0 must be finite"):
        Tile("t", 32633, float("nan"), 0.0, 4, 10.0)


def test_footprint_matches_utm_box():
    g = build_tile_grid(bbox_aoi(14.90, 45.00, 14.91, 45.01), 224, 10)
    r = g.iloc[0]
    T = 2240.0
    # the four UTM corners land on the footprint's boundary (to < 1e-7 deg)
    xs = [r.x0, r.x0 + T, r.x0 + T, r.x0]
    ys = [r.y0, r.y0, r.y0 - T, r.y0 - T]
    lon, lat = _utm_to_ll(r.utm_epsg, xs, ys)
    for a, b in zip(lon, lat):
        assert r.geometry.exterior.distance(Point(a, b)) < 1e-7
    # area in UTM ~ T^2
    tr = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{r.utm_epsg}", always_xy=True)
    utm = shapely.transform(r.geometry, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))
    assert utm.area == pytest.approx(T * T, rel=1e-6)


def test_stability_same_ids_and_overlaps_share_ids():
    a = build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 224, 10)
    b = build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 224, 10)
    assert list(a["tile_id"]) == list(b["tile_id"])
    assert a.geometry.geom_equals(b.geometry).all()
    # an overlapping, shifted region shares exactly the tiles of the overlap
    c = build_tile_grid(bbox_aoi(14.93, 45.01, 14.99, 45.05), 224, 10)
    overlap = build_tile_grid(bbox_aoi(14.93, 45.01, 14.95, 45.03), 224, 10)
    shared = set(a["tile_id"]) & set(c["tile_id"])
    assert set(overlap["tile_id"]) <= shared and shared
    # same id -> same numbers
    m = a.merge(c, on="tile_id")
    assert (m["x0_x"] == m["x0_y"]).all() and (m["y0_x"] == m["y0_y"]).all()


def test_tile_count_for_known_bbox():
    # a box strictly inside lattice tile (col, row) -> one tile; a box around a lattice corner -> 4
    epsg, T = 32633, 2240.0
    col, row = 220, 2230
    cx, cy = (col + 0.5) * T, (row - 0.5) * T
    lon, lat = _utm_to_ll(epsg, cx, cy)
    g = build_tile_grid(bbox_aoi(lon - 0.001, lat - 0.001, lon + 0.001, lat + 0.001), 224, 10)
    assert list(g["tile_id"]) == [tile_id(epsg, 224, 10, col, row)]
    lon, lat = _utm_to_ll(epsg, col * T, row * T)
    g = build_tile_grid(bbox_aoi(lon - 0.001, lat - 0.001, lon + 0.001, lat + 0.001), 224, 10)
    assert sorted(g["tile_id"]) == sorted(
        tile_id(epsg, 224, 10, c, r) for c in (col - 1, col) for r in (row, row + 1)
    )
    # an AOI that is exactly the union of 3 x 2 tiles (in UTM) gives exactly those 6 tiles:
    # tiles that only touch the AOI's edges are not included
    utm_aoi = box(col * T, (row - 2) * T, (col + 3) * T, row * T)
    tr = pyproj.Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    ll = shapely.transform(
        shapely.segmentize(utm_aoi.buffer(-1.0, join_style="mitre"), 50.0),
        lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])),
    )
    g = build_tile_grid(ll, 224, 10)
    assert len(g) == 6
    assert set(g["col"]) == {col, col + 1, col + 2} and set(g["row"]) == {row, row - 1}


def test_grid_covers_aoi_sampled_points():
    aoi = Polygon([(14.90, 45.00), (14.97, 45.01), (14.99, 45.06), (14.92, 45.05)])
    g = build_tile_grid(aoi, 64, 10)
    T = 640.0
    rng = np.random.default_rng(0)
    pts = shapely.points(rng.uniform(14.90, 14.99, 4000), rng.uniform(45.00, 45.06, 4000))
    pts = pts[shapely.contains(aoi, pts)]
    tr = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    x, y = tr.transform(shapely.get_x(pts), shapely.get_y(pts))
    ids = {
        tile_id(32633, 64, 10, int(np.floor(a / T)), int(np.floor(b / T)) + 1) for a, b in zip(x, y)
    }
    assert ids <= set(g["tile_id"])
    # and no tile is far from the AOI
    assert g.geometry.intersects(aoi).all()


def test_zone_crossing():
    # 17.95..18.05 E crosses the zone 33 / 34 boundary at 18 E
    g = build_tile_grid(bbox_aoi(17.95, 45.00, 18.05, 45.02), 224, 10)
    assert set(g["utm_epsg"]) == {32633, 32634}
    west = g[g["utm_epsg"] == 32633]
    east = g[g["utm_epsg"] == 32634]
    # each zone's tiles cover its clipped piece, and stay near its side of 18 E
    assert west.geometry.bounds["minx"].min() < 18.0 and east.geometry.bounds["maxx"].max() > 18.0
    assert (west.geometry.bounds["minx"] < 18.0).all()
    assert (east.geometry.bounds["maxx"] > 18.0).all()
    for part in (west, east):
        T = 2240.0
        assert ((part["x0"] % T) == 0).all()
    assert g["tile_id"].is_unique
    # tile ids in zone 33 are those of a zone-33-only AOI restricted to the strip
    only_w = build_tile_grid(bbox_aoi(17.95, 45.00, 18.0, 45.02), 224, 10)
    assert set(only_w["tile_id"]) == set(west["tile_id"])


def test_southern_hemisphere_and_equator():
    g = build_tile_grid(bbox_aoi(-47.95, -15.82, -47.90, -15.78), 224, 10)  # Brasilia
    assert set(g["utm_epsg"]) == {32723}
    assert (g["y0"] > 8_000_000).all() and ((g["y0"] % 2240) == 0).all()
    assert utm_epsg_for(-47.9, -15.8) == 32723 and utm_epsg_for(15, 0.0) == 32633
    eq = build_tile_grid(bbox_aoi(9.5, -0.02, 9.55, 0.02), 224, 10)
    assert set(eq["utm_epsg"]) == {32632, 32732}
    north = eq[eq["utm_epsg"] == 32632]
    south = eq[eq["utm_epsg"] == 32732]
    assert north["row"].min() == 1 and (north["y0"] > 0).all()
    # the southern row nearest the equator reaches the false northing 10 000 000 m
    assert (south["y0"] - 2240 < 10_000_000).all() and (south["y0"] >= 10_000_000 - 2240).any()
    assert north.geometry.bounds["maxy"].max() >= 0.02
    assert north.geometry.bounds["miny"].min() == pytest.approx(0.0, abs=1e-9)
    assert south.geometry.bounds["miny"].min() <= -0.02


def test_antimeridian_inputs_agree():
    split = bbox_aoi(179.95, -16.8, -179.95, -16.75)  # Fiji, minlon > maxlon
    assert isinstance(split, MultiPolygon)
    unwrapped = load_aoi(
        {
            "type": "Polygon",
            "coordinates": [
                [
                    [179.95, -16.8],
                    [180.05, -16.8],
                    [180.05, -16.75],
                    [179.95, -16.75],
                    [179.95, -16.8],
                ]
            ],
        }
    )
    g1 = build_tile_grid(split, 224, 10)
    g2 = build_tile_grid(unwrapped, 224, 10)
    g3 = build_tile_grid(load_aoi(json.dumps(shapely.geometry.mapping(split))), 224, 10)
    assert list(g1["tile_id"]) == list(g2["tile_id"]) == list(g3["tile_id"])
    assert set(g1["utm_epsg"]) == {32760, 32701}
    b = g1.geometry.bounds
    assert (b["minx"] >= -180).all() and (b["maxx"] <= 180).all()
    # footprints that cross 180 are split MultiPolygons, and no footprint spans the globe in area
    crossing = g1[g1.geometry.geom_type == "MultiPolygon"]
    assert len(crossing) > 0
    assert (shapely.area(g1.geometry.values) < 0.01).all()


def test_grid_size_and_scale_variants():
    a = build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 288, 10)
    assert (a["size_px"] == 288).all() and a["tile_id"].str.contains("_p288_s10_").all()
    b = build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 224, 10)
    assert not set(a["tile_id"]) & set(b["tile_id"])
    with pytest.raises(ValueError, match="size_px"):
        build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 0, 10)
    with pytest.raises(ValueError, match="scale_m"):
        build_tile_grid(bbox_aoi(14.90, 45.00, 14.95, 45.03), 224, -1)


def test_load_aoi_sources(tmp_path):
    poly = box(14.9, 45.0, 14.95, 45.03)
    gj = shapely.geometry.mapping(poly)
    fc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {}, "geometry": gj}],
    }
    p = tmp_path / "aoi.geojson"
    p.write_text(json.dumps(fc))
    for src in (poly, gj, fc, json.dumps(fc), p, str(p), (14.9, 45.0, 14.95, 45.03)):
        assert load_aoi(src).equals(poly)
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(geometry=[poly], crs=4326).to_crs(32633)
    gp = tmp_path / "aoi.parquet"
    gdf.to_parquet(gp)
    assert load_aoi(gp).symmetric_difference(poly).area < 1e-10


@pytest.mark.parametrize(
    "src, match",
    [
        (Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)]), "invalid"),  # bow-tie
        (Polygon(), "empty"),
        ({"type": "FeatureCollection", "features": []}, "no features"),
        (Point(1, 2), "not polygonal"),
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "not polygonal"),
        (box(10, 85, 11, 86), "UTM coverage"),
        (box(10, -95, 11, -89), "latitude out of range"),
        (box(-200, 0, -190, 1), "longitude out of range"),
        ("{not json", "not valid GeoJSON"),
        ("/no/such/file.geojson", "does not exist"),
        (42, "cannot read"),
    ],
)
def test_load_aoi_rejects(src, match):
    with pytest.raises(ValueError, match=match):
        load_aoi(src)


def test_bbox_aoi_rejects():
    with pytest.raises(ValueError, match="minlat"):
        bbox_aoi(10, 5, 11, 4)
    with pytest.raises(ValueError, match="zero width"):
        bbox_aoi(10, 4, 10, 5)
    with pytest.raises(ValueError, match="non-finite"):
        bbox_aoi(10, float("nan"), 11, 5)


def test_build_tile_grid_rejects_bad_aoi():
    with pytest.raises(ValueError, match="not polygonal"):
        build_tile_grid(Point(0, 0), 224, 10)
