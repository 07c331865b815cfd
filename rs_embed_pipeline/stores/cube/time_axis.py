"""A cube's time axis: one slot per window of the partitions definition, allocated ahead and grown
by concurrent writers without locks.

Time index i is the i-th window of the partitions definition (not the order of writes), so a
backfill may fill windows in any order.

* **Nothing per window lives in metadata.** The axis is allocated when a group is created, for the
  partitions definition's whole current range plus :data:`TIME_MARGIN`, rounded up to
  :data:`TIME_BLOCK` windows (:func:`time_capacity`); the per-window facts (``window_filled``,
  ``window_provenance``) are arrays chunked one window per chunk.
* **Growth is monotone and self-healing.** When a window lies beyond the allocated axis (years
  later), the writer rewrites the time arrays' ``zarr.json`` with a larger shape (never deleting
  a chunk) and re-consolidates. Two writers may race there and the slower one may write a stale,
  smaller shape; so every writer ends with :func:`reconcile_time_axis`: it lists the
  ``window_filled`` chunk keys (the windows written so far: they double as a ledger), re-reads
  every time array's shape and the consolidated metadata, and repairs (grows, re-consolidates)
  until they agree. The last metadata write of all is followed by its writer's own check, which
  sees every marker written before it, so the cube always ends consistent. Listing and
  read-after-write are strongly consistent on local disks and on S3.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from rs_embed_pipeline.stores.cube.codec import quantized_arrays, stored_scheme
from rs_embed_pipeline.stores.cube.root import CubeError, CubeKeys, consolidated_metadata

EPOCH = dt.date(1970, 1, 1)
TIME_BLOCK = 16   # the time axis is allocated in blocks of this many windows
TIME_MARGIN = 4   # windows allocated beyond the partitions definition's current range
TIME_ARRAYS = ("embedding", "time", "window_filled", "window_provenance")
RECONCILE_ROUNDS = 50
# The arrays of a zone group without a time axis.
SPATIAL_ARRAYS = ("x", "y", "feature", "spatial_ref")


def days_since_epoch(date: str) -> int:
    """``YYYY-MM-DD`` as the ``time`` array stores it (CF ``days since 1970-01-01``)."""
    return (dt.date.fromisoformat(date) - EPOCH).days


def time_capacity(need: int, available: int) -> int:
    """Windows to allocate: ``need`` plus the margin, rounded up to a block, within ``available``."""
    blocks = -(-(need + TIME_MARGIN) // TIME_BLOCK)
    return max(need, min(blocks * TIME_BLOCK, available))


def reconcile_time_axis(cube: CubeKeys, groups: Sequence[str], need: int, window_starts: Sequence[str]
                        ) -> dict[str, Any]:
    """Make every time array of ``groups`` at least ``need`` long and as long as the markers ask
    (plus the margin), all of a group's time arrays equally long, and the consolidated metadata
    equal to the arrays' own metadata. Idempotent; converges under concurrent writers (module
    docstring). Returns the root document (with its consolidated metadata)."""
    for _ in range(RECONCILE_ROUNDS):
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
            time[:n] = np.asarray([days_since_epoch(s) for s in window_starts[:n]], dtype=np.int64)
            changed = True
        root = cube.read_json()
        if not changed and root is not None and _consolidated_current(root, docs):
            return root
        zarr.consolidate_metadata(cube.open_root().store)
    raise CubeError(f"Cube {cube.uri}: the time axis did not settle after {RECONCILE_ROUNDS} rounds")


def _consolidated_current(root: Mapping[str, Any] | None, docs: Mapping[str, Mapping[str, Any]]) -> bool:
    consolidated = consolidated_metadata(root)
    return all(list((consolidated.get(path) or {}).get("shape", [None])) == list(doc["shape"])
               for path, doc in docs.items())


def all_listed(meta: Mapping[str, Any], paths: Sequence[str], extra: Sequence[str] = ()) -> bool:
    """The consolidated view lists every array of the zone's groups (so they were created and
    their coordinates written)."""
    return all(f"{path}/{name}" in meta for path in paths
               for name in (*TIME_ARRAYS, *extra, *SPATIAL_ARRAYS))


def axes_reach(meta: Mapping[str, Any], paths: Sequence[str], need: int, extra: Sequence[str] = ()) -> bool:
    """Every time array of ``paths`` (and the ``extra`` ones) is at least ``need`` long in ``meta``."""
    return all(int(meta[f"{path}/{name}"]["shape"][0]) >= need for path in paths for name in (*TIME_ARRAYS, *extra))


def _quantized_names(embedding_doc: Mapping[str, Any]) -> list[str]:
    scheme = stored_scheme(embedding_doc)
    if scheme == "none":
        return []

    return list(quantized_arrays(scheme))
