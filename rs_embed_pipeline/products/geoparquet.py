"""Pooled embeddings as GeoParquet 1.1: one row per tile x window, ready for vector search.

DuckDB (spatial), GeoPandas, GDAL/OGR, LanceDB and pgvector loaders read it as it is:

=================  =========================================  ==========================================
column             type                                       meaning
=================  =========================================  ==========================================
unique_id          string                                     sha256(tile|start|end|model|weights|modality)[:32]
tile_id            string                                     the global tile id (grid.py)
window_start/end   date32                                     the time window, end exclusive
utm_epsg           int32                                      the tile's UTM CRS
centre_lon/lat     float64                                    the tile centre (exact, from UTM)
model_id           string                                     e.g. ``terrafm_b``
weights_sha256     string                                     the weights that made the vector
modality           string                                     ``s2`` / ``s1``
source_scene_ids   list<string>                               the scenes composited for the tile
embedding          fixed_size_list<float32>[D]                the pooled vector (as in the cube)
bbox               struct<xmin, ymin, xmax, ymax: float64>    GeoParquet 1.1 bbox covering column
geometry           binary (WKB)                               the footprint polygon, EPSG:4326
=================  =========================================  ==========================================

Rows are sorted along a Hilbert curve of the tile centres, so each row group covers a compact area
and a bbox filter (``bbox.xmin <= ...``) skips most row groups from their statistics. Row groups
hold about :data:`ROW_GROUP_BYTES` of vectors.

The same files laid out as one Hive-partitioned dataset (:func:`dataset_path`:
``window_start=<start>/<region or cell>.parquet``): a reader given the whole folder
(``read_parquet('<root>/**/*.parquet', hive_partitioning=true)``) opens only the files of the
windows a ``window_start`` filter keeps, and reads from them only the row groups whose ``bbox``
statistics meet a bbox filter. The key is ``window_start``, the column's own name, so one filter
works on a file and on the dataset (``window`` is a reserved word in SQL).

Geometry encodings (:data:`GEOMETRY_ENCODINGS`): ``wkb`` (GeoParquet 1.1: a binary column
described by the ``geo`` metadata; the default) or ``parquet_geometry``: the same WKB bytes
annotated with Parquet's GEOMETRY logical type (what GeoParquet 2.0 builds on), with per-row-group
bounding-box statistics, and the ``geo`` metadata kept so GeoParquet 1.1 readers read it as before.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer

from rs_embed_pipeline.stores.files import write_bytes_atomic

GEOPARQUET_VERSION = "1.1.0"
GeometryEncoding = Literal["wkb", "parquet_geometry"]
GEOMETRY_ENCODINGS: tuple[GeometryEncoding, ...] = ("wkb", "parquet_geometry")
# Hive partition key of the dataset layout: the column's own name (``window`` is reserved in SQL).
DATASET_PARTITION = "window_start"
ROW_GROUP_BYTES = 64 * 2**20
HILBERT_ORDER = 16


def unique_id(tile_id: str, start: str, end: str, model_id: str, weights_sha256: str, modality: str) -> str:
    """Deterministic row id: the same tile, window, model, weights and modality give the same id
    anywhere. The modality is part of it because one model (TerraFM-B) embeds both S1 and S2 with
    the same weights: without it the S1 and S2 rows of a tile would share an id in a vector store."""
    return hashlib.sha256("|".join([tile_id, start, end, model_id, weights_sha256, modality]).encode()).hexdigest()[:32]


def hilbert_index(x: np.ndarray, y: np.ndarray, bounds: Sequence[float], order: int = HILBERT_ORDER) -> np.ndarray:
    """Position of points on a Hilbert curve of ``2**order`` cells a side over ``bounds``."""
    n = 1 << order
    minx, miny, maxx, maxy = bounds
    xi = np.clip(((np.asarray(x, float) - minx) / max(maxx - minx, 1e-12) * (n - 1)).astype(np.int64), 0, n - 1)
    yi = np.clip(((np.asarray(y, float) - miny) / max(maxy - miny, 1e-12) * (n - 1)).astype(np.int64), 0, n - 1)
    d = np.zeros(xi.shape, dtype=np.int64)
    s = n >> 1
    while s > 0:
        rx = (xi & s) > 0
        ry = (yi & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        xi = np.where(flip, n - 1 - xi, xi)
        yi = np.where(flip, n - 1 - yi, yi)
        xi, yi = np.where(~ry, yi, xi), np.where(~ry, xi, yi)
        s >>= 1
    return d


def _centres(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = np.zeros(len(records)), np.zeros(len(records))
    for epsg in {int(r["utm_epsg"]) for r in records}:
        idx = [i for i, r in enumerate(records) if int(r["utm_epsg"]) == epsg]
        side = np.array([float(records[i]["size_px"]) * float(records[i]["scale_m"]) for i in idx])
        x = np.array([float(records[i]["x0"]) for i in idx]) + side / 2
        y = np.array([float(records[i]["y0"]) for i in idx]) - side / 2
        lon[idx], lat[idx] = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    return lon, lat


def pooled_table(
    tiles: Any,
    vectors: Mapping[str, np.ndarray],
    *,
    window_start: str,
    window_end: str,
    model_id: str,
    weights_sha256: str,
    modality: str,
    dimensions: int,
    scene_ids: Mapping[str, Sequence[str]] | None = None,
) -> pa.Table:
    """The GeoParquet table of the tiles (tile_grid rows, GeoDataFrame in EPSG:4326) that have a
    vector in ``vectors``, in Hilbert order, with the GeoParquet 1.1 ``geo`` metadata."""
    records = [r for r in (tiles.to_dict("records") if hasattr(tiles, "to_dict") else list(tiles))
               if str(r["tile_id"]) in vectors]
    lon, lat = _centres(records)
    geoms = [r["geometry"] for r in records]
    if records:
        bounds = shapely.bounds(np.asarray(geoms, dtype=object))
        order = np.argsort(hilbert_index(lon, lat, (lon.min(), lat.min(), lon.max(), lat.max())), kind="stable")
    else:
        bounds, order = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    records = [records[i] for i in order]
    lon, lat, bounds = lon[order], lat[order], bounds[order]
    geoms = [geoms[i] for i in order]
    tids = [str(r["tile_id"]) for r in records]
    flat = (np.stack([np.asarray(vectors[t], dtype=np.float32) for t in tids]).ravel() if tids
            else np.zeros(0, dtype=np.float32))
    scenes = dict(scene_ids or {})
    n = len(records)
    table = pa.table({
        "unique_id": pa.array([unique_id(t, window_start, window_end, model_id, weights_sha256, modality)
                               for t in tids], pa.string()),
        "tile_id": pa.array(tids, pa.string()),
        "window_start": pa.array(np.full(n, np.datetime64(window_start, "D")), pa.date32()),
        "window_end": pa.array(np.full(n, np.datetime64(window_end, "D")), pa.date32()),
        "utm_epsg": pa.array([int(r["utm_epsg"]) for r in records], pa.int32()),
        "centre_lon": pa.array(lon, pa.float64()),
        "centre_lat": pa.array(lat, pa.float64()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "weights_sha256": pa.array([weights_sha256] * n, pa.string()),
        "modality": pa.array([modality] * n, pa.string()),
        "source_scene_ids": pa.array([list(scenes.get(t, [])) for t in tids], pa.list_(pa.string())),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), int(dimensions)),
        "bbox": pa.StructArray.from_arrays([pa.array(bounds[:, i], pa.float64()) for i in range(4)],
                                           names=["xmin", "ymin", "xmax", "ymax"]),
        "geometry": pa.array([shapely.to_wkb(g) for g in geoms], pa.binary()),
    })
    geo: dict[str, Any] = {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": {
            "encoding": "WKB",
            "geometry_types": sorted({g.geom_type for g in geoms}),
            "crs": CRS.from_epsg(4326).to_json_dict(),
            "bbox": ([float(bounds[:, 0].min()), float(bounds[:, 1].min()), float(bounds[:, 2].max()),
                      float(bounds[:, 3].max())] if n else []),
            "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
        }},
    }
    if not n:
        del geo["columns"]["geometry"]["bbox"]
    return table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})


def row_group_rows(dimensions: int) -> int:
    """Rows per row group: about ROW_GROUP_BYTES of vectors, between 1,024 and 100,000 rows."""
    return int(np.clip(ROW_GROUP_BYTES // (4 * max(1, dimensions) + 256), 1024, 100_000))


def dataset_path(window_start: str, region: str) -> str:
    """A partition's file in the Hive-partitioned dataset, relative to its root: one file per region
    (or cell of a split region) per window."""
    return f"{DATASET_PARTITION}={window_start}/{region}.parquet"


class _GeoArrowWkb(pa.ExtensionType):
    """``geoarrow.wkb``: the extension type pyarrow (>= 21) writes as Parquet's GEOMETRY logical type.
    Not registered (a process may hold geoarrow-pyarrow's): writing needs only the instance."""

    def __init__(self) -> None:
        super().__init__(pa.binary(), "geoarrow.wkb")

    def __arrow_ext_serialize__(self) -> bytes:
        return b"{}"  # no "crs": Parquet's default, OGC:CRS84 (lon / lat, as the footprints are)

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _GeoArrowWkb:
        return cls()


def with_geometry_encoding(table: pa.Table, geometry: GeometryEncoding) -> pa.Table:
    """``table`` with its WKB ``geometry`` column as plain binary (``wkb``) or annotated as Parquet
    GEOMETRY (``parquet_geometry``); the ``geo`` metadata is kept either way."""
    if geometry not in GEOMETRY_ENCODINGS:
        raise ValueError(f"geometry encoding {geometry!r}; valid: {', '.join(GEOMETRY_ENCODINGS)}")
    if geometry == "wkb":
        return table
    i = table.schema.get_field_index("geometry")
    column = pa.ExtensionArray.from_storage(_GeoArrowWkb(), table.column(i).combine_chunks())
    return table.set_column(i, pa.field("geometry", column.type), column).replace_schema_metadata(
        table.schema.metadata)


def write_geoparquet(table: pa.Table, uri: str, storage_options: Mapping[str, Any] | None = None,
                     rows_per_group: int | None = None, *, geometry: GeometryEncoding = "wkb",
                     also_to: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``table`` (zstd, page statistics on) atomically to ``uri`` (a path or fsspec URL) and
    the same bytes to each of ``also_to`` (the dataset layout's file); ``geometry``: the encoding."""
    dims = table.schema.field("embedding").type.list_size
    rows = int(rows_per_group or row_group_rows(dims))
    buf = io.BytesIO()
    pq.write_table(with_geometry_encoding(table, geometry), buf, row_group_size=rows, compression="zstd",
                   write_statistics=True)
    payload = buf.getvalue()
    for target in (uri, *also_to):
        write_bytes_atomic(target, payload, storage_options)
    return {"uri": uri, "rows": table.num_rows, "row_groups": -(-table.num_rows // rows) if table.num_rows else 0,
            "bytes": len(payload), "dimensions": dims}
