"""Change between windows: the per-cell cosine distance between a window and its baseline.

```python
from rs_embed_pipeline.products.change import change_between
result = change_between("data/cubes/terrafm_b_s2/demo.zarr", window="2024-04-01", baseline="2024-01-01")
result.zones["EPSG32632"]["cosine_distance"]     # (y, x), 0 = same direction, 2 = opposite
result.changed_share(threshold=0.1)
```

The baseline is the previous window of the partitions definition unless one is configured. A cell
without an embedding in either window is NaN and counts neither as changed nor as unchanged.
Stored (:func:`write_change`) as Zarr v3 at ``<root>/change/<model>_<modality>/<region>/<window>.zarr``
with one group per UTM zone (``EPSG32632/grid``): ``cosine_distance`` float32 ``(y, x)`` and
``changed`` int8 ``(y, x)`` (1 above the threshold, 0 below, -1 no data), the cube's ``x`` / ``y``
coordinates and CF ``spatial_ref`` grid mapping, and attributes naming both windows and the threshold.
The stored ``cube`` attribute is the cube's path relative to the change store (e.g.
``../../../../cubes/terrafm_b_s2/demo.zarr``), so a copied store tree still finds its cube:
:func:`change_cube_uri` resolves it (an absolute one, from older stores, is returned as it is).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Any
from collections.abc import Mapping

import numpy as np
import xarray as xr

from rs_embed_pipeline.products.similarity import window_of
from rs_embed_pipeline.stores.cube.reader import cube_zones, open_cube
from rs_embed_pipeline.stores.tile_store import remove_tree

HIST_BINS = np.round(np.linspace(0.0, 1.0, 21), 3)  # cosine distance bins (>1 counted in the last)


class ChangeError(ValueError):
    """A window or baseline that is not in the cube, or a bad threshold."""


class BaselineMissing(ChangeError):
    """The window is in the cube, its baseline window is not (not built yet)."""


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos(a, b)`` per cell of ``[..., D]`` arrays, float32; NaN where either has no embedding."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, (a64 * b64).sum(axis=-1) / den, np.nan)
    return (1.0 - np.clip(cos, -1.0, 1.0)).astype(np.float32)


@dataclasses.dataclass
class ChangeResult:
    window: str
    baseline: str
    kind: str
    zones: dict[str, xr.Dataset]   # zone -> Dataset with cosine_distance (y, x)

    def distances(self) -> np.ndarray:
        """Finite distances of every zone (flattened)."""
        vals = [ds["cosine_distance"].values.ravel() for ds in self.zones.values()]
        flat = np.concatenate(vals) if vals else np.zeros(0, dtype=np.float32)
        return flat[np.isfinite(flat)]

    def changed_share(self, threshold: float) -> float:
        d = self.distances()
        return float((d > threshold).mean()) if d.size else 0.0

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        d = np.minimum(self.distances(), HIST_BINS[-1])
        counts, edges = np.histogram(d, bins=HIST_BINS)
        return counts, edges

    def summary(self, threshold: float) -> dict[str, Any]:
        d = self.distances()
        q = np.percentile(d, [50, 90, 99]) if d.size else [np.nan] * 3
        return {"window": self.window, "baseline": self.baseline, "kind": self.kind, "cells": int(d.size),
                "threshold": float(threshold), "changed_cells": int((d > threshold).sum()),
                "changed_share": self.changed_share(threshold),
                "median": float(q[0]), "p90": float(q[1]), "p99": float(q[2]),
                "max": float(d.max()) if d.size else float("nan")}


def change_between(cube_uri: str, window: str, baseline: str, kind: str = "grid", *,
                   storage_options: Mapping[str, Any] | None = None) -> ChangeResult:
    """Per-cell cosine distance between ``window`` and ``baseline`` of every zone of a cube."""

    if window == baseline:
        raise ChangeError(f"the baseline window must differ from the window ({window})")
    zones: dict[str, xr.Dataset] = {}
    for zone in cube_zones(cube_uri, storage_options):
        ds = open_cube(cube_uri, zone=zone, kind=kind, storage_options=dict(storage_options or {}) or None)
        try:
            now = window_of(ds, window)
        except ValueError as exc:
            raise ChangeError(f"{cube_uri} {zone}: {exc}") from exc
        try:
            before = window_of(ds, baseline)
        except ValueError as exc:
            raise BaselineMissing(f"{cube_uri} {zone}: baseline {exc}") from exc
        dist = cosine_distance(np.asarray(now["embedding"].values), np.asarray(before["embedding"].values))
        out = xr.Dataset(
            {"cosine_distance": (("y", "x"), dist, {
                "long_name": f"cosine distance between window {window} and baseline {baseline}",
                "units": "1", "grid_mapping": "spatial_ref", "valid_range": [0.0, 2.0]})},
            coords={"x": ds["x"], "y": ds["y"]},
            attrs={"window": window, "baseline_window": baseline, "cube": cube_uri, "cube_kind": kind,
                   "zone": zone, "Conventions": "CF-1.8"},
        )
        if "spatial_ref" in ds.variables:
            out["spatial_ref"] = ((), np.int32(0), dict(ds["spatial_ref"].attrs))
        zones[zone] = out
    if not zones:
        raise ChangeError(f"{cube_uri} has no zone group yet")
    return ChangeResult(window=window, baseline=baseline, kind=kind, zones=zones)


def write_change(result: ChangeResult, uri: str, threshold: float,
                 storage_options: Mapping[str, Any] | None = None) -> str:
    """Write every zone's distances (and the ``changed`` mask at ``threshold``) as Zarr v3 groups."""

    remove_tree(uri, storage_options)  # one window per store: a rewrite replaces it whole
    for zone, ds in result.zones.items():
        d = ds["cosine_distance"]
        changed = xr.where(np.isfinite(d), (d > threshold).astype(np.int8), np.int8(-1)).astype(np.int8)
        changed.attrs = {"long_name": f"1 where cosine_distance > {threshold}, 0 not, -1 no embedding",
                         "flag_values": [-1, 0, 1], "flag_meanings": "no_data unchanged changed",
                         "grid_mapping": "spatial_ref"}
        out = ds.assign(changed=changed)
        out.attrs["threshold"] = float(threshold)
        out.attrs["cube"] = _relative(str(ds.attrs["cube"]), uri)
        encoding = {name: {"chunks": tuple(min(512, n) for n in out[name].shape)}
                    for name in ("cosine_distance", "changed")}
        out.to_zarr(uri, group=f"{zone}/{result.kind}", mode="w", zarr_format=3, consolidated=False,
                    encoding=encoding, storage_options=dict(storage_options or {}) or None)
    return uri


def _split(uri: str) -> tuple[str, str]:
    """``(scheme, absolute path)``: ``("s3", "/bucket/key")`` or ``("", "/abs/local/path")``."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme, "/" + rest
    return "", os.path.abspath(uri)


def _relative(target: str, start: str) -> str:
    """``target`` relative to the store ``start`` when both are on one file system, else ``target``."""
    (t_scheme, t_path), (s_scheme, s_path) = _split(target), _split(start)
    return posixpath.relpath(t_path, s_path) if t_scheme == s_scheme else target


def change_cube_uri(change_store: str, cube_attr: str) -> str:
    """The cube a change store was computed from: its ``cube`` attribute resolved against the store."""
    if "://" in cube_attr or os.path.isabs(cube_attr):
        return cube_attr
    scheme, path = _split(change_store)
    joined = posixpath.normpath(posixpath.join(path, cube_attr))
    return f"{scheme}://{joined.lstrip('/')}" if scheme else joined


def change_uri(store_root: str, model_id: str, modality: str, region: str, window: str) -> str:
    return "/".join([store_root.rstrip("/"), "change", f"{model_id}_{modality}", region, f"{window}.zarr"])
