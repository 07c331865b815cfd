"""A Zarr v3 group holding per-tile arrays, a per-tile status and per-tile provenance.

Used for the patch stores (``data [tile, band, y, x]``, ``valid [tile, y, x]``) and the embedding
stores (``pooled [tile, feature]``, ``grid [tile, feature, gy, gx]``). Arrays are chunked along the
tile axis only: one tile per chunk by default, so writing a tile touches only that tile's chunks and
concurrent writers of different tiles never share a chunk; a crash can only leave a tile whose
status is still ``pending``, because the status is written last, after the tile's arrays.

A store created with ``tile_chunk=k`` (the embedding stores: the worker's batch size) holds
``status``, ``tile_meta`` and the arrays declared ``batched`` (``pooled``) ``k`` tiles per chunk:
a batch the size of a chunk writes one object per array instead of ``k`` (#21: each object cost
0.25-0.3 ms on a local disk). A write covering part of such a chunk merges it with the chunk's other
stored tiles under the store's write lock (one writing process per store: the store leases), so
per-tile resume and the status-last order hold as before. The chunking is read from the store:
stores of one tile per chunk are read and resumed as they are.

A store records a *fingerprint* of everything that shaped its numbers (provider settings, model
options, weights sha256, code version). Opening an existing store with another fingerprint is
refused unless the caller asks to rebuild; a directory that exists but is not a store of the
expected kind is never overwritten. ``force`` redoes every tile of a store whose fingerprint
matches (all statuses back to pending, then the run rewrites them tile by tile).

Crash safety rests on three facts, each checked here or in the tests
(``rs_embed_pipeline_tests/pipeline/test_crash_resume.py``):

* every chunk is one object: on S3 a PUT is atomic; on a local disk zarr >= 3.1.3 writes each
  chunk to a temporary file and renames it into place (zarr-python #3412), so a SIGKILL leaves
  the old chunk or the new one, never half of one (a stray ``*.partial`` file at most, which
  zarr never reads). :func:`require_atomic_chunk_writes` refuses older zarr versions;
* a tile's arrays are written (and the write has returned) before its ``tile_meta``, which is
  written before its ``status`` (:meth:`TileStore.write_tiles` does the same for a batch: every
  array of the batch, then every provenance, then every status): a tile whose status says done
  has every chunk complete;
* ``status`` is chunked one tile per chunk, so marking one tile never rewrites another's flag.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, Literal, TypeVar
from collections.abc import Iterable, Mapping, Sequence

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec

# status codes stored in every ``status`` array (rs_embed_pipeline.core.vocabulary; importers use these names)
from rs_embed_pipeline.core.vocabulary import STATUS_CODES, STATUS_NAMES
from rs_embed_pipeline.stores import grid_dtype as G
from rs_embed_pipeline.stores.chunk_io import read_whole_chunks, tiles_per_chunk, write_whole_chunks
from rs_embed_pipeline.stores.patch_encoding import (
    ENCODING_ATTR, FILTER_ATTR, PatchEncoding, apply_filter, encoding_of, filter_of, undo_filter,
)

SCHEMA_VERSION = 1
# The first zarr-python release whose LocalStore writes every key atomically (temp file + rename).
ZARR_ATOMIC_LOCAL_WRITES = (3, 1, 3)


def float_compressors() -> list:
    """Float arrays (pixels, embeddings): Blosc zstd level 1 with byte shuffle - about 3x faster to
    write than zarr's default zstd, and smaller for float32 rasters."""
    return [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]


class StoreError(RuntimeError):
    """A store is missing, corrupt, or was built with other settings."""


# zarr.open_group's modes (zarr.core.common.AccessModeLiteral, spelled here: zarr.core is private)
AccessMode = Literal["r", "r+", "a", "w", "w-"]
_Node = TypeVar("_Node", zarr.Array, zarr.Group)


# zarr types ``group[path]`` as "an array or a group"; these say which one the store holds (and
# name the path when a store holds the other kind, e.g. after a foreign write).
def _node(group: zarr.Group, path: str, kind: type[_Node]) -> _Node:
    node = group[path]
    if not isinstance(node, kind):
        raise StoreError(f"{group.store_path}/{path} is a Zarr {type(node).__name__} where a {kind.__name__} "
                         "was expected; the store is corrupt or not ours")
    return node


def array_at(group: zarr.Group, path: str) -> zarr.Array:
    return _node(group, path, zarr.Array)


def group_at(group: zarr.Group, path: str) -> zarr.Group:
    return _node(group, path, zarr.Group)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One per-tile array: the shape of a tile's slice and the names of its dimensions. With an
    ``encoding`` (patch data: ``patch_encoding``) the array holds its codes: its dtype, attributes
    and compressors are the encoding's. With a ``stored_type`` (embedding grids: ``grid_dtype``)
    it holds values of that type (bfloat16 as its uint16 bits), read back as float32. ``filter``: an
    encoded array's codes are stored through that lossless filter (``patch_encoding.FILTERS``),
    undone on read. ``batched``: chunked ``tile_chunk`` tiles at a time, as ``status`` (module
    docstring); else one tile per chunk."""

    name: str
    tile_shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str = "float32"
    fill_value: Any = 0
    encoding: PatchEncoding | None = None
    stored_type: str | None = None
    filter: str | None = None
    batched: bool = False

    def __post_init__(self) -> None:
        if len(self.tile_shape) != len(self.dims):
            raise ValueError(f"{self.name}: dims {self.dims} do not match shape {self.tile_shape}")
        if self.filter is not None and (self.encoding is None or self.encoding.store_filter != self.filter):
            raise ValueError(f"{self.name}: filter {self.filter!r} applies to the codes of an encoding whose "
                             f"store_filter it is, not to {self.encoding.name if self.encoding else self.dtype}")
        if self.encoding is not None:
            object.__setattr__(self, "dtype", self.encoding.dtype)
        if self.stored_type is not None:
            object.__setattr__(self, "dtype", G.numpy_dtype(self.stored_type))
            if self.stored_type == "bfloat16" and isinstance(self.fill_value, float) and np.isnan(self.fill_value):
                object.__setattr__(self, "fill_value", 0x7FC0)  # bfloat16's quiet NaN, as bits

    def attributes(self) -> dict[str, Any] | None:
        if self.encoding is not None:
            filtered = {FILTER_ATTR: self.filter} if self.filter is not None else {}
            return {**self.encoding.attributes(), **filtered}
        return G.attributes(self.stored_type) if self.stored_type is not None else None


def _exists(uri: str, storage_options: Mapping[str, Any] | None) -> bool:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs.exists(path)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def require_atomic_chunk_writes(uri: str) -> None:
    """Refuse to write a local store with a zarr whose LocalStore can leave half-written chunks."""
    if "://" in uri and not uri.startswith("file://"):
        return  # object stores replace whole objects atomically
    if _version_tuple(zarr.__version__) < ZARR_ATOMIC_LOCAL_WRITES:
        raise StoreError(
            f"zarr {zarr.__version__} writes local chunks in place, so a killed run could leave a "
            f"half-written chunk in {uri}; install zarr>=" + ".".join(map(str, ZARR_ATOMIC_LOCAL_WRITES))
        )


def remove_tree(uri: str, storage_options: Mapping[str, Any] | None) -> None:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)


class TileStore:
    """Open with :meth:`create_or_open` (writers) or :meth:`open` (readers)."""

    def __init__(self, group: zarr.Group, uri: str):
        self.group = group
        self.uri = uri
        # Writes into chunks of several tiles read, merge and rewrite them: one at a time per store
        # (the worker's writer threads share this object; other processes are kept out by the leases).
        self._chunk_lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        uri: str,
        kind: str,
        *,
        mode: AccessMode = "r",
        storage_options: Mapping[str, Any] | None = None,
        allow_unfinished: bool = False,
    ) -> TileStore:
        if not _exists(uri, storage_options):
            raise StoreError(f"{kind} store {uri} does not exist; materialize its asset first")
        try:
            group = zarr.open_group(uri, mode=mode, storage_options=dict(storage_options or {}) or None)
        except Exception as exc:  # zarr raises several types for unreadable metadata
            raise StoreError(
                f"{uri} exists but is not a readable Zarr group ({type(exc).__name__}: {exc}); "
                "it was left untouched. Inspect or delete it, then re-run."
            ) from exc
        store = cls(group, uri)
        store._validate_kind(kind)
        if store.unfinished and not allow_unfinished:
            raise StoreError(f"{kind} store {uri} was never finished (a run was killed while creating it); "
                             "re-materialize its asset, which recreates it")
        return store

    @classmethod
    def create_or_open(
        cls,
        uri: str,
        kind: str,
        *,
        tile_ids: Sequence[str],
        arrays: Sequence[ArraySpec],
        fingerprint: str,
        attrs: Mapping[str, Any],
        rebuild: bool = False,
        force: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        tile_chunk: int = 1,
    ) -> TileStore:
        """Create the store with every array allocated up front, or reopen a compatible one.

        * same fingerprint: reopened as is; the caller redoes the tiles that are not done.
        * other fingerprint: refused (:class:`StoreError`, nothing touched) unless ``rebuild``,
          which marks every tile pending again under the new fingerprint (chunks are then
          overwritten tile by tile as the run proceeds). A store whose tile list or array
          shapes differ cannot be reused in place: ``rebuild`` deletes and recreates it.
        * ``force``: every tile pending again even though the fingerprint matches.

        A path that holds something other than a store of this kind is never touched.
        ``tile_chunk``: tiles per chunk of status, tile_meta and the ``batched`` arrays of a store
        created now (a store reopened keeps its own: :attr:`tile_chunk`).
        """
        if isinstance(tile_chunk, bool) or not isinstance(tile_chunk, int) or tile_chunk < 1:
            raise ValueError(f"tile_chunk must be a positive number of tiles, got {tile_chunk!r}")
        require_atomic_chunk_writes(uri)

        def create() -> TileStore:
            return cls._create(uri, kind, tile_ids, arrays, fingerprint, attrs, storage_options, tile_chunk)

        if _exists(uri, storage_options):
            store = cls.open(uri, kind, mode="r+", storage_options=storage_options, allow_unfinished=True)
            if store.unfinished:
                remove_tree(uri, storage_options)  # ours, killed while being created: nothing in it
                return create()
            try:
                store._validate_shape(tile_ids, arrays)
            except StoreError:
                if not rebuild:
                    raise
                # Ours (the schema was checked by open), and the caller asked for a rebuild.
                remove_tree(uri, storage_options)
                return create()
            if store.fingerprint != fingerprint:
                if not rebuild:
                    raise StoreError(
                        f"{kind} store {uri} was built with other settings "
                        f"(fingerprint {store.fingerprint[:12]} != {fingerprint[:12]}: "
                        f"{store._diff_settings(attrs)}). Nothing was changed. Materialize with "
                        "rebuild (config `rebuild: true`) to replace it, or use another store root."
                    )
                # Statuses first, fingerprint last: a crash in between leaves the old fingerprint,
                # so the next run is refused again (or rebuilds again), never trusts a stale tile.
                store.reset_statuses()
                store.group.attrs.update({"fingerprint": fingerprint, "settings": dict(attrs)})
            elif force:
                store.reset_statuses()
            return store
        return create()

    @classmethod
    def _create(cls, uri: str, kind: str, tile_ids: Sequence[str], arrays: Sequence[ArraySpec], fingerprint: str,
                attrs: Mapping[str, Any], storage_options: Mapping[str, Any] | None,
                tile_chunk: int = 1) -> TileStore:
        """A new store (``create_or_open``'s arguments), every array allocated."""
        # "state: creating" in the group's first write, the fingerprint last: a store killed while
        # being created is recognised as ours and unfinished, and the next run recreates it.
        group = zarr.open_group(
            uri, mode="w-", storage_options=dict(storage_options or {}) or None,
            attributes={"schema": f"rs_embed_pipeline.{kind}", "schema_version": SCHEMA_VERSION,
                        "state": "creating"},
        )
        n = len(tile_ids)
        ids = group.create_array("tile_id", shape=(n,), chunks=(max(n, 1),), dtype=str, dimension_names=["tile"])
        if n:
            ids[:] = np.asarray(list(tile_ids), dtype=str)
        k = max(1, min(tile_chunk, n))  # no chunk larger than the store
        group.create_array("status", shape=(n,), chunks=(k,), dtype="int8", fill_value=0, dimension_names=["tile"],
                           attributes={"flag_values": list(STATUS_NAMES), "flag_meanings": " ".join(STATUS_CODES)})
        group.create_array("tile_meta", shape=(n,), chunks=(k,), dtype=str, dimension_names=["tile"])
        for spec in arrays:
            # Float values (bfloat16 bits included): Blosc zstd-1 byte shuffle; typesize follows the dtype.
            compressors: Any = (float_compressors() if np.dtype(spec.dtype).kind == "f" or spec.stored_type
                                else "auto")
            if spec.stored_type in G.UNCOMPRESSED:
                compressors = None  # 16-bit grids: zstd kept 8 % of the bytes for 0.5 ms a tile (grid_dtype.py)
            group.create_array(
                spec.name,
                shape=(n, *spec.tile_shape),
                chunks=(k if spec.batched else 1, *spec.tile_shape),
                dtype=spec.dtype,
                fill_value=spec.fill_value,
                dimension_names=["tile", *spec.dims],
                compressors=spec.encoding.compressors(spec.filter) if spec.encoding is not None else compressors,
                attributes=spec.attributes(),
            )
        group.attrs.update({"fingerprint": fingerprint, "settings": dict(attrs), "state": "ready"})
        return cls(group, uri)

    def _validate_kind(self, kind: str) -> None:
        schema = self.group.attrs.get("schema")
        if schema != f"rs_embed_pipeline.{kind}":
            raise StoreError(
                f"{self.uri} is not a {kind} store (schema={schema!r}); it was left untouched. "
                "Point the pipeline at another store root or delete it."
            )
        version = self.group.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{kind} store {self.uri} has schema_version {version!r}; this code reads version "
                f"{SCHEMA_VERSION}. It was left untouched: use the matching code version or another store root."
            )
        if self.unfinished:
            return  # arrays may be missing: it is recreated, never read
        missing = [name for name in ("tile_id", "status", "tile_meta") if name not in self.group]
        if missing:
            raise StoreError(f"{kind} store {self.uri} is corrupt: arrays {missing} are missing")

    def _validate_shape(self, tile_ids: Sequence[str], arrays: Sequence[ArraySpec]) -> None:
        """The store holds exactly these tiles and these arrays, of these shapes (else StoreError)."""
        existing = self.tile_ids
        if existing != [str(t) for t in tile_ids]:
            raise StoreError(
                f"Store {self.uri} holds {len(existing)} tiles that differ from the tile grid's "
                f"{len(tile_ids)}; the AOI or grid changed. Nothing was changed; use rebuild or a new store root."
            )
        for spec in arrays:
            if spec.name not in self.group:
                raise StoreError(f"Store {self.uri} is corrupt: array {spec.name!r} is missing")
            array = array_at(self.group, spec.name)
            if tuple(array.shape) != (len(tile_ids), *spec.tile_shape):
                raise StoreError(
                    f"Store {self.uri}: array {spec.name!r} has shape {tuple(array.shape)}, expected "
                    f"{(len(tile_ids), *spec.tile_shape)}. Nothing was changed."
                )
            # Another encoding or stored type (e.g. a float32 patch store of earlier versions, a
            # float16 grid asked of a float32 one): not reusable in place.
            if np.dtype(array.dtype) != np.dtype(spec.dtype):
                raise StoreError(
                    f"Store {self.uri}: array {spec.name!r} holds {array.dtype}, expected {spec.dtype} "
                    f"({self._layout(spec)}). Nothing was changed; use rebuild (config `rebuild: true`) to "
                    f"{'re-fetch' if spec.encoding else 'rewrite'} it in the new layout, or another store root."
                )
        # Arrays of other settings (a grid where only pooled is asked now) would keep stale values.
        extra = sorted(set(self.group.array_keys()) - {"tile_id", "status", "tile_meta"} - {s.name for s in arrays})
        if extra:
            raise StoreError(f"Store {self.uri} holds arrays {extra} these settings do not write "
                             f"(they write {[s.name for s in arrays]}). Nothing was changed; use rebuild "
                             "(config `rebuild: true`) to recreate it, or another store root.")

    @staticmethod
    def _layout(spec: ArraySpec) -> str:
        if spec.stored_type is not None:
            return f"stored type {spec.stored_type}"
        return f"encoding {spec.encoding.name if spec.encoding else spec.dtype}"

    def _diff_settings(self, attrs: Mapping[str, Any]) -> str:
        old = self.settings
        keys = sorted(set(old) | set(attrs))
        diffs = [f"{k}: {old.get(k)!r} -> {attrs.get(k)!r}" for k in keys if old.get(k) != attrs.get(k)]
        return "; ".join(diffs[:6]) or "code or input version changed"

    # ------------------------------------------------------------------ reading
    @property
    def unfinished(self) -> bool:
        return self.group.attrs.get("state") == "creating"

    @property
    def fingerprint(self) -> str:
        return str(self.group.attrs.get("fingerprint", ""))

    @property
    def settings(self) -> dict[str, Any]:
        settings = self.group.attrs.get("settings")
        return dict(settings) if isinstance(settings, Mapping) else {}

    @property
    def tile_chunk(self) -> int:
        """Tiles per chunk of ``status`` (and ``tile_meta`` and the batched arrays): 1 in stores
        created without ``tile_chunk``, those written before it included."""
        return tiles_per_chunk(array_at(self.group, "status"))

    @property
    def tile_ids(self) -> list[str]:
        return [str(t) for t in np.asarray(array_at(self.group, "tile_id")[:]).tolist()]

    def statuses(self) -> np.ndarray:
        status = array_at(self.group, "status")
        fast = read_whole_chunks(status, range(status.shape[0]))  # small chunks: zarr's hops per chunk
        return np.asarray(status[:] if fast is None else fast, dtype=np.int8)

    def status_counts(self) -> dict[str, int]:
        codes = self.statuses()
        return {name: int((codes == code).sum()) for name, code in STATUS_CODES.items()}

    def indices_with_status(self, *names: str) -> np.ndarray:
        codes = [STATUS_CODES[n] for n in names]
        return np.flatnonzero(np.isin(self.statuses(), codes))

    def encoding(self, name: str = "data") -> PatchEncoding:
        """How array ``name`` holds its values (float32 for stores written before encodings), checked
        against the array's dtype and the ``data_encoding`` the store's settings (fingerprint) record:
        a mismatch is a StoreError naming both, and nothing is modified."""
        array = array_at(self.group, name)
        try:
            encoding = encoding_of(array.attrs)
        except ValueError as exc:
            raise StoreError(f"Store {self.uri}: array {name!r}: {exc}. Nothing was changed.") from exc
        declared = self.settings.get("data_encoding") if name == "data" else None
        problems = []
        if np.dtype(array.dtype) != np.dtype(encoding.dtype):
            problems.append(f"the array holds {array.dtype} where its encoding {encoding.name!r} stores "
                            f"{encoding.dtype}")
        if declared is not None and declared != encoding.name:
            problems.append(f"its fingerprint's settings say data_encoding={declared!r} but the array "
                            f"says {ENCODING_ATTR}={encoding.name!r}")
        if problems:
            raise StoreError(f"Store {self.uri}: array {name!r} does not match its fingerprint: "
                             f"{'; '.join(problems)}. Nothing was changed; the store was modified by "
                             "something else: rebuild it (config `rebuild: true`) or use another store root.")
        return encoding

    def stored_type(self, name: str = "grid") -> str:
        """The value type array ``name`` holds (float32 | float16 | bfloat16), checked against its
        dtype and the ``grid_dtype`` of the store's settings (fingerprint): a mismatch is a
        StoreError naming both, and nothing is modified."""
        array = array_at(self.group, name)
        declared = self.settings.get("grid_dtype") if name == "grid" else None
        try:
            found = G.stored_type(array.attrs, array.dtype)
            if declared is not None and declared != found:
                raise ValueError(f"its fingerprint's settings say grid_dtype={declared!r} but the array holds "
                                 f"{found!r} (choices: {', '.join(G.GRID_DTYPES)})")
        except ValueError as exc:
            raise StoreError(f"Store {self.uri}: array {name!r} does not match its fingerprint: {exc}. Nothing was "
                             "changed; rebuild it (config `rebuild: true`) or use another store root.") from exc
        return found

    def tile_meta(self, index: int) -> dict[str, Any]:
        raw = array_at(self.group, "tile_meta")[index]
        return json.loads(str(raw)) if raw else {}

    def read(self, name: str, indices: Iterable[int]) -> np.ndarray:
        """The values of tiles ``indices``: an encoded array (patch ``data``) decoded to provider
        units (float32), a float16 / bfloat16 one (embedding grids) widened to float32; see
        :meth:`read_stored` for the stored codes."""
        array = array_at(self.group, name)
        stored = self.read_stored(name, indices)
        if G.STORED_TYPE_ATTR in array.attrs:
            return G.to_float32(stored, self.stored_type(name))
        if ENCODING_ATTR not in array.attrs:
            return stored
        encoding = encoding_of(array.attrs)
        return stored if encoding.is_identity else encoding.decode(stored)

    def read_stored(self, name: str, indices: Iterable[int]) -> np.ndarray:
        """The stored values of tiles ``indices`` (an encoded array's codes, its filter undone)."""
        array = array_at(self.group, name)
        return undo_filter(self._read_raw(array, indices), self._filter(name, array))

    def read_filtered(self, name: str, indices: Iterable[int]) -> tuple[np.ndarray, str | None]:
        """``(values, filter)``: tiles ``indices`` exactly as array ``name`` holds them, its filter
        *not* undone, and that filter's name (``patch_encoding.FILTERS``; None: the codes as they
        are). For a reader that undoes it elsewhere: the worker on a GPU, where the running sum is a
        cumulative sum on the device (``models.device_prepare.undo_filter``) instead of host CPU.
        Every other reader wants :meth:`read_stored`'s codes."""
        array = array_at(self.group, name)
        return self._read_raw(array, indices), self._filter(name, array)

    def stored_filter(self, name: str = "data") -> str | None:
        """The lossless filter array ``name``'s values are stored through (None: none); a name this
        code does not know is a StoreError naming it and the choices."""
        return self._filter(name, array_at(self.group, name))

    def _filter(self, name: str, array: zarr.Array) -> str | None:
        try:
            return filter_of(array.attrs)
        except ValueError as exc:
            raise StoreError(f"Store {self.uri}: array {name!r}: {exc}. Nothing was changed; this code cannot "
                             "read it: use the code version that wrote it, or rebuild the store.") from exc

    @staticmethod
    def _read_raw(array: zarr.Array, indices: Iterable[int]) -> np.ndarray:
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size == 0:
            return np.zeros((0, *array.shape[1:]), dtype=array.dtype)
        fast = read_whole_chunks(array, idx.tolist())  # local stores: without zarr's per-chunk hops
        if fast is not None:
            return fast
        # Contiguous runs read as slices (one request per chunk); others fall back to orthogonal indexing.
        if np.all(np.diff(idx) == 1):
            return np.asarray(array[int(idx[0]) : int(idx[-1]) + 1])
        return np.asarray(array.get_orthogonal_selection((idx,)))

    # ------------------------------------------------------------------ writing
    def reset_statuses(self) -> None:
        """Every tile back to pending (rebuild / force); the tiles' data is rewritten by the run."""
        status = array_at(self.group, "status")
        if status.shape[0]:
            status[:] = STATUS_CODES["pending"]

    def write_tiles(
        self,
        indices: Sequence[int],
        statuses: Sequence[str],
        metas: Sequence[Mapping[str, Any]],
        **arrays: np.ndarray,
    ) -> None:
        """Write several tiles with one call per array (``arrays[name][j]`` is tile ``indices[j]``):
        every tile's arrays first, then every provenance, then (last) every status - so a kill
        leaves each tile either marked and whole, or unmarked. Much cheaper than one call per
        tile and array (zarr writes the chunks of one call concurrently)."""
        if not len(indices):
            return
        for status in statuses:
            if status not in STATUS_CODES or status == "pending":
                raise ValueError(f"status {status!r} is not one of ok, no_data, failed")
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        if len(np.unique(idx)) != len(idx):
            raise ValueError("write_tiles: an index appears twice")
        contiguous = bool(np.all(np.diff(idx) == 1))

        def put(name: str, values: np.ndarray) -> None:
            array = array_at(self.group, name)
            if tiles_per_chunk(array) > 1:
                with self._chunk_lock:
                    self._put_merged(array, idx, values)
                return
            if write_whole_chunks(array, idx.tolist(), values):  # local stores: without zarr's per-chunk hops
                return
            if contiguous:
                array[int(idx[0]) : int(idx[-1]) + 1] = values
            else:
                array.set_orthogonal_selection((idx,), values)

        for name, value in arrays.items():
            self._check_codes(name, value)
            put(name, apply_filter(np.asarray(value)[order], self._filter(name, array_at(self.group, name))))
        put("tile_meta", np.asarray([json.dumps(metas[j], default=str, sort_keys=True) for j in order], dtype=str))
        put("status", np.asarray([STATUS_CODES[statuses[j]] for j in order], dtype=np.int8))

    @staticmethod
    def _put_merged(array: zarr.Array, idx: np.ndarray, values: np.ndarray) -> None:
        """Tiles ``idx`` (sorted, unique) of an array of several tiles per chunk: each chunk written
        whole, its other tiles' stored values merged in (the caller holds the store's write lock)."""
        k, n = tiles_per_chunk(array), int(array.shape[0])
        chunks = np.unique(idx // k)
        span = np.concatenate([np.arange(c * k, min((c + 1) * k, n)) for c in chunks])
        others = np.setdiff1d(span, idx)
        if others.size:
            kept = TileStore._read_raw(array, others)
            merged = np.empty((span.size, *array.shape[1:]), dtype=array.dtype)
            merged[np.searchsorted(span, idx)] = values
            merged[np.searchsorted(span, others)] = kept
            idx, values = span, merged
        if write_whole_chunks(array, idx.tolist(), values):
            return
        array.set_orthogonal_selection((idx,), values)  # zarr's own read-modify-write (object stores)

    def _check_codes(self, name: str, value: np.ndarray) -> None:
        """An integer-encoded array takes its codes, never float values (zarr would truncate them)."""
        array = array_at(self.group, name)
        dtype = array.dtype
        if array.attrs.get(G.STORED_TYPE_ATTR) == "bfloat16" and np.asarray(value).dtype != np.uint16:
            # float values would be cast to integers, not to bfloat16 bits
            raise ValueError(f"array {name!r} of {self.uri} stores bfloat16 values as their uint16 bits, got "
                             f"{np.asarray(value).dtype}: convert with stores.grid_dtype.to_stored(values, 'bfloat16')")
        if np.dtype(dtype).kind in "iu" and np.asarray(value).dtype.kind == "f":
            raise ValueError(f"array {name!r} of {self.uri} stores {dtype} codes ({self.encoding(name).name}); "
                             f"encode the values first: store.encoding({name!r}).encode(values)")

    def write_tile(self, index: int, status: str, meta: Mapping[str, Any], **arrays: np.ndarray) -> None:
        """Write a tile's arrays, then its provenance, then (last) its status."""
        if status not in STATUS_CODES or status == "pending":
            raise ValueError(f"status {status!r} is not one of ok, no_data, failed")
        with self._chunk_lock:  # zarr rewrites a chunk of several tiles whole (read, merge, write)
            for name, value in arrays.items():
                self._check_codes(name, value)
                array = array_at(self.group, name)
                array[index] = apply_filter(np.asarray(value)[None], self._filter(name, array))[0]
            array_at(self.group, "tile_meta")[index] = json.dumps(meta, default=str, sort_keys=True)
            array_at(self.group, "status")[index] = STATUS_CODES[status]
