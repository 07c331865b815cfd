"""Write one window of a region's embeddings into its cube: :func:`write_cube_window`.

Concurrent writers (different windows of one region, in separate processes or machines, on a
local disk or on S3; no locks):

* **A window write touches only its own chunks**: grid chunks hold exactly one tile of one
  window, pooled chunks one window, and the per-window facts are arrays chunked one window per
  chunk (stores/cube/time_axis.py). Sharded groups (stores/cube/groups.py) hold one window per
  shard, and the writer writes each shard whole in one call (one PUT, no read of the old shard).
* **Creation is idempotent.** Every writer derives the same metadata from the same inputs (the
  region's tiles, the model's output shape, the time axis), creates only what is missing, never
  with ``overwrite`` (which would delete chunks), and writes coordinate values that are equal
  whoever writes them (stores/cube/groups.py).
* **The time axis grows monotonically and heals itself** (stores/cube/time_axis.py): every write
  ends with :func:`~rs_embed_pipeline.stores.cube.time_axis.reconcile_time_axis`.
* **A window is marked last.** Its chunks are written, then ``window_provenance``, then
  ``window_filled = 1``. A window being rewritten from other embeddings is first unmarked. So a
  killed writer leaves ``window_filled = 0`` (or the same values, for an idempotent rewrite),
  never a marked window with a hole. Tiles without an embedding are written as NaN (zarr then
  deletes the chunk, or leaves the inner chunk out of its shard), so a rewrite never leaves a
  stale tile behind.

``rebuild`` deletes the cube and starts again (other windows must then be re-materialized); it
must not run while other writers write the same cube.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from rs_embed_pipeline.stores.cube import codec as Q
from rs_embed_pipeline.stores.cube.attributes import geo_transform, geoemb_attributes, storage_identity
from rs_embed_pipeline.stores.cube.codec import quantized_arrays
from rs_embed_pipeline.stores.cube.groups import GroupSpec, ZoneTiles, array_specs, check_group_fits, ensure_group
from rs_embed_pipeline.stores.cube.request import (
    CubeWindowAccuracy, CubeWindowWrite, CubeWindowWritten, CubeZoneWritten, GridReader,
)
from rs_embed_pipeline.stores.cube.root import CubeKeys, consolidated_metadata, open_or_create_root
from rs_embed_pipeline.stores.cube.time_axis import all_listed, axes_reach, reconcile_time_axis, time_capacity
from rs_embed_pipeline.stores.tile_store import array_at, group_at, require_atomic_chunk_writes

TILES_PER_ROW_BLOCK = 64  # tiles of a row written (and held in memory) together

# (D', h, w, D): a zone's feature-map depth and cells per tile side, and the pooled vector's length.
Shapes = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class _TimeSlot:
    """The window's slot on the cube's time axis, and what a write puts there besides the values."""

    index: int                   # the window's index in window_starts
    window_starts: Sequence[str]  # starts of windows 0, 1, ... (into the future: a margin)
    min_length: int              # the time axis must be at least this long
    new_length: int              # time-axis length of a group created now
    provenance: str              # JSON (window_provenance)
    quantization: str
    layout: str                  # of groups created now (an existing group keeps its own)


def write_cube_window(cube_uri: str, request: CubeWindowWrite) -> CubeWindowWritten:
    """Write one window of a region's embeddings into its cube (idempotent; safe beside writers of
    other windows). The request's fields say what (:class:`CubeWindowWrite`); int8 writes report
    the accuracy of the window's values against the float32 input in ``quantization``.

    The common case (the cube and the window's slot exist) costs a handful of metadata reads: the
    arrays are opened from the consolidated metadata, the window's chunks written, then the time
    axis and the consolidated metadata checked (:func:`reconcile_time_axis`).
    """
    r = request
    require_atomic_chunk_writes(cube_uri)
    fingerprint, attrs = storage_identity(r.quantization, r.fingerprint, r.attrs)
    cube = CubeKeys(cube_uri, r.storage_options)
    root_doc = open_or_create_root(cube, attrs, fingerprint, r.rebuild, r.window_starts)
    in_range = len(r.window_starts) if r.windows_in_range is None else int(r.windows_in_range)
    slot = _TimeSlot(index=r.window_index, window_starts=r.window_starts, min_length=r.window_index + 1,
                     new_length=time_capacity(max(r.window_index + 1, in_range), len(r.window_starts)),
                     provenance=json.dumps(dict(r.provenance or {}), sort_keys=True, default=str),
                     quantization=r.quantization, layout=r.layout)
    groups: list[CubeZoneWritten] = []
    tiles_written = tiles_empty = 0
    cosines: dict[str, list[float]] = {"grid": [], "pooled": []}
    for epsg in sorted({int(t["utm_epsg"]) for t in r.tiles}):
        zone = ZoneTiles.of(epsg, r.tiles)
        shapes = _zone_shapes(zone, r.pooled, r.reader, r.grid_shape, r.pooled_dim)
        if shapes is None:
            continue  # nothing to write and no shape to create the group with
        root_doc = _ensure_zone_groups(cube, root_doc, zone, shapes, attrs, slot)
        n_have, n_empty = _write_zone(cube, zone, shapes, r.pooled, r.reader, slot, cosines)
        tiles_written += n_have
        tiles_empty += n_empty
        root_doc = reconcile_time_axis(cube, zone.paths, slot.min_length, r.window_starts)
        meta = consolidated_metadata(root_doc)
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


def _zone_shapes(zone: ZoneTiles, pooled: Mapping[str, np.ndarray], reader: GridReader,
                 grid_shape: Sequence[int] | None, pooled_dim: int | None) -> Shapes | None:
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


def _ensure_zone_groups(cube: CubeKeys, root_doc: dict[str, Any], zone: ZoneTiles, shapes: Shapes,
                        attrs: Mapping[str, Any], slot: _TimeSlot) -> dict[str, Any]:
    """The zone's two groups exist, fit this window's layout and reach its slot on the time axis
    (fast path: checked against the consolidated metadata). Returns the current root document."""
    d_grid, gh, gw, d_pooled = shapes
    tile_m = zone.size_px * zone.scale_m
    specs = {
        "grid": GroupSpec(cell_m=tile_m / gw, ny=zone.nrow * gh, nx=zone.ncol * gw, n_feature=d_grid,
                          chunk_yx=(gh, gw),
                          attrs={**attrs, "cell_kind": "feature_map", "cells_per_tile": gw,
                                 **geoemb_attributes(attrs, n_feature=d_grid, chip_px=zone.size_px // gw,
                                                     gsd_m=zone.scale_m)}),
        "pooled": GroupSpec(cell_m=tile_m, ny=zone.nrow, nx=zone.ncol, n_feature=d_pooled,
                            chunk_yx=(min(zone.nrow, 64), min(zone.ncol, 64)),
                            attrs={**attrs, "cell_kind": "tile", "cells_per_tile": 1,
                                   **geoemb_attributes(attrs, n_feature=d_pooled, chip_px=zone.size_px,
                                                       gsd_m=zone.scale_m)}),
    }

    extra = quantized_arrays(slot.quantization)
    meta = consolidated_metadata(root_doc)
    if all_listed(meta, zone.paths, extra):
        for kind, spec in specs.items():
            check_group_fits(f"{zone.name}/{kind}", meta, spec.ny, spec.nx, spec.n_feature,
                             geo_transform(zone.left, zone.top, spec.cell_m), slot.quantization)
        if not axes_reach(meta, zone.paths, slot.min_length, extra):
            root_doc = reconcile_time_axis(cube, zone.paths, slot.min_length, slot.window_starts)  # grow it
        return root_doc
    root = cube.open_root()
    for kind, spec in specs.items():
        cell = spec.cell_m
        arrays = array_specs(zone.epsg, zone.left, zone.top, cell, spec.ny, spec.nx, spec.n_feature,
                             spec.chunk_yx, slot.new_length, slot.quantization, spec.shard_yx(slot.layout))
        ensure_group(root, zone.name, kind, epsg=zone.epsg, specs=arrays,
                     xs=zone.left + cell * (np.arange(spec.nx) + 0.5),
                     ys=zone.top - cell * (np.arange(spec.ny) + 0.5),
                     window_starts=slot.window_starts, attrs=spec.attrs)
    return reconcile_time_axis(cube, zone.paths, slot.min_length, slot.window_starts)


# A block of a window's feature maps: (cell rows, cell columns, [y, x, D'] values, tiles with an
# embedding, tiles).
Block = tuple[slice, slice, np.ndarray, int, int]


def _tile_blocks(zone: ZoneTiles, shapes: Shapes, pooled: Mapping[str, np.ndarray], reader: GridReader,
                 plane: np.ndarray, shard: tuple[int, int] | None) -> Iterator[Block]:
    """The window's feature maps, a block of tiles at a time (:data:`Block`; the pooled ``plane`` is
    filled on the way): whole shards of ``shard`` (y, x) cells for a sharded group, so each shard
    is written once and whole; otherwise up to TILES_PER_ROW_BLOCK tiles of a row."""
    d_grid, gh, gw, _ = shapes
    by_block: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    if shard is None:
        by_row: dict[int, list[tuple[int, str]]] = {}
        for r, c, tid in zone.cells:
            by_row.setdefault(r, []).append((c, tid))
        for r, row in by_row.items():
            for n, start in enumerate(range(0, len(row), TILES_PER_ROW_BLOCK)):
                by_block[(r, n)] = [(r, c, tid) for c, tid in sorted(row)[start:start + TILES_PER_ROW_BLOCK]]
    else:
        ky, kx = shard[0] // gh, shard[1] // gw  # tiles a shard holds along y and x
        for r, c, tid in zone.cells:
            by_block.setdefault((r // ky, c // kx), []).append((r, c, tid))
    for key in sorted(by_block):
        cells = by_block[key]
        if shard is None:  # the row's tiles, first to last
            r0, r1, c0, c1 = cells[0][0], cells[0][0] + 1, cells[0][1], cells[-1][1] + 1
        else:  # the whole shard, clipped to the zone
            r0, c0 = key[0] * ky, key[1] * kx
            r1, c1 = min(r0 + ky, zone.nrow), min(c0 + kx, zone.ncol)
        block = np.full(((r1 - r0) * gh, (c1 - c0) * gw, d_grid), np.nan, dtype=np.float32)
        have = [(r, c, tid) for r, c, tid in cells if tid in pooled]
        if have:
            stack = reader.read_grids([tid for *_, tid in have])
            for (r, c, tid), grid in zip(have, stack):
                plane[r, c] = pooled[tid]
                block[(r - r0) * gh:(r - r0 + 1) * gh, (c - c0) * gw:(c - c0 + 1) * gw, :] = np.moveaxis(
                    np.asarray(grid).astype(np.float32), 0, -1)
        yield slice(r0 * gh, r1 * gh), slice(c0 * gw, c1 * gw), block, len(have), len(cells)


def _write_zone(cube: CubeKeys, zone: ZoneTiles, shapes: Shapes, pooled: Mapping[str, np.ndarray],
                reader: GridReader, slot: _TimeSlot, cosines: dict[str, list[float]]) -> tuple[int, int]:
    """Write the window into the zone's groups: unmark, the values (int8: their parameters
    first), provenance, and the filled marker last. Returns (tiles written, tiles empty)."""

    d_grid, gh, gw, d_pooled = shapes
    quantization, index = slot.quantization, slot.index
    # The arrays, from the consolidated metadata: no further metadata reads.
    view = cube.open_root(consolidated=None)
    grid_group, pooled_group = group_at(view, zone.paths[0]), group_at(view, zone.paths[1])
    # A window filled from other embeddings is unmarked before any of its chunks change.
    for group in (grid_group, pooled_group):
        filled = array_at(group, "window_filled")
        if int(np.asarray(filled[index])) and str(array_at(group, "window_provenance")[index]) != slot.provenance:
            filled[index] = 0

    plane = np.full((zone.nrow, zone.ncol, d_pooled), np.nan, dtype=np.float32)
    shards = array_at(grid_group, "embedding").shards  # the group's own layout
    shard = None if shards is None else (int(shards[1]), int(shards[2]))
    grid_params = None
    if quantization != "none":
        # The window's per-feature statistics first (one extra read of the window), then the values.
        lo = np.full(d_grid, np.inf, dtype=np.float32)
        hi = np.full(d_grid, -np.inf, dtype=np.float32)
        total, count = np.zeros(d_grid), 0
        for _ys, _xs, block, _n, _m in _tile_blocks(zone, shapes, pooled, reader, plane, shard):
            blo, bhi = Q.feature_range(block)
            lo, hi = np.fmin(lo, blo), np.fmax(hi, bhi)
            s, c = Q.feature_sum(block)
            total, count = total + s, count + c
        grid_params = _int8_params(quantization, lo, hi, total, count)
        _write_int8_params(grid_group, index, grid_params)
    # One call writes a row's chunks together. Cells without an embedding are NaN (int8 cubes:
    # -128), the fill value: zarr deletes such a chunk, so no stale tile survives a rewrite.
    n_have = n_empty = 0
    for ys, xs, block, have, n_tiles in _tile_blocks(zone, shapes, pooled, reader, plane, shard):
        n_have += have
        n_empty += n_tiles - have
        _write_values(grid_group, (index, ys, xs), block, quantization, grid_params, cosines["grid"])
    pooled_params = None
    if quantization != "none":
        pooled_params = _int8_params(quantization, *Q.feature_range(plane), *Q.feature_sum(plane))
        _write_int8_params(pooled_group, index, pooled_params)
    _write_values(pooled_group, (index,), plane, quantization, pooled_params, cosines["pooled"])
    for group in (grid_group, pooled_group):
        array_at(group, "window_provenance")[index] = slot.provenance
    for group in (grid_group, pooled_group):
        array_at(group, "window_filled")[index] = 1
    return n_have, n_empty


def _write_block(array: zarr.Array, selection: tuple, value: np.ndarray) -> None:
    """Every data write of a window goes through here (a row of tiles' grid chunks, the pooled plane)."""
    array[selection] = value


def _write_int8_params(group: zarr.Group, index: int, params: tuple[np.ndarray | None, np.ndarray]) -> None:
    """An int8 window's per-feature offset (and, per feature, scale)."""

    scale, offset = params
    _write_block(array_at(group, Q.OFFSET_VAR), (index,), offset)
    if scale is not None:  # int8_per_feature (int8_per_cell's scales are per cell: _write_values)
        _write_block(array_at(group, Q.SCALE_VAR), (index,), scale)


def _int8_params(quantization: str, lo: np.ndarray, hi: np.ndarray, total: np.ndarray, count: int
                 ) -> tuple[np.ndarray | None, np.ndarray]:
    """(per-feature scale or None, per-feature offset) of a window: int8_per_feature from the
    range, int8_per_cell's offset is the mean (stores/cube/codec.py)."""

    if quantization == "int8_per_feature":
        return Q.per_feature_params(lo, hi)
    mean = (total / count).astype(np.float32) if count else np.zeros(len(total), dtype=np.float32)
    return None, mean


def _write_values(group: zarr.Group, cells: tuple, values: np.ndarray, quantization: str,
                  params: tuple[np.ndarray | None, np.ndarray] | None, cosines: list[float]) -> None:
    """Write float32 ``values [..., D]`` at ``cells`` of ``group``'s embedding, quantized as asked
    (and the per-cell scales) with the window's ``params`` (:func:`_int8_params`); the lowest
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
