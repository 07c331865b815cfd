"""Whole-chunk writes of tile-chunked arrays (one tile, or one write batch, per chunk) to a local store, without zarr's per-chunk async
machinery: the embed worker's writes cost a quarter of their CPU (#21 point 5).

zarr-python 3 writes each chunk through its event loop: a fill-value chunk allocated and merged
with the values, the codecs and the file write each on a thread hop. For the tile stores' arrays,
where a write replaces whole chunks of one tile each, that machinery cost about 0.75 ms of CPU per
chunk on the project's 2-core machine (four chunks per embedded tile: pooled, grid, tile_meta,
status), more than compressing the grid (``benchmarks/bench_embed_loop.py``). :func:`write_whole_chunks`
encodes each chunk with the array's own codecs (their synchronous form, the one zarr calls on its
threads) on the calling thread and hands the call's chunks to the store in one trip to zarr's
event loop: ``LocalStore.set``, a temporary ``*.partial`` file renamed into place, so a killed
writer leaves the old chunk or the new one (``stores/tile_store.py``). The bytes are zarr's (tested). Anything else (object stores, sharded or irregular arrays, a zarr whose
internals differ) returns False and the caller writes through zarr as before.

Chunks of several tiles along the tile axis (``(k, *tile shape)``: the embedding stores' pooled,
status and tile_meta, one chunk per write batch) are written the same way when a call covers every
tile of each chunk it touches (an edge chunk: its tiles inside the array, the rest the fill value,
as zarr stores it); a call covering part of a chunk returns False, and ``TileStore`` merges it with
the chunk's stored tiles first. Reads decode each chunk once; a read of some tiles of an
uncompressed chunk (a 16-bit grid, one chunk per batch) reads only their byte ranges, so a reader
of a few tiles (the cube writer) does not read the batch's other tiles. A chunk of one tile whose
codecs are only ``bytes`` + Blosc is decompressed straight into the read batch (no copy).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.sync import sync
from zarr.storage import LocalStore


#: False: every read and write goes through zarr (benchmarks/bench_embed_loop.py measures today's path so).
ENABLED = True


def tiles_per_chunk(array: zarr.Array) -> int:
    """How many tiles (first axis) one chunk of ``array`` holds."""
    return int(array.chunks[0])


def _plan(array: zarr.Array) -> tuple[Any, LocalStore, str] | None:
    """The array's (codec pipeline, store, key prefix) when whole-chunk writes apply, else None. The
    pipeline is typed Any: ``_encode_sync`` / ``_decode_sync`` belong to the concrete codecs (checked here)."""
    if not ENABLED:
        return None
    try:
        a = array._async_array
        pipe, meta, store = a.codec_pipeline, a.metadata, a.store_path.store
        if (not isinstance(store, LocalStore) or not isinstance(pipe, BatchedCodecPipeline) or meta.zarr_format != 3
                or pipe.supports_partial_encode
                or tuple(meta.chunk_grid.chunk_shape)[1:] != tuple(array.shape[1:])):
            return None
        codecs = (*pipe.array_array_codecs, pipe.array_bytes_codec, *pipe.bytes_bytes_codecs)
        if not all(hasattr(c, "_encode_sync") and hasattr(c, "_decode_sync") for c in codecs):
            return None
        return pipe, store, a.store_path.path
    except AttributeError:  # another zarr's internals: zarr's own path
        return None


def write_whole_chunks(array: zarr.Array, indices: Sequence[int], values: np.ndarray) -> bool:
    """Write ``values[j]`` as tile ``indices[j]`` of a local array chunked along its tile axis, each
    chunk whole (every tile of each chunk touched is in ``indices``); False (nothing written) when
    that does not apply: then write through zarr (or merge partial chunks first: ``TileStore``)."""
    plan = _plan(array)
    if plan is None:
        return False
    pipe, store, prefix = plan
    a = array._async_array
    meta, proto = a.metadata, default_buffer_prototype()
    k, n = tiles_per_chunk(array), int(array.shape[0])
    values = np.asarray(values, dtype=array.dtype)
    rows: dict[int, dict[int, int]] = {}  # chunk -> {row in chunk: j}
    for j, index in enumerate(indices):
        rows.setdefault(int(index) // k, {})[int(index) % k] = j
    if any(len(r) != min(k, n - c * k) for c, r in rows.items()):
        return False  # a chunk in part: its other tiles would be lost
    encoded: list[tuple[str, Any]] = []
    for c, r in rows.items():
        coords = (c,) + (0,) * (array.ndim - 1)
        spec = meta.get_chunk_spec(coords, a.config, proto)
        js = list(r.values())
        if k == 1:
            block = np.ascontiguousarray(values[r[0] : r[0] + 1])
        elif len(r) == k and list(r) == list(range(k)) and js == list(range(js[0], js[0] + k)):
            block = np.ascontiguousarray(values[js[0] : js[0] + k])  # a whole batch in order: as it is, no copy
        else:  # rows in tile order; an edge chunk's rows past the array hold the fill value (as zarr's)
            block = np.full((k, *array.shape[1:]), meta.fill_value, dtype=array.dtype)
            block[list(r)] = values[list(r.values())]
        chunk: Any = proto.nd_buffer.from_numpy_array(block)
        for codec in pipe.array_array_codecs:
            chunk, spec = codec._encode_sync(chunk, spec), codec.resolve_metadata(spec)
        data = pipe.array_bytes_codec._encode_sync(chunk, spec)
        for codec in pipe.bytes_bytes_codecs:
            data = codec._encode_sync(data, spec)
        encoded.append((meta.encode_chunk_key(coords), data))
    # The store's own atomic writes (a temporary file renamed into place), all of the call's chunks in
    # one trip to zarr's event loop, in order; they have all returned when this does (status-last ordering).
    sync(_set_all(store, prefix, encoded))
    return True


def read_whole_chunks(array: zarr.Array, indices: Sequence[int]) -> np.ndarray | None:
    """Tiles ``indices`` of a local array chunked along its tile axis, ``[len(indices), *tile
    shape]``: each chunk file read once and decoded by the array's codecs on the calling thread (a
    missing chunk: the fill value, as zarr reads it); None when that does not apply: then read
    through zarr."""
    plan = _plan(array)
    if plan is None or array.dtype.kind not in "biuf":  # numbers only: strings stay zarr's
        return None
    pipe, store, prefix = plan
    a = array._async_array
    meta, proto = a.metadata, default_buffer_prototype()
    k = tiles_per_chunk(array)
    out = np.empty((len(indices), *array.shape[1:]), dtype=array.dtype)
    root = store.root / prefix if prefix else store.root
    wanted: dict[int, list[tuple[int, int]]] = {}  # chunk -> [(j, row in chunk)]
    for j, index in enumerate(indices):
        wanted.setdefault(int(index) // k, []).append((j, int(index) % k))
    blosc = _blosc_into(pipe, out.dtype) if k == 1 else None
    plain = _uncompressed(pipe, out.dtype)
    for c, picks in wanted.items():
        coords = (c,) + (0,) * (array.ndim - 1)
        if plain and len(picks) < k:  # tiles of an uncompressed chunk: their byte ranges only
            try:
                _read_rows(root / meta.encode_chunk_key(coords), out, picks)
            except FileNotFoundError:
                out[[j for j, _ in picks]] = meta.fill_value
            continue
        try:
            raw = (root / meta.encode_chunk_key(coords)).read_bytes()
        except FileNotFoundError:
            out[[j for j, _ in picks]] = meta.fill_value
            continue
        if blosc is not None:  # straight into the batch: no intermediate chunk, no copy (module docstring)
            blosc.decode(raw, out=out[picks[0][0]])
            continue
        spec = meta.get_chunk_spec(coords, a.config, proto)
        specs = [spec]
        for codec in pipe.array_array_codecs:
            specs.append(codec.resolve_metadata(specs[-1]))
        data: Any = proto.buffer.from_bytes(raw)
        for codec in reversed(pipe.bytes_bytes_codecs):
            data = codec._decode_sync(data, specs[-1])
        chunk = pipe.array_bytes_codec._decode_sync(data, specs[-1])
        for codec, s in zip(reversed(pipe.array_array_codecs), reversed(specs[:-1]), strict=True):
            chunk = codec._decode_sync(chunk, s)
        block = chunk.as_numpy_array()
        if k == 1:
            out[picks[0][0]] = block[0]
        else:
            out[[j for j, _ in picks]] = block[[r for _, r in picks]]
    return out


def _native(codec: Any, dtype: np.dtype) -> bool:
    """Whether a ``bytes`` codec lays ``dtype`` out in this machine's byte order."""
    native = "little" if sys.byteorder == "little" else "big"
    return dtype.itemsize == 1 or (codec.endian is not None and codec.endian.value == native)


def _uncompressed(pipe: Any, dtype: np.dtype) -> bool:
    """Whether a chunk's bytes are its values as they are (only a native-order ``bytes`` codec): a
    tile of it is one byte range (the embedding stores' 16-bit grids, several tiles per chunk)."""
    return (not pipe.array_array_codecs and not pipe.bytes_bytes_codecs
            and isinstance(pipe.array_bytes_codec, BytesCodec) and _native(pipe.array_bytes_codec, dtype))


def _read_rows(path: Any, out: np.ndarray, picks: list[tuple[int, int]]) -> None:
    """Rows ``r`` of an uncompressed chunk file into ``out[j]`` for each ``(j, r)``: one seek and read
    per tile (a chunk file always holds its ``k`` rows: an edge chunk's rows past the array are fill)."""
    row = out[0].nbytes
    with open(path, "rb") as f:
        for j, r in picks:
            f.seek(r * row)
            view = memoryview(out[j]).cast("B")
            if f.readinto(view) != row:
                raise OSError(f"{path}: chunk file shorter than its rows (corrupt or foreign)")


def _blosc_into(pipe: Any, dtype: np.dtype) -> Any:
    """The numcodecs Blosc codec of a pipeline that is only ``bytes`` (native byte order) + Blosc,
    which decodes a chunk straight into a tile of the output; None for any other pipeline."""
    bb = pipe.bytes_bytes_codecs
    ab = pipe.array_bytes_codec
    if pipe.array_array_codecs or len(bb) != 1 or not isinstance(bb[0], BloscCodec) or not isinstance(ab, BytesCodec):
        return None
    if not _native(ab, dtype):
        return None
    try:
        return bb[0]._blosc_codec  # numcodecs.Blosc: decode(buf, out=) decompresses into ``out``
    except AttributeError:  # another zarr's internals: the codec pipeline
        return None


async def _set_all(store: LocalStore, prefix: str, encoded: list[tuple[str, Any]]) -> None:
    # One after another, in key order: a killed writer leaves a prefix of the call's chunks, and the
    # order is the same on every run (gathering them made the completion order vary between runs;
    # the embed worker's parallelism is its writer threads, one batch each). As with the gather
    # before, a failed chunk does not stop the others; the first error is raised once all were tried.
    errors: list[BaseException] = []
    for key, data in encoded:
        try:
            await store.set(f"{prefix}/{key}" if prefix else key, data)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
