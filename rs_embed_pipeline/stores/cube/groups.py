"""A UTM zone's two cube groups (``EPSG<code>/grid`` and ``EPSG<code>/pooled``): where the zone's
tiles sit on the cube's grid, the arrays each group holds (shapes, chunking, CF metadata), their
creation (idempotent, whoever comes first) and the check that an existing group fits a write.

Chunks hold one window each: grid chunks exactly one tile of one window, pooled chunks up to
64 x 64 tiles of one window, so a window write touches only its own chunks.

Layouts (:data:`Layout`, chosen when a group is created; a group keeps its own):

``sharded`` (new groups)
    Zarr v3 sharding: those chunks are the inner chunks of shards that hold one window of a block
    of tiles, as large as the zone's window up to :data:`SHARD_MAX_BYTES` decompressed
    (:func:`shard_tiles`): a split region's cell (20 km of 224 px TerraFM-B tiles: 9 x 9 tiles,
    48 MB) is one object per array per window instead of one per tile. The writer writes whole
    shards (each one PUT, never a read-modify-write); readers still read single inner chunks
    (byte ranges through the shard index).
``chunked`` (cubes written before sharding)
    one object per chunk; still read and written as they are."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import zarr
from pyproj import CRS

from rs_embed_pipeline.core.grid import parse_tile_id
from rs_embed_pipeline.stores.cube.attributes import geo_transform
from rs_embed_pipeline.stores.cube.codec import INT8_FILL, OFFSET_VAR, SCALE_VAR, stored_scheme
from rs_embed_pipeline.stores.cube.root import CubeError, create_missing
from rs_embed_pipeline.stores.cube.time_axis import TIME_BLOCK, days_since_epoch
from rs_embed_pipeline.stores.tile_store import array_at, float_compressors, group_at


Layout = Literal["sharded", "chunked"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
SHARD_MAX_BYTES = 64 * 2**20  # decompressed bytes of one shard: what a writer holds of a window at once


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise CubeError(f"cube layout {layout!r} is not a layout; valid: {', '.join(LAYOUTS)}")
    return layout


def shard_tiles(n_rows: int, n_cols: int, chunk_bytes: int) -> tuple[int, int]:
    """Chunks a shard holds along (y, x): the whole ``n_rows`` x ``n_cols`` chunks of a window when
    they fit :data:`SHARD_MAX_BYTES`, else the largest square block of chunks that does (at least one)."""
    if n_rows * n_cols * chunk_bytes <= SHARD_MAX_BYTES:
        return n_rows, n_cols
    side = max(1, int((SHARD_MAX_BYTES // max(1, chunk_bytes)) ** 0.5))
    return min(n_rows, side), min(n_cols, side)


@dataclasses.dataclass(frozen=True)
class ZoneTiles:
    """A UTM zone's tiles laid out on the cube's grid (rows count northwards in the tile id)."""

    epsg: int
    tiles: list[Mapping[str, Any]]
    cells: list[tuple[int, int, str]]   # (row from the top, column from the left, tile id)
    nrow: int
    ncol: int
    size_px: int
    scale_m: float
    left: float                         # upper-left corner of the zone's tile block
    top: float

    @property
    def name(self) -> str:
        return f"EPSG{self.epsg}"

    @property
    def paths(self) -> list[str]:
        return [f"{self.name}/grid", f"{self.name}/pooled"]

    @classmethod
    def of(cls, epsg: int, tiles: Sequence[Mapping[str, Any]]) -> ZoneTiles:
        zone_tiles = [t for t in tiles if int(t["utm_epsg"]) == epsg]
        parsed = [parse_tile_id(str(t["tile_id"])) for t in zone_tiles]
        cols, rows = [p["col"] for p in parsed], [p["row"] for p in parsed]
        col_min, row_max = min(cols), max(rows)
        return cls(epsg=epsg, tiles=zone_tiles,
                   cells=[(row_max - p["row"], p["col"] - col_min, str(t["tile_id"])) for t, p in zip(zone_tiles, parsed)],
                   nrow=row_max - min(rows) + 1, ncol=max(cols) - col_min + 1,
                   size_px=int(zone_tiles[0]["size_px"]), scale_m=float(zone_tiles[0]["scale_m"]),
                   left=min(float(t["x0"]) for t in zone_tiles), top=max(float(t["y0"]) for t in zone_tiles))


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """One group of a zone (grid or pooled) on the cube's grid: its cells and attributes."""

    cell_m: float                       # cell side in metres of the zone's CRS
    ny: int
    nx: int
    n_feature: int
    chunk_yx: tuple[int, int]
    attrs: dict[str, Any]               # the group's attributes (CF, geoemb:)

    def shard_yx(self, layout: str) -> tuple[int, int] | None:
        """The shard's (y, x) cells for ``layout`` (None: not sharded): whole chunks, one window."""
        if check_layout(layout) == "chunked":
            return None
        cy, cx = self.chunk_yx
        ky, kx = shard_tiles(-(-self.ny // cy), -(-self.nx // cx), cy * cx * self.n_feature * 4)
        return ky * cy, kx * cx


def array_specs(epsg: int, x0: float, y0: float, cell_m: float, ny: int, nx: int, n_feature: int,
                chunk_yx: tuple[int, int], capacity: int, quantization: str = "none",
                shard_yx: tuple[int, int] | None = None) -> dict[str, dict[str, Any]]:
    """``{array name: zarr create_array keywords}`` of one group, the time axis ``capacity`` long;
    ``shard_yx``: the (y, x) cells of a shard of the arrays with y and x (None: not sharded)."""
    specs = _float_specs(epsg, x0, y0, cell_m, ny, nx, n_feature, chunk_yx, capacity)
    if quantization != "none":
        specs.update(_quantized_specs(specs["embedding"], ny, nx, n_feature, chunk_yx, capacity, quantization))
    if shard_yx is not None:
        for spec in specs.values():
            dims = spec.get("dimension_names") or []
            if dims[:3] == ["time", "y", "x"]:  # embedding (and int8_per_cell's scales): one window per shard
                spec["shards"] = (1, *shard_yx, *spec["chunks"][3:])
    return specs


def _quantized_specs(embedding: Mapping[str, Any], ny: int, nx: int, n_feature: int, chunk_yx: tuple[int, int],
                     capacity: int, quantization: str) -> dict[str, dict[str, Any]]:
    """int8 ``embedding`` (fill -128: no embedding) plus its float32 scale (and offset) arrays, all
    chunked one window per chunk like the rest (stores/cube/codec.py has the schemes)."""

    out = {"embedding": {**embedding, "dtype": "int8", "fill_value": INT8_FILL,
                         "attributes": {**embedding["attributes"], "quantization": quantization,
                                        "long_name": f"embedding ({quantization}; read with open_cube)"}}}
    float_attrs = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref", "units": "1"}
    if quantization == "int8_per_cell":
        out[SCALE_VAR] = dict(shape=(capacity, ny, nx), chunks=(1, *chunk_yx), dtype="float32", fill_value=np.nan,
                              dimension_names=["time", "y", "x"], compressors=float_compressors(),
                              attributes={**float_attrs, "long_name": "per-cell scale: embedding = q * scale + offset"})
        out[OFFSET_VAR] = dict(shape=(capacity, n_feature), chunks=(1, n_feature), dtype="float32", fill_value=np.nan,
                               dimension_names=["time", "feature"], compressors=float_compressors(),
                               attributes={"units": "1", "long_name": "per-feature mean of the window: "
                                                                      "embedding = q * scale + offset"})
    else:
        for name, what in ((SCALE_VAR, "scale"), (OFFSET_VAR, "offset")):
            out[name] = dict(shape=(capacity, n_feature), chunks=(1, n_feature), dtype="float32", fill_value=np.nan,
                             dimension_names=["time", "feature"], compressors=float_compressors(),
                             attributes={"units": "1", "long_name": f"per-feature {what} of the window: "
                                                                    "embedding = q * scale + offset"})
    return out


def _float_specs(epsg: int, x0: float, y0: float, cell_m: float, ny: int, nx: int, n_feature: int,
                 chunk_yx: tuple[int, int], capacity: int) -> dict[str, dict[str, Any]]:
    crs = CRS.from_epsg(epsg)
    cf = crs.to_cf()
    cf.update({"crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(), "GeoTransform": geo_transform(x0, y0, cell_m)})
    return {
        "x": dict(shape=(nx,), dtype="float64", dimension_names=["x"],
                  attributes={"standard_name": "projection_x_coordinate", "units": "m",
                              "long_name": "x coordinate of cell centre"}),
        "y": dict(shape=(ny,), dtype="float64", dimension_names=["y"],
                  attributes={"standard_name": "projection_y_coordinate", "units": "m",
                              "long_name": "y coordinate of cell centre"}),
        "feature": dict(shape=(n_feature,), dtype="int32", dimension_names=["feature"],
                        attributes={"long_name": "embedding feature index"}),
        "spatial_ref": dict(shape=(), dtype="int32", dimension_names=[], attributes=cf),
        "time": dict(shape=(capacity,), chunks=(TIME_BLOCK,), dtype="int64", dimension_names=["time"],
                     attributes={"standard_name": "time", "long_name": "time window start",
                                 "units": "days since 1970-01-01", "calendar": "proleptic_gregorian"}),
        "window_filled": dict(shape=(capacity,), chunks=(1,), dtype="int8", fill_value=0,
                              dimension_names=["time"],
                              attributes={"long_name": "1 where this window was written completely"}),
        "window_provenance": dict(shape=(capacity,), chunks=(1,), dtype=str, dimension_names=["time"],
                                  attributes={"long_name": "JSON: the embeddings that filled this window"}),
        "embedding": dict(shape=(capacity, ny, nx, n_feature), chunks=(1, *chunk_yx, n_feature),
                          dtype="float32", fill_value=np.nan, dimension_names=["time", "y", "x", "feature"],
                          compressors=float_compressors(),
                          attributes={"grid_mapping": "spatial_ref", "coordinates": "spatial_ref",
                                      "long_name": "embedding", "units": "1"}),
    }


def check_group_fits(path: str, meta: Mapping[str, Any], ny: int, nx: int, n_feature: int, transform: str,
                     quantization: str = "none") -> None:
    """The group's own metadata (from the consolidated view or fresh) fits this window's layout."""
    found_q = stored_scheme(meta.get(f"{path}/embedding") or {})
    if found_q != quantization:
        raise CubeError(f"Cube group {path} stores embeddings as {found_q!r} ('none' = float32), this write asks "
                        f"for {quantization!r}. Nothing was written; materialize the cube with rebuild (config "
                        "`rebuild: true`) to change its storage, or keep its quantization setting.")
    shape = tuple((meta.get(f"{path}/embedding") or {}).get("shape", ())[1:])
    if shape != (ny, nx, n_feature):
        raise CubeError(
            f"Cube group {path} has shape {shape}, this window needs {(ny, nx, n_feature)}: "
            "the region's tile grid or the model output changed. Nothing was written; rebuild the cube."
        )
    found = ((meta.get(f"{path}/spatial_ref") or {}).get("attributes") or {}).get("GeoTransform")
    if found != transform:
        raise CubeError(f"Cube group {path}: its x / y coordinates differ from this window's tile grid "
                        f"(GeoTransform {found!r}, this window: {transform!r}; the region changed). Nothing "
                        "was written; rebuild the cube.")


def ensure_group(root: zarr.Group, zone: str, kind: str, *, epsg: int, specs: Mapping[str, dict],
                 xs: np.ndarray, ys: np.ndarray, window_starts: Sequence[str], attrs: Mapping[str, Any]) -> None:
    """Create what is missing of ``<zone>/<kind>`` (the slow path: a new or unfinished group)."""
    create_missing(root, zone, lambda: root.create_group(zone, attributes={"crs_epsg": epsg}))
    zone_group = group_at(root, zone)
    create_missing(zone_group, kind, lambda: zone_group.create_group(
        kind, attributes={"Conventions": "CF-1.8", **attrs}))
    group = group_at(zone_group, kind)
    for name, spec in specs.items():
        create_missing(group, name, functools.partial(group.create_array, name, **spec))
    group = group_at(root, f"{zone}/{kind}")  # fresh metadata
    meta = {f"{zone}/{kind}/{name}": array_at(group, name).metadata.to_dict() for name in ("embedding", "spatial_ref")}
    n_feature = specs["feature"]["shape"][0]
    check_group_fits(f"{zone}/{kind}", meta, len(ys), len(xs), n_feature,
                     specs["spatial_ref"]["attributes"]["GeoTransform"], stored_scheme(specs["embedding"]))
    # Coordinate values are the same whoever writes them: (re)writing them is idempotent. They are
    # written here, before the group can appear in the consolidated metadata (the fast path).
    for name, values in (("x", xs), ("y", ys), ("feature", np.arange(n_feature, dtype=np.int32))):
        coordinate = array_at(group, name)
        if not np.array_equal(np.asarray(coordinate[:]), values):
            coordinate[:] = values
    array_at(group, "spatial_ref")[()] = 0
    time = array_at(group, "time")
    n = min(time.shape[0], len(window_starts))
    expected = np.asarray([days_since_epoch(s) for s in window_starts[:n]], dtype=np.int64)
    if not np.array_equal(np.asarray(time[:n]), expected):
        time[:n] = expected
