"""STAC providers: odc-stac reads, one code path for a static catalog and a STAC API.

* :class:`LocalStacProvider` reads a static catalog (``catalog.json``, e.g. the synthetic one from
  :mod:`rs_embed_pipeline.providers.synthetic`); items are filtered in Python.
* :class:`StacProvider` searches a STAC API with pystac-client (default: Element 84 Earth Search,
  Sentinel-2 L2A collection 1).

Per tile (one row of the tile_grid GeoDataFrame) and time window ``[start, end)``:

1. items intersecting the tile footprint, datetime in ``[start, end)``; S2: ``eo:cloud_cover <=
   cloudy_pct`` (``cloudy_pct=None``: no filter); S1: ``sat:orbit_state`` == ``orbit``
   (ASCENDING | DESCENDING, None: both). Sensor options, as for the GEE provider: S2
   ``composite``, ``cloudy_pct``, ``fill_value``; S1 ``composite``, ``orbit``, ``use_float_linear``,
   ``fill_value``;
2. ``odc.stac.load`` on the tile's exact pixel grid (UTM ``EPSG:utm_epsg``, ``scale_m`` pixels,
   upper-left ``(x0, y0)``, ``size_px x size_px``), ``groupby="solar_day"``; 10 m S2 bands and
   SCL nearest, 20 / 60 m S2 bands and S1 bilinear;
3. harmonization to provider units per item from its ``raster:bands`` ``scale`` / ``offset``:
   S2 ``DN_out = (DN * scale + offset) * 10000`` (Earth Search C1: ``scale=0.0001``,
   ``offset=-0.1`` for processing baseline >= 04.00, read from each item, never hard-coded);
   S1 ``DN * scale + offset``: linear sigma0 power, or (``use_float_linear=False``) dB, converted per
   observation to linear power ``10 ** (dB / 10)`` before compositing;
4. invalid observations: raw value equal to the asset nodata or non-finite in any asked band,
   and for S2 SCL in {0 (nodata), 3 (cloud shadow), 8, 9 (cloud), 10 (cirrus)};
5. composite over time of valid observations: ``median`` (per band nanmedian) or ``mosaic``
   (latest valid observation on top); ``valid`` = at least one valid observation; invalid
   pixels are ``fill_value`` (default 0) in ``data``.

A tile whose window has no item, or no valid pixel, is ``no_data``; an exception while loading a
tile makes that tile ``failed`` (``meta["reason"]``) and the other tiles go on. Tiles are loaded
concurrently on a small thread pool (``max_workers``) and yielded as they complete.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import box as shapely_box
from shapely.geometry import shape as shapely_shape

from rs_embed_pipeline.timeparse import parse_utc

from .base import MODALITIES, S1_BANDS, S2_BANDS, Patch, ProviderError

__all__ = [
    "COMPOSITES",
    "EARTH_SEARCH_S2_ASSETS",
    "CollectionSpec",
    "LocalStacProvider",
    "S2_NATIVE_RESOLUTION_M",
    "SCL_INVALID_CLASSES",
    "StacProvider",
]

log = logging.getLogger(__name__)

COMPOSITES: tuple[str, ...] = ("median", "mosaic")
# per-modality sensor options (the GEE provider takes the same names)
SENSOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "s2": ("composite", "cloudy_pct", "fill_value"),
    "s1": ("composite", "orbit", "use_float_linear", "fill_value"),
}
ORBITS: tuple[str, ...] = ("ASCENDING", "DESCENDING")
# SCL classes treated as invalid: 0 no data, 3 cloud shadow, 8 / 9 cloud, 10 thin cirrus
SCL_INVALID_CLASSES: tuple[int, ...] = (0, 3, 8, 9, 10)

EARTH_SEARCH_S2_ASSETS: dict[str, str] = {
    "B1": "coastal",
    "B2": "blue",
    "B3": "green",
    "B4": "red",
    "B5": "rededge1",
    "B6": "rededge2",
    "B7": "rededge3",
    "B8": "nir",
    "B8A": "nir08",
    "B9": "nir09",
    "B11": "swir16",
    "B12": "swir22",
}
DEFAULT_S1_ASSETS: dict[str, str] = {"VV": "vv", "VH": "vh"}
S2_NATIVE_RESOLUTION_M: dict[str, int] = {
    "B1": 60,
    "B2": 10,
    "B3": 10,
    "B4": 10,
    "B5": 20,
    "B6": 20,
    "B7": 20,
    "B8": 10,
    "B8A": 20,
    "B9": 60,
    "B11": 20,
    "B12": 20,
}
_UNIT_FACTOR = {"s2": 10000.0, "s1": 1.0}
# nodata assumed when an asset declares none (matches the odc-stac fallback config below)
_DEFAULT_NODATA = {"s2": 0.0, "s1": 0.0}


@dataclasses.dataclass(frozen=True)
class CollectionSpec:
    """How one STAC collection maps onto a modality's provider bands.

    ``assets``: provider band name -> asset key. ``mask_asset``: the SCL asset (S2) or None.
    ``default_scale`` / ``default_offset``: used when an asset has no ``raster:bands`` scale /
    offset (``DN_out = (DN * scale + offset) * unit_factor``; unit_factor 10000 for S2, 1 for S1).
    """

    collection: str
    modality: str
    assets: Mapping[str, str]
    mask_asset: str | None = None
    default_scale: float = 1.0
    default_offset: float = 0.0
    cloud_cover_property: str | None = "eo:cloud_cover"

    def describe(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "modality": self.modality,
            "assets": dict(self.assets),
            "mask_asset": self.mask_asset,
            "default_scale": self.default_scale,
            "default_offset": self.default_offset,
        }


def s2_spec(
    collection: str, assets: Mapping[str, str] | None = None, mask_asset: str | None = "scl"
) -> CollectionSpec:
    return CollectionSpec(
        collection=collection,
        modality="s2",
        assets=dict(assets or EARTH_SEARCH_S2_ASSETS),
        mask_asset=mask_asset,
        default_scale=0.0001,
        default_offset=0.0,
    )


def s1_spec(collection: str, assets: Mapping[str, str] | None = None) -> CollectionSpec:
    return CollectionSpec(
        collection=collection,
        modality="s1",
        assets=dict(assets or DEFAULT_S1_ASSETS),
        mask_asset=None,
        default_scale=1.0,
        default_offset=0.0,
        cloud_cover_property=None,
    )


def collection_specs(
    s2_collection: str | None,
    s1_collection: str | None,
    s2_assets: Mapping[str, str] | None = None,
    s1_assets: Mapping[str, str] | None = None,
    mask_asset: str | None = "scl",
) -> dict[str, CollectionSpec]:
    """The modality -> collection mapping of a provider; a modality without a collection is absent."""
    specs: dict[str, CollectionSpec] = {}
    if s2_collection:
        specs["s2"] = s2_spec(s2_collection, s2_assets, mask_asset)
    if s1_collection:
        specs["s1"] = s1_spec(s1_collection, s1_assets)
    return specs


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _parse_time(v: Any, what: str) -> dt.datetime:
    try:
        return parse_utc(v)
    except ValueError as exc:
        raise ProviderError(f"{what} {exc}") from None


def _item_time(item) -> dt.datetime | None:
    t = item.datetime
    if t is None:
        s = item.properties.get("start_datetime")
        if s is None:
            return None
        t = _parse_time(s, "start_datetime")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t


def _raster_meta(asset) -> dict[str, Any]:
    """scale / offset / nodata of a single-band asset (raster v1 ``raster:bands``, STAC 1.1
    ``bands`` with ``raster:*`` fields, or asset-level fields)."""
    ef = asset.extra_fields
    rb = ef.get("raster:bands")
    if isinstance(rb, list) and rb and isinstance(rb[0], Mapping):
        b = rb[0]
        return {"scale": b.get("scale"), "offset": b.get("offset"), "nodata": b.get("nodata")}
    bands = ef.get("bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        b = bands[0]
        return {
            "scale": b.get("raster:scale", ef.get("raster:scale")),
            "offset": b.get("raster:offset", ef.get("raster:offset")),
            "nodata": b.get("nodata", ef.get("nodata")),
        }
    return {
        "scale": ef.get("raster:scale"),
        "offset": ef.get("raster:offset"),
        "nodata": ef.get("nodata"),
    }


def _nodata_value(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        return float("nan") if v.lower() == "nan" else float(v)
    return float(v)


def _row_get(row: Any, key: str, default: Any = None) -> Any:
    try:
        v = row[key]
    except (KeyError, IndexError, TypeError):
        return default
    return default if v is None else v


def _empty(
    tile_id: str, n_bands: int, size_px: int, status: str, meta: Mapping[str, Any], **extra: Any
) -> Patch:
    """``Patch.empty`` without squeezing ``meta`` through keyword arguments."""
    p = Patch.empty(tile_id, n_bands, size_px, status)  # type: ignore[arg-type]
    p.meta = {**meta, **extra}
    return p


def _tile_rows(tiles: Any) -> list[Any]:
    if hasattr(tiles, "iterrows"):  # (Geo)DataFrame
        return [r for _, r in tiles.iterrows()]
    if isinstance(tiles, Mapping) or (hasattr(tiles, "index") and hasattr(tiles, "to_dict")):
        return [tiles]  # a single row (dict / pandas Series)
    return list(tiles)


@dataclasses.dataclass(frozen=True)
class _Filter:
    composite: str
    cloudy_pct: float | None  # S2 only; None: no cloud-cover filter
    orbit: str | None  # S1 only: ASCENDING | DESCENDING | None
    fill_value: float = 0.0  # data value of pixels without a valid observation
    use_float_linear: bool = True  # S1: False = the assets hold dB (converted to linear power)


@dataclasses.dataclass(frozen=True)
class _Tile:
    tile_id: str
    epsg: int
    x0: float
    y0: float
    size_px: int
    scale_m: float
    footprint: Any  # shapely geometry in EPSG:4326

    @classmethod
    def from_row(cls, row: Any) -> "_Tile":
        tid = str(row["tile_id"])
        epsg, size, scale = int(row["utm_epsg"]), int(row["size_px"]), float(row["scale_m"])
        x0, y0 = float(row["x0"]), float(row["y0"])
        fp = _row_get(row, "geometry")
        if fp is None or getattr(fp, "is_empty", True):
            import pyproj

            T = size * scale
            tr = pyproj.Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
            xs, ys = tr.transform([x0, x0 + T, x0 + T, x0], [y0 - T, y0 - T, y0, y0])
            fp = shapely.Polygon(list(zip(xs, ys)))
        return cls(tid, epsg, x0, y0, size, scale, fp)

    def geobox(self):
        from affine import Affine
        from odc.geo.geobox import GeoBox

        return GeoBox(
            (self.size_px, self.size_px),
            Affine(self.scale_m, 0.0, self.x0, 0.0, -self.scale_m, self.y0),
            f"EPSG:{self.epsg}",
        )


def _search_bboxes(footprints: Sequence[Any]) -> list[tuple[float, float, float, float]]:
    """One lon/lat bbox around all footprints, or two (east / west of the anti-meridian)."""
    parts = []
    for g in footprints:
        parts.extend(getattr(g, "geoms", [g]))
    b = np.array([p.bounds for p in parts])
    if b[:, 2].max() - b[:, 0].min() <= 180:
        return [(b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())]
    east = b[(b[:, 0] + b[:, 2]) / 2 >= 0]
    west = b[(b[:, 0] + b[:, 2]) / 2 < 0]
    return [
        (g[:, 0].min(), g[:, 1].min(), g[:, 2].max(), g[:, 3].max()) for g in (east, west) if len(g)
    ]


# --------------------------------------------------------------------------------------------
# the shared odc-stac path
# --------------------------------------------------------------------------------------------


class _OdcStacProvider:
    """Shared fetch logic; subclasses implement :meth:`_find_items`."""

    name = "stac"

    def __init__(
        self,
        specs: Mapping[str, CollectionSpec],
        *,
        max_workers: int = 4,
        cloudy_pct: float | None = 30.0,
        composite: str = "median",
        tile_retries: int = 1,
        patch_url: Callable[[str], str] | None = None,
    ) -> None:
        self.specs = dict(specs)
        self.max_workers = max(1, int(max_workers))
        self.cloudy_pct = None if cloudy_pct is None else float(cloudy_pct)
        self.composite = composite
        self.tile_retries = max(0, int(tile_retries))
        self.patch_url = patch_url
        self._check_composite(composite)

    # ---- validation -------------------------------------------------------------------------

    @staticmethod
    def _check_composite(composite: str) -> None:
        if composite not in COMPOSITES:
            raise ProviderError(f"unknown composite {composite!r}; valid: {list(COMPOSITES)}")

    def _spec(self, modality: str) -> CollectionSpec:
        if modality not in MODALITIES:
            raise ProviderError(f"unknown modality {modality!r}; valid: {list(MODALITIES)}")
        spec = self.specs.get(modality)
        if spec is None:
            raise ProviderError(
                f"{type(self).__name__} has no collection configured for modality {modality!r}; "
                f"configured: {sorted(self.specs)}"
            )
        return spec

    @staticmethod
    def _bands(modality: str, bands: Iterable[str] | None, spec: CollectionSpec) -> list[str]:
        valid = S2_BANDS if modality == "s2" else S1_BANDS
        out = list(valid) if bands is None else [str(b) for b in bands]
        if not out:
            raise ProviderError(f"no bands asked; valid {modality} bands: {list(valid)}")
        bad = [b for b in out if b not in valid]
        if bad:
            raise ProviderError(f"unknown {modality} band(s) {bad}; valid: {list(valid)}")
        if len(set(out)) != len(out):
            raise ProviderError(f"duplicate bands in {out}")
        missing = [b for b in out if b not in spec.assets]
        if missing:
            raise ProviderError(
                f"collection {spec.collection!r} has no asset mapped for band(s) {missing}"
            )
        return out

    def _options(self, modality: str, sensor_options: Mapping[str, Any]) -> _Filter:
        valid = SENSOR_OPTIONS[modality]
        unknown = sorted(set(sensor_options) - set(valid))
        if unknown:
            raise ProviderError(
                f"unknown {modality} sensor option(s) {unknown}; valid: {list(valid)}"
            )
        composite = sensor_options.get("composite", self.composite)
        self._check_composite(composite)
        fill = sensor_options.get("fill_value", 0.0)
        try:
            fill = float(fill)
        except (TypeError, ValueError):
            raise ProviderError(f"fill_value must be a number, got {fill!r}") from None
        if modality != "s2":
            orbit = sensor_options.get("orbit")
            if orbit is not None:
                if str(orbit).upper() not in ORBITS:
                    raise ProviderError(f"unknown orbit {orbit!r}; valid: {list(ORBITS)} or None")
                orbit = str(orbit).upper()
            linear = sensor_options.get("use_float_linear", True)
            if not isinstance(linear, (bool, np.bool_)):
                raise ProviderError(f"use_float_linear must be true or false, got {linear!r}")
            return _Filter(composite=composite, cloudy_pct=None, orbit=orbit, fill_value=fill,
                           use_float_linear=bool(linear))
        cloudy = sensor_options.get("cloudy_pct", self.cloudy_pct)
        if cloudy is not None:
            try:
                cloudy = float(cloudy)
            except (TypeError, ValueError):
                raise ProviderError(
                    f"cloudy_pct must be a number in [0, 100] or None, got {cloudy!r}"
                ) from None
            if not 0 <= cloudy <= 100:
                raise ProviderError(f"cloudy_pct must be in [0, 100] or None, got {cloudy}")
        return _Filter(composite=composite, cloudy_pct=cloudy, orbit=None, fill_value=fill)

    # ---- item discovery (subclasses) --------------------------------------------------------

    def _find_items(
        self,
        spec: CollectionSpec,
        tiles: Sequence[_Tile],
        start: dt.datetime,
        end: dt.datetime,
        flt: _Filter,
    ) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def _keep_item(item, spec: CollectionSpec, start, end, flt: _Filter) -> bool:
        """Window ``[start, end)``, cloud cover (items without the property are kept) and orbit
        direction (``sat:orbit_state``; items without it are dropped when an orbit is asked)."""
        t = _item_time(item)
        if t is None or not (start <= t < end):
            return False
        if flt.cloudy_pct is not None and spec.cloud_cover_property:
            cc = item.properties.get(spec.cloud_cover_property)
            if cc is not None and float(cc) > flt.cloudy_pct:
                return False
        if flt.orbit is not None:
            state = item.properties.get("sat:orbit_state")
            if state is None or str(state).upper() != flt.orbit:
                return False
        return True

    # ---- the contract -----------------------------------------------------------------------

    def fetch_patches(
        self,
        tiles: Any,
        start: str,
        end: str,
        modality: str,
        bands: Iterable[str] | None = None,
        **sensor_options: Any,
    ) -> Iterator[Patch]:
        """Yield one :class:`Patch` per tile row (order of completion). Validation errors
        (modality, bands, composite, options, dates) raise :class:`ProviderError` at call time."""
        spec = self._spec(modality)
        band_list = self._bands(modality, bands, spec)
        flt = self._options(modality, sensor_options)
        cloudy_pct, composite = flt.cloudy_pct, flt.composite
        t0, t1 = _parse_time(start, "start"), _parse_time(end, "end")
        if t1 <= t0:
            raise ProviderError(f"end {end!r} must be after start {start!r} (end is exclusive)")
        rows = _tile_rows(tiles)
        base_meta = {
            "provider": self.name,
            "collection": spec.collection,
            "modality": modality,
            "bands": list(band_list),
            "assets": [spec.assets[b] for b in band_list],
            "start": str(start),
            "end": str(end),
            "composite": composite,
            "cloudy_pct": cloudy_pct,
            "cloud_filter": (
                f"{spec.cloud_cover_property} <= {cloudy_pct:g}"
                if cloudy_pct is not None and spec.cloud_cover_property
                else None
            ),
            "mask": (
                f"{spec.mask_asset} not in {list(SCL_INVALID_CLASSES)}" if spec.mask_asset else None
            ),
            "orbit": flt.orbit,
            "fill_value": flt.fill_value,
            "groupby": "solar_day",
        }
        if modality == "s1":
            base_meta["use_float_linear"] = flt.use_float_linear
            base_meta["s1_source_units"] = "linear sigma0" if flt.use_float_linear else "dB (converted to linear)"
        return self._generate(rows, spec, band_list, t0, t1, flt, base_meta)

    def _generate(self, rows, spec, band_list, t0, t1, flt: _Filter, base_meta):
        composite = flt.composite
        n = len(band_list)
        tiles: list[_Tile] = []
        for i, row in enumerate(rows):
            try:
                tiles.append(_Tile.from_row(row))
            except Exception as exc:  # a malformed row fails alone
                tid = str(_row_get(row, "tile_id", f"row{i}"))
                size = int(_row_get(row, "size_px", 1) or 1)
                yield _empty(
                    tid,
                    n,
                    size,
                    "failed",
                    base_meta,
                    reason=f"bad tile row: {type(exc).__name__}: {exc}",
                )
        if not tiles:
            return
        try:
            items = self._find_items(spec, tiles, t0, t1, flt)
        except Exception as exc:
            log.exception("item search failed")
            for t in tiles:
                yield _empty(
                    t.tile_id,
                    n,
                    t.size_px,
                    "failed",
                    base_meta,
                    reason=f"item search failed: {type(exc).__name__}: {exc}",
                )
            return
        prepared = [(it, shapely_shape(it.geometry) if it.geometry else None) for it in items]

        def work(tile: _Tile) -> Patch:
            return self._fetch_tile(tile, prepared, spec, band_list, composite, base_meta, flt)

        pool = cf.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="stac-fetch")
        try:
            pending: dict[cf.Future, _Tile] = {}
            queue = iter(tiles)
            window = 2 * self.max_workers

            def fill() -> None:
                while len(pending) < window:
                    t = next(queue, None)
                    if t is None:
                        return
                    pending[pool.submit(work, t)] = t

            fill()
            while pending:
                done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    tile = pending.pop(fut)
                    try:
                        patch = fut.result()
                    except Exception as exc:  # pragma: no cover - _fetch_tile catches
                        patch = _empty(
                            tile.tile_id,
                            n,
                            tile.size_px,
                            "failed",
                            base_meta,
                            reason=f"{type(exc).__name__}: {exc}",
                        )
                    yield patch
                fill()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ---- one tile ---------------------------------------------------------------------------

    def _fetch_tile(
        self, tile: _Tile, prepared, spec: CollectionSpec, band_list, composite, base_meta,
        flt: _Filter | None = None,
    ) -> Patch:
        n = len(band_list)
        t_start = time.perf_counter()
        meta = dict(base_meta)
        meta.update(
            {
                "crs": f"EPSG:{tile.epsg}",
                "transform": [tile.scale_m, 0.0, tile.x0, 0.0, -tile.scale_m, tile.y0],
                "size_px": tile.size_px,
                "scale_m": tile.scale_m,
            }
        )
        fp = tile.footprint
        items = [it for it, g in prepared if g is None or g.intersects(fp)]
        items.sort(key=lambda it: (_item_time(it), it.id))
        meta["scene_ids"] = [it.id for it in items]
        meta["image_count"] = len(items)
        meta["synthetic"] = bool(items) and all(
            bool(it.properties.get("synthetic", False)) for it in items
        )
        if not items:
            meta["elapsed_s"] = round(time.perf_counter() - t_start, 4)
            return _empty(
                tile.tile_id, n, tile.size_px, "no_data", meta, reason="no item in the window"
            )
        last_exc: Exception | None = None
        for attempt in range(self.tile_retries + 1):
            try:
                data, valid, extra = self._load_composite(tile, items, spec, band_list, composite, flt)
                break
            except Exception as exc:
                last_exc = exc
                log.warning("tile %s attempt %d failed: %s", tile.tile_id, attempt + 1, exc)
                if attempt < self.tile_retries:
                    time.sleep(0.2 * (attempt + 1))
        else:
            meta["elapsed_s"] = round(time.perf_counter() - t_start, 4)
            return _empty(
                tile.tile_id,
                n,
                tile.size_px,
                "failed",
                meta,
                reason=f"{type(last_exc).__name__}: {last_exc}",
            )
        meta.update(extra)
        meta["elapsed_s"] = round(time.perf_counter() - t_start, 4)
        if not valid.any():
            return _empty(
                tile.tile_id,
                n,
                tile.size_px,
                "no_data",
                meta,
                reason="no valid pixel (all masked or nodata)",
            )
        return Patch(tile.tile_id, data, valid, "ok", meta)

    def _resampling(self, spec: CollectionSpec, band: str) -> str:
        if spec.modality == "s2":
            return "nearest" if S2_NATIVE_RESOLUTION_M.get(band, 10) <= 10 else "bilinear"
        return "bilinear"

    def _load_composite(self, tile: _Tile, items, spec: CollectionSpec, band_list, composite,
                        flt: _Filter | None = None):
        import odc.stac

        fill_value = flt.fill_value if flt is not None else 0.0
        db_to_linear = spec.modality == "s1" and flt is not None and not flt.use_float_linear
        keys = [spec.assets[b] for b in band_list]
        load_keys = keys + ([spec.mask_asset] if spec.mask_asset else [])
        factor = _UNIT_FACTOR[spec.modality]

        # per-item harmonisation (scale / offset / nodata), grouped by identical signature so that
        # one odc-stac load (grouped by solar day) only mixes items that share them
        groups: dict[tuple, list] = {}
        for it in items:
            sig = []
            for b, k in zip(band_list, keys):
                asset = it.assets.get(k)
                if asset is None:
                    raise ProviderError(f"item {it.id} has no asset {k!r} (band {b})")
                rm = _raster_meta(asset)
                scale = spec.default_scale if rm["scale"] is None else float(rm["scale"])
                offset = spec.default_offset if rm["offset"] is None else float(rm["offset"])
                nod = _nodata_value(rm["nodata"])
                if nod is None:
                    nod = _DEFAULT_NODATA[spec.modality]
                sig.append((scale, offset, nod))
            if spec.mask_asset and spec.mask_asset not in it.assets:
                raise ProviderError(f"item {it.id} has no mask asset {spec.mask_asset!r}")
            groups.setdefault(tuple(sig), []).append(it)

        resampling = {k: self._resampling(spec, b) for b, k in zip(band_list, keys)}
        if spec.mask_asset:
            resampling[spec.mask_asset] = "nearest"
        fallback = (
            {"data_type": "uint16", "nodata": 0}
            if spec.modality == "s2"
            else {"data_type": "float32", "nodata": 0}
        )
        stac_cfg = {"*": {"assets": {"*": fallback}}}
        if spec.mask_asset:
            stac_cfg["*"]["assets"][spec.mask_asset] = {"data_type": "uint8", "nodata": 0}
        gbox = tile.geobox()

        times: list[np.ndarray] = []
        stacks: list[np.ndarray] = []
        valids: list[np.ndarray] = []
        harmonization = []
        for sig, group in groups.items():
            ds = odc.stac.load(
                group,
                bands=load_keys,
                geobox=gbox,
                groupby="solar_day",
                resampling=resampling,
                chunks=None,
                pool=None,
                stac_cfg=stac_cfg,
                patch_url=self.patch_url,
                fail_on_error=True,
            )
            nt = ds.sizes.get("time", 0)
            if nt == 0:
                continue
            ok = np.ones((nt, tile.size_px, tile.size_px), dtype=bool)
            vals = np.empty((nt, len(keys), tile.size_px, tile.size_px), dtype=np.float32)
            for i, (k, (scale, offset, nod)) in enumerate(zip(keys, sig)):
                raw = np.asarray(ds[k].values)
                if raw.shape[1:] != (tile.size_px, tile.size_px):
                    raise ProviderError(
                        f"odc-stac returned {raw.shape} for {k}, expected "
                        f"{(tile.size_px, tile.size_px)}"
                    )
                rawf = raw.astype(np.float64)
                ok &= np.isfinite(rawf)
                if nod is not None:
                    ok &= ~np.isnan(rawf) if math.isnan(nod) else rawf != nod
                harmonized = (rawf * scale + offset) * factor
                if db_to_linear:  # dB -> linear sigma0 power, per observation, before compositing
                    harmonized = np.power(10.0, harmonized / 10.0)
                vals[:, i] = harmonized.astype(np.float32)
            if spec.mask_asset:
                scl = np.asarray(ds[spec.mask_asset].values)
                ok &= ~np.isin(scl, SCL_INVALID_CLASSES)
            times.append(np.asarray(ds["time"].values))
            stacks.append(vals)
            valids.append(ok)
            harmonization.append(
                {
                    "items": [it.id for it in group],
                    "bands": {
                        b: {
                            "scale": s,
                            "offset": o,
                            "nodata": nd if nd is None or not math.isnan(nd) else "nan",
                        }
                        for b, (s, o, nd) in zip(band_list, sig)
                    },
                    "unit_factor": factor,
                }
            )

        size = tile.size_px
        if not stacks:
            return (
                np.zeros((len(keys), size, size), np.float32),
                np.zeros((size, size), bool),
                {"n_dates": 0, "harmonization": harmonization, "resampling": resampling},
            )
        tcoord = np.concatenate(times)
        order = np.argsort(tcoord, kind="stable")
        vals = np.concatenate(stacks)[order]
        ok = np.concatenate(valids)[order]
        valid = ok.any(axis=0)
        if composite == "median":
            # NaN for invalid observations; pixels without any valid one keep their raw values
            # (zeroed below) so that nanmedian never sees an all-NaN slice
            masked = np.where((ok | ~valid[None])[:, None], vals, np.nan)
            data = np.nanmedian(masked, axis=0).astype(np.float32)
        else:  # mosaic: latest valid observation on top
            data = np.zeros((len(keys), size, size), np.float32)
            for t in range(vals.shape[0]):
                np.copyto(data, vals[t], where=ok[t][None])
        data[~np.isfinite(data)] = 0.0
        data = np.where(valid[None], data, np.float32(fill_value)).astype(np.float32)
        dates = sorted({str(np.datetime_as_string(t, unit="D")) for t in tcoord})
        extra = {
            "n_dates": int(vals.shape[0]),
            "dates": dates,
            "valid_fraction": float(valid.mean()),
            "valid_obs_mean": float(ok.sum(axis=0).mean()),
            "harmonization": harmonization,
            "resampling": resampling,
        }
        return data, valid, extra

    def stats(self) -> dict[str, Any]:
        """Operational settings that do not shape the pixels (kept out of ``describe()``, which
        feeds store fingerprints): the fetch thread pool size."""
        return {"config": {"max_workers": self.max_workers, "tile_retries": self.tile_retries}}

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "collections": {m: s.describe() for m, s in self.specs.items()},
            "cloudy_pct": self.cloudy_pct,
            "composite": self.composite,
            "composites": list(COMPOSITES),
            "groupby": "solar_day",
            "scl_invalid_classes": list(SCL_INVALID_CLASSES),
            "resampling": "nearest for 10 m S2 bands and SCL, bilinear for 20/60 m S2 and S1",
            "tile_retries": self.tile_retries,
            "units": {"s2": "(DN*scale+offset)*10000", "s1": "linear sigma0 (DN*scale+offset)"},
        }


# --------------------------------------------------------------------------------------------
# static catalog
# --------------------------------------------------------------------------------------------


class LocalStacProvider(_OdcStacProvider):
    """Static local STAC catalog (pystac), items filtered in Python.

    Defaults fit :mod:`rs_embed_pipeline.providers.synthetic` (collections
    ``synthetic-s2-l2a`` / ``synthetic-s1-grd``, Earth Search C1 asset names); pass
    ``s2_collection=None`` or ``s1_collection=None`` to disable a modality, ``s2_assets`` /
    ``s1_assets`` to remap band -> asset key.
    """

    name = "local_stac"

    def __init__(
        self,
        catalog_path: str | Path,
        *,
        s2_collection: str | None = "synthetic-s2-l2a",
        s1_collection: str | None = "synthetic-s1-grd",
        s2_assets: Mapping[str, str] | None = None,
        s1_assets: Mapping[str, str] | None = None,
        mask_asset: str | None = "scl",
        max_workers: int = 4,
        cloudy_pct: float | None = 30.0,
        composite: str = "median",
        tile_retries: int = 0,
    ) -> None:
        super().__init__(
            collection_specs(s2_collection, s1_collection, s2_assets, s1_assets, mask_asset),
            max_workers=max_workers,
            cloudy_pct=cloudy_pct,
            composite=composite,
            tile_retries=tile_retries,
        )
        self.catalog_path = Path(catalog_path)
        self._items: dict[str, list[Any]] | None = None
        self._lock = threading.Lock()

    def _all_items(self) -> dict[str, list[Any]]:
        with self._lock:
            if self._items is None:
                import pystac

                if not self.catalog_path.exists():
                    raise ProviderError(f"STAC catalog not found: {self.catalog_path}")
                cat = pystac.read_file(str(self.catalog_path))
                by_coll: dict[str, list[Any]] = {}
                for it in cat.get_items(recursive=True):
                    it.make_asset_hrefs_absolute()
                    by_coll.setdefault(it.collection_id or "", []).append(it)
                self._items = by_coll
            return self._items

    def _find_items(self, spec, tiles, start, end, flt):
        items = self._all_items().get(spec.collection, [])
        bboxes = [shapely_box(*b) for b in _search_bboxes([t.footprint for t in tiles])]
        out = []
        for it in items:
            if not self._keep_item(it, spec, start, end, flt):
                continue
            if it.geometry is not None:
                g = shapely_shape(it.geometry)
                if not any(g.intersects(b) for b in bboxes):
                    continue
            out.append(it)
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["catalog_path"] = str(self.catalog_path)
        return d


# --------------------------------------------------------------------------------------------
# STAC API
# --------------------------------------------------------------------------------------------


class StacProvider(_OdcStacProvider):
    """STAC API search (pystac-client) + odc-stac reads.

    Default: Earth Search v1 ``sentinel-2-c1-l2a`` (assets ``coastal .. swir22, scl``, scale /
    offset from each item's ``raster:bands``). ``s1_collection`` (+ ``s1_assets``) enables S1;
    that collection must serve linear sigma0 power (Earth Search's ``sentinel-1-grd`` is
    uncalibrated DN and therefore not a default). ``patch_url`` signs / rewrites asset hrefs
    (e.g. ``planetary_computer.sign``). ``rio_config`` goes to ``odc.stac.configure_rio``
    (cloud defaults on). Searches use ``bbox`` (one around all tiles of the call, two across the
    anti-meridian), ``datetime`` ``start/end`` made end-exclusive (end - 1 microsecond, then a
    strict filter in Python), and for S2 ``query={"eo:cloud_cover": {"lte": cloudy_pct}}``.
    """

    name = "stac"

    def __init__(
        self,
        api_url: str = "https://earth-search.aws.element84.com/v1",
        collection: str | None = "sentinel-2-c1-l2a",
        *,
        s1_collection: str | None = None,
        s2_assets: Mapping[str, str] | None = None,
        s1_assets: Mapping[str, str] | None = None,
        mask_asset: str | None = "scl",
        max_workers: int = 4,
        cloudy_pct: float | None = 30.0,
        composite: str = "median",
        tile_retries: int = 1,
        search_retries: int = 2,
        page_size: int = 100,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        patch_url: Callable[[str], str] | None = None,
        rio_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            collection_specs(collection, s1_collection, s2_assets, s1_assets, mask_asset),
            max_workers=max_workers,
            cloudy_pct=cloudy_pct,
            composite=composite,
            tile_retries=tile_retries,
            patch_url=patch_url,
        )
        self.api_url = api_url
        self.search_retries = max(0, int(search_retries))
        self.page_size = int(page_size)
        self.headers = dict(headers or {})
        self.timeout = float(timeout)
        self.rio_config = dict(rio_config or {})
        self._client = None
        self._lock = threading.Lock()
        self._rio_configured = False

    def _get_client(self):
        with self._lock:
            if not self._rio_configured:
                import odc.stac

                odc.stac.configure_rio(cloud_defaults=True, **self.rio_config)
                self._rio_configured = True
            if self._client is None:
                import pystac_client

                self._client = pystac_client.Client.open(
                    self.api_url, headers=self.headers or None, timeout=self.timeout
                )
            return self._client

    def _find_items(self, spec, tiles, start, end, flt):
        end_incl = end - dt.timedelta(microseconds=1)
        query = None
        if flt.cloudy_pct is not None and spec.cloud_cover_property:
            query = {spec.cloud_cover_property: {"lte": flt.cloudy_pct}}
        if flt.orbit is not None:
            query = {**(query or {}), "sat:orbit_state": {"eq": flt.orbit.lower()}}
        found: dict[str, Any] = {}
        for bbox in _search_bboxes([t.footprint for t in tiles]):
            last: Exception | None = None
            for attempt in range(self.search_retries + 1):
                try:
                    client = self._get_client()
                    search = client.search(
                        collections=[spec.collection],
                        bbox=list(bbox),
                        datetime=[start, end_incl],
                        query=query,
                        limit=self.page_size,
                    )
                    for it in search.items():
                        found.setdefault(it.id, it)
                    last = None
                    break
                except Exception as exc:
                    last = exc
                    log.warning("STAC search attempt %d failed: %s", attempt + 1, exc)
                    if attempt < self.search_retries:
                        time.sleep(0.5 * (attempt + 1))
            if last is not None:
                raise last
        return [it for it in found.values() if self._keep_item(it, spec, start, end, flt)]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            {
                "api_url": self.api_url,
                "page_size": self.page_size,
                "patch_url": getattr(self.patch_url, "__qualname__", None),
            }
        )
        return d
