"""Block reads: every asset of every scene read once over a block's grid, planes grouped by solar day."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import threading
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np
import pyproj
import shapely
from affine import Affine
from shapely.geometry import shape as shapely_shape

from ..base import ProviderError
from ..blocks import Block
from ..rio_read import read_nested
from ..sensor_options import SensorOptions
from .items import kept_item_time, signature_groups
from .specs import CollectionSpec
from .stack import SceneStack, valid_mask, valid_values


def block_longitude(block: Block) -> float:
    """Longitude of the block's centre, in [-180, 180]: its UTM centre point projected, so that a
    block across the anti-meridian (tile footprints split at +-180, whose union's centroid lies
    near 0) still gets its own solar day (about +-12 h, not 0)."""
    cx = block.x0 + block.width * block.scale_m / 2
    cy = block.y0 - block.height * block.scale_m / 2
    tr = pyproj.Transformer.from_crs(f"EPSG:{block.epsg}", "EPSG:4326", always_xy=True)
    lon, _ = tr.transform(cx, cy)
    return float((lon + 180.0) % 360.0 - 180.0)


def footprint_mask(geometry: Mapping[str, Any] | None, block: Block) -> np.ndarray | None:
    """Block pixels that the item footprint ``geometry`` (GeoJSON, lon/lat) touches, ``[height,
    width]`` bool; None when there is no footprint or it covers the whole block. The footprint's
    edges are straight in lon/lat (GeoJSON), so they are densified before projecting; a pixel the
    outline touches counts (``all_touched``: footprints are simplified, so their edge pixels are kept)."""
    if geometry is None:
        return None
    from rasterio.features import geometry_mask  # heavy (GDAL): imported on the first read

    geom = shapely.segmentize(shapely_shape(geometry), 0.01)
    tr = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{block.epsg}", always_xy=True)
    utm = shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    if not utm.is_valid:
        utm = shapely.make_valid(utm)
    x0, y0, s = block.x0, block.y0, block.scale_m
    if utm.contains(shapely.box(x0, y0 - block.height * s, x0 + block.width * s, y0)):
        return None
    transform = Affine(s, 0.0, x0, 0.0, -s, y0)
    return ~geometry_mask([utm], out_shape=(block.height, block.width), transform=transform, all_touched=True)


@dataclasses.dataclass(frozen=True)
class BlockReader:
    """The read settings of one provider: asset href signing, GDAL options, reader threads."""

    patch_url: Callable[[str], str] | None
    gdal_options: Mapping[str, Any]
    max_workers: int

    def _solar_day_planes(self, block: Block, items, spec: CollectionSpec, band_list):
        """Signature groups and the planes of the block's stack: one per (group, solar day) as
        odc-stac's ``groupby="solar_day"`` (nominal time + whole hours of the block centre's
        longitude: :func:`block_longitude`), items of a plane in (time, id) order, planes in time
        order."""
        groups = signature_groups(items, spec, band_list)
        shift = dt.timedelta(seconds=int(block_longitude(block) / 15) * 3600)
        day_of = {it.id: (kept_item_time(it) + shift).date() for it in items}
        planes = []
        for gi, (_, group) in enumerate(groups):
            for day in sorted({day_of[it.id] for it in group}):
                members = [it for it in group if day_of[it.id] == day]
                t = min(kept_item_time(it) for it in members).astimezone(dt.UTC).replace(tzinfo=None)
                planes.append((np.datetime64(t, "ns"), gi, members))
        order = sorted(range(len(planes)), key=lambda i: planes[i][0])  # stable
        return [sig for sig, _ in groups], [planes[i] for i in order], day_of

    def load(self, block: Block, items, spec: CollectionSpec, band_list, flt: SensorOptions) -> SceneStack:
        """Every asset of every scene once over the block: windowed rasterio reads when the grids
        nest (:mod:`..rio_read`), else one odc-stac load per signature group; nearest everywhere."""
        keys = [spec.assets[b] for b in band_list]
        load_keys = keys + ([spec.mask_asset] if spec.mask_asset else [])
        resampling = {k: "nearest" for k in load_keys}
        sigs, planes, _ = self._solar_day_planes(block, items, spec, band_list)
        stack = SceneStack(spec, band_list, keys, sigs, resampling, flt)
        if not planes:
            return stack
        # a scene's pixels count only where its footprint lies (a same-day plane's other scene
        # must not bring pixels to a tile that its footprint misses)
        masks = {it.id: footprint_mask(it.geometry, block) for _, _, members in planes for it in members}
        raw = self._read_nested(block, planes, spec, keys, load_keys, sigs, masks)
        if raw is None:
            raw = self._read_odc(block, planes, spec, keys, load_keys, sigs, masks)
            stack.reader = "odc-stac"
        else:
            stack.reader = "rasterio windows"
        stack.slices = [(t, gi, frozenset(it.id for it in members)) for t, gi, members in planes]
        stack.raw = raw
        stack.ok = valid_mask(stack)
        return stack

    def _fill(self, spec: CollectionSpec, key: str, keys, sig) -> float:
        """The raw value of block pixels that no scene covers: the asset's nodata (SCL: 0)."""
        if key in keys:
            return sig[keys.index(key)][2]
        return 0.0

    def _read_nested(self, block: Block, planes, spec, keys, load_keys, sigs, masks):
        """raw[key] [T, H, W] by windowed reads (thread pool), or None when an asset does not nest;
        ``masks``: item id -> its :func:`footprint_mask` (pixels outside hold the fill value)."""
        import rasterio  # heavy (GDAL): imported on the first read

        def href(it, k):
            h = it.assets[k].href
            return self.patch_url(h) if self.patch_url else h

        jobs = [(t, k, members) for t, (_, _, members) in enumerate(planes) for k in load_keys]
        raw: dict[str, np.ndarray] = {}
        lock = threading.Lock()

        def one(job) -> bool:
            t, k, members = job
            fill = self._fill(spec, k, keys, sigs[planes[t][1]])
            with rasterio.Env(**self.gdal_options):
                with lock:
                    target = raw.get(k)
                if target is None:  # the first plane read of this asset decides the dtype
                    first = read_nested(href(members[0], k), block, fill)
                    if first is None:
                        return False
                    with lock:
                        if k not in raw:
                            raw[k] = np.empty((len(planes), block.height, block.width), first.dtype)
                        target = raw[k]
                    if target.dtype != first.dtype:
                        raise ProviderError(f"asset {k!r} has dtype {first.dtype} in one scene and "
                                            f"{target.dtype} in another of the same window")
                    target[t] = first
                elif read_nested(href(members[0], k), block, fill, out=target[t]) is None:
                    return False
                inside = masks.get(members[0].id)
                if inside is not None:
                    target[t][~inside] = fill
                for it in members[1:]:  # several scenes of one solar day: first valid value wins
                    arr = read_nested(href(it, k), block, fill, dtype=target.dtype)
                    if arr is None:
                        return False
                    holes = ~valid_values(target[t], fill)
                    inside = masks.get(it.id)
                    if inside is not None:
                        holes &= inside
                    target[t][holes] = arr[holes]
            return True

        if self.max_workers > 1:
            with cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix="stac-read") as pool:
                ok = all(pool.map(one, jobs))
        else:
            ok = all(map(one, jobs))
        return raw if ok else None

    def _read_odc(self, block: Block, planes, spec, keys, load_keys, sigs, masks):
        """raw[key] [T, H, W] through odc-stac (a warp): one load per signature group, one time
        slice per scene, merged into its solar day's plane here as :meth:`_read_nested` does
        (first valid value in (time, id) order, inside the scene's footprint)."""
        import odc.stac  # heavy (dask, xarray): only the fallback reader needs it

        fallback = (
            {"data_type": "uint16", "nodata": 0}
            if spec.modality == "s2"
            else {"data_type": "float32", "nodata": 0}
        )
        stac_cfg = {"*": {"assets": {"*": fallback}}}
        if spec.mask_asset:
            stac_cfg["*"]["assets"][spec.mask_asset] = {"data_type": "uint8", "nodata": 0}
        # (plane, member) of every scene: odc-stac sorts its groups by this key
        slot = {it.id: (t, m) for t, (_, _, members) in enumerate(planes) for m, it in enumerate(members)}

        def one_scene(item, parsed, idx):
            return slot[item.id]

        raw: dict[str, np.ndarray] = {}
        for gi in range(len(sigs)):
            index = [t for t, (_, g, _) in enumerate(planes) if g == gi]
            if not index:
                continue
            group = [it for t in index for it in planes[t][2]]
            ds = odc.stac.load(
                group,
                bands=load_keys,
                geobox=block.geobox(),
                groupby=one_scene,
                resampling={k: "nearest" for k in load_keys},
                chunks=None,
                pool=self.max_workers if self.max_workers > 1 else None,
                stac_cfg=stac_cfg,
                patch_url=self.patch_url,
                fail_on_error=True,
            )
            nt = ds.sizes.get("time", 0)
            if nt != len(group):
                raise ProviderError(
                    f"odc-stac returned {nt} dates for items {[it.id for it in group]}, "
                    f"expected {len(group)} scenes"
                )
            for k in load_keys:
                vals = np.asarray(ds[k].values)
                if vals.shape[1:] != (block.height, block.width):
                    raise ProviderError(
                        f"odc-stac returned {vals.shape} for {k}, expected {(block.height, block.width)}"
                    )
                if k not in raw:
                    raw[k] = np.empty((len(planes), block.height, block.width), vals.dtype)
                fill = raw[k].dtype.type(self._fill(spec, k, keys, sigs[gi]))
                n = 0
                for t in index:
                    plane = raw[k][t]
                    for m, it in enumerate(planes[t][2]):
                        arr, inside = vals[n], masks.get(it.id)
                        n += 1
                        take = np.ones(arr.shape, bool) if m == 0 else ~valid_values(plane, float(fill))
                        if inside is not None:
                            if m == 0:
                                plane[~inside] = fill
                            take &= inside
                        plane[take] = arr[take]
        return raw

    # ---- masking ----------------------------------------------------------------------------
