"""Block reads: every asset of every scene read once over a block's grid, planes grouped by solar day."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import threading
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np
import shapely

from ..base import ProviderError
from ..blocks import Block
from ..rio_read import read_nested
from ..sensor_options import SensorOptions
from .items import kept_item_time, signature_groups
from .specs import CollectionSpec
from .stack import SceneStack, valid_mask, valid_values


@dataclasses.dataclass(frozen=True)
class BlockReader:
    """The read settings of one provider: asset href signing, GDAL options, reader threads."""

    patch_url: Callable[[str], str] | None
    gdal_options: Mapping[str, Any]
    max_workers: int

    def _solar_day_planes(self, block: Block, items, spec: CollectionSpec, band_list):
        """Signature groups and the planes of the block's stack: one per (group, solar day) as
        odc-stac's ``groupby="solar_day"`` (nominal time + whole hours of the block centre's
        longitude), items of a plane in (time, id) order, planes in time order."""
        groups = signature_groups(items, spec, band_list)
        lon = float(shapely.union_all([t.footprint for t in block.tiles]).centroid.x)
        shift = dt.timedelta(seconds=int(lon / 15) * 3600)
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
        sigs, planes, day_of = self._solar_day_planes(block, items, spec, band_list)
        stack = SceneStack(spec, band_list, keys, sigs, resampling, flt)
        if not planes:
            return stack
        raw = self._read_nested(block, planes, spec, keys, load_keys, sigs)
        if raw is None:
            raw = self._read_odc(block, planes, spec, load_keys, sigs, day_of)
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

    def _read_nested(self, block: Block, planes, spec, keys, load_keys, sigs):
        """raw[key] [T, H, W] by windowed reads (thread pool), or None when an asset does not nest."""
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
                for it in members[1:]:  # several scenes of one solar day: first valid value wins
                    arr = read_nested(href(it, k), block, fill, dtype=target.dtype)
                    if arr is None:
                        return False
                    holes = ~valid_values(target[t], fill)
                    target[t][holes] = arr[holes]
            return True

        if self.max_workers > 1:
            with cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix="stac-read") as pool:
                ok = all(pool.map(one, jobs))
        else:
            ok = all(map(one, jobs))
        return raw if ok else None

    def _read_odc(self, block: Block, planes, spec, load_keys, sigs, day_of):
        """raw[key] [T, H, W] through odc-stac (a warp): one load per signature group."""
        import odc.stac  # heavy (dask, xarray): only the fallback reader needs it

        fallback = (
            {"data_type": "uint16", "nodata": 0}
            if spec.modality == "s2"
            else {"data_type": "float32", "nodata": 0}
        )
        stac_cfg = {"*": {"assets": {"*": fallback}}}
        if spec.mask_asset:
            stac_cfg["*"]["assets"][spec.mask_asset] = {"data_type": "uint8", "nodata": 0}

        def solar_day(item, parsed, idx):
            return day_of[item.id]

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
                groupby=solar_day,
                resampling={k: "nearest" for k in load_keys},
                chunks=None,
                pool=self.max_workers if self.max_workers > 1 else None,
                stac_cfg=stac_cfg,
                patch_url=self.patch_url,
                fail_on_error=True,
            )
            nt = ds.sizes.get("time", 0)
            if nt != len(index):
                raise ProviderError(
                    f"odc-stac returned {nt} dates for items {[it.id for it in group]}, "
                    f"expected {len(index)} solar days"
                )
            for k in load_keys:
                vals = np.asarray(ds[k].values)
                if vals.shape[1:] != (block.height, block.width):
                    raise ProviderError(
                        f"odc-stac returned {vals.shape} for {k}, expected {(block.height, block.width)}"
                    )
                if k not in raw:
                    raw[k] = np.empty((len(planes), block.height, block.width), vals.dtype)
                raw[k][index] = vals
        return raw

    # ---- masking ----------------------------------------------------------------------------
