"""Georeferenced embedding cubes: one Zarr v3 store per model, modality and region.

Layout of ``cubes/<model>_<modality>/<region>.zarr``::

    EPSG32632/grid     embedding (time, y, x, feature)   feature maps mosaicked at their own
                                                         resolution (tile side / grid cells)
    EPSG32632/pooled   embedding (time, y, x, feature)   one cell per tile
    (one EPSG group per UTM zone the region's tiles fall in)

Each dataset carries CF metadata that xarray and rioxarray read: ``x``/``y`` cell-centre
coordinates in metres of the tile CRS, a ``spatial_ref`` grid-mapping variable (CF attributes,
``crs_wkt``, GDAL ``GeoTransform``), ``time`` as the window start (CF units),
``window_filled`` (1 where a window was written completely) and ``window_provenance`` (JSON: the
embedding store's fingerprint, tile counts, synthetic flag).

Time index i is the i-th window of the partitions definition (not the order of writes), so a
backfill may fill windows in any order.

int8 cubes (``quantization``, stores/cube_codec.py): ``embedding`` is int8 (fill -128 = no
embedding) with ``embedding_scale`` (per cell, or per feature and window) and ``embedding_offset``
(per feature and window) beside it, all chunked one window per chunk and grown with the time axis
like the other per-window arrays; ``products.open_cube`` returns float32.

Concurrent writers (different windows of one region, in separate processes or machines, on a
local disk or on S3; no locks)
-----------------------------------------------------------------------------------------------
* **Nothing per window lives in metadata.** The time axis is allocated when a group is created,
  for the partitions definition's whole current range plus a margin, rounded up to
  :data:`TIME_BLOCK` windows; the per-window facts (``window_filled``, ``window_provenance``) are
  arrays chunked one window per chunk. So a window write touches only its own chunks: grid
  chunks hold exactly one tile of one window, pooled chunks one window.
* **Creation is idempotent.** Every writer derives the same metadata from the same inputs (the
  region's tiles, the model's output shape, the time axis), creates only what is missing, never
  with ``overwrite`` (which would delete chunks), and writes coordinate values that are equal
  whoever writes them.
* **Growth is monotone and self-healing.** When a window lies beyond the allocated axis (years
  later), the writer rewrites the time arrays' ``zarr.json`` with a larger shape (never deleting
  a chunk) and re-consolidates. Two writers may race there and the slower one may write a stale,
  smaller shape; so every writer ends with :func:`_settle`: it lists the ``window_filled`` chunk
  keys (the windows written so far: they double as a ledger), re-reads every time array's shape
  and the consolidated metadata, and repairs (grows, re-consolidates) until they agree. The last
  metadata write of all is followed by its writer's own check, which sees every marker written
  before it, so the cube always ends consistent. Listing and read-after-write are strongly
  consistent on local disks and on S3.
* **A window is marked last.** Its chunks are written, then ``window_provenance``, then
  ``window_filled = 1``. A window being rewritten from other embeddings is first unmarked. So a
  killed writer leaves ``window_filled = 0`` (or the same values, for an idempotent rewrite),
  never a marked window with a hole. Tiles without an embedding are written as NaN (zarr then
  deletes the chunk), so a rewrite never leaves a stale tile behind.

``rebuild`` deletes the cube and starts again (other windows must then be re-materialized); it
must not run while other writers write the same cube.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import time
from typing import Any, Protocol
from collections.abc import Callable, Iterator, Mapping, Sequence

import fsspec
import numpy as np
import zarr
from pyproj import CRS

from rs_embed_pipeline.core.grid import parse_tile_id
from rs_embed_pipeline.stores import cube_codec as Q
from rs_embed_pipeline.stores.cube_codec import INT8_FILL, OFFSET_VAR, SCALE_VAR, Scheme, quantized_arrays
from rs_embed_pipeline.stores.files import write_bytes_atomic
from rs_embed_pipeline.stores.tile_store import (
    AccessMode, StoreError, array_at, float_compressors, group_at, remove_tree, require_atomic_chunk_writes,
)

EPOCH = dt.date(1970, 1, 1)
CUBE_SCHEMA = "rs_embed_pipeline.cube"
CUBE_SCHEMA_VERSION = 2
TIME_BLOCK = 16   # the time axis is allocated in blocks of this many windows
TIME_MARGIN = 4   # windows allocated beyond the partitions definition's current range
TIME_ARRAYS = ("embedding", "time", "window_filled", "window_provenance")
SETTLE_ROUNDS = 50
ROW_SEGMENT = 64  # tiles of a row written (and held in memory) together


class CubeError(StoreError):
    """A cube is not a cube, was built with other settings, or does not fit this window."""


def _days(date: str) -> int:
    return (dt.date.fromisoformat(date) - EPOCH).days


def time_capacity(need: int, available: int) -> int:
    """Windows to allocate: ``need`` plus the margin, rounded up to a block, within ``available``."""
    blocks = -(-(need + TIME_MARGIN) // TIME_BLOCK)
    return max(need, min(blocks * TIME_BLOCK, available))


def _write_block(array: zarr.Array, selection: tuple, value: np.ndarray) -> None:
    """Every data write of a window goes through here (a row of tiles' grid chunks, the pooled plane)."""
    array[selection] = value


class _Cube:
    """Raw access to a cube's keys (metadata documents and chunk listings) through fsspec."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None):
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = fsspec.core.url_to_fs(self.uri, **self.storage_options)

    def _key(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self._key(*parts, "zarr.json")))
        except FileNotFoundError:
            return None

    def write_json(self, doc: Mapping[str, Any], *parts: str) -> None:
        payload = json.dumps(doc, indent=2).encode()
        write_bytes_atomic("/".join([self.uri, *parts, "zarr.json"]), payload, self.storage_options)

    def filled_windows(self, group: str) -> list[int]:
        """Indices whose ``window_filled`` chunk exists: the windows written so far."""
        try:
            names = self.fs.ls(self._key(group, "window_filled", "c"), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            tail = str(name).rstrip("/").rsplit("/", 1)[-1]
            if tail.isdigit():
                out.append(int(tail))
        return out

    def open_root(self, mode: AccessMode = "r+", consolidated: bool | None = False) -> zarr.Group:
        return zarr.open_group(self.uri, mode=mode, use_consolidated=consolidated, zarr_format=3,
                               storage_options=self.storage_options or None)


def _consolidated(root_doc: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((((root_doc or {}).get("consolidated_metadata") or {}).get("metadata")) or {})


# ------------------------------------------------------------------------------- root and groups
def _open_or_create_root(
    cube: _Cube, attrs: Mapping[str, Any], fingerprint: str | None, rebuild: bool, window_starts: Sequence[str]
) -> dict[str, Any]:
    """The root's metadata document (created when missing; validated when present)."""
    head = list(window_starts[:3])
    root_attrs = {"Conventions": "CF-1.8", **attrs, "schema": CUBE_SCHEMA, "schema_version": CUBE_SCHEMA_VERSION,
                  "fingerprint": fingerprint or "", "time_axis_head": head}
    doc = cube.read_json()
    entries = cube.fs.ls(cube.path, detail=False) if doc is None and cube.fs.exists(cube.path) else []
    if entries and _only_partial_writes(entries):  # another writer is creating the root right now
        doc = _wait_for_root(cube)
        if doc is None:  # its creator died before the rename: its temporary files are garbage
            try:
                cube.fs.rm(list(entries))
            except FileNotFoundError:
                pass  # another waiting writer removed them first
        entries = []
    if entries:
        if not rebuild:
            raise CubeError(f"{cube.uri} exists but is not a Zarr group; it was left untouched. Point the "
                            "pipeline at another store root, delete it, or materialize the cube with rebuild.")
        remove_tree(cube.uri, cube.storage_options)  # asked for (e.g. a rebuild killed while deleting)
    if doc is not None:
        found = doc.get("attributes", {})
        problem = None
        if found.get("schema") != CUBE_SCHEMA or found.get("schema_version") != CUBE_SCHEMA_VERSION:
            problem = (f"is not a cube of this version (schema={found.get('schema')!r}, "
                       f"schema_version={found.get('schema_version')!r})")
        elif fingerprint is not None and found.get("fingerprint") != fingerprint:
            problem = (f"was built with other settings (fingerprint {str(found.get('fingerprint'))[:12]} "
                       f"!= {fingerprint[:12]})")
        elif list(found.get("time_axis_head") or [])[:len(head)] != head[:len(found.get("time_axis_head") or [])]:
            problem = (f"has a time axis that differs from the partitions definition's windows (it starts "
                       f"{found.get('time_axis_head')}, the windows start {head}: cadence or start changed)")
        if problem is None:
            return doc
        if not rebuild:
            raise CubeError(f"Cube {cube.uri} {problem}. Nothing was changed. Materialize the cube with "
                            "rebuild (config `rebuild: true`: the cube is deleted and re-created, its other "
                            "windows must be re-materialized), or use another store root.")
        remove_tree(cube.uri, cube.storage_options)
    try:
        zarr.open_group(cube.uri, mode="w-", attributes=root_attrs, zarr_format=3,
                        storage_options=cube.storage_options or None)
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        pass  # a concurrent creator won; its root is validated below
    return _open_or_create_root(cube, attrs, fingerprint, False, window_starts)


def _only_partial_writes(entries: Sequence[str]) -> bool:
    """zarr writes a document to ``<name>.<hex>.partial`` and renames it into place: a cube folder that
    holds only such files is a root another writer is creating right now (or one whose creator was
    killed before the rename): not a foreign folder to refuse. The writer waits for that root."""
    return all(str(e).rstrip("/").rsplit("/", 1)[-1].endswith(".partial") for e in entries)


ROOT_CREATION_WAIT_S = 10.0  # a root's creation is one small write and a rename: far less than this


def _wait_for_root(cube: _Cube) -> dict[str, Any] | None:
    """The root document once another writer's creation has renamed it into place; None when none
    appears within ``ROOT_CREATION_WAIT_S`` (the creator was killed mid-way)."""
    deadline = time.monotonic() + ROOT_CREATION_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        doc = cube.read_json()
        if doc is not None:
            return doc
    return None


def _create_missing(parent: zarr.Group, name: str, create: Callable[[], object]) -> None:
    if name in parent:
        return
    try:
        create()
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        pass  # another writer created the same node (with the same metadata)


def _geo_transform(x0: float, y0: float, cell_m: float) -> str:
    return f"{x0} {cell_m} 0.0 {y0} 0.0 {-cell_m}"


# geoemb: Zarr convention v1 (github.com/geo-embeddings/embeddings-zarr-convention, tag v1), on
# every cube group next to the CF attributes. Groups are ``EPSG<code>/<kind>`` (one per UTM zone and
# hemisphere), not the convention's ``utm<NN>`` names: existing cubes and readers rely on them.
GEOEMB_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
MODEL_URLS = {"terrafm_b": "https://huggingface.co/MBZUAI/TerraFM"}
SOURCE_DATA_URLS = {
    "s2": "https://dataspace.copernicus.eu/explore-data/data-collections/sentinel-data/sentinel-2",
    "s1": "https://dataspace.copernicus.eu/explore-data/data-collections/sentinel-data/sentinel-1",
}


def model_url(model_id: str) -> str:
    """The encoder's page (Hugging Face); a URN for a model this table does not know."""
    if model_id in MODEL_URLS:
        return MODEL_URLS[model_id]
    if model_id.startswith("thor_1_0_"):
        return f"https://huggingface.co/FM4CS/THOR-1.0-{model_id[len('thor_1_0_'):]}"
    return f"urn:rs-embed-pipeline:model:{model_id}"


def geoemb_attributes(attrs: Mapping[str, Any], *, n_feature: int, chip_px: int, gsd_m: float) -> dict[str, Any]:
    """The ``geoemb:`` attributes of one cube group. ``attrs`` (the cube's attributes) may carry
    ``source_data`` (URIs of the source collections), ``data_type`` and ``quantization`` (a
    geoemb quantization object, e.g. for int8 cubes); defaults: the modality's Copernicus
    collection, float32, none. The model reference carries the weights' sha256 as a fragment."""
    model = model_url(str(attrs.get("model_id", "unknown")))
    sha = str(attrs.get("weights_sha256") or "")
    out = {
        "zarr_conventions": [dict(GEOEMB_CONVENTION)],
        "geoemb:type": "chip",
        "geoemb:dimensions": int(n_feature),
        "geoemb:model": f"{model}#sha256={sha}" if len(sha) == 64 else model,
        "geoemb:source_data": list(attrs.get("source_data")
                                   or [SOURCE_DATA_URLS.get(str(attrs.get("modality")), "urn:rs-embed-pipeline:unknown")]),
        "geoemb:data_type": str(attrs.get("data_type") or "float32"),
        "geoemb:gsd": float(gsd_m),
        "geoemb:chip_layout": {"layout_type": "regular_grid", "chip_size": [int(chip_px), int(chip_px)],
                               "stride": [int(chip_px), int(chip_px)]},
        "geoemb:spatial_layout": "utm_zones",
        "geoemb:build_version": f"rs_embed_pipeline cube schema {CUBE_SCHEMA_VERSION}",
    }
    if attrs.get("quantization"):
        out["geoemb:quantization"] = _geoemb_quantization(attrs["quantization"])
    return out


def _geoemb_quantization(q: Mapping[str, Any]) -> dict[str, Any]:
    """The convention's quantization object (only its fields: method, original_dtype,
    quantized_dtype, scale, link) from the cube's own description, which stays whole in the group's
    ``quantization`` attribute."""
    out: dict[str, Any] = {"method": str(q.get("method") or q.get("scheme") or "unknown"),
                           "original_dtype": str(q.get("original_dtype") or q.get("original_data_type") or "float32")}
    quantized = q.get("quantized_dtype") or q.get("data_type")
    if quantized:
        out["quantized_dtype"] = str(quantized)
    if isinstance(q.get("scale"), Mapping):
        out["scale"] = dict(q["scale"])
    elif q.get("scale_variable") and {"y", "x"} <= set(q.get("scale_dimensions") or []):
        out["scale"] = {"type": "array", "array_name": str(q["scale_variable"])}  # one scale per cell
    if q.get("link"):
        out["link"] = str(q["link"])
    return out


def _dataset_specs(epsg: int, x0: float, y0: float, cell_m: float, ny: int, nx: int, n_feature: int,
                   chunk_yx: tuple[int, int], capacity: int, quantization: str = "none") -> dict[str, dict[str, Any]]:
    specs = _float_specs(epsg, x0, y0, cell_m, ny, nx, n_feature, chunk_yx, capacity)
    if quantization != "none":
        specs.update(_quantized_specs(specs["embedding"], ny, nx, n_feature, chunk_yx, capacity, quantization))
    return specs


def _quantized_specs(embedding: Mapping[str, Any], ny: int, nx: int, n_feature: int, chunk_yx: tuple[int, int],
                     capacity: int, quantization: str) -> dict[str, dict[str, Any]]:
    """int8 ``embedding`` (fill -128: no embedding) plus its float32 scale (and offset) arrays, all
    chunked one window per chunk like the rest (stores/cube_codec.py has the schemes)."""

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
    cf.update({"crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(), "GeoTransform": _geo_transform(x0, y0, cell_m)})
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


def _check_layout(path: str, meta: Mapping[str, Any], ny: int, nx: int, n_feature: int, transform: str,
                  quantization: str = "none") -> None:
    """The group's own metadata (from the consolidated view or fresh) fits this window's layout."""
    found_q = _scheme(meta.get(f"{path}/embedding") or {})
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


def _ensure_dataset(root: zarr.Group, zone: str, kind: str, *, epsg: int, specs: Mapping[str, dict],
                    xs: np.ndarray, ys: np.ndarray, window_starts: Sequence[str], attrs: Mapping[str, Any]) -> None:
    """Create what is missing of ``<zone>/<kind>`` (the slow path: a new or unfinished group)."""
    _create_missing(root, zone, lambda: root.create_group(zone, attributes={"crs_epsg": epsg}))
    zone_group = group_at(root, zone)
    _create_missing(zone_group, kind, lambda: zone_group.create_group(
        kind, attributes={"Conventions": "CF-1.8", **attrs}))
    group = group_at(zone_group, kind)
    for name, spec in specs.items():
        _create_missing(group, name, functools.partial(group.create_array, name, **spec))
    group = group_at(root, f"{zone}/{kind}")  # fresh metadata
    meta = {f"{zone}/{kind}/{name}": array_at(group, name).metadata.to_dict() for name in ("embedding", "spatial_ref")}
    n_feature = specs["feature"]["shape"][0]
    _check_layout(f"{zone}/{kind}", meta, len(ys), len(xs), n_feature, specs["spatial_ref"]["attributes"]["GeoTransform"],
                  _scheme(specs["embedding"]))
    # Coordinate values are the same whoever writes them: (re)writing them is idempotent. They are
    # written here, before the group can appear in the consolidated metadata (the fast path).
    for name, values in (("x", xs), ("y", ys), ("feature", np.arange(n_feature, dtype=np.int32))):
        coordinate = array_at(group, name)
        if not np.array_equal(np.asarray(coordinate[:]), values):
            coordinate[:] = values
    array_at(group, "spatial_ref")[()] = 0
    time = array_at(group, "time")
    n = min(time.shape[0], len(window_starts))
    expected = np.asarray([_days(s) for s in window_starts[:n]], dtype=np.int64)
    if not np.array_equal(np.asarray(time[:n]), expected):
        time[:n] = expected


# ----------------------------------------------------------------------------------- time axis
def _settle(cube: _Cube, groups: Sequence[str], need: int, window_starts: Sequence[str]) -> dict[str, Any]:
    """Make every time array of ``groups`` at least ``need`` long and as long as the markers ask
    (plus the margin), all of a group's time arrays equally long, and the consolidated metadata
    equal to the arrays' own metadata. Idempotent; converges under concurrent writers (module
    docstring). Returns the root document (with its consolidated metadata)."""
    for _ in range(SETTLE_ROUNDS):
        changed = False
        docs: dict[str, dict[str, Any]] = {}
        for group in groups:
            wanted = max([need, *(i + 1 for i in cube.filled_windows(group))])
            names = list(TIME_ARRAYS)
            for name in names:
                doc = cube.read_json(group, name)
                if doc is None:
                    raise CubeError(f"Cube {cube.uri}: group {group} lacks its {name} array; rebuild the cube")
                docs[f"{group}/{name}"] = doc
                if name == "embedding":  # int8 cubes: their scale (offset) arrays have a time axis too
                    names.extend(_quantized_names(doc))
            shapes = {name: int(docs[f"{group}/{name}"]["shape"][0]) for name in names}
            # The margin is kept beyond the last window written, so the final length depends only
            # on the windows written, not on the order in which writers happened to grow it.
            target = time_capacity(wanted, len(window_starts))
            if min(shapes.values()) >= target and len(set(shapes.values())) == 1:
                continue
            capacity = max(target, *shapes.values())
            for name in names:
                doc = docs[f"{group}/{name}"]
                if shapes[name] != capacity:
                    # Only the shape changes: no chunk is deleted (zarr's resize would delete the
                    # chunks outside a smaller shape if a stale view made it shrink).
                    doc["shape"] = [capacity, *doc["shape"][1:]]
                    cube.write_json(doc, group, name)
            time = zarr.open_array(cube.uri, path=f"{group}/time", mode="r+", zarr_format=3,
                                   storage_options=cube.storage_options or None)
            n = min(capacity, len(window_starts))
            time[:n] = np.asarray([_days(s) for s in window_starts[:n]], dtype=np.int64)
            changed = True
        root = cube.read_json()
        if not changed and root is not None and _consolidated_current(root, docs):
            return root
        zarr.consolidate_metadata(cube.open_root().store)
    raise CubeError(f"Cube {cube.uri}: the time axis did not settle after {SETTLE_ROUNDS} rounds")


def _consolidated_current(root: Mapping[str, Any] | None, docs: Mapping[str, Mapping[str, Any]]) -> bool:
    consolidated = _consolidated(root)
    return all(list((consolidated.get(path) or {}).get("shape", [None])) == list(doc["shape"])
               for path, doc in docs.items())


def _listed(meta: Mapping[str, Any], paths: Sequence[str], extra: Sequence[str] = ()) -> bool:
    """The consolidated view lists every array of the zone's groups (so they were created and
    their coordinates written)."""
    return all(f"{path}/{name}" in meta for path in paths
               for name in (*TIME_ARRAYS, *extra, "x", "y", "feature", "spatial_ref"))


def _long_enough(meta: Mapping[str, Any], paths: Sequence[str], need: int, extra: Sequence[str] = ()) -> bool:
    return all(int(meta[f"{path}/{name}"]["shape"][0]) >= need for path in paths for name in (*TIME_ARRAYS, *extra))


def _scheme(embedding_doc: Mapping[str, Any]) -> str:
    """The quantization of a group's ``embedding`` array from its metadata ("none": float32)."""
    return str((embedding_doc.get("attributes") or {}).get("quantization") or "none")


def _quantized_names(embedding_doc: Mapping[str, Any]) -> list[str]:
    scheme = _scheme(embedding_doc)
    if scheme == "none":
        return []

    return list(quantized_arrays(scheme))


# ------------------------------------------------------------------------------------- writing
class GridReader(Protocol):
    """Reads the feature maps of tiles that have an embedding: ``[N, D', h, w]`` in the order asked."""

    def read_grids(self, tile_ids: Sequence[str]) -> np.ndarray: ...


class TileStoreGrids:
    """A :class:`GridReader` over an embedding tile store (one store read per call)."""

    def __init__(self, store: Any):
        self.store = store
        self.index_of = {tid: i for i, tid in enumerate(store.tile_ids)}

    def read_grids(self, tile_ids: Sequence[str]) -> np.ndarray:
        indices = np.asarray([self.index_of[t] for t in tile_ids])
        order = np.argsort(indices)  # the store reads in index order; the caller's order is restored
        return self.store.read("grid", indices[order])[np.argsort(order)]


@dataclasses.dataclass(frozen=True)
class CallableGrids:
    """A :class:`GridReader` from callables: ``read_grids`` (several tiles at once) when given,
    otherwise ``grids`` one tile at a time."""

    grids: Callable[[str], np.ndarray] | None = None
    read: Callable[[Sequence[str]], np.ndarray] | None = None

    def read_grids(self, tile_ids: Sequence[str]) -> np.ndarray:
        if self.read is not None:
            return np.asarray(self.read(list(tile_ids)))
        if self.grids is None:
            raise ValueError("write_cube_window needs a reader, or grids / read_grids callables")
        return np.stack([np.asarray(self.grids(t)) for t in tile_ids])


@dataclasses.dataclass(frozen=True)
class _Window:
    """The window being written: its slot on the time axis and its provenance."""

    index: int
    starts: Sequence[str]        # window starts 0, 1, ... (into the future: a margin)
    need: int                    # the time axis must be at least this long
    capacity: int                # time-axis length of a group created now
    source: str                  # JSON provenance (window_provenance)
    quantization: str


@dataclasses.dataclass(frozen=True)
class _Layout:
    """One group of a zone (grid or pooled) on the cube's grid."""

    cell_m: float                       # cell side in metres of the zone's CRS
    ny: int
    nx: int
    n_feature: int
    chunk_yx: tuple[int, int]
    attrs: dict[str, Any]               # the group's attributes (CF, geoemb:)


@dataclasses.dataclass(frozen=True)
class _Zone:
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
    def of(cls, epsg: int, tiles: Sequence[Mapping[str, Any]]) -> _Zone:
        zone_tiles = [t for t in tiles if int(t["utm_epsg"]) == epsg]
        parsed = [parse_tile_id(str(t["tile_id"])) for t in zone_tiles]
        cols, rows = [p["col"] for p in parsed], [p["row"] for p in parsed]
        col_min, row_max = min(cols), max(rows)
        return cls(epsg=epsg, tiles=zone_tiles,
                   cells=[(row_max - p["row"], p["col"] - col_min, str(t["tile_id"])) for t, p in zip(zone_tiles, parsed)],
                   nrow=row_max - min(rows) + 1, ncol=max(cols) - col_min + 1,
                   size_px=int(zone_tiles[0]["size_px"]), scale_m=float(zone_tiles[0]["scale_m"]),
                   left=min(float(t["x0"]) for t in zone_tiles), top=max(float(t["y0"]) for t in zone_tiles))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CubeWindowWrite:
    """One window of a region's embeddings, to be written into its cube by :func:`write_cube_window`.

    Checked when made, so a bad request fails before anything is written: a ``window_index``
    outside ``window_starts``, an unknown ``quantization``, or embeddings without a grid reader.
    """

    tiles: Sequence[Mapping[str, Any]]
    """tile_grid rows (tile_id, utm_epsg, x0, y0, size_px, scale_m) of the region at this model's
    tile size."""
    pooled: Mapping[str, np.ndarray]
    """tile_id -> [D] for the tiles that have an embedding."""
    window_index: int
    """The window's slot on the cube's time axis: its index in ``window_starts``."""
    window_starts: Sequence[str]
    """Start dates of windows 0, 1, ... (at least up to ``window_index``; longer lists, into the
    future, let the time axis be allocated with a margin)."""
    attrs: Mapping[str, Any]
    """The cube's attributes (title, model_id, modality, region, ...), on its root and groups."""
    reader: GridReader = CallableGrids()
    """Reads the feature maps of the tiles in ``pooled``, one row of tiles at a time (at most a row
    in memory): a :class:`TileStoreGrids` over the embedding store, or a :class:`CallableGrids` over
    ``grids`` (callable tile_id -> [D', h, w]) and optionally ``read`` (callable [tile_id, ...] ->
    [N, D', h, w]). The default reads nothing: for a window without any embedding."""
    storage_options: Mapping[str, Any] | None = None
    """fsspec options for the cube's URI (e.g. S3 credentials and endpoint)."""
    fingerprint: str | None = None
    """A digest of the settings every window of this cube shares (model, weights, adapter options,
    provider settings, code version); a cube with another one is refused unless ``rebuild``."""
    provenance: Mapping[str, Any] | None = None
    """JSON facts about this window's source (stored in ``window_provenance``)."""
    windows_in_range: int | None = None
    """How many of ``window_starts`` the partitions definition has now (default: all)."""
    grid_shape: Sequence[int] | None = None
    """(D', h, w): with ``pooled_dim``, lets a window without any embedding be written (as NaN);
    without them such a window is skipped."""
    pooled_dim: int | None = None
    """D: see ``grid_shape``."""
    rebuild: bool = False
    """Delete a cube that is not one, or was built with other settings, and start again (its other
    windows must then be re-materialized); must not run beside other writers of the same cube."""
    quantization: Scheme = "none"
    """Cube storage: ``"none"`` (float32), ``"int8_per_cell"`` or ``"int8_per_feature"``
    (stores/cube_codec.py); part of the cube's identity (a cube stored otherwise is refused unless
    ``rebuild``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.window_index < len(self.window_starts):
            raise ValueError(f"window_index {self.window_index} is outside window_starts "
                             f"({len(self.window_starts)} windows)")
        Q.check_scheme(self.quantization)
        no_reader = isinstance(self.reader, CallableGrids) and self.reader.grids is None and self.reader.read is None
        if no_reader and any(str(t["tile_id"]) in self.pooled for t in self.tiles):
            raise ValueError("tiles of this window have an embedding but the request has no grid reader: pass "
                             "reader=TileStoreGrids(store) or CallableGrids(grids=..., read=...)")


@dataclasses.dataclass(frozen=True)
class CubeZoneWritten:
    """One UTM zone of a written window: its cube group and its embedding arrays' shapes after the write."""

    group: str                          # "EPSG<code>": holds <group>/grid and <group>/pooled
    epsg: int
    grid_shape: tuple[int, ...]         # (time, y, x, D') of <group>/grid/embedding
    pooled_shape: tuple[int, ...]       # (time, y, x, D) of <group>/pooled/embedding


@dataclasses.dataclass(frozen=True)
class CubeWindowAccuracy:
    """An int8 window's accuracy: the lowest cosine of a stored cell to its float32 input."""

    scheme: Scheme
    min_cosine_grid: float | None       # None: no cell with an embedding
    min_cosine_pooled: float | None


@dataclasses.dataclass(frozen=True)
class CubeWindowWritten:
    """What :func:`write_cube_window` wrote."""

    groups: tuple[CubeZoneWritten, ...]  # one per UTM zone written (zones without a shape are skipped)
    tiles_written: int                  # tiles with an embedding
    tiles_empty: int                    # tiles without one (NaN / int8 fill)
    quantization: CubeWindowAccuracy | None = None  # int8 cubes only

    @property
    def min_cosines(self) -> list[float]:
        """The int8 window's lowest cosines (grid, pooled) that exist; none for float32 cubes."""
        q = self.quantization
        return [] if q is None else [v for v in (q.min_cosine_grid, q.min_cosine_pooled) if v is not None]


def write_cube_window(cube_uri: str, request: CubeWindowWrite) -> CubeWindowWritten:
    """Write one window of a region's embeddings into its cube (idempotent; safe beside writers of
    other windows). The request's fields say what (:class:`CubeWindowWrite`); int8 writes report
    the accuracy of the window's values against the float32 input in ``quantization``.

    The common case (the cube and the window's slot exist) costs a handful of metadata reads: the
    arrays are opened from the consolidated metadata, the window's chunks written, then the time
    axis and the consolidated metadata checked (:func:`_settle`).
    """
    r = request
    require_atomic_chunk_writes(cube_uri)
    fingerprint, attrs = _storage_identity(r.quantization, r.fingerprint, r.attrs)
    cube = _Cube(cube_uri, r.storage_options)
    root_doc = _open_or_create_root(cube, attrs, fingerprint, r.rebuild, r.window_starts)
    in_range = len(r.window_starts) if r.windows_in_range is None else int(r.windows_in_range)
    window = _Window(index=r.window_index, starts=r.window_starts, need=r.window_index + 1,
                     capacity=time_capacity(max(r.window_index + 1, in_range), len(r.window_starts)),
                     source=json.dumps(dict(r.provenance or {}), sort_keys=True, default=str),
                     quantization=r.quantization)
    groups: list[CubeZoneWritten] = []
    tiles_written = tiles_empty = 0
    cosines: dict[str, list[float]] = {"grid": [], "pooled": []}
    for epsg in sorted({int(t["utm_epsg"]) for t in r.tiles}):
        zone = _Zone.of(epsg, r.tiles)
        shapes = _zone_shapes(zone, r.pooled, r.reader, r.grid_shape, r.pooled_dim)
        if shapes is None:
            continue  # nothing to write and no shape to create the group with
        root_doc = _ensure_zone(cube, root_doc, zone, shapes, attrs, window)
        n_have, n_empty = _write_zone(cube, zone, shapes, r.pooled, r.reader, window, cosines)
        tiles_written += n_have
        tiles_empty += n_empty
        root_doc = _settle(cube, zone.paths, window.need, r.window_starts)
        meta = _consolidated(root_doc)
        groups.append(CubeZoneWritten(
            group=zone.name, epsg=epsg,
            grid_shape=tuple(int(n) for n in meta[f"{zone.paths[0]}/embedding"]["shape"]),
            pooled_shape=tuple(int(n) for n in meta[f"{zone.paths[1]}/embedding"]["shape"])))
    accuracy = None
    if r.quantization != "none":
        low = {kind: float(min(v)) if v else None for kind, v in cosines.items()}
        accuracy = CubeWindowAccuracy(scheme=r.quantization, min_cosine_grid=low["grid"],
                                      min_cosine_pooled=low["pooled"])
    return CubeWindowWritten(groups=tuple(groups), tiles_written=tiles_written, tiles_empty=tiles_empty,
                             quantization=accuracy)


def _storage_identity(quantization: str, fingerprint: str | None, attrs: Mapping[str, Any]
                      ) -> tuple[str | None, Mapping[str, Any]]:
    """The cube's fingerprint and attributes for its storage: int8 storage is part of the cube's
    identity (float32 cubes keep their fingerprint), and it is recorded for geoemb / STAC readers."""

    Q.check_scheme(quantization)
    if quantization == "none":
        return fingerprint, attrs
    if fingerprint is not None:
        fingerprint = hashlib.sha256(f"{fingerprint}|{quantization}".encode()).hexdigest()
    return fingerprint, {**attrs, "data_type": "int8", "quantization": Q.geoemb_quantization(quantization)}


def _zone_shapes(zone: _Zone, pooled: Mapping[str, np.ndarray], reader: GridReader,
                 grid_shape: Sequence[int] | None, pooled_dim: int | None) -> tuple[int, int, int, int] | None:
    """``(D', h, w, D)`` of the zone's embeddings: from a tile that has one, else from the given
    shapes; None when neither (the zone is skipped)."""
    sample = next((tid for _, _, tid in zone.cells if tid in pooled), None)
    if sample is not None:
        d_grid, gh, gw = np.asarray(reader.read_grids([sample])[0]).shape
        return int(d_grid), int(gh), int(gw), int(np.asarray(pooled[sample]).shape[-1])
    if grid_shape is not None and pooled_dim is not None:
        d_grid, gh, gw = (int(v) for v in grid_shape)
        return d_grid, gh, gw, int(pooled_dim)
    return None


def _ensure_zone(cube: _Cube, root_doc: dict[str, Any], zone: _Zone, shapes: tuple[int, int, int, int],
                 attrs: Mapping[str, Any], window: _Window) -> dict[str, Any]:
    """The zone's two groups exist, fit this window's layout and reach its slot on the time axis
    (fast path: checked against the consolidated metadata). Returns the current root document."""
    d_grid, gh, gw, d_pooled = shapes
    tile_m = zone.size_px * zone.scale_m
    layouts = {
        "grid": _Layout(cell_m=tile_m / gw, ny=zone.nrow * gh, nx=zone.ncol * gw, n_feature=d_grid, chunk_yx=(gh, gw),
                        attrs={**attrs, "cell_kind": "feature_map", "cells_per_tile": gw,
                               **geoemb_attributes(attrs, n_feature=d_grid, chip_px=zone.size_px // gw,
                                                   gsd_m=zone.scale_m)}),
        "pooled": _Layout(cell_m=tile_m, ny=zone.nrow, nx=zone.ncol, n_feature=d_pooled,
                          chunk_yx=(min(zone.nrow, 64), min(zone.ncol, 64)),
                          attrs={**attrs, "cell_kind": "tile", "cells_per_tile": 1,
                                 **geoemb_attributes(attrs, n_feature=d_pooled, chip_px=zone.size_px,
                                                     gsd_m=zone.scale_m)}),
    }

    extra = quantized_arrays(window.quantization)
    meta = _consolidated(root_doc)
    if _listed(meta, zone.paths, extra):
        for kind, lay in layouts.items():
            _check_layout(f"{zone.name}/{kind}", meta, lay.ny, lay.nx, lay.n_feature,
                          _geo_transform(zone.left, zone.top, lay.cell_m), window.quantization)
        if not _long_enough(meta, zone.paths, window.need, extra):
            root_doc = _settle(cube, zone.paths, window.need, window.starts)  # grow the time axis
        return root_doc
    root = cube.open_root()
    for kind, lay in layouts.items():
        cell = lay.cell_m
        specs = _dataset_specs(zone.epsg, zone.left, zone.top, cell, lay.ny, lay.nx, lay.n_feature,
                               lay.chunk_yx, window.capacity, window.quantization)
        _ensure_dataset(root, zone.name, kind, epsg=zone.epsg, specs=specs,
                        xs=zone.left + cell * (np.arange(lay.nx) + 0.5),
                        ys=zone.top - cell * (np.arange(lay.ny) + 0.5),
                        window_starts=window.starts, attrs=lay.attrs)
    return _settle(cube, zone.paths, window.need, window.starts)


def _segments(zone: _Zone, shapes: tuple[int, int, int, int], pooled: Mapping[str, np.ndarray],
              reader: GridReader, plane: np.ndarray) -> Iterator[tuple[int, int, int, np.ndarray, int, int]]:
    """A row of tiles (at most ROW_SEGMENT) at a time: ``(row, first col, end col, [gh, w, D']
    block, tiles with an embedding, tiles)``; the pooled ``plane`` is filled on the way."""
    d_grid, gh, gw, _ = shapes
    by_row: dict[int, list[tuple[int, str]]] = {}
    for r, c, tid in zone.cells:
        by_row.setdefault(r, []).append((c, tid))
    for r in sorted(by_row):
        cells = sorted(by_row[r])
        for start in range(0, len(cells), ROW_SEGMENT):
            segment = cells[start:start + ROW_SEGMENT]
            c0, c1 = segment[0][0], segment[-1][0] + 1
            block = np.full((gh, (c1 - c0) * gw, d_grid), np.nan, dtype=np.float32)
            have = [(c, tid) for c, tid in segment if tid in pooled]
            if have:
                stack = reader.read_grids([tid for _, tid in have])
                for (c, tid), grid in zip(have, stack):
                    plane[r, c] = pooled[tid]
                    block[:, (c - c0) * gw:(c - c0 + 1) * gw, :] = np.moveaxis(np.asarray(grid).astype(np.float32), 0, -1)
            yield r, c0, c1, block, len(have), len(segment)


def _write_zone(cube: _Cube, zone: _Zone, shapes: tuple[int, int, int, int], pooled: Mapping[str, np.ndarray],
                reader: GridReader, window: _Window, cosines: dict[str, list[float]]) -> tuple[int, int]:
    """Write the window into the zone's groups: unmark, the values (int8: their parameters
    first), provenance, and the filled marker last. Returns (tiles written, tiles empty)."""

    d_grid, gh, gw, d_pooled = shapes
    quantization, index = window.quantization, window.index
    # The arrays, from the consolidated metadata: no further metadata reads.
    view = cube.open_root(consolidated=None)
    grid_group, pooled_group = group_at(view, zone.paths[0]), group_at(view, zone.paths[1])
    # A window filled from other embeddings is unmarked before any of its chunks change.
    for group in (grid_group, pooled_group):
        filled = array_at(group, "window_filled")
        if int(np.asarray(filled[index])) and str(array_at(group, "window_provenance")[index]) != window.source:
            filled[index] = 0

    plane = np.full((zone.nrow, zone.ncol, d_pooled), np.nan, dtype=np.float32)
    grid_params = None
    if quantization != "none":
        # The window's per-feature statistics first (one extra read of the window), then the values.
        lo = np.full(d_grid, np.inf, dtype=np.float32)
        hi = np.full(d_grid, -np.inf, dtype=np.float32)
        total, count = np.zeros(d_grid), 0
        for *_, block, _n, _m in _segments(zone, shapes, pooled, reader, plane):
            blo, bhi = Q.feature_range(block)
            lo, hi = np.fmin(lo, blo), np.fmax(hi, bhi)
            s, c = Q.feature_sum(block)
            total, count = total + s, count + c
        grid_params = _window_params(quantization, lo, hi, total, count)
        _write_params(grid_group, index, grid_params)
    # One call writes a row's chunks together. Cells without an embedding are NaN (int8 cubes:
    # -128), the fill value: zarr deletes such a chunk, so no stale tile survives a rewrite.
    n_have = n_empty = 0
    for r, c0, c1, block, have, n_segment in _segments(zone, shapes, pooled, reader, plane):
        n_have += have
        n_empty += n_segment - have
        cells_sel = (index, slice(r * gh, (r + 1) * gh), slice(c0 * gw, c1 * gw))
        _write_values(grid_group, cells_sel, block, quantization, grid_params, cosines["grid"])
    pooled_params = None
    if quantization != "none":
        pooled_params = _window_params(quantization, *Q.feature_range(plane), *Q.feature_sum(plane))
        _write_params(pooled_group, index, pooled_params)
    _write_values(pooled_group, (index,), plane, quantization, pooled_params, cosines["pooled"])
    for group in (grid_group, pooled_group):
        array_at(group, "window_provenance")[index] = window.source
    for group in (grid_group, pooled_group):
        array_at(group, "window_filled")[index] = 1
    return n_have, n_empty


def _write_params(group: zarr.Group, index: int,
                  params: tuple[np.ndarray | None, np.ndarray]) -> None:
    """An int8 window's per-feature offset (and, per feature, scale)."""

    scale, offset = params
    _write_block(array_at(group, Q.OFFSET_VAR), (index,), offset)
    if scale is not None:  # int8_per_feature (int8_per_cell's scales are per cell: _write_values)
        _write_block(array_at(group, Q.SCALE_VAR), (index,), scale)


def _window_params(quantization: str, lo: np.ndarray, hi: np.ndarray, total: np.ndarray, count: int
                   ) -> tuple[np.ndarray | None, np.ndarray]:
    """(per-feature scale or None, per-feature offset) of a window: int8_per_feature from the
    range, int8_per_cell's offset is the mean (stores/cube_codec.py)."""

    if quantization == "int8_per_feature":
        return Q.per_feature_params(lo, hi)
    mean = (total / count).astype(np.float32) if count else np.zeros(len(total), dtype=np.float32)
    return None, mean


def _write_values(group: zarr.Group, cells: tuple, values: np.ndarray, quantization: str,
                  params: tuple[np.ndarray | None, np.ndarray] | None, cosines: list[float]) -> None:
    """Write float32 ``values [..., D]`` at ``cells`` of ``group``'s embedding, quantized as asked
    (and the per-cell scales) with the window's ``params`` (:func:`_window_params`); the lowest
    cosine to the float32 input is appended to ``cosines``."""
    if quantization == "none":
        _write_block(array_at(group, "embedding"), (*cells, slice(None)), values)
        return

    if params is None:
        raise ValueError(f"{quantization} writes need the window's quantization parameters")
    scale, offset = params
    if scale is None:  # int8_per_cell: a scale per cell
        q, scale = Q.quantize_per_cell(values, offset)
        back = Q.dequantize_array(q, scale, offset)
        _write_block(array_at(group, Q.SCALE_VAR), cells, scale)
    else:
        q = Q.quantize_per_feature(values, scale, offset)
        back = Q.dequantize_array(q, scale, offset, per_cell=False)
    _write_block(array_at(group, "embedding"), (*cells, slice(None)), q)
    cos = Q.cosine_per_cell(values, back)
    if np.isfinite(cos).any():
        cosines.append(float(np.nanmin(cos)))


def read_window_state(cube_uri: str, group: str, storage_options: Mapping[str, Any] | None = None
                      ) -> dict[int, dict[str, Any]]:
    """``{window index: provenance}`` of the windows marked filled in ``group`` (tests, checks)."""
    root = _Cube(cube_uri, storage_options).open_root(mode="r")
    g = group_at(root, group)  # fresh metadata (not the consolidated view)
    filled = np.asarray(array_at(g, "window_filled")[:])
    provenance = array_at(g, "window_provenance")
    return {int(i): json.loads(str(provenance[int(i)]) or "{}") for i in np.flatnonzero(filled)}


def check_georeferencing(cube_uri: str, group: str, epsg: int, storage_options: Mapping[str, Any] | None = None
                         ) -> tuple[bool, str]:
    """Does ``<group>/grid`` open with xarray as (time, y, x, feature) in EPSG ``epsg``? ``(ok, what was found)``."""
    import xarray as xr

    ds = xr.open_zarr(cube_uri, group=f"{group}/grid", consolidated=False, storage_options=storage_options)
    wkt = ds["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in ds.variables else None
    crs_epsg = CRS.from_wkt(wkt).to_epsg() if wkt else None
    dims = tuple(ds["embedding"].dims)
    return dims == ("time", "y", "x", "feature") and crs_epsg == epsg, f"{group}: dims {dims}, CRS EPSG:{crs_epsg}"
