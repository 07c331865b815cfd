"""Similarity search over a cube window: "where else looks like this?".

```python
from rs_embed_pipeline.products.similarity import build_index, search
index = build_index("data/cubes/terrafm_b_s2/demo.zarr", window="2024-01-01")   # or load_index(uri)
hits = search(index, lon=6.62, lat=46.51, k=20)     # GeoDataFrame: rank, score, cell_id, tile_id, ...
hits = search(index, tile_id="32632_p224_s10_c00141_r02300", k=5)
hits = search(index, polygon={"type": "Polygon", "coordinates": [...]}, k=5)  # mean vector of its cells
```

* Cells are the cube's grid cells (feature-map cells, ``kind="grid"``) or its pooled tiles
  (``kind="pooled"``) of one window, every UTM zone of the region together. Each is identified by
  ``cell_id``: ``<tile_id>/y<i>x<j>`` (row i, column j of the tile's feature map, from its upper
  left) for grid cells, the tile id for pooled cells.
* Score = cosine similarity. Vectors are L2-normalised once when the index is built, so a query is
  one matrix-vector product (exact) or an HNSW walk (approximate).
* Exact numpy search below :data:`ANN_MIN_CELLS` cells; above, a FAISS ``IndexHNSWFlat`` (inner
  product, M=32, efConstruction=64, efSearch=128). Its candidates (a few times k) are re-scored
  exactly, and the query's own cell is always the top hit for point and tile queries, so the
  scores shown are exact cosines whichever index found them. FAISS (faiss-cpu on PyPI, maintained
  by Meta) was measured against DuckDB's ``vss`` (its PyPI extension wheel pins DuckDB 1.5.x; this
  environment has 2.x), hnswlib (no maintained wheels) and IVF-Flat: see benchmarks/bench_search.py
  and the README.
* An index is stored as a folder (local or ``s3://``): ``manifest.json``, ``cells.parquet`` (one
  row per cell: ids, zone, UTM centre, cell size), ``vectors.npy`` (float32, normalised) and, for
  large windows, ``hnsw.faiss``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from typing import Any, Literal, get_args
from collections.abc import Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from rs_embed_pipeline.core.grid import parse_tile_id, tile_id as make_tile_id
from rs_embed_pipeline.stores.cube.reader import KINDS
from rs_embed_pipeline.stores.cube.reader import cube_zones, open_cube
from rs_embed_pipeline.stores.files import write_bytes_atomic
import fsspec

ANN_MIN_CELLS = 50_000   # below: exact search (a query over 50k x 768 costs ~15 ms); above: HNSW
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128
RESCORE_FACTOR = 4       # ANN candidates per asked result, re-scored exactly
AnnMethod = Literal["auto", "hnsw", "exact"]
ANN_METHODS: tuple[str, ...] = get_args(AnnMethod)
INDEX_VERSION = 1


class SearchError(ValueError):
    """A query that cannot be answered (outside the cube, an empty cell, an unknown id, ...)."""


@dataclasses.dataclass
class SearchIndex:
    """The cells of one cube window with their normalised vectors (and an ANN index when large)."""

    cells: pd.DataFrame          # cell_id, tile_id, epsg, iy, ix, x, y, cell_m
    vectors: np.ndarray          # float32 [N, D], L2-normalised
    window: str
    kind: str
    ann: Any = None              # faiss index or None (exact)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def method(self) -> str:
        return "hnsw" if self.ann is not None else "exact"

    def __len__(self) -> int:
        return len(self.cells)

    # ------------------------------------------------------------------------------ queries
    def top_k(self, query: np.ndarray, k: int, must_include: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosine scores) of the ``k`` cells most similar to ``query`` [D], best first;
        ``must_include`` (the query's own cell) comes first whatever ties there are."""
        q = _normalise(np.asarray(query, dtype=np.float32)[None])[0]
        k = max(1, min(int(k), len(self)))
        if self.ann is None:
            scores = self.vectors @ q
            idx = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        else:
            self.ann.hnsw.efSearch = max(HNSW_EF_SEARCH, RESCORE_FACTOR * k)
            _, found = self.ann.search(q[None], min(len(self), RESCORE_FACTOR * k))
            idx = found[0][found[0] >= 0]
        if must_include is not None:
            idx = np.concatenate([[must_include], idx[idx != must_include]])
        exact = self.vectors[idx] @ q  # exact cosines, whichever index found the cells
        order = np.lexsort((idx, -exact))
        if must_include is not None:
            order = np.concatenate([[0], order[order != 0]])
        order = order[:k]
        return idx[order].astype(np.int64), exact[order]

    def cell_at(self, lon: float, lat: float) -> int:
        """Index of the cell that contains (lon, lat)."""
        best = None
        for epsg, rows in self.cells.groupby("epsg"):
            x, y = _to_utm(int(epsg), lon, lat)
            half = rows["cell_m"].to_numpy() / 2
            inside = (np.abs(rows["x"].to_numpy() - x) <= half) & (np.abs(rows["y"].to_numpy() - y) <= half)
            if inside.any():
                best = int(rows.index[np.flatnonzero(inside)[0]])
                break
        if best is None:
            raise SearchError(f"({lon}, {lat}) is not on a cell of this {self.kind} index with an embedding "
                              f"(window {self.window}; extent {self.extent_lonlat()}); pick a point inside the region")
        return best

    def extent_lonlat(self) -> list[float]:
        bounds = self.footprints(np.arange(len(self))).total_bounds if len(self) else [math.nan] * 4
        return [round(float(v), 5) for v in bounds]

    def footprints(self, indices: np.ndarray | Sequence[int]) -> gpd.GeoSeries:
        """Cell footprints (EPSG:4326) of ``indices``."""
        rows = self.cells.iloc[np.asarray(indices, dtype=np.int64)]
        out = []
        for epsg, part in rows.groupby("epsg", sort=False):
            half = part["cell_m"].to_numpy() / 2
            polys = shapely.box(part["x"] - half, part["y"] - half, part["x"] + half, part["y"] + half)
            out.append(gpd.GeoSeries(polys, index=part.index, crs=f"EPSG:{int(epsg)}").to_crs(4326))
        return pd.concat(out).loc[rows.index] if out else gpd.GeoSeries([], crs=4326)


def _normalise(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1)).astype(np.float32)


def _to_utm(epsg: int, lon: float, lat: float) -> tuple[float, float]:
    return pyproj.Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)


# ---------------------------------------------------------------------------------- building
def window_of(ds, window: str):
    """The slice of an ``open_cube`` dataset for ``window`` (its start date); error names the filled ones."""
    times = [str(t)[:10] for t in ds["time"].values]
    if window not in times:
        raise SearchError(f"window {window!r} is not a filled window of this cube; filled windows: "
                          f"{', '.join(times) or 'none'}")
    return ds.isel(time=times.index(window))


def cells_of(ds_window, kind: str, epsg: int, tiles: Mapping[tuple[int, int, int], str] | None = None
             ) -> tuple[pd.DataFrame, np.ndarray]:
    """Cells with a finite embedding of one zone's window slice: (table, raw vectors [N, D]).
    ``tiles``: (epsg, col, row) -> tile id of the region's tile grid (else derived from the lattice)."""
    values = np.asarray(ds_window["embedding"].values, dtype=np.float32)  # (y, x, feature)
    xs, ys = np.asarray(ds_window["x"].values), np.asarray(ds_window["y"].values)
    # Cell size from the CF grid mapping's GDAL GeoTransform ("x0 cell 0 y0 0 -cell"), which a
    # one-cell group has too.
    cell_m = float(str(ds_window["spatial_ref"].attrs["GeoTransform"]).split()[1])
    per_tile = int(ds_window.attrs.get("cells_per_tile", 1))
    iy, ix = np.nonzero(np.isfinite(values).all(axis=-1))
    x, y = xs[ix], ys[iy]
    tile_m = cell_m * per_tile
    cols = np.floor(x / tile_m).astype(np.int64)
    rows = np.floor(y / tile_m).astype(np.int64) + 1  # lattice: tile (col, row) spans y in [(row-1)T, rowT]
    gsd = float(ds_window.attrs.get("geoemb:gsd", 10.0))
    size_px = int(round(tile_m / gsd))
    tile_ids = [(tiles or {}).get((epsg, int(c), int(r))) or make_tile_id(epsg, size_px, gsd, int(c), int(r))
                for c, r in zip(cols, rows)]
    # Position inside the tile, from its upper-left corner.
    ty = np.floor((rows * tile_m - y) / cell_m).astype(np.int64)
    tx = np.floor((x - cols * tile_m) / cell_m).astype(np.int64)
    if kind == "grid":
        cell_ids = [f"{t}/y{a}x{b}" for t, a, b in zip(tile_ids, ty, tx)]
    else:
        cell_ids = list(tile_ids)
    table = pd.DataFrame({"cell_id": cell_ids, "tile_id": tile_ids, "epsg": np.full(len(ix), epsg, dtype=np.int64),
                          "iy": iy.astype(np.int64), "ix": ix.astype(np.int64), "x": x.astype(np.float64),
                          "y": y.astype(np.float64), "cell_m": np.full(len(ix), cell_m)})
    return table, values[iy, ix]


def build_index(cube_uri: str, window: str, kind: str = "grid", *, storage_options: Mapping[str, Any] | None = None,
                tiles: pd.DataFrame | None = None, ann: str = "auto", ann_min_cells: int = ANN_MIN_CELLS
                ) -> SearchIndex:
    """Index the cells of ``window`` of a cube (every UTM zone). ``ann``: ``"auto"`` (HNSW from
    ``ann_min_cells`` cells), ``"hnsw"`` or ``"exact"``. ``tiles``: the region's tile_grid rows
    (names the tiles; derived from the lattice otherwise)."""

    if kind not in KINDS:
        raise SearchError(f"kind {kind!r} is not an index kind; valid: {', '.join(KINDS)}")
    if ann not in ANN_METHODS:
        raise SearchError(f"ann {ann!r} is not an index method; valid: {', '.join(ANN_METHODS)}")
    t0 = time.perf_counter()
    lookup = None
    if tiles is not None and len(tiles):
        lookup = {}
        for t in tiles.itertuples():
            p = parse_tile_id(str(t.tile_id))
            lookup[(p["utm_epsg"], p["col"], p["row"])] = str(t.tile_id)
    tables, vectors = [], []
    for zone in cube_zones(cube_uri, storage_options):
        ds = open_cube(cube_uri, zone=zone, kind=kind, storage_options=dict(storage_options or {}) or None)
        table, vec = cells_of(window_of(ds, window), kind, int(zone[4:]), lookup)
        tables.append(table)
        vectors.append(vec)
    if not tables or not sum(len(t) for t in tables):
        raise SearchError(f"window {window} of {cube_uri} has no cell with an embedding")
    cells = pd.concat(tables, ignore_index=True)
    raw = np.concatenate(vectors)
    index = SearchIndex(cells=cells, vectors=_normalise(raw), window=window, kind=kind)
    use_ann = ann == "hnsw" or (ann == "auto" and len(cells) >= ann_min_cells)
    if use_ann:
        index.ann = _hnsw(index.vectors)
    index.info = {"cube_uri": cube_uri, "window": window, "kind": kind, "cells": len(cells),
                  "dim": int(raw.shape[1]), "method": index.method, "build_seconds": round(time.perf_counter() - t0, 3),
                  "hnsw": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
                  if use_ann else None, "version": INDEX_VERSION}
    return index


def _hnsw(vectors: np.ndarray):
    import faiss  # noqa: PLC0415 - faiss (a large SWIG extension) loads only when an ANN index is built or read

    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(vectors)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


# ------------------------------------------------------------------------------- persistence
def save_index(index: SearchIndex, uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write the index folder (manifest last: a folder without it is unfinished)."""

    opts = dict(storage_options or {})
    base = uri.rstrip("/")
    buf = io.BytesIO()
    index.cells.to_parquet(buf, index=False)
    write_bytes_atomic(f"{base}/cells.parquet", buf.getvalue(), opts)
    buf = io.BytesIO()
    np.save(buf, index.vectors)
    write_bytes_atomic(f"{base}/vectors.npy", buf.getvalue(), opts)
    if index.ann is not None:
        import faiss  # noqa: PLC0415 - faiss: only for ANN indexes

        write_bytes_atomic(f"{base}/hnsw.faiss", faiss.serialize_index(index.ann).tobytes(), opts)
    write_bytes_atomic(f"{base}/manifest.json", json.dumps(index.info, indent=2, default=str).encode(), opts)
    return base


def load_index(uri: str, storage_options: Mapping[str, Any] | None = None) -> SearchIndex:

    fs, path = fsspec.core.url_to_fs(uri.rstrip("/"), **dict(storage_options or {}))
    try:
        info = json.loads(fs.cat_file(f"{path}/manifest.json"))
    except FileNotFoundError as exc:
        raise SearchError(f"No search index at {uri} (materialize the <model>_<modality>_search_index asset "
                          "for this region and window, or search the cube directly)") from exc
    cells = pd.read_parquet(io.BytesIO(fs.cat_file(f"{path}/cells.parquet")))
    vectors = np.load(io.BytesIO(fs.cat_file(f"{path}/vectors.npy")))
    index = SearchIndex(cells=cells, vectors=vectors, window=info["window"], kind=info["kind"], info=info)
    if info.get("method") == "hnsw":
        import faiss  # noqa: PLC0415 - faiss: only for ANN indexes

        raw = np.frombuffer(fs.cat_file(f"{path}/hnsw.faiss"), dtype=np.uint8)
        index.ann = faiss.deserialize_index(raw)
    return index


def index_uri(store_root: str, model_id: str, modality: str, region: str, window: str, kind: str) -> str:
    """``<root>/search/<model>_<modality>/<region>/<window>/<kind>``."""
    return "/".join([store_root.rstrip("/"), "search", f"{model_id}_{modality}", region, window, kind])


# ------------------------------------------------------------------------------------ search
def parse_polygon(polygon: str | Mapping[str, Any] | BaseGeometry) -> BaseGeometry:
    """A GeoJSON geometry / Feature (dict or text) or WKT, longitude / latitude."""
    if isinstance(polygon, BaseGeometry):
        return polygon
    if isinstance(polygon, str):
        text = polygon.strip()
        if text.startswith("{"):
            polygon = json.loads(text)
        else:
            try:
                return shapely.from_wkt(text)
            except Exception as exc:  # shapely raises GEOSException
                raise SearchError(f"polygon is neither GeoJSON nor WKT: {text[:60]!r}") from exc
    if polygon.get("type") == "Feature":
        polygon = polygon["geometry"]
    elif polygon.get("type") == "FeatureCollection":
        polygon = {"type": "GeometryCollection", "geometries": [f["geometry"] for f in polygon["features"]]}
    return shape(polygon)


def query_vector(index: SearchIndex, *, lon: float | None = None, lat: float | None = None,
                 tile_id: str | None = None, cell_id: str | None = None,
                 polygon: Any = None) -> tuple[np.ndarray, int | None, str]:
    """(query vector, index of the query's own cell or None, description) for exactly one query form."""
    given = [name for name, v in (("lon/lat", lon if lon is not None or lat is not None else None),
                                  ("tile_id", tile_id), ("cell_id", cell_id), ("polygon", polygon)) if v is not None]
    if len(given) != 1:
        raise SearchError(f"give exactly one query: lon and lat, tile_id, cell_id or polygon (got {given or 'none'})")
    if given[0] == "lon/lat":
        if lon is None or lat is None:
            raise SearchError("a point query needs both lon and lat")
        i = index.cell_at(float(lon), float(lat))
        return index.vectors[i], i, f"cell {index.cells.cell_id.iat[i]} at ({lon}, {lat})"
    if cell_id is not None:
        hits = np.flatnonzero(index.cells["cell_id"].to_numpy() == cell_id)
        if not len(hits):
            raise SearchError(f"cell {cell_id!r} is not a cell with an embedding in window {index.window} "
                              f"(ids look like {index.cells.cell_id.iat[0]!r})")
        return index.vectors[hits[0]], int(hits[0]), f"cell {cell_id}"
    if tile_id is not None:
        hits = np.flatnonzero(index.cells["tile_id"].to_numpy() == tile_id)
        if not len(hits):
            some = ", ".join(sorted(set(index.cells["tile_id"]))[:3])
            raise SearchError(f"tile {tile_id!r} has no embedding in window {index.window} of this index "
                              f"(its tiles include {some})")
        own = int(hits[0]) if len(hits) == 1 else None
        return _normalise(index.vectors[hits].mean(axis=0)[None])[0], own, f"tile {tile_id} ({len(hits)} cells)"
    geom = parse_polygon(polygon)
    inside = np.zeros(len(index), dtype=bool)
    for epsg, rows in index.cells.groupby("epsg"):
        tr = pyproj.Transformer.from_crs(int(epsg), 4326, always_xy=True)
        lon_c, lat_c = tr.transform(rows["x"].to_numpy(), rows["y"].to_numpy())
        inside[rows.index.to_numpy()] = shapely.contains_xy(geom, lon_c, lat_c)
    if not inside.any():
        raise SearchError(f"no cell centre with an embedding lies inside the polygon (index extent "
                          f"{index.extent_lonlat()}, window {index.window})")
    return _normalise(index.vectors[inside].mean(axis=0)[None])[0], None, f"polygon ({int(inside.sum())} cells)"


def search(index: SearchIndex, *, k: int = 20, lon: float | None = None, lat: float | None = None,
           tile_id: str | None = None, cell_id: str | None = None, polygon: Any = None) -> gpd.GeoDataFrame:
    """The ``k`` cells most similar (cosine) to the query, best first, with their footprints.

    Columns: ``rank`` (1 = best), ``score`` (cosine), ``cell_id``, ``tile_id``, ``window``,
    ``kind``, ``epsg``, ``x``, ``y`` (UTM centre), ``geometry`` (EPSG:4326 footprint). A point,
    cell or single-cell tile query is its own top hit (score 1). ``attrs["query"]`` describes the
    query and ``attrs["query_ms"]`` its cost.
    """
    if int(k) < 1:
        raise SearchError(f"k must be at least 1, got {k}")
    vec, own, what = query_vector(index, lon=lon, lat=lat, tile_id=tile_id, cell_id=cell_id, polygon=polygon)
    t0 = time.perf_counter()
    idx, scores = index.top_k(vec, k, must_include=own)
    ms = (time.perf_counter() - t0) * 1e3
    rows = index.cells.iloc[idx]
    out = gpd.GeoDataFrame({
        "rank": np.arange(1, len(idx) + 1), "score": np.round(scores.astype(np.float64), 6),
        "cell_id": rows["cell_id"].to_numpy(), "tile_id": rows["tile_id"].to_numpy(),
        "window": index.window, "kind": index.kind, "epsg": rows["epsg"].to_numpy(),
        "x": rows["x"].to_numpy(), "y": rows["y"].to_numpy(),
    }, geometry=index.footprints(idx).to_numpy(), crs=4326)
    out.attrs.update({"query": what, "query_ms": round(ms, 3), "method": index.method})
    return out


def similarity_plane(index: SearchIndex, query: np.ndarray, epsg: int | None = None) -> np.ndarray:
    """Cosine of every cell of one zone to ``query``, as a (y, x) plane (NaN where no cell) - maps."""
    epsg = int(epsg if epsg is not None else index.cells["epsg"].iat[0])
    rows = index.cells[index.cells["epsg"] == epsg]
    plane = np.full((int(rows["iy"].max()) + 1, int(rows["ix"].max()) + 1), np.nan, dtype=np.float32)
    q = _normalise(np.asarray(query, dtype=np.float32)[None])[0]
    plane[rows["iy"].to_numpy(), rows["ix"].to_numpy()] = index.vectors[rows.index.to_numpy()] @ q
    return plane


def to_geojson(hits: gpd.GeoDataFrame) -> dict[str, Any]:
    """A FeatureCollection: one feature per hit, properties rank, score, cell_id, tile_id, window, kind."""
    keep = ["rank", "score", "cell_id", "tile_id", "window", "kind", "geometry"]
    doc = json.loads(hits[keep].to_json(drop_id=True))
    doc["query"] = hits.attrs.get("query")
    return doc


__all__: Sequence[str] = ("ANN_MIN_CELLS", "SearchError", "SearchIndex", "build_index", "index_uri", "load_index",
                          "query_vector", "save_index", "search", "similarity_plane", "to_geojson")
