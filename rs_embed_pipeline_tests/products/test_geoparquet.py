"""Pooled GeoParquet 1.1: read back with DuckDB's spatial extension and GeoPandas."""

import json

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from rs_embed_pipeline.products import geoparquet
from rs_embed_pipeline.stores.cube.reader import tile_vectors
from rs_embed_pipeline_tests.products.conftest import (
    D_POOLED,
    MISSING,
    WINDOW_STARTS,
    duckdb_spatial,
    tiny_grid,
)
from rs_embed_pipeline_tests.products.conftest import (
    tile_vectors as written_vectors,
)

SCENES = {t: [f"S2A_{i}", f"S2B_{i}"] for i, t in enumerate(tiny_grid()["tile_id"])}


@pytest.fixture(scope="module")
def parquet_file(tiny_cube, tmp_path_factory):
    grid = tiny_grid()
    vectors = tile_vectors(tiny_cube, grid, WINDOW_STARTS[2])
    table = geoparquet.pooled_table(grid, vectors, window_start=WINDOW_STARTS[2], window_end=WINDOW_STARTS[3],
                                    model_id="terrafm_b", weights_sha256="ab" * 32, modality="s2",
                                    dimensions=D_POOLED, scene_ids=SCENES)
    path = str(tmp_path_factory.mktemp("gpq") / "w.parquet")
    info = geoparquet.write_geoparquet(table, path, rows_per_group=2)
    return path, info


def test_vectors_come_from_the_cube_and_skip_empty_tiles(tiny_cube):
    vectors = tile_vectors(tiny_cube, tiny_grid(), WINDOW_STARTS[2])
    expected, _ = written_vectors(2)
    assert set(vectors) == set(expected) and not set(vectors) & MISSING[2]
    for tid, vec in expected.items():
        np.testing.assert_array_equal(vectors[tid], vec)


def test_duckdb_spatial_reads_geometry_vectors_and_covering(parquet_file):
    path, info = parquet_file
    assert info["rows"] == 5 and info["row_groups"] == 3
    con = duckdb_spatial()
    rows = con.execute(
        f"SELECT tile_id, ST_AsWKB(geometry), embedding, centre_lon, centre_lat, bbox.xmin, bbox.ymax, "
        f"window_start::VARCHAR, window_end::VARCHAR, utm_epsg, source_scene_ids, unique_id, typeof(geometry), "
        f"typeof(embedding::FLOAT[{D_POOLED}]) FROM read_parquet('{path}')").fetchall()
    grid = tiny_grid().set_index("tile_id")
    expected, _ = written_vectors(2)
    assert len(rows) == 5
    for tid, wkb, emb, lon, lat, xmin, ymax, start, end, epsg, scenes, uid, gtype, etype in rows:
        assert gtype == "GEOMETRY('EPSG:4326')" and etype == f"FLOAT[{D_POOLED}]"  # casts to DuckDB's ARRAY
        footprint = grid.loc[tid, "geometry"]
        assert shapely.equals_exact(shapely.from_wkb(bytes(wkb)), footprint, tolerance=1e-12)
        np.testing.assert_array_equal(np.asarray(emb, dtype=np.float32), expected[tid])
        assert footprint.contains(shapely.Point(lon, lat))
        assert (xmin, ymax) == (footprint.bounds[0], footprint.bounds[3])
        assert (start, end, epsg, scenes) == (WINDOW_STARTS[2], WINDOW_STARTS[3], 32632, SCENES[tid])
        assert uid == geoparquet.unique_id(tid, WINDOW_STARTS[2], WINDOW_STARTS[3], "terrafm_b", "ab" * 32, "s2")
    # A spatial query people run: the tiles whose footprint contains a point.
    lon, lat = rows[0][3], rows[0][4]
    hit = con.execute(f"SELECT tile_id FROM read_parquet('{path}') WHERE bbox.xmin <= {lon} AND bbox.xmax >= {lon} "
                      f"AND bbox.ymin <= {lat} AND bbox.ymax >= {lat} AND ST_Contains(geometry, ST_Point({lon}, {lat}))"
                      ).fetchall()
    assert hit == [(rows[0][0],)]


def test_geoparquet_1_1_metadata_hilbert_order_and_row_groups(parquet_file):
    path, _ = parquet_file
    meta = pq.ParquetFile(path)
    geo = json.loads(meta.schema_arrow.metadata[b"geo"])
    col = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry" and col["encoding"] == "WKB"
    assert col["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    assert col["crs"]["id"] == {"authority": "EPSG", "code": 4326} and col["geometry_types"] == ["Polygon"]
    assert meta.metadata.num_row_groups == 3
    emb_type = meta.schema_arrow.field("embedding").type
    assert emb_type.list_size == D_POOLED and str(emb_type.value_type) == "float"  # fixed_size_list<float32>
    # Row-group statistics of the covering column exist (what lets readers skip row groups).
    stats = meta.metadata.row_group(0).column(meta.schema_arrow.get_field_index("bbox")).statistics
    assert stats is not None and stats.has_min_max
    table = meta.read()
    lon, lat = table["centre_lon"].to_numpy(), table["centre_lat"].to_numpy()
    h = geoparquet.hilbert_index(lon, lat, (lon.min(), lat.min(), lon.max(), lat.max()))
    assert np.all(np.diff(h) > 0), "rows are in Hilbert order"
    assert len(set(table["unique_id"].to_pylist())) == table.num_rows


def test_geopandas_reads_it(parquet_file):
    path, _ = parquet_file
    df = gpd.read_parquet(path)
    assert df.crs.to_epsg() == 4326 and len(df) == 5
    grid = tiny_grid().set_index("tile_id")
    for tid, geom in zip(df["tile_id"], df.geometry):
        assert geom.equals_exact(grid.loc[tid, "geometry"], tolerance=1e-12)
    assert np.stack(df["embedding"].to_numpy()).shape == (5, D_POOLED)


def test_hilbert_curve_visits_every_cell_once():
    n = 8
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    d = geoparquet.hilbert_index(xs.ravel(), ys.ravel(), (0, 0, n - 1, n - 1), order=3)
    assert sorted(d.tolist()) == list(range(n * n))
    order = np.argsort(d)
    steps = np.abs(np.diff(xs.ravel()[order])) + np.abs(np.diff(ys.ravel()[order]))
    assert np.all(steps == 1), "consecutive cells on a Hilbert curve are neighbours"


def test_row_groups_are_sized_by_vector_bytes():
    assert geoparquet.row_group_rows(768) == pytest.approx(64 * 2**20 // (4 * 768 + 256))
    assert geoparquet.row_group_rows(4) == 100_000


def test_a_window_without_embeddings_gives_an_empty_valid_file(tmp_path):
    table = geoparquet.pooled_table(tiny_grid(), {}, window_start=WINDOW_STARTS[1], window_end=WINDOW_STARTS[2],
                                    model_id="terrafm_b", weights_sha256="ab" * 32, modality="s2", dimensions=D_POOLED)
    path = str(tmp_path / "empty.parquet")
    assert geoparquet.write_geoparquet(table, path)["rows"] == 0
    assert duckdb_spatial().execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone() == (0,)
    assert len(gpd.read_parquet(path)) == 0


def test_rewriting_gives_the_same_bytes_and_ids(parquet_file, tiny_cube, tmp_path):
    path, _ = parquet_file
    grid = tiny_grid()
    table = geoparquet.pooled_table(grid, tile_vectors(tiny_cube, grid, WINDOW_STARTS[2]),
                                    window_start=WINDOW_STARTS[2], window_end=WINDOW_STARTS[3], model_id="terrafm_b",
                                    weights_sha256="ab" * 32, modality="s2", dimensions=D_POOLED, scene_ids=SCENES)
    again = str(tmp_path / "again.parquet")
    geoparquet.write_geoparquet(table, again, rows_per_group=2)
    with open(path, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()
    # One model embeds S1 and S2 with the same weights: the rows of a tile must not share an id.
    ids = {m: geoparquet.unique_id("t", "2024-01-01", "2024-04-01", "terrafm_b", "ab" * 32, m) for m in ("s1", "s2")}
    assert ids["s1"] != ids["s2"] and all(len(v) == 32 for v in ids.values())
    assert ids["s2"] == geoparquet.unique_id("t", "2024-01-01", "2024-04-01", "terrafm_b", "ab" * 32, "s2")


def test_two_utm_zones_in_one_file(tmp_path):
    """Tiles of two zones: each vector is read from its own zone group, each centre is computed
    in its own CRS, the footprints stay EPSG:4326; a zone the cube never wrote has no rows."""
    import geopandas as gpd
    from pyproj import Transformer

    from rs_embed_pipeline.core.grid import tile_id
    from rs_embed_pipeline.stores.cube import CallableGrids, CubeWindowWrite, write_cube_window
    from rs_embed_pipeline_tests.products.conftest import (
        CELLS,
        CUBE_ATTRS,
        D_GRID,
        SCALE_M,
        SIZE_PX,
        TILE_M,
        tiny_tiles,
    )

    east = tiny_tiles()[:2]
    # Zone 31's lattice just west of 6 E (x ~ 790 km of zone 31 is the same longitude band as x ~ 320 km of 32).
    west = [{"tile_id": tile_id(32631, SIZE_PX, SCALE_M, c, 16100), "utm_epsg": 32631, "x0": c * TILE_M,
             "y0": 16100 * TILE_M, "size_px": SIZE_PX, "scale_m": SCALE_M} for c in (2470, 2471)]
    far = [{"tile_id": tile_id(32630, SIZE_PX, SCALE_M, 1000, 16100), "utm_epsg": 32630, "x0": 1000 * TILE_M,
            "y0": 16100 * TILE_M, "size_px": SIZE_PX, "scale_m": SCALE_M}]
    rng = np.random.default_rng(7)
    pooled = {t["tile_id"]: rng.normal(size=D_POOLED).astype(np.float32) for t in east + west}
    uri = str(tmp_path / "zones.zarr")
    write_cube_window(uri, CubeWindowWrite(
        tiles=east + west, pooled=pooled,
        reader=CallableGrids(grids=lambda tid: np.ones((D_GRID, CELLS, CELLS), np.float32)), window_index=0,
        window_starts=WINDOW_STARTS, attrs=CUBE_ATTRS, fingerprint="zones",
        grid_shape=(D_GRID, CELLS, CELLS), pooled_dim=D_POOLED))
    rows = []
    for t in east + west + far:
        to_lonlat = Transformer.from_crs(t["utm_epsg"], 4326, always_xy=True)
        box = shapely.box(t["x0"], t["y0"] - TILE_M, t["x0"] + TILE_M, t["y0"])
        rows.append({**t, "geometry": shapely.transform(box, lambda xy, f=to_lonlat: np.column_stack(
            f.transform(xy[:, 0], xy[:, 1])))})
    grid = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
    vectors = tile_vectors(uri, grid, WINDOW_STARTS[0])   # zone 32630 is not in the cube: no vector, no error
    assert set(vectors) == set(pooled)
    for tid, vec in pooled.items():
        np.testing.assert_array_equal(vectors[tid], vec)
    table = geoparquet.pooled_table(grid, vectors, window_start=WINDOW_STARTS[0], window_end=WINDOW_STARTS[1],
                                    model_id="terrafm_b", weights_sha256="ab" * 32, modality="s2", dimensions=D_POOLED)
    path = str(tmp_path / "zones.parquet")
    geoparquet.write_geoparquet(table, path)
    df = gpd.read_parquet(path).set_index("tile_id")
    assert sorted(df["utm_epsg"].unique().tolist()) == [32631, 32632] and len(df) == 4
    for t in east + west:
        row = df.loc[t["tile_id"]]
        lon, lat = Transformer.from_crs(t["utm_epsg"], 4326, always_xy=True).transform(
            t["x0"] + TILE_M / 2, t["y0"] - TILE_M / 2)
        assert (row["centre_lon"], row["centre_lat"]) == pytest.approx((lon, lat), abs=1e-9)
        assert row.geometry.contains(shapely.Point(lon, lat))
    meta = json.loads(pq.ParquetFile(path).schema_arrow.metadata[b"geo"])["columns"]["geometry"]
    assert meta["bbox"] == pytest.approx([df.geometry.bounds["minx"].min(), df.geometry.bounds["miny"].min(),
                                          df.geometry.bounds["maxx"].max(), df.geometry.bounds["maxy"].max()])
