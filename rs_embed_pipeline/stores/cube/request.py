"""What :func:`~rs_embed_pipeline.stores.cube.writer.write_cube_window` is asked to write and what it
reports: the typed request (checked when made), the grid readers it reads feature maps through, and
the per-zone result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from rs_embed_pipeline.stores.cube import codec as Q
from rs_embed_pipeline.stores.cube.codec import Scheme
from rs_embed_pipeline.stores.cube.groups import Layout, check_layout


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
    (stores/cube/codec.py); part of the cube's identity (a cube stored otherwise is refused unless
    ``rebuild``)."""
    layout: Layout = "sharded"
    """Storage of the zone groups this write creates (stores/cube/groups.py): ``"sharded"`` (one
    object per array per window of a cell) or ``"chunked"`` (one object per tile per window, the
    layout before sharding); an existing group keeps the layout it was created with."""

    def __post_init__(self) -> None:
        if not 0 <= self.window_index < len(self.window_starts):
            raise ValueError(f"window_index {self.window_index} is outside window_starts "
                             f"({len(self.window_starts)} windows)")
        Q.check_scheme(self.quantization)
        check_layout(self.layout)
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
