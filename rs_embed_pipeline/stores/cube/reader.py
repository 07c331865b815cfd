"""Open a cube without knowing its internals: one call, only the windows that were filled.

```python
from rs_embed_pipeline.stores.cube.reader import open_cube
ds = open_cube("data/cubes/terrafm_b_s2/demo.zarr")            # the only UTM zone, feature maps
vec = ds["embedding"].sel(x=317000, y=5154000, method="nearest").isel(time=0)
```

A cube's time axis is pre-allocated ahead of the windows built so far (stores/cube/time_axis.py: lock-free
concurrent writers), so the raw Zarr holds NaN slices for windows nobody wrote yet and for a window
whose writer was killed; ``window_filled`` marks the complete ones. :func:`open_cube` keeps only
those (``filled_only=False`` returns the raw axis). Int8 cubes are de-quantized on the way
(:func:`rs_embed_pipeline.stores.cube.codec.dequantize`; the identity for float32 cubes).

The cube's dims stay ``(time, y, x, feature)`` in Zarr (one chunk per tile per window, which the
concurrent writers rely on); ``feature_first=True`` returns ``(time, feature, y, x)``, the
band-first order GIS tools and the geo-embeddings best practice use (the COG export writes
features as bands).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
import xarray as xr
import zarr
from pyproj import CRS

from rs_embed_pipeline.stores.cube.codec import dequantize
from rs_embed_pipeline.stores.tile_store import array_at, group_at

Kind = Literal["grid", "pooled"]  # feature-map cells, or one cell per tile
KINDS: tuple[str, ...] = get_args(Kind)


class CubeReadError(ValueError):
    """The cube, zone or kind asked for does not exist; the message names the valid choices."""


def cube_zones(cube_uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The UTM-zone groups of a cube (``["EPSG32632", ...]``), sorted."""
    try:
        root = zarr.open_group(cube_uri, mode="r", zarr_format=3, storage_options=dict(storage_options or {}) or None)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise CubeReadError(f"No cube at {cube_uri}: it does not exist or is not a Zarr v3 group "
                            "(materialize the <model>_<modality>_cube asset first)") from exc
    return sorted(name for name in root.group_keys() if name.startswith("EPSG"))


def normalise_zone(zone: str | int) -> str:
    """``32632``, ``"32632"``, ``"EPSG:32632"``, ``"epsg32632"`` -> ``"EPSG32632"`` (the group name);
    anything else is returned as given, so the caller's error names it."""
    text = str(zone).strip()
    digits = text.upper().removeprefix("EPSG").lstrip(":")
    return f"EPSG{digits}" if digits.isdigit() else text


def open_cube(
    cube_uri: str,
    zone: str | None = None,
    kind: str = "grid",
    *,
    filled_only: bool = True,
    storage_options: dict | None = None,
    feature_first: bool = False,
) -> xr.Dataset:
    """One UTM zone of a cube as an xarray Dataset (lazy, dask-backed).

    ``zone``: ``"EPSG32632"`` (or ``"32632"``, ``"EPSG:32632"``, ``32632``); None picks the only zone and names them all when
    there are several. ``kind``: ``"grid"`` (feature maps mosaicked at their own resolution) or
    ``"pooled"`` (one cell per tile). ``filled_only``: keep only windows marked complete
    (``window_filled == 1``). ``feature_first``: dims ``(time, feature, y, x)`` instead of the
    stored ``(time, y, x, feature)``.
    """
    if kind not in KINDS:
        raise CubeReadError(f"kind {kind!r} is not a cube group kind; valid kinds: {', '.join(KINDS)}")
    zones = cube_zones(cube_uri, storage_options)
    if not zones:
        raise CubeReadError(f"Cube {cube_uri} has no UTM-zone group yet (no window was written)")
    if zone is None:
        if len(zones) > 1:
            raise CubeReadError(f"Cube {cube_uri} spans several UTM zones ({', '.join(zones)}); "
                                "pass zone=, e.g. zone=" + repr(zones[0]))
        zone = zones[0]
    zone = normalise_zone(zone)
    if zone not in zones:
        raise CubeReadError(f"Cube {cube_uri} has no zone {zone!r}; its zones: {', '.join(zones)}")
    # consolidated=False: the arrays' own metadata, never a stale consolidated view of a growing axis.
    ds = xr.open_zarr(cube_uri, group=f"{zone}/{kind}", consolidated=False,
                      storage_options=dict(storage_options or {}) or None)
    if filled_only:
        filled = np.flatnonzero(np.asarray(ds["window_filled"].values) == 1)
        ds = ds.isel(time=filled)
    ds = dequantize(ds)
    if feature_first:
        ds = ds.transpose("time", "feature", "y", "x", ...)
    ds.attrs.setdefault("zone", zone)
    ds.attrs["cube_kind"] = kind
    return ds


def window_dataset(cube_uri: str, zone: str, kind: str, start: str,
                   storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The filled window starting ``start`` (``YYYY-MM-DD``) of one zone/kind, without its time
    dim; a clear error naming the filled windows when it is not filled."""
    ds = open_cube(cube_uri, zone, kind, storage_options=dict(storage_options or {}) or None)
    starts = [str(t)[:10] for t in ds["time"].values]
    if start not in starts:
        raise CubeReadError(f"Window {start} of {cube_uri} ({zone}/{kind}) is not filled; filled windows: "
                            f"{', '.join(starts) or 'none'}. Materialize the cube for that window first.")
    return ds.isel(time=starts.index(start))


def tile_vectors(cube_uri: str, tiles: Any, start: str,
                 storage_options: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """``{tile_id: pooled vector}`` of the window starting ``start`` for the tile_grid rows
    ``tiles`` (a DataFrame or records) that have a finite embedding in the cube's pooled groups."""
    records = tiles.to_dict("records") if hasattr(tiles, "to_dict") else list(tiles)
    out: dict[str, np.ndarray] = {}
    present = set(cube_zones(cube_uri, storage_options))
    for epsg in sorted({int(t["utm_epsg"]) for t in records}):
        if f"EPSG{epsg}" not in present:
            continue  # no tile of that zone was ever written: none of them has a vector
        ds = window_dataset(cube_uri, f"EPSG{epsg}", "pooled", start, storage_options)
        plane = np.asarray(ds["embedding"].values)      # [y, x, feature], one cell per tile
        xs, ys = np.asarray(ds["x"].values), np.asarray(ds["y"].values)
        for t in (t for t in records if int(t["utm_epsg"]) == epsg):
            side = float(t["size_px"]) * float(t["scale_m"])
            i = int(round((float(t["y0"]) - side / 2 - ys[0]) / -side))
            j = int(round((float(t["x0"]) + side / 2 - xs[0]) / side))
            if 0 <= i < plane.shape[0] and 0 <= j < plane.shape[1] and np.isfinite(plane[i, j]).all():
                out[str(t["tile_id"])] = plane[i, j]
    return out


def read_window_state(cube_uri: str, group: str, storage_options: Mapping[str, Any] | None = None
                      ) -> dict[int, dict[str, Any]]:
    """``{window index: provenance}`` of the windows marked filled in ``group`` (tests, checks)."""
    root = zarr.open_group(cube_uri, mode="r", use_consolidated=False, zarr_format=3,
                           storage_options=dict(storage_options or {}) or None)
    g = group_at(root, group)  # fresh metadata (not the consolidated view)
    filled = np.asarray(array_at(g, "window_filled")[:])
    provenance = array_at(g, "window_provenance")
    return {int(i): json.loads(str(provenance[int(i)]) or "{}") for i in np.flatnonzero(filled)}


def check_georeferencing(cube_uri: str, group: str, epsg: int, storage_options: Mapping[str, Any] | None = None
                         ) -> tuple[bool, str]:
    """Does ``<group>/grid`` open with xarray as (time, y, x, feature) in EPSG ``epsg``? ``(ok, what was found)``."""
    ds = xr.open_zarr(cube_uri, group=f"{group}/grid", consolidated=False, storage_options=storage_options)
    wkt = ds["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in ds.variables else None
    crs_epsg = CRS.from_wkt(wkt).to_epsg() if wkt else None
    dims = tuple(ds["embedding"].dims)
    return dims == ("time", "y", "x", "feature") and crs_epsg == epsg, f"{group}: dims {dims}, CRS EPSG:{crs_epsg}"
