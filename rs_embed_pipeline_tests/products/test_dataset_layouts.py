"""Catalogs that scale (issue 20 point 4): the Items of a Collection as one stac-geoparquet file
(read back by rustac, pystac and DuckDB), the pooled GeoParquet as a Hive-partitioned dataset that
DuckDB prunes by window and bbox (files and row groups read, counted), and the Parquet GEOMETRY
encoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import rustac
import shapely

from rs_embed_pipeline.core.grid import Tile
from rs_embed_pipeline.products import geoparquet, stac_catalog
from rs_embed_pipeline_tests.products.conftest import duckdb_spatial
from rs_embed_pipeline_tests.products.parquet_reads import bbox_query, query_reads
from rs_embed_pipeline_tests.products.test_stac_catalog import LOCAL, STAC_API, _collection, _item
from rs_embed_pipeline_tests.stores import cells as C

D = 1024          # wide enough that a row group's bytes are apart from the footer DuckDB reads first
ROWS_PER_GROUP = 4


def cell_table(epsg: int, i: int, j: int, window: int) -> pa.Table:
    """A cell's pooled GeoParquet table in a window (footprints as grid.py makes them)."""
    tiles = [{**t, "geometry": Tile.from_row(t).with_footprint().footprint} for t in C.cell_tiles(epsg, i, j)]
    rng = np.random.default_rng([epsg, i, j, window])
    vectors = {str(t["tile_id"]): rng.standard_normal(D).astype(np.float32) for t in tiles}
    return geoparquet.pooled_table(tiles, vectors, window_start=C.STARTS[window], window_end=C.STARTS[window + 1],
                                   model_id="tiny", weights_sha256="ab" * 32, modality="s2", dimensions=D)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Any]:
    """Four 1 km cells x two windows, written as the GeoParquet asset writes them: the per-region
    file and the same bytes in the Hive-partitioned dataset."""
    tmp = tmp_path_factory.mktemp("dataset")
    tables = {}
    for epsg, i, j in C.CELLS[:4]:
        for window in (0, 1):
            name, start = C.cell_name(epsg, i, j), C.STARTS[window]
            tables[(name, start)] = table = cell_table(epsg, i, j, window)
            geoparquet.write_geoparquet(table, str(tmp / "geoparquet" / name / f"{start}.parquet"),
                                        rows_per_group=ROWS_PER_GROUP,
                                        also_to=[str(tmp / "dataset" / geoparquet.dataset_path(start, name))])
    return {"root": tmp / "dataset", "flat": tmp / "geoparquet", "tables": tables}


def test_the_dataset_holds_the_per_region_files_bytes(dataset):
    files = sorted(p.relative_to(dataset["root"]).as_posix() for p in dataset["root"].rglob("*.parquet"))
    assert files == sorted(f"window_start={s}/{n}.parquet" for n, s in dataset["tables"])
    for name, start in dataset["tables"]:
        flat = (dataset["flat"] / name / f"{start}.parquet").read_bytes()
        assert (dataset["root"] / f"window_start={start}" / f"{name}.parquet").read_bytes() == flat
    # GeoParquet 1.1 metadata and the covering column, as in the per-region files.
    geo = json.loads(pq.read_schema(next(dataset["root"].rglob("*.parquet"))).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]


def _expected_row_groups(root: Path, start: str, bbox: tuple[float, float, float, float]) -> set[tuple[str, int]]:
    """The row groups a reader must read: its window's, whose bbox statistics meet ``bbox``."""
    out = set()
    for path in sorted((root / f"window_start={start}").glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(c).path for c in range(meta.num_columns)]
        for g in range(meta.num_row_groups):
            stats = {names[c]: meta.row_group(g).column(c).statistics for c in range(meta.num_columns)}
            if (stats["bbox.xmin"].min <= bbox[2] and stats["bbox.ymin"].min <= bbox[3]
                    and stats["bbox.xmax"].max >= bbox[0] and stats["bbox.ymax"].max >= bbox[1]):
                out.add((str(path.resolve()), g))
    return out


def test_duckdb_prunes_files_by_window_and_row_groups_by_bbox(dataset):
    root, start = dataset["root"], C.STARTS[1]
    name = C.cell_name(*C.CELLS[0])
    table = dataset["tables"][(name, start)]
    # A 100 m box inside the cell's first tile (Hilbert order: the row groups hold compact areas).
    lon, lat = table.column("centre_lon")[0].as_py(), table.column("centre_lat")[0].as_py()
    box = (lon - 0.0007, lat - 0.00045, lon + 0.0007, lat + 0.00045)
    sql, params = bbox_query(start, box, "tile_id, window_start::VARCHAR")
    reads = query_reads(root, sql, params)

    # The rows: every tile of the window whose footprint's bbox meets the box, and no other.
    expected = sorted(str(t) for (n, s), tab in dataset["tables"].items() if s == start
                      for t, b in zip(tab.column("tile_id").to_pylist(), tab.column("bbox").to_pylist())
                      if b["xmin"] <= box[2] and b["ymin"] <= box[3] and b["xmax"] >= box[0] and b["ymax"] >= box[1])
    assert [r[0] for r in reads.rows] == expected and 1 <= len(expected) <= 4
    assert {r[1] for r in reads.rows} == {start}
    # Files: the window's four (footers) and the dataset's first file, whose footer DuckDB reads for
    # the schema; the other window's files are never opened.
    first = str(sorted(root.rglob("*.parquet"))[0].resolve())
    assert reads.files_total == 8 and "2024-01-01" in first
    assert reads.files_opened == {str(p.resolve()) for p in (root / f"window_start={start}").glob("*.parquet")} | {
        first}
    # Row groups: exactly those whose statistics meet the box, all in the one cell's file.
    assert reads.row_groups_read == _expected_row_groups(root, start, box)
    assert {Path(p).stem for p, _ in reads.row_groups_read} == {name}
    assert len(reads.row_groups_read) < reads.row_groups_total // 8

    # The whole dataset, for comparison: every file and every row group.
    full = query_reads(root, "SELECT count(*), sum(len(embedding)) FROM read_parquet({files}, hive_partitioning=true)")
    assert full.rows == [(sum(t.num_rows for t in dataset["tables"].values()),
                          D * sum(t.num_rows for t in dataset["tables"].values()))]
    assert len(full.files_opened) == 8 and len(full.row_groups_read) == full.row_groups_total
    assert reads.bytes_read < full.bytes_read / 5  # mostly the five footers at this size


def test_parquet_geometry_encoding(dataset, tmp_path):
    table = dataset["tables"][(C.cell_name(*C.CELLS[0]), C.STARTS[0])]
    path = str(tmp_path / "native.parquet")
    geoparquet.write_geoparquet(table, path, rows_per_group=ROWS_PER_GROUP, geometry="parquet_geometry")
    file = pq.ParquetFile(path)
    assert "Geometry" in str(file.schema.column(file.schema.names.index("geometry")).logical_type)
    # Per-row-group bounding boxes in the Parquet statistics, equal to the covering column's.
    g = file.metadata.row_group(0).column(file.schema.names.index("geometry")).geo_statistics
    first = table.slice(0, ROWS_PER_GROUP).column("bbox").to_pylist()
    assert (g.xmin, g.ymin, g.xmax, g.ymax) == (min(b["xmin"] for b in first), min(b["ymin"] for b in first),
                                                 max(b["xmax"] for b in first), max(b["ymax"] for b in first))
    # The geo metadata stays: GeoPandas (GeoParquet 1.1) reads the same footprints ...
    wkb = table.column("geometry").to_pylist()
    assert json.loads(file.schema_arrow.metadata[b"geo"])["version"] == "1.1.0"
    frame = gpd.read_parquet(path)
    assert frame.crs.to_epsg() == 4326 and [g.wkb for g in frame.geometry] == wkb
    # ... and DuckDB types the column GEOMETRY from the Parquet type itself.
    rows = duckdb_spatial().execute(f"SELECT typeof(geometry), ST_AsWKB(geometry) FROM read_parquet('{path}')").fetchall()
    assert [bytes(w) for _, w in rows] == wkb and rows[0][0].startswith("GEOMETRY")
    with pytest.raises(ValueError, match=r"^geometry encoding 'geojson'; valid: wkb, parquet_geometry$"):
        geoparquet.write_geoparquet(table, path, geometry="geojson")  # type: ignore[arg-type]


def _items() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    a, b, c = _item(STAC_API), _item(LOCAL), _item(LOCAL)
    b["id"], b["properties"]["emb:quantization"] = "tiny_2024-04-01", {"method": "int8_per_cell"}
    c["id"] = "other_2024-01-01"
    c["geometry"] = shapely.geometry.mapping(shapely.box(7.0, 47.0, 7.1, 47.1))
    c["bbox"] = [7.0, 47.0, 7.1, 47.1]
    c["assets"]["geoparquet"] = {"href": "../../geoparquet/other/2024-01-01.parquet",
                                 "type": stac_catalog.PARQUET_MEDIA_TYPE, "roles": ["data"]}
    items = [json.loads(json.dumps(it)) for it in (a, b, c)]
    return items, _collection({f"./items/{it['id']}.json": it for it in items})


def test_stac_geoparquet_rows_are_the_items(tmp_path):
    items, collection = _items()
    out = stac_catalog.write_items_geoparquet(str(tmp_path / "stac"), items, collection)
    path = tmp_path / "stac" / "items.parquet"
    assert out == {"uri": str(path), "items": 3, "bytes": path.stat().st_size}
    schema = pq.read_schema(path)
    meta = json.loads(schema.metadata[b"stac-geoparquet"])
    assert meta == {"version": "1.0.0", "collections": {"terrafm_b_s2": collection}}
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["covering"]["bbox"]["ymax"] == ["bbox", "ymax"]
    for key in ("datetime", "start_datetime", "end_datetime"):
        assert schema.field(key).type == pa.timestamp("ms", tz="UTC")
    assert schema.names[:9] == ["type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links",
                                "assets", "collection"]

    # rustac reads back every Item (sorted by id); keys an Item lacks come back as null.
    read = rustac.read_sync(str(path))["features"]
    assert [f["id"] for f in read] == sorted(it["id"] for it in items)
    for got in read:
        want = next(it for it in items if it["id"] == got["id"])
        got = json.loads(json.dumps(got))
        assert {k: v for k, v in got["properties"].items() if v is not None or k in want["properties"]} \
            == want["properties"]
        assert {k: v for k, v in got["assets"].items() if v is not None} == want["assets"]
        assert {k: got[k] for k in ("type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links",
                                    "collection")} == {k: want[k] for k in ("type", "stac_version", "stac_extensions",
                                                                            "id", "geometry", "bbox", "links",
                                                                            "collection")}
    # pystac loads them (through rustac's reader) ...
    loaded = pystac.ItemCollection.from_dict(rustac.read_sync(str(path)))
    assert [it.id for it in loaded] == sorted(it["id"] for it in items)
    assert str(loaded.items[1].common_metadata.start_datetime) == "2024-01-01 00:00:00+00:00"
    # ... and DuckDB filters on the covering bbox and the window without reading JSON.
    rows = duckdb_spatial().execute(
        f"SELECT id, \"rs_embed:region\", start_datetime::VARCHAR FROM read_parquet('{path}') "
        "WHERE bbox.xmin <= 7.05 AND bbox.xmax >= 7.05 AND bbox.ymin <= 47.05 AND bbox.ymax >= 47.05").fetchall()
    assert rows == [("other_2024-01-01", "tiny", "2024-01-01 00:00:00+00")]


def test_an_item_property_named_like_a_column_is_refused():
    items, _ = _items()
    items[0]["properties"]["assets"] = 1
    with pytest.raises(ValueError, match=r"^Item property 'assets' has the name of a top-level stac-geoparquet column$"):
        stac_catalog.items_table(items)
