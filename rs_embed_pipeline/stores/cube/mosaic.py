"""One dataset over many cubes: the region cells of a continental build, per UTM zone.

A split region (``split_km``) has one cube per cell (``cubes/<model>_<modality>/<region>-<cell>.zarr``).
:func:`open_mosaic` opens the cells that intersect an area as one lazily loaded xarray Dataset
per UTM zone, with the coordinates, CF grid mapping and attributes a single cube has::

    from rs_embed_pipeline.stores.cube.mosaic import open_mosaic
    ds = open_mosaic("data/cubes/terrafm_b_s2", region="alps", bbox=(6.5, 46.4, 6.7, 46.6),
                     windows="2024-01-01", zone="EPSG32632")        # lon / lat bbox
    ds["embedding"]           # (time, y, x, feature) float32, dask; NaN where no cell has a tile

How it reads:

* **Cells on one lattice.** Every cube group of a zone and kind puts its cells on the zone's tile
  lattice (origin at the projection origin), so the cubes of a zone differ by whole cells; the
  mosaic is their union on that lattice (cubes of another cell size or an unaligned origin are
  refused). Cells do not overlap: a tile belongs to the one cell holding its centre.
* **Only what the area needs.** The area (``bbox`` or ``geometry`` in lon / lat) is projected into
  each zone; the cubes whose extent meets it are opened (one metadata read per cube, the root's
  consolidated metadata, plus the small ``time`` / ``window_filled`` arrays of each zone group)
  and the mosaic is cropped to the area's bounds, snapped out to whole cells. Its dask blocks
  are the cubes' own chunks on the lattice (grid: one tile; pooled: 64 x 64 tiles), so computing
  a block reads only the stored chunks (or, in sharded cubes, the inner chunks) under it.
* **Filled windows only, de-quantized.** The time axis is the windows filled (``window_filled``)
  in at least one opened cell, or those asked; a cell whose window is not filled reads as NaN;
  ``cells_filled`` counts the cells that have each window. int8 cubes are de-quantized like
  :func:`~rs_embed_pipeline.stores.cube.reader.open_cube` (the same float32 operations, so the
  same values).

Zones stay apart, as in a cube (tiles on both sides of a zone boundary overlap on the ground):
:func:`open_mosaics` returns every zone; a single Dataset in another CRS is a reprojection the
caller chooses (``rioxarray``'s ``ds.rio.reproject``), not something this reader does silently.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import shapely
import xarray as xr
import zarr
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from rs_embed_pipeline.stores.cube import codec as Q
from rs_embed_pipeline.stores.cube.attributes import geo_transform
from rs_embed_pipeline.stores.cube.reader import KINDS, CubeReadError, normalise_zone
from rs_embed_pipeline.stores.cube.time_axis import EPOCH
from rs_embed_pipeline.stores.tile_store import array_at, group_at

CELL_SUFFIX = re.compile(r"-\d{2}[NS]-E\d{4,}-N\d{5,}$")  # "-32N-E0460-N05320": a split region's cell
POOLED_BLOCK = 64      # cells a side of a pooled mosaic block (the pooled groups' own chunk side)
_LATTICE_TOLERANCE = 1e-6  # cells: an origin this close to a whole cell is on the lattice
_DENSIFY_DEG = 0.01    # lon / lat edges are densified before projection (curved in UTM)


@dataclasses.dataclass(frozen=True)
class _Source:
    """One cube's zone group in a mosaic: where it sits on the zone's lattice and what it holds."""

    name: str                       # the cube's name (region or region cell)
    embedding: zarr.Array
    scale: zarr.Array | None        # int8 cubes: embedding_scale / embedding_offset
    offset: zarr.Array | None
    scheme: str
    row0: int                       # lattice row (counted southwards from y = 0) of its first row
    col0: int                       # lattice column of its first column
    ny: int
    nx: int
    windows: Mapping[int, int]      # filled window (days since 1970-01-01) -> its time index here

    def rows(self) -> tuple[int, int]:
        return self.row0, self.row0 + self.ny

    def cols(self) -> tuple[int, int]:
        return self.col0, self.col0 + self.nx


@dataclasses.dataclass(frozen=True)
class _ZoneGroup:
    """A zone and kind's group of one cube, as found in its consolidated metadata."""

    name: str
    uri: str
    root: zarr.Group
    path: str
    cell_m: float
    left: float
    top: float
    spatial_ref_attrs: dict[str, Any]
    attrs: dict[str, Any]


def list_cubes(cubes: str | Sequence[str], region: str | None = None,
               storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The cube URIs a mosaic draws on: ``cubes`` as a list, or the ``*.zarr`` cubes of the folder
    ``cubes`` (``<store>/cubes/<model>_<modality>``); ``region`` keeps that region's cube or its
    cells' cubes (``<region>-<zone><N|S>-E<km>-N<km>``)."""
    if isinstance(cubes, str):
        fs, path = fsspec.core.url_to_fs(cubes, **dict(storage_options or {}))
        try:
            names = sorted(str(n).rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False))
        except FileNotFoundError as exc:
            raise CubeReadError(f"No cube folder at {cubes} (materialize the <model>_<modality>_cube asset "
                                "first)") from exc
        uris = [f"{cubes.rstrip('/')}/{n}" for n in names if n.endswith(".zarr")]
    else:
        uris = [str(u).rstrip("/") for u in cubes]
    if region is not None:
        uris = [u for u in uris if base_region(u.rsplit("/", 1)[-1].removesuffix(".zarr")) == region]
    if not uris:
        where = cubes if isinstance(cubes, str) else "the cubes given"
        raise CubeReadError(f"No cube{' of region ' + repr(region) if region else ''} in {where}")
    return uris


def base_region(name: str) -> str:
    """The region a region partition (or its cube) belongs to: ``"alps-32N-E0460-N05320"`` -> ``"alps"``."""
    return CELL_SUFFIX.sub("", name)


def open_mosaics(
    cubes: str | Sequence[str],
    *,
    region: str | None = None,
    kind: str = "grid",
    windows: str | Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    geometry: BaseGeometry | None = None,
    storage_options: Mapping[str, Any] | None = None,
    feature_first: bool = False,
) -> dict[str, xr.Dataset]:
    """``{"EPSG32632": Dataset, ...}``: the mosaic of every UTM zone the area meets (see
    :func:`open_mosaic` for the arguments)."""
    if kind not in KINDS:
        raise CubeReadError(f"kind {kind!r} is not a cube group kind; valid kinds: {', '.join(KINDS)}")
    if bbox is not None and geometry is not None:
        raise CubeReadError("pass bbox or geometry, not both")
    area = _area(bbox, geometry)
    wanted = _window_days(windows)
    by_zone: dict[str, list[_ZoneGroup]] = {}
    for uri in list_cubes(cubes, region, storage_options):
        for group in _zone_groups(uri, kind, storage_options):
            by_zone.setdefault(group.path.split("/")[0], []).append(group)
    out: dict[str, xr.Dataset] = {}
    filled_anywhere: set[int] = set()
    for zone in sorted(by_zone):
        ds = _zone_mosaic(zone, kind, by_zone[zone], area, wanted, filled_anywhere)
        if ds is not None:
            out[zone] = ds.transpose("time", "feature", "y", "x", ...) if feature_first else ds
    if wanted is not None:
        missing = sorted(set(wanted) - {d for ds in out.values() for d in _days(ds)})
        if missing:
            raise CubeReadError(f"Window(s) {', '.join(_date(d) for d in missing)} are filled in no cube of the "
                                f"area; filled windows: {', '.join(_date(d) for d in sorted(filled_anywhere)) or 'none'}")
    return out


def open_mosaic(
    cubes: str | Sequence[str],
    *,
    region: str | None = None,
    kind: str = "grid",
    windows: str | Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    geometry: BaseGeometry | None = None,
    zone: str | int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    feature_first: bool = False,
) -> xr.Dataset:
    """One UTM zone's mosaic of the cubes (region cells) that meet an area, as a lazy Dataset.

    ``cubes``: a folder of cubes (``<store>/cubes/<model>_<modality>``) or a list of cube URIs;
    ``region``: keep that region's cube and its cells' cubes. ``kind``: ``"grid"`` or ``"pooled"``.
    ``windows``: window start(s) ``YYYY-MM-DD`` (default: every window filled in an opened cube).
    ``bbox`` (``(min lon, min lat, max lon, max lat)``) or ``geometry`` (shapely, lon / lat): the
    area (default: everything); the mosaic covers its bounds in the zone, snapped out to whole
    cells. ``zone``: ``"EPSG32632"`` (or ``32632``); None picks the only zone the area meets and
    names them all when there are several. ``feature_first``: dims ``(time, feature, y, x)``.
    """
    zones = open_mosaics(cubes, region=region, kind=kind, windows=windows, bbox=bbox, geometry=geometry,
                         storage_options=storage_options, feature_first=feature_first)
    if not zones:
        raise CubeReadError("No cube of the mosaic meets the area" + (f" {list(bbox)}" if bbox is not None else ""))
    if zone is None:
        if len(zones) > 1:
            raise CubeReadError(f"The area spans several UTM zones ({', '.join(zones)}); pass zone=, e.g. "
                                f"zone={next(iter(zones))!r}, or use open_mosaics")
        return next(iter(zones.values()))
    name = normalise_zone(zone)
    if name not in zones:
        raise CubeReadError(f"The mosaic has no zone {name!r} in this area; its zones: {', '.join(zones)}")
    return zones[name]


@dataclasses.dataclass(frozen=True)
class ZoneExtent:
    """Where one zone group of a cube lies and which windows it holds (the VRT writer's input)."""

    cube: str               # the cube's name (region or region cell)
    zone: str               # "EPSG32632"
    left: float
    top: float
    cell_m: float
    ny: int
    nx: int
    n_feature: int
    filled: tuple[str, ...]  # starts (YYYY-MM-DD) of the windows marked filled


def zone_extents(uri: str, kind: str, storage_options: Mapping[str, Any] | None = None) -> list[ZoneExtent]:
    """The zone groups of kind ``kind`` of one cube: extent on the lattice and filled windows."""
    out = []
    for group in _zone_groups(uri, kind, storage_options):
        src = _source(group)
        out.append(ZoneExtent(cube=group.name, zone=group.path.split("/")[0], left=group.left, top=group.top,
                              cell_m=group.cell_m, ny=src.ny, nx=src.nx, n_feature=int(src.embedding.shape[3]),
                              filled=tuple(_date(d) for d in sorted(src.windows))))
    return out


# ------------------------------------------------------------------------------------------ sources
def _zone_groups(uri: str, kind: str, storage_options: Mapping[str, Any] | None) -> list[_ZoneGroup]:
    """The ``EPSG<code>/<kind>`` groups of one cube, from its consolidated metadata (one read)."""
    try:
        root = zarr.open_group(uri, mode="r", zarr_format=3, use_consolidated=None,
                               storage_options=dict(storage_options or {}) or None)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise CubeReadError(f"No cube at {uri}: it does not exist or is not a Zarr v3 group") from exc
    name = uri.rsplit("/", 1)[-1].removesuffix(".zarr")
    out = []
    for zone in sorted(z for z in root.group_keys() if z.startswith("EPSG")):
        path = f"{zone}/{kind}"
        try:
            group = group_at(root, path)
        except KeyError:
            continue
        ref = dict(array_at(group, "spatial_ref").attrs)
        x0, cell, _, y0, _, _ = (float(v) for v in str(ref["GeoTransform"]).split())
        out.append(_ZoneGroup(name=name, uri=uri, root=root, path=path, cell_m=cell, left=x0, top=y0,
                              spatial_ref_attrs=ref, attrs=dict(group.attrs)))
    return out


def _on_lattice(value: float, cell_m: float, what: str) -> int:
    k = value / cell_m
    if abs(k - round(k)) > _LATTICE_TOLERANCE:
        raise CubeReadError(f"{what} ({value} m) is not on the lattice of {cell_m} m cells: the cubes cannot be "
                            "mosaicked without resampling")
    return int(round(k))


def _source(group: _ZoneGroup) -> _Source:
    g = group_at(group.root, group.path)
    embedding = array_at(g, "embedding")
    scheme = Q.stored_scheme({"attributes": dict(embedding.attrs)})
    filled = np.asarray(array_at(g, "window_filled")[:])
    times = np.asarray(array_at(g, "time")[:])
    n = min(len(filled), len(times))
    windows = {int(times[i]): int(i) for i in np.flatnonzero(filled[:n] == 1)}
    quantized = scheme != "none"
    return _Source(name=group.name, embedding=embedding, scheme=scheme,
                   scale=array_at(g, Q.SCALE_VAR) if quantized else None,
                   offset=array_at(g, Q.OFFSET_VAR) if quantized else None,
                   row0=-_on_lattice(group.top, group.cell_m, f"{group.uri} {group.path} top edge"),
                   col0=_on_lattice(group.left, group.cell_m, f"{group.uri} {group.path} left edge"),
                   ny=int(embedding.shape[1]), nx=int(embedding.shape[2]), windows=windows)


# ------------------------------------------------------------------------------------------ one zone
def _zone_mosaic(zone: str, kind: str, groups: list[_ZoneGroup], area: BaseGeometry | None,
                 wanted: list[int] | None, filled_anywhere: set[int]) -> xr.Dataset | None:
    """The zone's mosaic, or None when no cube of the zone meets the area."""
    epsg = int(zone.removeprefix("EPSG"))
    cell = groups[0].cell_m
    odd = [g.name for g in groups if not math.isclose(g.cell_m, cell, rel_tol=1e-12)]
    if odd:
        raise CubeReadError(f"{zone}/{kind}: cubes {', '.join(odd)} have cells of another size than "
                            f"{groups[0].name}'s {cell} m (another model or tile size); mosaic one model at a time")
    local = None if area is None else _project(area, epsg)
    if local is not None:
        groups = [g for g in groups if _meets(g, local, *_extent_of(g))]
    if not groups:
        return None
    sources = [_source(g) for g in groups]
    depth = {int(s.embedding.shape[3]) for s in sources}
    if len(depth) > 1:
        raise CubeReadError(f"{zone}/{kind}: the cubes hold vectors of different lengths {sorted(depth)}")
    filled_anywhere.update(d for s in sources for d in s.windows)
    days = sorted({d for s in sources for d in s.windows} & (set(wanted) if wanted is not None else set(filled_anywhere)))
    r0, r1 = min(s.row0 for s in sources), max(s.row0 + s.ny for s in sources)
    c0, c1 = min(s.col0 for s in sources), max(s.col0 + s.nx for s in sources)
    if local is not None:  # crop to the area's bounds, whole cells
        minx, miny, maxx, maxy = local.bounds
        r0, r1 = max(r0, math.floor(-maxy / cell)), min(r1, math.ceil(-miny / cell))
        c0, c1 = max(c0, math.floor(minx / cell)), min(c1, math.ceil(maxx / cell))
    if r1 <= r0 or c1 <= c0:
        return None
    block_y, block_x = _block_shape(kind, sources[0])
    embedding = _lazy_embedding(sources, days, (r0, r1), (c0, c1), (block_y, block_x), depth.pop())
    first = groups[0]
    ref = {**first.spatial_ref_attrs, "GeoTransform": geo_transform(c0 * cell, -r0 * cell, cell)}
    attrs = {k: v for k, v in first.attrs.items() if k != "region"}
    attrs.update({"zone": zone, "cube_kind": kind, "mosaic_cubes": sorted(s.name for s in sources)})
    regions = {str(g.attrs["region"]) for g in groups if "region" in g.attrs}
    if regions:
        attrs["mosaic_regions"] = sorted(regions)
    emb_attrs = {k: v for k, v in dict(sources[0].embedding.attrs).items() if k not in ("quantization", "long_name")}
    emb_attrs["long_name"] = "embedding"
    if sources[0].scheme != "none":
        emb_attrs["dequantized_from"] = sources[0].scheme
    coords = {
        "time": ("time", np.asarray([np.datetime64(_date(d), "ns") for d in days], dtype="datetime64[ns]")),
        "y": ("y", -(np.arange(r0, r1) + 0.5) * cell, {"standard_name": "projection_y_coordinate", "units": "m",
                                                      "long_name": "y coordinate of cell centre"}),
        "x": ("x", (np.arange(c0, c1) + 0.5) * cell, {"standard_name": "projection_x_coordinate", "units": "m",
                                                     "long_name": "x coordinate of cell centre"}),
        "feature": ("feature", np.arange(embedding.shape[3], dtype=np.int32),
                    {"long_name": "embedding feature index"}),
        "spatial_ref": ((), np.int32(0), ref),
    }
    count = np.asarray([sum(d in s.windows for s in sources) for d in days], dtype=np.int32)
    return xr.Dataset(
        {"embedding": (("time", "y", "x", "feature"), embedding,
                       {**emb_attrs, "grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}),
         "cells_filled": ("time", count, {"long_name": "cubes of the mosaic in which this window is filled"})},
        coords=coords, attrs=attrs)


def _block_shape(kind: str, source: _Source) -> tuple[int, int]:
    """Dask block side (cells) on the lattice: a grid tile (the grid chunk, or a sharded cube's inner
    chunk), or POOLED_BLOCK pooled cells."""
    if kind == "pooled":
        return POOLED_BLOCK, POOLED_BLOCK
    inner = tuple(int(v) for v in source.embedding.chunks)  # zarr: the inner chunk when sharded
    return inner[1], inner[2]


def _splits(lo: int, hi: int, step: int) -> tuple[int, ...]:
    """Block lengths over ``[lo, hi)`` with edges at multiples of ``step`` (the lattice's tile edges)."""
    edges = [lo, *range((lo // step + 1) * step, hi, step), hi]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:]))


def _lazy_embedding(sources: list[_Source], days: list[int], rows: tuple[int, int], cols: tuple[int, int],
                    block: tuple[int, int], depth: int) -> da.Array:
    """``[time, y, x, feature]`` float32 over the lattice window ``rows`` x ``cols``, one dask block per
    lattice block; a block reads the cubes under it (only their chunks under it)."""
    (r0, r1), (c0, c1) = rows, cols
    chunks = ((1,) * len(days), _splits(r0, r1, block[0]), _splits(c0, c1, block[1]), (depth,))

    def read(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        (t, _), (ya, yb), (xa, xb), _ = block_info[None]["array-location"]
        day = days[t]
        out = np.full((1, yb - ya, xb - xa, depth), np.nan, dtype=np.float32)
        ya, yb, xa, xb = ya + r0, yb + r0, xa + c0, xb + c0  # lattice indices
        for s in sources:
            if day not in s.windows:
                continue
            (sr0, sr1), (sc0, sc1) = s.rows(), s.cols()
            lo_r, hi_r, lo_c, hi_c = max(ya, sr0), min(yb, sr1), max(xa, sc0), min(xb, sc1)
            if lo_r >= hi_r or lo_c >= hi_c:
                continue
            out[0, lo_r - ya:hi_r - ya, lo_c - xa:hi_c - xa] = _read_piece(
                s, s.windows[day], slice(lo_r - sr0, hi_r - sr0), slice(lo_c - sc0, hi_c - sc0))
        return out

    return da.map_blocks(read, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0, 0), dtype=np.float32))


def _read_piece(s: _Source, t: int, ys: slice, xs: slice) -> np.ndarray:
    """``[y, x, feature]`` float32 of one cube's window, de-quantized as open_cube does."""
    values = np.asarray(s.embedding[t, ys, xs, :])
    if s.scheme == "none":
        return values.astype(np.float32, copy=False)
    assert s.scale is not None and s.offset is not None
    offset = np.asarray(s.offset[t, :], dtype=np.float32)
    if s.scheme == "int8_per_cell":
        return Q.dequantize_array(values, np.asarray(s.scale[t, ys, xs], dtype=np.float32), offset)
    return Q.dequantize_array(values, np.asarray(s.scale[t, :], dtype=np.float32), offset, per_cell=False)


# ------------------------------------------------------------------------------------------ area, time
def _area(bbox: Sequence[float] | None, geometry: BaseGeometry | None) -> BaseGeometry | None:
    if geometry is not None:
        if not isinstance(geometry, BaseGeometry) or geometry.is_empty:
            raise CubeReadError(f"geometry must be a non-empty shapely geometry in lon / lat, got {geometry!r}")
        return geometry
    if bbox is None:
        return None
    values = [float(v) for v in bbox]
    if len(values) != 4 or not (values[0] < values[2] and values[1] < values[3]):
        raise CubeReadError(f"bbox must be (min lon, min lat, max lon, max lat) with min < max, got {list(bbox)}")
    if not (-180 <= values[0] and values[2] <= 180 and -90 <= values[1] and values[3] <= 90):
        raise CubeReadError(f"bbox is in lon / lat degrees (-180..180, -90..90), got {values}")
    return shapely.box(*values)


def _project(area: BaseGeometry, epsg: int) -> BaseGeometry:
    """The lon / lat area in the zone's CRS (edges densified: they curve in UTM)."""
    to_zone = Transformer.from_crs(4326, epsg, always_xy=True)
    return shapely.transform(shapely.segmentize(area, _DENSIFY_DEG),
                             lambda xy: np.column_stack(to_zone.transform(xy[:, 0], xy[:, 1])))


def _extent_of(group: _ZoneGroup) -> tuple[float, float]:
    """The group's (width, height) in metres, from its array shape."""
    shape = array_at(group_at(group.root, group.path), "embedding").shape
    return shape[2] * group.cell_m, shape[1] * group.cell_m


def _meets(group: _ZoneGroup, local: BaseGeometry, width: float, height: float) -> bool:
    rect = shapely.box(group.left, group.top - height, group.left + width, group.top)
    return bool(rect.intersects(local) and not rect.touches(local))


def _window_days(windows: str | Sequence[str] | None) -> list[int] | None:
    if windows is None:
        return None
    starts = [windows] if isinstance(windows, str) else list(windows)
    out = []
    for s in starts:
        try:
            out.append((dt.date.fromisoformat(str(s)[:10]) - EPOCH).days)
        except ValueError as exc:
            raise CubeReadError(f"window {s!r} is not a window start YYYY-MM-DD") from exc
    return out


def _date(days: int) -> str:
    return (EPOCH + dt.timedelta(days=int(days))).isoformat()


def _days(ds: xr.Dataset) -> list[int]:
    return [(dt.date.fromisoformat(str(t)[:10]) - EPOCH).days for t in ds["time"].values]
