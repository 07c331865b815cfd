"""Global, stable, UTM-aligned tile grids (pure functions, no Dagster).

Lattice
-------
For a tile size ``T = size_px * scale_m`` metres, the lattice of UTM zone ``Z`` and hemisphere
``H`` (EPSG ``326ZZ`` north, ``327ZZ`` south; WGS 84 / UTM, false easting 500 000 m, false northing
0 m north / 10 000 000 m south) is anchored at the projection origin::

    tile (col, row) covers  x in [col*T, (col+1)*T]   y in [(row-1)*T, row*T]
    upper-left corner       x0 = col*T                y0 = row*T

so ``x0 % T == 0 == y0 % T`` for every tile, neighbouring regions share tiles, and a pixel of a
tile is a pixel of the lattice ``scale_m`` (the grid of every tile size with the same ``scale_m``
is pixel-aligned with every other).

Tile ids
--------
``"{epsg}_p{size_px}_s{scale}_c{col:05d}_r{row:05d}"``, e.g. ``"32633_p224_s10_c00123_r05678"``.
``scale`` is ``scale_m`` written without trailing zeros, ``.`` replaced by ``p``
(``10.0 -> "10"``, ``2.5 -> "2p5"``). Columns / rows are zero padded to at least five digits and
widen when needed (the id stays unambiguous because the fields are ``_``-delimited). The id is a
pure function of (epsg, size_px, scale_m, col, row): the same AOI gives the same ids on every
run, overlapping AOIs share the ids of their common tiles, and ids never depend on the AOI.

Zones, hemispheres, the anti-meridian
-------------------------------------
* The AOI is cut into UTM zones as the Military Grid Reference System draws them, which is how
  Sentinel-2's tiling grid does (MGRS tiles 32V..., 33X...): 6 degree strips (zone =
  floor((lon + 180) / 6) + 1) with the two exceptions, Norway (56-64 N: zone 32 reaches west to
  3 E, zone 31 ends there) and Svalbard (72-84 N: zones 31 0-9 E, 33 9-21 E, 35 21-33 E, 37
  33-42 E; no 32, 34, 36) (:func:`utm_zone_for`), and at the equator; so a tile lies in the zone
  of the Sentinel-2 scenes over it and is read at their native grid, never warped. Each piece is
  tiled in its own zone / hemisphere and every tile carries its own ``utm_epsg``. Tiles on both sides of a zone
  boundary (or of the equator) overlap on the ground: they belong to different CRSs and are all
  kept, so each zone's piece is covered completely in its own CRS.
* Coverage is the UTM domain, latitudes [-80, 84]; AOIs reaching beyond are rejected
  (``ValueError``).
* Accepted anti-meridian inputs: (a) a (Multi)Polygon split at +-180 into parts with longitudes
  in [-180, 180] (RFC 7946 style), (b) a polygon given in *unwrapped* longitudes, i.e. crossing
  180 with longitudes up to 360 (e.g. 170 .. 190), and (c) ``bbox_aoi(minlon > maxlon)``. All
  longitudes must lie in [-180, 360]. Parts east of 180 are shifted by -360 before tiling.
  Tile footprints that cross the anti-meridian (zone 60 / zone 1 edge tiles) are written as a
  MultiPolygon split at +-180 so that every footprint has longitudes in [-180, 180].
* AOI edges are straight lines in longitude / latitude (the GeoJSON convention); they are
  densified before projection, so tile selection is exact to well under a pixel.

Output rows are sorted by (utm_epsg, row descending = north to south, col), index 0..n-1.

One tile as code passes it around (providers, blocks, requests) is a :class:`Tile`: the grid
row's values, read once by :meth:`Tile.from_row` (or :meth:`Tile.from_id` from an id alone).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, TypedDict
from collections.abc import Mapping, Sequence

import geopandas as gpd
import numpy as np
import pyproj
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry

__all__ = [
    "GRID_COLUMNS",
    "MIN_LAT",
    "MAX_LAT",
    "TILE_FIELDS",
    "UTM_EXCEPTIONS",
    "Tile",
    "Cell",
    "bbox_aoi",
    "build_tile_grid",
    "cell_ids_of_tiles",
    "load_aoi",
    "normalize_aoi",
    "tile_bounds",
    "tile_id",
    "parse_tile_id",
    "TileIdParts",
    "split_cells",
    "utm_epsg_for",
    "utm_zone_for",
]

GRID_COLUMNS: tuple[str, ...] = (
    "tile_id",
    "utm_epsg",
    "x0",
    "y0",
    "size_px",
    "scale_m",
    "geometry",
)
MIN_LAT = -80.0
MAX_LAT = 84.0
MIN_LON = -180.0
MAX_LON = 360.0

# Densification steps: AOI edges in degrees before projecting to UTM, tile edges as a fraction
# of the tile side before projecting back to lon/lat.
_AOI_SEGMENT_DEG = 0.01
_TILE_EDGE_SEGMENTS = 4


# --------------------------------------------------------------------------------------------
# ids and zones
# --------------------------------------------------------------------------------------------


def _scale_token(scale_m: float) -> str:
    return np.format_float_positional(float(scale_m), trim="-").replace(".", "p")


def tile_id(utm_epsg: int, size_px: int, scale_m: float, col: int, row: int) -> str:
    """The global id of lattice tile (col, row); see the module docstring for the scheme."""
    return (
        f"{int(utm_epsg)}_p{int(size_px)}_s{_scale_token(scale_m)}_c{int(col):05d}_r{int(row):05d}"
    )


def _id_fields(tid: str) -> tuple[int, int, float, int, int]:
    """``(utm_epsg, size_px, scale_m, col, row)`` of a tile id; ValueError when it is not one."""
    try:
        epsg, p, s, c, r = tid.split("_")
        if not (p[0] == "p" and s[0] == "s" and c[0] == "c" and r[0] == "r"):
            raise ValueError
        return int(epsg), int(p[1:]), float(s[1:].replace("p", ".")), int(c[1:]), int(r[1:])
    except (ValueError, IndexError):
        raise ValueError(f"not a tile id: {tid!r}") from None


class TileIdParts(TypedDict):
    """The fields of a tile id (a TypedDict: callers index it by the grid's column names)."""

    utm_epsg: int
    size_px: int
    scale_m: float
    col: int  # lattice column: x0 = col * size_px * scale_m
    row: int  # lattice row: y0 = row * size_px * scale_m


def parse_tile_id(tid: str) -> TileIdParts:
    """Inverse of :func:`tile_id`: the fields :meth:`Tile.from_id` reads, with the lattice
    column and row."""
    epsg, size_px, scale_m, col, row = _id_fields(tid)
    return TileIdParts(utm_epsg=epsg, size_px=size_px, scale_m=scale_m, col=col, row=row)


#: The columns :meth:`Tile.from_row` reads (``geometry``, when present, too).
TILE_FIELDS: tuple[str, ...] = ("tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m")


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile of the grid: its UTM zone (EPSG code), upper-left corner ``(x0, y0)`` in metres,
    ``size_px`` pixels a side of ``scale_m`` metres; ``footprint`` is its lon/lat outline
    (EPSG:4326) when known (the grid row's ``geometry``; :meth:`with_footprint` computes it).

    Construction checks ``size_px`` and ``scale_m`` (> 0) and the corner (finite): ValueError
    naming the problem (a provider then fails that tile alone)."""

    tile_id: str
    utm_epsg: int
    x0: float
    y0: float
    size_px: int
    scale_m: float
    footprint: BaseGeometry | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.size_px <= 0 or not self.scale_m > 0:
            raise ValueError(f"size_px ({self.size_px}) and scale_m ({self.scale_m}) must be > 0")
        if not (math.isfinite(self.x0) and math.isfinite(self.y0)):
            raise ValueError("x0 / y0 must be finite")

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | Tile) -> Tile:
        """The tile of a tile-grid row (a mapping or a pandas Series with the columns
        :data:`TILE_FIELDS`; a non-empty ``geometry`` becomes the footprint); a Tile is returned
        as it is. ValueError naming what is missing or out of range."""
        if isinstance(row, Tile):
            return row
        missing = [k for k in TILE_FIELDS if k not in row]
        if missing:
            raise ValueError(f"tile row lacks column(s) {missing}")
        fp = row.get("geometry")
        if fp is None or getattr(fp, "is_empty", True):
            fp = None
        return cls(str(row["tile_id"]), int(row["utm_epsg"]), float(row["x0"]), float(row["y0"]),
                   int(row["size_px"]), float(row["scale_m"]), fp)

    @classmethod
    def from_id(cls, tid: str) -> Tile:
        """The lattice tile a :func:`tile_id` names (no footprint); ValueError when ``tid`` is not
        a tile id."""
        epsg, size_px, scale_m, col, row = _id_fields(tid)
        side = size_px * scale_m
        return cls(tid, epsg, float(col * side), float(row * side), size_px, scale_m)

    @property
    def side_m(self) -> float:
        """The tile's side in metres (``size_px * scale_m``)."""
        return self.size_px * self.scale_m

    @property
    def crs(self) -> str:
        """``"EPSG:<utm_epsg>"``."""
        return f"EPSG:{self.utm_epsg}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` in the tile's UTM CRS."""
        T = self.side_m
        return self.x0, self.y0 - T, self.x0 + T, self.y0

    @property
    def transform(self) -> list[float]:
        """The pixel grid's affine transform, GDAL order without the last row:
        ``[scale_m, 0, x0, 0, -scale_m, y0]``."""
        return [self.scale_m, 0.0, self.x0, 0.0, -self.scale_m, self.y0]

    def with_footprint(self) -> Tile:
        """This tile with a footprint: its own, or its square projected to EPSG:4326 (pyproj
        errors, e.g. an unknown EPSG code, raise here)."""
        if self.footprint is not None:
            return self
        x0, y0, T = self.x0, self.y0, self.side_m
        tr = pyproj.Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        xs, ys = tr.transform([x0, x0 + T, x0 + T, x0], [y0 - T, y0 - T, y0, y0])
        return dataclasses.replace(self, footprint=Polygon(list(zip(xs, ys))))


#: The UTM zone exceptions of MGRS (and so of Sentinel-2's tiling grid), north of the equator:
#: (lat_lo, lat_hi) -> {zone: (lon_lo, lon_hi)}; a zone of the band not listed has no area there.
#: Norway: band V (56-64 N); Svalbard: band X (72-84 N).
UTM_EXCEPTIONS: dict[tuple[float, float], dict[int, tuple[float, float]]] = {
    (56.0, 64.0): {31: (0.0, 3.0), 32: (3.0, 12.0)},
    (72.0, 84.0): {31: (0.0, 9.0), 33: (9.0, 21.0), 35: (21.0, 33.0), 37: (33.0, 42.0)},
}
_EXCEPTION_ZONES = range(31, 38)  # the zones the exceptions reshape


def utm_zone_for(lon: float, lat: float | None = None) -> int:
    """UTM zone number (1..60) of a longitude (any value; wrapped to [-180, 180)); with ``lat``,
    the zone as MGRS and Sentinel-2 draw it (the Norway / Svalbard exceptions,
    :data:`UTM_EXCEPTIONS`)."""
    lon = ((float(lon) + 180.0) % 360.0) - 180.0
    zone = min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)
    if lat is not None:
        for (lat_lo, lat_hi), zones in UTM_EXCEPTIONS.items():
            if lat_lo <= lat < lat_hi or (lat_hi == 84.0 and lat == 84.0):
                for z, (lon_lo, lon_hi) in zones.items():
                    if lon_lo <= lon < lon_hi:
                        return z
    return zone


def utm_epsg_for(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone of a point as MGRS draws it (the Norway / Svalbard
    exceptions applied; 326zz north, equator included; 327zz south)."""
    return (32600 if lat >= 0 else 32700) + utm_zone_for(lon, lat)


def _zone_area(zone: int, south: bool) -> BaseGeometry:
    """The lon/lat area of UTM zone / hemisphere ``zone``, exceptions applied (north of 84 and
    south of -80 included: AOIs are refused there before)."""
    lon0 = -180.0 + 6.0 * (zone - 1)
    if south:
        return box(lon0, -90.0, lon0 + 6.0, 0.0)
    if zone not in _EXCEPTION_ZONES:
        return box(lon0, 0.0, lon0 + 6.0, 90.0)
    parts, lat = [], 0.0
    for (lat_lo, lat_hi), zones in sorted(UTM_EXCEPTIONS.items()):
        parts.append(box(lon0, lat, lon0 + 6.0, lat_lo))  # the standard strip below the band
        if zone in zones:
            lon_lo, lon_hi = zones[zone]
            parts.append(box(lon_lo, lat_lo, lon_hi, lat_hi))
        lat = lat_hi
    if lat < 90.0:
        parts.append(box(lon0, lat, lon0 + 6.0, 90.0))
    return shapely.union_all(parts)


# --------------------------------------------------------------------------------------------
# AOIs
# --------------------------------------------------------------------------------------------


def _check_polygonal(geom: BaseGeometry, what: str = "AOI") -> BaseGeometry:
    if geom is None:
        raise ValueError(f"{what} is missing (None)")
    if not isinstance(geom, BaseGeometry):
        raise ValueError(f"{what} is not a geometry: {type(geom).__name__}")
    if geom.is_empty:
        raise ValueError(f"{what} geometry is empty")
    if geom.geom_type == "GeometryCollection":
        parts = list(geom.geoms)
        if not parts or not all(p.geom_type in ("Polygon", "MultiPolygon") for p in parts):
            kinds = sorted({p.geom_type for p in parts})
            raise ValueError(f"{what} is not polygonal: GeometryCollection of {kinds}")
        geom = shapely.union_all(parts)
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(
            f"{what} is not polygonal: {geom.geom_type} (need Polygon or MultiPolygon)"
        )
    if not geom.is_valid:
        raise ValueError(f"{what} geometry is invalid: {shapely.is_valid_reason(geom)}")
    if geom.area <= 0:
        raise ValueError(f"{what} geometry has zero area")
    minx, miny, maxx, maxy = geom.bounds
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise ValueError(f"{what} has non-finite coordinates: {geom.bounds}")
    # ``what`` is "AOI" or "bbox": the messages say "<what> latitude ...", never "bbox bbox".
    if miny < -90 or maxy > 90:
        raise ValueError(f"{what} latitude out of range [-90, 90]: {miny}..{maxy}")
    if minx < MIN_LON or maxx > MAX_LON:
        raise ValueError(
            f"{what} longitude out of range [{MIN_LON}, {MAX_LON}]: {minx}..{maxx} "
            "(longitudes > 180 are accepted only for polygons crossing the anti-meridian)"
        )
    if maxx - minx > 360:
        raise ValueError(f"{what} spans more than 360 degrees of longitude: {minx}..{maxx}")
    if miny < MIN_LAT or maxy > MAX_LAT:
        raise ValueError(
            f"{what} latitude {miny}..{maxy} is outside UTM coverage [{MIN_LAT}, {MAX_LAT}]"
        )
    return geom


def _geojson_to_geometry(obj: Mapping[str, Any]) -> BaseGeometry:
    kind = obj.get("type")
    if kind == "FeatureCollection":
        feats = obj.get("features") or []
        if not feats:
            raise ValueError("AOI FeatureCollection has no features")
        geoms = [_geojson_to_geometry(f) for f in feats]
        return shapely.union_all(geoms) if len(geoms) > 1 else geoms[0]
    if kind == "Feature":
        if obj.get("geometry") is None:
            raise ValueError("AOI Feature has no geometry")
        return _geojson_to_geometry(obj["geometry"])
    if kind is None:
        raise ValueError("AOI GeoJSON has no 'type'")
    try:
        return shape(obj)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise ValueError(f"AOI GeoJSON geometry of type {kind!r} is malformed: {exc}") from exc


def load_aoi(src: Any) -> BaseGeometry:
    """Load and validate an AOI in EPSG:4326.

    ``src`` is a shapely geometry, a GeoJSON mapping (Geometry / Feature / FeatureCollection,
    features unioned), a GeoJSON string, or a path to a ``.json`` / ``.geojson`` file; other
    file types (``.gpkg``, ``.shp``, ``.parquet`` ...) are read with geopandas and reprojected to
    EPSG:4326. A 4-sequence ``(minlon, minlat, maxlon, maxlat)`` goes through :func:`bbox_aoi`.

    Raises ``ValueError`` naming the problem for unreadable input, empty, invalid or
    non-polygonal geometry, and coordinates out of range (see the module docstring).
    """
    geom: BaseGeometry
    if isinstance(src, BaseGeometry):
        geom = src
    elif isinstance(src, Mapping):
        geom = _geojson_to_geometry(src)
    elif (
        isinstance(src, (list, tuple))
        and len(src) == 4
        and all(isinstance(v, (int, float)) for v in src)
    ):
        return bbox_aoi(*src)
    elif isinstance(src, (str, os.PathLike)):
        text = str(src)
        if isinstance(src, str) and text.lstrip().startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"AOI string is not valid GeoJSON: {exc}") from exc
            geom = _geojson_to_geometry(obj)
        else:
            path = Path(text)
            if not path.exists():
                raise ValueError(f"AOI file does not exist: {path}")
            if path.suffix.lower() in (".json", ".geojson"):
                try:
                    obj = json.loads(path.read_text())
                except json.JSONDecodeError as exc:
                    raise ValueError(f"AOI file {path} is not valid JSON: {exc}") from exc
                if not isinstance(obj, Mapping):
                    raise ValueError(f"AOI file {path} does not hold a GeoJSON object")
                geom = _geojson_to_geometry(obj)
            else:
                try:
                    if path.suffix.lower() in (".parquet", ".geoparquet"):
                        gdf = gpd.read_parquet(path)
                    else:
                        gdf = gpd.read_file(path)
                except Exception as exc:
                    raise ValueError(f"AOI file {path} could not be read: {exc}") from exc
                if gdf.empty:
                    raise ValueError(f"AOI file {path} has no features")
                if gdf.crs is not None:
                    gdf = gdf.to_crs(4326)
                geom = shapely.union_all(gdf.geometry.values)
    else:
        raise ValueError(f"cannot read an AOI from {type(src).__name__}")
    return _check_polygonal(geom)


def bbox_aoi(minlon: float, minlat: float, maxlon: float, maxlat: float) -> BaseGeometry:
    """A lon/lat box as an AOI. ``minlon > maxlon`` means the box crosses the anti-meridian and
    yields a MultiPolygon split at +-180 (e.g. ``bbox_aoi(170, -20, -170, -10)``)."""
    vals = [float(v) for v in (minlon, minlat, maxlon, maxlat)]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"bbox has non-finite values: {vals}")
    minlon, minlat, maxlon, maxlat = vals
    if minlat >= maxlat:
        raise ValueError(f"bbox minlat {minlat} must be < maxlat {maxlat}")
    if minlon == maxlon:
        raise ValueError(f"bbox has zero width: minlon == maxlon == {minlon}")
    if minlon > maxlon:
        if not (-180 <= maxlon and minlon <= 180):
            raise ValueError(
                f"anti-meridian bbox needs longitudes in [-180, 180], got {minlon}..{maxlon}"
            )
        geom = MultiPolygon(
            [box(minlon, minlat, 180.0, maxlat), box(-180.0, minlat, maxlon, maxlat)]
        )
    else:
        geom = box(minlon, minlat, maxlon, maxlat)
    return _check_polygonal(geom, "bbox")


def normalize_aoi(aoi: BaseGeometry) -> BaseGeometry:
    """The AOI with every part moved into longitudes [-180, 180] (parts east of 180 shifted by
    -360); validated first."""
    aoi = _check_polygonal(aoi)
    minx, _, maxx, _ = aoi.bounds
    if maxx <= 180:
        return aoi
    west = aoi.intersection(box(-180, -90, 180, 90))
    east = shapely.affinity.translate(aoi.intersection(box(180, -90, 540, 90)), xoff=-360.0)
    parts = [g for g in (west, east) if not g.is_empty and g.area > 0]
    out = shapely.union_all(parts)
    return _polygonal_only(out)


def _polygonal_only(geom: BaseGeometry) -> BaseGeometry:
    """Drop lines / points that intersections leave behind."""
    if geom.is_empty or geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    polys: list[Polygon] = []
    for g in getattr(geom, "geoms", [geom]):
        if g.geom_type == "Polygon":
            polys.append(g)
        elif g.geom_type == "MultiPolygon":
            polys.extend(g.geoms)
    return MultiPolygon(polys) if polys else Polygon()


# --------------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------------

_TRANSFORMERS: dict[tuple[int, bool], pyproj.Transformer] = {}


def _transformer(epsg: int, inverse: bool) -> pyproj.Transformer:
    key = (epsg, inverse)
    tr = _TRANSFORMERS.get(key)
    if tr is None:
        src, dst = ("EPSG:4326", f"EPSG:{epsg}") if not inverse else (f"EPSG:{epsg}", "EPSG:4326")
        tr = pyproj.Transformer.from_crs(src, dst, always_xy=True)
        _TRANSFORMERS[key] = tr
    return tr


def _project(geom: BaseGeometry, tr: pyproj.Transformer) -> BaseGeometry:
    def fn(coords: np.ndarray) -> np.ndarray:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, fn)


def _fix_antimeridian(poly: Polygon) -> BaseGeometry:
    """A lon/lat polygon whose vertices jump across +-180 -> MultiPolygon split at +-180."""
    xs = np.asarray(poly.exterior.coords)[:, 0]
    if xs.max() - xs.min() <= 180:
        return poly

    def unwrap(coords: np.ndarray) -> np.ndarray:
        out = coords.copy()
        out[out[:, 0] < 0, 0] += 360.0
        return out

    shifted = shapely.transform(poly, unwrap)
    below = shifted.intersection(box(-180, -90, 180, 90))
    above = shapely.affinity.translate(shifted.intersection(box(180, -90, 540, 90)), xoff=-360.0)
    parts: list[Polygon] = []
    for g in (below, above):
        g = _polygonal_only(g)
        parts.extend(getattr(g, "geoms", [g]) if not g.is_empty else [])
    return MultiPolygon(parts)


def _zone_pieces(aoi: BaseGeometry):
    """Yield (epsg, piece_in_lonlat) for every UTM zone / hemisphere the AOI touches with area
    (zones as MGRS draws them: :func:`_zone_area`)."""
    minx, miny, maxx, maxy = aoi.bounds
    z0 = utm_zone_for(minx) if minx > -180 else 1
    z1 = min(int(math.floor((maxx + 180.0) / 6.0)) + 1, 60)
    # an exception zone may reach into the neighbouring strips (32V to 3 E, 31X to 9 E, ...)
    for zone in range(max(z0 - 1, 1), min(z1 + 1, 60) + 1):
        for south in (False, True):
            lat_lo, lat_hi = (-90.0, 0.0) if south else (0.0, 90.0)
            if maxy <= lat_lo or miny >= lat_hi:
                continue
            piece = _polygonal_only(aoi.intersection(_zone_area(zone, south)))
            if piece.is_empty or piece.area <= 0:
                continue
            yield (32700 if south else 32600) + zone, piece


@functools.lru_cache(maxsize=8)
def _projected_pieces(aoi: BaseGeometry) -> tuple[tuple[int, BaseGeometry], ...]:
    """``(epsg, piece)`` per UTM zone / hemisphere the AOI touches: the piece densified, projected
    to that zone's CRS and made valid, i.e. the very geometry every tile of that zone is tested
    against. Cached (shapely geometries are immutable and hashable) so that the cells of one
    region and their tile grids share one projection."""
    aoi = normalize_aoi(aoi)
    out = []
    for epsg, piece in _zone_pieces(aoi):
        dense = shapely.segmentize(piece, _AOI_SEGMENT_DEG)
        utm = _project(dense, _transformer(epsg, inverse=False))
        if not utm.is_valid:
            utm = shapely.make_valid(utm)
        shapely.prepare(utm)
        out.append((epsg, utm))
    return tuple(out)


def _tile_side(size_px: Any, scale_m: Any) -> tuple[int, float]:
    if isinstance(size_px, bool) or int(size_px) != size_px or int(size_px) <= 0:
        raise ValueError(f"size_px must be a positive integer, got {size_px!r}")
    scale = float(scale_m)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale_m must be a positive number, got {scale_m!r}")
    return int(size_px), scale


def build_tile_grid(aoi: BaseGeometry, size_px: int, scale_m: float, *,
                    cell: Cell | None = None) -> gpd.GeoDataFrame:
    """Every lattice tile (see module docstring) whose interior intersects the AOI; with ``cell``,
    only those of them whose centre lies in that cell (:class:`Cell`: the tile grid of one
    partition of a split region).

    ``aoi``: shapely (Multi)Polygon in EPSG:4326 (validated as in :func:`load_aoi`).
    Returns a GeoDataFrame (CRS EPSG:4326) with columns ``tile_id, utm_epsg, x0, y0, size_px,
    scale_m, geometry`` plus ``col``, ``row``; sorted by (utm_epsg, -row, col).
    """
    size_px, scale_m = _tile_side(size_px, scale_m)
    T = size_px * scale_m

    records: dict[str, list] = {k: [] for k in ("tile_id", "utm_epsg", "x0", "y0", "col", "row")}
    footprints: list[BaseGeometry] = []
    for epsg, utm in _projected_pieces(aoi):
        if cell is not None and epsg != cell.utm_epsg:
            continue
        minx, miny, maxx, maxy = utm.bounds
        c_lo, c_hi = math.floor(minx / T), math.floor(maxx / T)
        r_lo, r_hi = math.floor(miny / T) + 1, math.floor(maxy / T) + 1
        if cell is not None:  # the block of tiles whose centre lies in the cell
            (bc_lo, bc_hi), (br_lo, br_hi) = cell.tile_block(T)
            c_lo, c_hi, r_lo, r_hi = max(c_lo, bc_lo), min(c_hi, bc_hi), max(r_lo, br_lo), min(r_hi, br_hi)
        cols = np.arange(c_lo, c_hi + 1, dtype=np.int64)
        rows = np.arange(r_lo, r_hi + 1, dtype=np.int64)
        if not (len(cols) and len(rows)):
            continue
        mesh_c, mesh_r = np.meshgrid(cols, rows)
        cc, rr = mesh_c.ravel(), mesh_r.ravel()
        x0 = cc * T
        y0 = rr * T
        boxes = shapely.box(x0, y0 - T, x0 + T, y0)
        hit = shapely.intersects(utm, boxes) & ~shapely.touches(utm, boxes)
        if not hit.any():
            continue
        cc, rr, x0, y0, boxes = cc[hit], rr[hit], x0[hit], y0[hit], boxes[hit]
        dense_boxes = shapely.segmentize(boxes, T / _TILE_EDGE_SEGMENTS)
        ll = _project(dense_boxes, _transformer(epsg, inverse=True))
        if epsg % 100 in (1, 60):
            ll = np.array([_fix_antimeridian(p) for p in ll], dtype=object)
        for c, r, x, y in zip(cc.tolist(), rr.tolist(), x0.tolist(), y0.tolist()):
            records["tile_id"].append(tile_id(epsg, size_px, scale_m, c, r))
            records["utm_epsg"].append(epsg)
            records["x0"].append(float(x))
            records["y0"].append(float(y))
            records["col"].append(c)
            records["row"].append(r)
        footprints.extend(ll.tolist())

    gdf = gpd.GeoDataFrame(
        {
            "tile_id": np.asarray(records["tile_id"], dtype=object),
            "utm_epsg": np.asarray(records["utm_epsg"], dtype=np.int64),
            "x0": np.asarray(records["x0"], dtype=np.float64),
            "y0": np.asarray(records["y0"], dtype=np.float64),
            "size_px": np.full(len(footprints), size_px, dtype=np.int64),
            "scale_m": np.full(len(footprints), scale_m, dtype=np.float64),
            "geometry": gpd.GeoSeries(footprints, crs="EPSG:4326"),
            "col": np.asarray(records["col"], dtype=np.int64),
            "row": np.asarray(records["row"], dtype=np.int64),
        },
        geometry="geometry",
        crs="EPSG:4326",
    )
    if len(gdf):
        gdf = (
            gdf.assign(_neg_row=-gdf["row"])
            .sort_values(["utm_epsg", "_neg_row", "col"], kind="mergesort")
            .drop(columns="_neg_row")
        )
        if gdf["tile_id"].duplicated().any():  # cannot happen: one piece per (zone, hemisphere)
            raise AssertionError("duplicate tile ids in grid")
    return gdf.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# split cells: square cells of one UTM zone's lattice, for splitting a region into partitions
# --------------------------------------------------------------------------------------------

_CELL_ID = re.compile(r"^(?P<zone>\d{2})(?P<hemi>[NS])-E(?P<e>\d{4,})-N(?P<n>\d{5,})$")


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One square cell of side ``side_km`` (whole kilometres) on the lattice of UTM zone /
    hemisphere ``utm_epsg``, anchored at the projection origin like the tile lattice::

        cell (i, j) covers  x in [i*S, (i+1)*S)   y in [j*S, (j+1)*S)     S = side_km * 1000

    in the zone's own coordinates (false easting 500 km; south: false northing 10 000 km, so every
    northing is positive). A tile belongs to the one cell that holds its centre
    (``x0 + T/2, y0 - T/2``), so the cells of a zone split its tiles of every size without overlap.

    Id: ``"<zone><N|S>-E<easting km>-N<northing km>"`` of the cell's lower-left corner, e.g.
    ``"32N-E0460-N05320"`` (EPSG 32632, 20 km cell with its corner at 460 km E, 5 320 km N);
    ``N`` / ``S`` is the hemisphere (EPSG 326zz / 327zz), not an MGRS latitude band. It is a
    pure function of the lattice position, never of the AOI: growing an AOI adds cells and keeps
    every existing id (and its tiles). Upper-case letters, digits and ``-`` only (valid in a
    Dagster multi-partition key, which refuses ``| , [ ]``)."""

    utm_epsg: int
    side_km: int
    i: int
    j: int

    @property
    def side_m(self) -> float:
        return float(self.side_km * 1000)

    @property
    def cell_id(self) -> str:
        zone, hemi = self.utm_epsg % 100, "N" if self.utm_epsg < 32700 else "S"
        return f"{zone:02d}{hemi}-E{self.i * self.side_km:04d}-N{self.j * self.side_km:05d}"

    @classmethod
    def from_id(cls, cid: str, side_km: int) -> Cell:
        """The cell an id names, for cells of ``side_km``; ValueError when it is not such an id."""
        m = _CELL_ID.match(cid)
        if not m or int(m["e"]) % side_km or int(m["n"]) % side_km or not 1 <= int(m["zone"]) <= 60:
            raise ValueError(f"not a cell id of a {side_km} km lattice: {cid!r} (e.g. '32N-E0460-N05320')")
        epsg = (32600 if m["hemi"] == "N" else 32700) + int(m["zone"])
        return cls(epsg, side_km, int(m["e"]) // side_km, int(m["n"]) // side_km)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` in the cell's UTM CRS."""
        S = self.side_m
        return self.i * S, self.j * S, (self.i + 1) * S, (self.j + 1) * S

    def tile_block(self, tile_side_m: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((col_lo, col_hi), (row_lo, row_hi))``, inclusive: the lattice tiles of side
        ``tile_side_m`` whose centre lies in this cell (tile ``row`` is its upper edge, as in
        :func:`tile_id`)."""
        (c_lo, c_hi), (r_lo, r_hi) = (_index_ranges([self.i], tile_side_m, self.side_m, 0.5),
                                      _index_ranges([self.j], tile_side_m, self.side_m, -0.5))
        return (int(c_lo[0]), int(c_hi[0])), (int(r_lo[0]), int(r_hi[0]))


def _cell_index(k: Any, T: Any, S: float, offset: float) -> np.ndarray:
    """Cell index of lattice tile index ``k`` of tiles of side ``T`` (centre at ``(k + offset) * T``);
    the one formula every tile-to-cell assignment uses, so that a centre on a cell edge is never
    counted twice."""
    return np.floor((np.asarray(k, dtype=np.float64) + offset) * T / S).astype(np.int64)


def _first_index(cells: Any, T: float, S: float, offset: float) -> np.ndarray:
    """The smallest tile index whose centre lies in each of ``cells`` (or beyond)."""
    cells = np.asarray(cells, dtype=np.int64)
    k = np.floor(cells * S / T - offset).astype(np.int64) - 2  # a few below: float rounding
    for _ in range(8):
        below = _cell_index(k, T, S, offset) < cells
        if not below.any():
            return k
        k = np.where(below, k + 1, k)
    raise AssertionError("tile block search did not converge")  # cannot happen: T < S


def _index_ranges(cells: Any, T: float, S: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``, inclusive: the tile indices whose centre lies in each of ``cells``."""
    cells = np.asarray(cells, dtype=np.int64)
    return _first_index(cells, T, S, offset), _first_index(cells + 1, T, S, offset) - 1


def cell_ids_of_tiles(grid: Any, side_km: int) -> np.ndarray:
    """The id of the cell holding each tile's centre, for a tile grid's rows (``utm_epsg``,
    ``col``, ``row``, ``size_px``, ``scale_m`` columns, as :func:`build_tile_grid` returns them):
    how a plan groups an unsplit grid by partition without building each cell's grid."""
    T = np.asarray(grid["size_px"], dtype=np.float64) * np.asarray(grid["scale_m"], dtype=np.float64)
    S = float(side_km * 1000)
    ii = _cell_index(grid["col"], T, S, 0.5)
    jj = _cell_index(grid["row"], T, S, -0.5)
    return np.array([Cell(int(e), side_km, int(i), int(j)).cell_id
                     for e, i, j in zip(np.asarray(grid["utm_epsg"]), ii, jj)], dtype=object)


def split_cells(aoi: BaseGeometry, tile_sizes: Sequence[tuple[int, float]], side_km: int) -> list[Cell]:
    """The cells of side ``side_km`` that hold the centre of at least one tile of the AOI, for any
    of ``tile_sizes`` ((size_px, scale_m) pairs): exactly the cells whose
    ``build_tile_grid(aoi, size, scale, cell=cell)`` is non-empty for some size, found without
    building any tile (the union of a cell's tile block is one rectangle, and the AOI meets the
    interior of a tile of the block iff it meets the rectangle's interior). Sorted by
    (utm_epsg, -j, i), like tile grids. ValueError when a tile is not smaller than a cell."""
    sides = [_tile_side(size, scale) for size, scale in tile_sizes]
    if not sides:
        raise ValueError("split_cells needs at least one tile size")
    S = float(side_km * 1000)
    largest = max(size * scale for size, scale in sides)
    if not S > largest:
        raise ValueError(f"cells of {side_km} km are not larger than the largest tile ({largest / 1000:g} km)")
    found: set[Cell] = set()
    for epsg, utm in _projected_pieces(aoi):
        minx, miny, maxx, maxy = utm.bounds
        for size_px, scale_m in sides:
            T = size_px * scale_m
            # cells of the tiles the piece's bounds can reach
            i_lo, i_hi = (int(v) for v in _cell_index(np.array([math.floor(minx / T), math.floor(maxx / T)]), T, S, 0.5))
            j_lo, j_hi = (int(v) for v in _cell_index(
                np.array([math.floor(miny / T) + 1, math.floor(maxy / T) + 1]), T, S, -0.5))
            ii, jj = (a.ravel() for a in np.meshgrid(np.arange(i_lo, i_hi + 1), np.arange(j_lo, j_hi + 1)))
            (c_lo, c_hi), (r_lo, r_hi) = _index_ranges(ii, T, S, 0.5), _index_ranges(jj, T, S, -0.5)
            rects = shapely.box(c_lo * T, (r_lo - 1) * T, (c_hi + 1) * T, r_hi * T)  # union of the block
            hit = shapely.intersects(utm, rects) & ~shapely.touches(utm, rects)
            found.update(Cell(epsg, side_km, int(i), int(j)) for i, j in zip(ii[hit], jj[hit]))
    return sorted(found, key=lambda c: (c.utm_epsg, -c.j, c.i))


def tile_bounds(row: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of a tile row in its UTM CRS."""
    T = float(row["size_px"]) * float(row["scale_m"])
    x0, y0 = float(row["x0"]), float(row["y0"])
    return x0, y0 - T, x0 + T, y0
