"""The scene list of a fetch: one query for the whole request area, each tile's scenes derived
client-side from the scenes' footprints.

Earth Engine's ``filterBounds`` keeps the images whose footprint (``system:footprint``) intersects
the region. The provider lists, in one ``computeValue`` request, the images of every *chunk* (the
bounding rectangle of up to :data:`CHUNK_KM` x :data:`CHUNK_KM` km of one UTM zone's tiles, in the
tiles' own CRS, the same planar rectangle the per-tile query used) after every other filter, as
``[system:index, system:footprint]`` rows in collection order, and then intersects each footprint
with each tile's rectangle here. A tile's scene list is the rows whose footprint meets the tile,
in the same order: what a per-tile ``filterBounds`` returns.

Footprints are GeoJSON geometries in EPSG:4326 (``LinearRing``, ``Polygon`` or ``MultiPolygon``;
a ``LinearRing`` bounds the polygon it encloses). Earth Engine's geometries in EPSG:4326 are
geodesic unless they say ``"geodesic": false``: their edges follow great circles, which for a 100
km east-west edge at 45 degrees latitude bow about 200 m away from the straight line in
longitude/latitude. So each edge is densified along its great circle (points at most
:data:`DENSIFY_M` apart, sagitta under a centimetre) before the ring is projected to the tile's
UTM zone. A footprint in another CRS or of another type makes the list unusable: the provider
then falls back to one scene query per request block (:class:`FootprintError`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any
from collections.abc import Sequence

import numpy as np

from rs_embed_pipeline.core.timeparse import parse_utc

from ..base import Tile
from ..catalogs import scene_gap

#: Side of a scene-list chunk (km): the list query's rectangles stay small enough that the scenes
#: of one chunk over a quarter are a few hundred rows (Sentinel-2 granules are 110 km a side).
CHUNK_KM = 200.0


#: Rows one chunk may answer before it is split in two (Earth Engine aborts collection queries that
#: accumulate over 5000 elements).
MAX_ROWS_PER_CHUNK = 5000


#: Longest great-circle step of a densified footprint edge (m).
DENSIFY_M = 1000.0


_EARTH_RADIUS_M = 6_371_008.8


class FootprintError(ValueError):
    """A footprint this module cannot intersect exactly (unknown type or CRS)."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Tiles of one UTM zone whose bounding rectangle is one filterBounds region of the list."""

    epsg: int
    tiles: tuple[Tile, ...]

    def bounds(self) -> list[float]:
        """[xmin, ymin, xmax, ymax] of the tiles, in the zone's CRS."""
        return [min(t.x0 for t in self.tiles), min(t.y0 - t.size_px * t.scale_m for t in self.tiles),
                max(t.x0 + t.size_px * t.scale_m for t in self.tiles), max(t.y0 for t in self.tiles)]

    def halves(self) -> tuple[Chunk, Chunk]:
        """Two chunks of about half the tiles each, cut across the longer side."""
        b = self.bounds()
        along_x = (b[2] - b[0]) >= (b[3] - b[1])
        ordered = sorted(self.tiles, key=(lambda t: (t.x0, -t.y0)) if along_x else (lambda t: (-t.y0, t.x0)))
        k = len(ordered) // 2
        return Chunk(self.epsg, tuple(ordered[:k])), Chunk(self.epsg, tuple(ordered[k:]))


def chunk_tiles(tiles: Sequence[Tile], chunk_km: float = CHUNK_KM) -> list[Chunk]:
    """The tiles grouped by UTM zone and by the ``chunk_km`` square of that zone holding their
    centre (deterministic)."""
    step = chunk_km * 1000.0
    groups: dict[tuple[int, int, int], list[Tile]] = {}
    for t in tiles:
        half = t.size_px * t.scale_m / 2.0
        key = (t.utm_epsg, math.floor((t.x0 + half) / step), math.floor((t.y0 - half) / step))
        groups.setdefault(key, []).append(t)
    return [Chunk(key[0], tuple(members)) for key, members in sorted(groups.items())]


def _unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo, la = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def densify_geodesic(ring: Sequence[Sequence[float]], step_m: float = DENSIFY_M) -> list[tuple[float, float]]:
    """The ring's vertices with points added along each great-circle edge (at most ``step_m``
    apart); longitudes stay continuous with the edge's start (no wrap at 180)."""
    pts = [(float(p[0]), float(p[1])) for p in ring]
    out: list[tuple[float, float]] = []
    for (lon1, lat1), (lon2, lat2) in zip(pts[:-1], pts[1:]):
        out.append((lon1, lat1))
        a, b = _unit_vectors(np.array([lon1, lon2]), np.array([lat1, lat2]))
        omega = math.acos(max(-1.0, min(1.0, float(np.dot(a, b)))))
        n = int(math.ceil(omega * _EARTH_RADIUS_M / step_m))
        if n <= 1 or omega < 1e-12:
            continue
        f = np.arange(1, n) / n
        v = (np.sin((1 - f) * omega)[:, None] * a + np.sin(f * omega)[:, None] * b) / math.sin(omega)
        lons = np.degrees(np.arctan2(v[:, 1], v[:, 0]))
        lats = np.degrees(np.arcsin(np.clip(v[:, 2], -1.0, 1.0)))
        lons = lon1 + (lons - lon1 + 180.0) % 360.0 - 180.0  # continuous with the edge's start
        out.extend(zip(lons.tolist(), lats.tolist()))
    if pts:
        out.append(pts[-1])
    return out


def densify_planar(ring: Sequence[Sequence[float]], step_deg: float = 0.01) -> list[tuple[float, float]]:
    """The ring with points added along each straight lon/lat edge (``geodesic: false``): such
    an edge is straight in EPSG:4326, a curve once projected to UTM."""
    pts = [(float(p[0]), float(p[1])) for p in ring]
    out: list[tuple[float, float]] = []
    for (x1, y1), (x2, y2) in zip(pts[:-1], pts[1:]):
        n = max(1, int(math.ceil(max(abs(x2 - x1), abs(y2 - y1)) / step_deg)))
        out.extend((x1 + (x2 - x1) * k / n, y1 + (y2 - y1) * k / n) for k in range(n))
    if pts:
        out.append(pts[-1])
    return out


def footprint_rings(geometry: Any) -> list[tuple[list[tuple[float, float]], list[list[tuple[float, float]]]]]:
    """(exterior, holes) per polygon of a GeoJSON footprint, in lon/lat, edges densified along
    great circles unless the geometry says ``geodesic: false``."""
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise FootprintError(f"not a GeoJSON geometry: {str(geometry)[:80]}")
    crs = geometry.get("crs")
    if crs is not None:
        name = crs.get("properties", {}).get("name") if isinstance(crs, dict) else crs
        if name not in ("EPSG:4326", "urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:EPSG::4326"):
            raise FootprintError(f"footprint in CRS {name!r}, not EPSG:4326")
    geodesic = geometry.get("geodesic", True) is not False
    kind = geometry["type"]
    coords: Any = geometry.get("coordinates") or []
    polygons: list[Any]
    if kind == "LinearRing":
        polygons = [[coords]]
    elif kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = list(coords)
    else:
        raise FootprintError(f"footprint of type {kind!r} (expected LinearRing, Polygon or MultiPolygon)")

    def ring(r: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
        closed = list(r) if list(r[0]) == list(r[-1]) else [*r, r[0]]
        return densify_geodesic(closed) if geodesic else densify_planar(closed)

    return [(ring(p[0]), [ring(h) for h in p[1:]]) for p in polygons if p and len(p[0]) >= 3]


def _project(transformer: Any, ring: Sequence[tuple[float, float]]) -> np.ndarray:
    """A lon/lat ring in the transformer's CRS, as an [N, 2] array."""
    lon = np.array([p[0] for p in ring])
    lat = np.array([p[1] for p in ring])
    return np.column_stack(transformer.transform(lon, lat))


def scene_lists(chunk: Chunk, rows_per_collection: Sequence[Sequence[Sequence[Any]]]) -> dict[str, list[list[str]]]:
    """Each tile's scene ids per listed collection, in the list's order: tile_id -> [[ids], ...].

    ``rows_per_collection``: per collection, the ``[system:index, system:footprint]`` rows the list
    query answered for ``chunk``. A row without a footprint (the property is absent) meets every
    tile of the chunk: the server's filterBounds kept it.
    """
    import pyproj  # noqa: PLC0415 - the scene list only; pyproj comes with geopandas
    import shapely  # noqa: PLC0415

    size = {t.tile_id: t.size_px * t.scale_m for t in chunk.tiles}
    boxes = [shapely.box(t.x0, t.y0 - size[t.tile_id], t.x0 + size[t.tile_id], t.y0) for t in chunk.tiles]
    tree = shapely.STRtree(boxes)
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{chunk.epsg}", always_xy=True)
    out: dict[str, list[list[str]]] = {t.tile_id: [[] for _ in rows_per_collection] for t in chunk.tiles}
    for k, rows in enumerate(rows_per_collection):
        for row in rows:
            scene_id = str(row[0])
            footprint = row[1] if len(row) > 1 else None
            hits: list[int]
            if footprint is None:
                hits = list(range(len(chunk.tiles)))
            else:
                polygons = []
                for exterior, holes in footprint_rings(footprint):
                    polygons.append(shapely.Polygon(_project(to_utm, exterior), [_project(to_utm, h) for h in holes]))
                if not polygons:
                    continue
                geom = shapely.make_valid(shapely.MultiPolygon(polygons) if len(polygons) > 1 else polygons[0])
                hits = sorted(int(i) for i in tree.query(geom, predicate="intersects"))
            for i in hits:
                out[chunk.tiles[i].tile_id][k].append(scene_id)
    return out


#: The acquisition time in an Earth Engine ``system:index``: the first ``yyyymmddThhmmss``
#: (S2 ``20240105T100000_20240105T100000_T33TUG``: the datatake's sensing start, UTC; S1
#: ``S1A_IW_GRDH_1SDV_20240105T050000_...``: the acquisition start, UTC).
_INDEX_TIME = re.compile(r"(\d{8})T\d{6}")


def scene_dates(ids: Sequence[str]) -> set[str]:
    """The acquisition dates (``yyyymmdd``, UTC) of a tile's scenes from their ``system:index``;
    an index without a time counts as a date of its own."""
    out: set[str] = set()
    for i in ids:
        m = _INDEX_TIME.search(i)
        out.add(m.group(1) if m else i)
    return out


def scene_count(collection: str, modality: str, start: str, end: str, ids: Sequence[str]) -> dict[str, Any]:
    """``found_scenes`` of a tile (its scene dates, as the STAC providers count them) and, below
    the revisit expectation of :func:`..catalogs.scene_gap`, ``scene_gap`` (``expected_scenes``,
    ``found_scenes``, ``reason``) for the window ``start`` .. ``end`` (end exclusive)."""
    found = len(scene_dates(ids))
    out: dict[str, Any] = {"found_scenes": found}
    gap = scene_gap(collection, modality, start, end, (parse_utc(end) - parse_utc(start)).days, found)
    if gap is not None:
        out["scene_gap"] = gap
    return out
