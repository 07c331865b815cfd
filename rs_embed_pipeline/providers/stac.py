"""STAC providers: odc-stac reads, one code path for a static catalog and a STAC API.

* :class:`LocalStacProvider` reads a static catalog (``catalog.json``, e.g. the synthetic one from
  :mod:`rs_embed_pipeline.providers.local_catalogs.synthetic`); items are filtered in Python.
* :class:`StacProvider` searches a STAC API with pystac-client (default: Element 84 Earth Search,
  Sentinel-2 L2A collection 1).

Per tile (one row of the tile_grid GeoDataFrame) and time window ``[start, end)``:

1. items intersecting the tile footprint, datetime in ``[start, end)``; S2: ``eo:cloud_cover <=
   cloudy_pct`` (``cloudy_pct=None``: no filter); S1: ``sat:orbit_state`` == ``orbit``
   (ASCENDING | DESCENDING, None: both). Sensor options, as for the GEE provider: S2
   ``composite``, ``cloudy_pct``, ``fill_value``; S1 ``composite``, ``orbit``, ``use_float_linear``,
   ``fill_value``;
2. block reads (:mod:`.blocks`): the tiles of a call are grouped into blocks of adjacent tiles of
   one pixel lattice (UTM ``EPSG:utm_epsg``, ``scale_m`` pixels), whatever their sizes; every
   asset of every scene is read once per block on the block's grid -- windowed rasterio reads at
   native resolution when the grids nest (:mod:`.rio_read`, a thread pool of ``max_workers``),
   else ``odc.stac.load`` -- planes grouped by solar day (as ``groupby="solar_day"``); every
   band and SCL **nearest** (Earth Engine's default, so every provider resamples alike: 20 / 60
   m bands were bilinear before the block reads); the composite is computed once per block and
   each tile is cut out of it (a tile whose pixels a scene outside its footprint touches is
   composited from its own scenes, as a single-tile read);
3. harmonization to provider units per item from its ``raster:bands`` ``scale`` / ``offset``:
   S2 ``DN_out = (DN * scale + offset) * 10000`` (Earth Search C1: ``scale=0.0001``,
   ``offset=-0.1`` for processing baseline >= 04.00, read from each item, never hard-coded);
   S1 ``DN * scale + offset``: linear sigma0 power, or (``use_float_linear=False``) dB, converted per
   observation to linear power ``10 ** (dB / 10)`` before compositing;
4. invalid observations: raw value equal to the asset nodata or non-finite in any asked band,
   and for S2 SCL in {0 (nodata), 3 (cloud shadow), 8, 9 (cloud), 10 (cirrus)};
5. composite over time of valid observations (:mod:`.composite`): ``median`` (per band, equal
   to ``np.nanmedian`` bit for bit, without it) or ``mosaic``
   (latest valid observation on top); ``valid`` = at least one valid observation; invalid
   pixels are ``fill_value`` (default 0) in ``data``.

A tile whose window has no item, or no valid pixel, is ``no_data``; an exception while loading a
block makes the tiles of that block ``failed`` (``meta["reason"]``) and the other blocks go on.
A block is read once per call: the patches asset owns tile retries (docs/architecture.md, "Who
owns each failure"); the STAC API client retries only its search requests (``search_retries``,
exponential backoff with jitter). Sensor options are parsed by :mod:`.sensor_options`.
Blocks are read one after the other (memory: one block, at most ``max_block_px`` + one tile a
side, x bands x dates); tiles are yielded block by block. GDAL's options for cloud reads are set in
one place (:mod:`.gdal_env`) and reported by ``stats()``.
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
from typing import Any, TypedDict, Unpack
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import box as shapely_box
from shapely.geometry import shape as shapely_shape

from rs_embed_pipeline.core.timeparse import parse_utc

from rs_embed_pipeline.core.vocabulary import COMPOSITES, MODALITIES, S1_BANDS, S2_BANDS, UNIT_FACTOR

from .base import Patch, ProviderError, Tile, backoff_s, tile_rows
from .blocks import DEFAULT_MAX_BLOCK_PX, Block, group_blocks
from .catalogs import EARTH_SEARCH_S2_ASSETS, S1_ASSETS, S2_DEFAULT_SCALE, check_s1_collection, s2_offset
from .composite import MedianRanks, mosaic_composite
from .gdal_env import gdal_options
from .rio_read import read_nested
from .sensor_options import SensorOptions, parse_composite

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
SEARCH_BACKOFF_S = 0.5  # first wait before a STAC API search is retried (then x2 per attempt, jitter)

# SCL classes treated as invalid: 0 no data, 1 saturated / defective, 3 cloud shadow,
# 8 / 9 cloud, 10 thin cirrus
SCL_INVALID_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)

DEFAULT_S1_ASSETS = S1_ASSETS
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
        default_scale=S2_DEFAULT_SCALE,
        default_offset=0.0,
    )


def s1_spec(collection: str, assets: Mapping[str, str] | None = None) -> CollectionSpec:
    try:
        check_s1_collection(collection)
    except ValueError as exc:
        raise ProviderError(str(exc)) from None
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
        t = t.replace(tzinfo=dt.UTC)
    return t


def _kept_item_time(item) -> dt.datetime:
    """The time of an item that ``_keep_item`` kept (it drops the items without one)."""
    t = _item_time(item)
    if t is None:
        raise ProviderError(f"item {item.id} has no datetime")
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


def _raster_dtype(asset) -> str | None:
    """``data_type`` of a single-band asset as declared (raster v1 or STAC 1.1), or None."""
    ef = asset.extra_fields
    for key in ("raster:bands", "bands"):
        rb = ef.get(key)
        if isinstance(rb, list) and rb and isinstance(rb[0], Mapping) and rb[0].get("data_type"):
            return str(rb[0]["data_type"])
    return ef.get("data_type")


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


def _search_bboxes(footprints: Sequence[Any]) -> list[tuple[float, float, float, float]]:
    """One lon/lat bbox around all footprints, or two (east / west of the anti-meridian)."""
    parts: list[Any] = []
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


#: ``patch_url`` names that resolve to a signing function
PATCH_URL_SIGNERS: dict[str, tuple[str, str, str]] = {
    # name: (module, function, pip package)
    "planetary_computer": ("planetary_computer", "sign", "planetary-computer"),
}


def _resolve_patch_url(patch_url: Any) -> Callable[[str], str] | None:
    """A callable as is; a name of :data:`PATCH_URL_SIGNERS` -> that signing function."""
    if patch_url is None or callable(patch_url):
        return patch_url
    if isinstance(patch_url, str) and patch_url in PATCH_URL_SIGNERS:
        module, fn, package = PATCH_URL_SIGNERS[patch_url]
        try:
            import importlib

            return getattr(importlib.import_module(module), fn)
        except ImportError:
            raise ProviderError(
                f"patch_url {patch_url!r} needs the {package!r} package (pip install {package})"
            ) from None
    raise ProviderError(
        f"patch_url must be a callable or one of {sorted(PATCH_URL_SIGNERS)}, got {patch_url!r}"
    )


def _valid_values(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """Finite and not ``nodata`` (compared in the raw dtype when the value fits it exactly)."""
    if np.issubdtype(raw.dtype, np.integer):
        if nodata is None or math.isnan(nodata):
            return np.ones(raw.shape, bool)
        info = np.iinfo(raw.dtype)
        if float(nodata).is_integer() and info.min <= nodata <= info.max:
            return raw != raw.dtype.type(int(nodata))
        return np.ones(raw.shape, bool)
    ok = np.isfinite(raw)
    if nodata is not None:
        ok &= ~np.isnan(raw) if math.isnan(nodata) else raw != nodata
    return ok


class _Stack:
    """One block's loaded scenes: ``raw[asset] [T, H, W]`` in the assets' dtype, planes in time
    order (``slices``: (time, signature group, item ids) per plane), ``ok [T, H, W]``."""

    def __init__(self, spec, band_list, keys, sigs, resampling, flt) -> None:
        self.spec, self.band_list, self.keys, self.sigs = spec, list(band_list), keys, sigs
        self.resampling, self.flt = resampling, flt
        self.slices: list[tuple[Any, int, frozenset]] = []
        self.raw: dict[str, np.ndarray] = {}
        self.ok: np.ndarray | None = None
        self.nobs: np.ndarray | None = None  # valid observations per pixel (computed once)
        self.reader = "none"

    @property
    def loaded_ok(self) -> np.ndarray:
        """``ok`` once the block is loaded (tiles are cut only from a loaded stack)."""
        if self.ok is None:
            raise RuntimeError("the block's stack is not loaded yet")
        return self.ok

    def lut(self, band: int, sel: Sequence[int]) -> np.ndarray | None:
        """Provider value of every raw level of band ``band`` (float32, indexed by the raw value)
        when the planes ``sel`` share one harmonization, the asset is 8 / 16-bit unsigned and the
        mapping is non-decreasing (scale >= 0, no dB conversion); else None."""
        raw = self.raw[self.keys[band]]
        if raw.dtype not in (np.uint8, np.uint16):
            return None
        if self.spec.modality == "s1" and not self.flt.use_float_linear:
            return None
        sigs = {self.sigs[self.slices[t][1]][band][:2] for t in sel}
        if len(sigs) != 1:
            return None
        scale, offset = sigs.pop()
        if scale < 0:
            return None
        levels = np.arange(np.iinfo(raw.dtype).max + 1, dtype=np.float64)
        return ((levels * scale + offset) * UNIT_FACTOR[self.spec.modality]).astype(np.float32)

    def harmonized(self, band: int, sel: Sequence[int], rows: slice, cols: slice) -> np.ndarray:
        """Provider units ``(DN * scale + offset) * unit_factor`` (S1 dB -> linear power) of
        band ``band`` for the planes ``sel``, float32 ``[len(sel), h, w]``; the arithmetic is
        float64 per value, as a lookup table for 8 / 16-bit integer assets (same numbers)."""
        factor = UNIT_FACTOR[self.spec.modality]
        db = self.spec.modality == "s1" and not self.flt.use_float_linear
        raw = self.raw[self.keys[band]]
        first = raw[sel[0], rows, cols]
        out = np.empty((len(sel),) + first.shape, np.float32)
        luts: dict[int, np.ndarray] = {}
        for j, t in enumerate(sel):
            gi = self.slices[t][1]
            scale, offset, _ = self.sigs[gi][band]
            plane = raw[t, rows, cols]
            if raw.dtype in (np.uint8, np.uint16) and not db:
                if gi not in luts:
                    levels = np.arange(np.iinfo(raw.dtype).max + 1, dtype=np.float64)
                    luts[gi] = ((levels * scale + offset) * factor).astype(np.float32)
                np.take(luts[gi], plane, out=out[j])
            else:
                h = (plane.astype(np.float64) * scale + offset) * factor
                if db:  # dB -> linear sigma0 power, per observation, before compositing
                    h = np.power(10.0, h / 10.0)
                out[j] = h.astype(np.float32)
        return out


# --------------------------------------------------------------------------------------------
# the shared odc-stac path
# --------------------------------------------------------------------------------------------


class ReadOptions(TypedDict, total=False):
    """Read options every STAC provider takes (their defaults: :class:`_OdcStacProvider`)."""

    max_workers: int
    cloudy_pct: float | None
    composite: str
    max_block_px: int


class RemoteReadOptions(ReadOptions, total=False):
    """:class:`ReadOptions` plus those of assets read over HTTP (a STAC API's)."""

    patch_url: Callable[[str], str] | str | None
    rio_config: Mapping[str, Any] | None


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
        patch_url: Callable[[str], str] | str | None = None,
        max_block_px: int = DEFAULT_MAX_BLOCK_PX,
        rio_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.specs = dict(specs)
        patch_url = _resolve_patch_url(patch_url)
        self.max_block_px = int(max_block_px)
        if self.max_block_px < 1:
            raise ProviderError(f"max_block_px must be a positive pixel count, got {max_block_px!r}")
        self.gdal_options = gdal_options(rio_config)
        self._rio_lock = threading.Lock()
        self._rio_configured = False
        self.max_workers = max(1, int(max_workers))
        self.cloudy_pct = None if cloudy_pct is None else float(cloudy_pct)
        self.composite = composite
        self.patch_url = patch_url
        self._check_composite(composite)

    # ---- validation -------------------------------------------------------------------------

    @staticmethod
    def _check_composite(composite: str) -> None:
        parse_composite(composite)

    def _spec(self, modality: str) -> CollectionSpec:
        if modality not in MODALITIES:
            raise ProviderError(f"unknown modality {modality!r}; valid: {list(MODALITIES)}")
        spec = self.specs.get(modality)
        if spec is None:
            raise ProviderError(
                f"{type(self).__name__} has no collection configured for modality {modality!r}; "
                f"configured: {sorted(self.specs)}"
                + (
                    ". S1 through STAC needs a collection of calibrated linear sigma0 "
                    "(s1_collection); Earth Search has none and Planetary Computer's "
                    "sentinel-1-rtc is gamma0: use the Earth Engine provider for S1, or no model "
                    "that embeds S1"
                    if modality == "s1"
                    else ""
                )
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

    def _options(self, modality: str, sensor_options: Mapping[str, Any]) -> SensorOptions:
        return SensorOptions.parse(modality, sensor_options,
                                   defaults={"composite": self.composite, "cloudy_pct": self.cloudy_pct})

    # ---- item discovery (subclasses) --------------------------------------------------------

    def _find_items(
        self,
        spec: CollectionSpec,
        tiles: Sequence[Tile],
        start: dt.datetime,
        end: dt.datetime,
        flt: SensorOptions,
    ) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def _keep_item(item, spec: CollectionSpec, start, end, flt: SensorOptions) -> bool:
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
        rows = tile_rows(tiles)
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

    def _generate(self, rows, spec, band_list, t0, t1, flt: SensorOptions, base_meta):
        n = len(band_list)
        tiles: list[Tile] = []
        for i, row in enumerate(rows):
            try:
                tiles.append(Tile.from_row(row).with_footprint())
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
        items, dropped = self._usable_items(items, spec, band_list)
        items = sorted(items, key=lambda it: (_item_time(it), it.id))
        prepared = [(it, shapely_shape(it.geometry) if it.geometry else None) for it in items]
        # Blocks one after the other (memory: one block's stack at a time); the reads inside a
        # block run on the thread pool (odc-stac ``pool``).
        for block in group_blocks(tiles, self.max_block_px):
            yield from self._fetch_block(block, prepared, spec, band_list, flt, base_meta, dropped)

    # ---- one block --------------------------------------------------------------------------

    def _fetch_block(
        self, block: Block, prepared, spec: CollectionSpec, band_list, flt: SensorOptions, base_meta,
        dropped: Sequence[tuple[Any, dict[str, str]]] = (),
    ) -> Iterator[Patch]:
        """Read the block once, composite it once, cut its tiles (see :mod:`.blocks`)."""
        n = len(band_list)
        t_start = time.perf_counter()
        fp_block = shapely.union_all([t.footprint for t in block.tiles])
        block_items = [it for it, g in prepared if g is None or g.intersects(fp_block)]
        tile_items: dict[str, list[Any]] = {}
        for t in block.tiles:
            tile_items[t.tile_id] = [
                it for it, g in prepared if (g is None or g.intersects(t.footprint))
            ]

        def tile_meta(tile: Tile) -> dict[str, Any]:
            its = tile_items[tile.tile_id]
            meta = dict(base_meta)
            meta.update(
                {
                    "crs": tile.crs,
                    "transform": tile.transform,
                    "size_px": tile.size_px,
                    "scale_m": tile.scale_m,
                    "scene_ids": [it.id for it in its],
                    "image_count": len(its),
                    "synthetic": bool(its)
                    and all(bool(it.properties.get("synthetic", False)) for it in its),
                    "block": block.describe(),
                }
            )
            gone = [d for it, d in dropped if it.geometry is None
                    or shapely_shape(it.geometry).intersects(tile.footprint)]
            if gone:
                meta["dropped_items"] = gone
            return meta

        with_items = [t for t in block.tiles if tile_items[t.tile_id]]
        for t in block.tiles:
            if not tile_items[t.tile_id]:
                meta = tile_meta(t)
                meta["elapsed_s"] = round(time.perf_counter() - t_start, 4)
                yield _empty(t.tile_id, n, t.size_px, "no_data", meta, reason="no item in the window")
        if not with_items:
            return
        # One attempt: a failed block fails its tiles, and the patches asset (the one owner of
        # tile failures, docs/architecture.md) requests them again with backoff and jitter.
        try:
            stack = self._load_block(block, block_items, spec, band_list, flt)
            # tiles that a scene outside their footprint touches get their own composite,
            # first: the block's composite then sorts the raw planes in place
            own = {}
            for t in with_items:
                mine = self._own_planes(stack, block, t, tile_items[t.tile_id])
                if mine is not None:
                    rows, cols = block.box(t)
                    own[t.tile_id] = self._composite(stack, flt, rows, cols, mine)
            composite = self._composite(stack, flt, rows=slice(None), cols=slice(None), in_place=True)
        except Exception as exc:
            log.warning("block %s failed: %s", block.describe(), exc, exc_info=True)
            for t in with_items:
                meta = tile_meta(t)
                meta["elapsed_s"] = round(time.perf_counter() - t_start, 4)
                yield _empty(t.tile_id, n, t.size_px, "failed", meta, reason=f"{type(exc).__name__}: {exc}")
            return
        elapsed = (time.perf_counter() - t_start) / len(with_items)
        for t in with_items:
            meta = tile_meta(t)
            data, valid, extra = self._cut_tile(stack, composite, block, t, tile_items[t.tile_id],
                                                own.get(t.tile_id))
            meta.update(extra)
            meta["elapsed_s"] = round(elapsed, 4)
            if not valid.any():
                yield _empty(
                    t.tile_id, n, t.size_px, "no_data", meta,
                    reason="no valid pixel (all masked or nodata)",
                )
                continue
            yield Patch(t.tile_id, data, valid, "ok", meta)

    # ---- grouping: items that share harmonization, and their dates ------------------------

    @staticmethod
    def _usable_items(items, spec: CollectionSpec, band_list) -> tuple[list, list[tuple[Any, dict[str, str]]]]:
        """Items holding every asked asset (and the mask); an item missing one is dropped (logged,
        listed in the ``dropped_items`` of the tiles it covers), not the tiles."""
        need = [spec.assets[b] for b in band_list] + ([spec.mask_asset] if spec.mask_asset else [])
        keep, dropped = [], []
        for it in items:
            missing = [k for k in need if k not in it.assets]
            if missing:
                log.warning("item %s has no asset(s) %s: dropped", it.id, missing)
                dropped.append((it, {"id": it.id, "reason": f"no asset(s) {missing}"}))
            else:
                keep.append(it)
        return keep, dropped

    @staticmethod
    def _signature_groups(items, spec: CollectionSpec, band_list) -> list[tuple[tuple, list]]:
        """Items grouped by identical per-band (scale, offset, nodata), in order of first item
        (items sorted by time, id), so that the planes of a group share them. S2 offsets follow
        :func:`.catalogs.s2_offset`; an undeclared nodata is 0 for integer assets and an error for
        float ones (0 is a valid float value)."""
        keys = [spec.assets[b] for b in band_list]
        groups: dict[tuple, list] = {}
        for it in items:
            if spec.modality == "s1":
                try:
                    check_s1_collection(spec.collection, it)
                except ValueError as exc:
                    raise ProviderError(str(exc)) from None
            sig = []
            for b, k in zip(band_list, keys):
                asset = it.assets.get(k)
                if asset is None:
                    raise ProviderError(f"item {it.id} has no asset {k!r} (band {b})")
                rm = _raster_meta(asset)
                scale = spec.default_scale if rm["scale"] is None else float(rm["scale"])
                if spec.modality == "s2":
                    try:
                        offset, _ = s2_offset(it, None if rm["offset"] is None else float(rm["offset"]))
                    except ValueError as exc:
                        raise ProviderError(str(exc)) from None
                else:
                    offset = spec.default_offset if rm["offset"] is None else float(rm["offset"])
                nod = _nodata_value(rm["nodata"])
                if nod is None:
                    dtype = str(_raster_dtype(asset) or "")
                    if dtype.startswith(("float", "cfloat")):
                        raise ProviderError(
                            f"item {it.id} asset {k!r} (band {b}): {dtype} data without a declared "
                            "nodata (raster:bands nodata); declare it (e.g. \"nan\") instead of "
                            "letting 0 mean no data"
                        )
                    nod = _DEFAULT_NODATA[spec.modality]
                sig.append((scale, offset, nod))
            if spec.mask_asset and spec.mask_asset not in it.assets:
                raise ProviderError(f"item {it.id} has no mask asset {spec.mask_asset!r}")
            groups.setdefault(tuple(sig), []).append(it)
        return list(groups.items())

    # ---- loading: every scene asset once per block ------------------------------------------

    def _solar_day_planes(self, block: Block, items, spec: CollectionSpec, band_list):
        """Signature groups and the planes of the block's stack: one per (group, solar day) as
        odc-stac's ``groupby="solar_day"`` (nominal time + whole hours of the block centre's
        longitude), items of a plane in (time, id) order, planes in time order."""
        groups = self._signature_groups(items, spec, band_list)
        lon = float(shapely.union_all([t.footprint for t in block.tiles]).centroid.x)
        shift = dt.timedelta(seconds=int(lon / 15) * 3600)
        day_of = {it.id: (_kept_item_time(it) + shift).date() for it in items}
        planes = []
        for gi, (_, group) in enumerate(groups):
            for day in sorted({day_of[it.id] for it in group}):
                members = [it for it in group if day_of[it.id] == day]
                t = min(_kept_item_time(it) for it in members).astimezone(dt.UTC).replace(tzinfo=None)
                planes.append((np.datetime64(t, "ns"), gi, members))
        order = sorted(range(len(planes)), key=lambda i: planes[i][0])  # stable
        return [sig for sig, _ in groups], [planes[i] for i in order], day_of

    def _load_block(self, block: Block, items, spec: CollectionSpec, band_list, flt: SensorOptions) -> _Stack:
        """Every asset of every scene once over the block: windowed rasterio reads when the grids
        nest (:mod:`.rio_read`), else one odc-stac load per signature group; nearest everywhere."""
        self._configure_rio()
        keys = [spec.assets[b] for b in band_list]
        load_keys = keys + ([spec.mask_asset] if spec.mask_asset else [])
        resampling = {k: "nearest" for k in load_keys}
        sigs, planes, day_of = self._solar_day_planes(block, items, spec, band_list)
        stack = _Stack(spec, band_list, keys, sigs, resampling, flt)
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
        stack.ok = self._valid_mask(stack)
        return stack

    def _fill(self, spec: CollectionSpec, key: str, keys, sig) -> float:
        """The raw value of block pixels that no scene covers: the asset's nodata (SCL: 0)."""
        if key in keys:
            return sig[keys.index(key)][2]
        return 0.0

    def _read_nested(self, block: Block, planes, spec, keys, load_keys, sigs):
        """raw[key] [T, H, W] by windowed reads (thread pool), or None when an asset does not nest."""
        import rasterio

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
                    holes = ~_valid_values(target[t], fill)
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
        import odc.stac

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

    @staticmethod
    def _valid_mask(stack: _Stack) -> np.ndarray:
        """Per observation: raw value not the asset nodata and finite in every asked band, and
        for S2 the SCL class not in :data:`SCL_INVALID_CLASSES`."""
        spec = stack.spec
        first = stack.raw[stack.keys[0]]
        ok = np.ones(first.shape, dtype=bool)
        for t, (_, gi, _) in enumerate(stack.slices):
            for i, k in enumerate(stack.keys):
                nod = stack.sigs[gi][i][2]
                ok[t] &= _valid_values(stack.raw[k][t], nod)
        if spec.mask_asset:
            scl = stack.raw[spec.mask_asset]
            lut = np.ones(256, dtype=bool)
            lut[list(SCL_INVALID_CLASSES)] = False
            if scl.dtype == np.uint8:
                ok &= lut[scl]
            else:
                ok &= ~np.isin(scl, SCL_INVALID_CLASSES)
        return ok

    # ---- compositing ------------------------------------------------------------------------

    def _composite(self, stack: _Stack, flt: SensorOptions, rows: slice, cols: slice,
                   slice_ids: Sequence[int] | None = None, in_place: bool = False) -> np.ndarray:
        """``[C, h, w]`` composite of the box ``rows x cols`` over the chosen planes (all by default).
        ``in_place``: the median may sort the stack's raw planes in place (last use of them)."""
        sel = list(range(len(stack.slices))) if slice_ids is None else list(slice_ids)
        whole = in_place and slice_ids is None and rows == slice(None) and cols == slice(None)
        if stack.ok is None or not sel:
            raise ProviderError("no scene plane loaded for this block")
        ok = stack.ok[sel][:, rows, cols]
        out = np.empty((len(stack.keys),) + ok.shape[1:], np.float32)
        invalid = ~ok.any(axis=0)
        ranks = MedianRanks(ok) if flt.composite == "median" else None
        for i in range(len(stack.keys)):
            lut = stack.lut(i, sel) if ranks is not None else None
            if ranks is not None and lut is not None:  # median of raw integers, converted at the two middle values
                raw = stack.raw[stack.keys[i]]
                raw = raw if whole else raw[sel][:, rows, cols]
                band = ranks.median_raw(raw, lut, flt.fill_value)
                if np.isfinite(lut).all():  # finite levels: the median's empty pixels hold fill
                    out[i] = band
                    continue
            elif ranks is not None:
                band = ranks.median(stack.harmonized(i, sel, rows, cols), flt.fill_value)
            else:
                band = mosaic_composite(stack.harmonized(i, sel, rows, cols), ok, flt.fill_value)
            np.putmask(band, ~np.isfinite(band), np.float32(0))
            np.putmask(band, invalid, np.float32(flt.fill_value))
            out[i] = band
        return out

    @staticmethod
    def _own_planes(stack: _Stack, block: Block, tile: Tile, items) -> list[int] | None:
        """The tile's planes when a plane of scenes outside its footprint has valid pixels in
        its box (the tile is then composited from its own planes), else None."""
        ids = {it.id for it in items}
        mine = [t for t, (_, _, s) in enumerate(stack.slices) if s & ids]
        others = [t for t, (_, _, s) in enumerate(stack.slices) if not s & ids]
        if not mine or not others:
            return None
        rows, cols = block.box(tile)
        return mine if stack.loaded_ok[others][:, rows, cols].any() else None

    def _cut_tile(self, stack: _Stack, composite, block: Block, tile: Tile, items,
                  own: np.ndarray | None = None):
        n, size = len(stack.keys), tile.size_px
        ids = {it.id for it in items}
        mine = [t for t, (_, _, s) in enumerate(stack.slices) if s & ids]
        extra_meta: dict[str, Any] = {"resampling": stack.resampling, "reader": stack.reader}
        if not mine:
            extra_meta.update({"n_dates": 0, "harmonization": self._harmonization(stack, items)})
            return np.zeros((n, size, size), np.float32), np.zeros((size, size), bool), extra_meta
        rows, cols = block.box(tile)
        if own is not None:
            # a scene outside this tile's footprint has pixels here: the tile's composite comes
            # from its own scenes only (what a single-tile read would give)
            data = own
            nobs = stack.loaded_ok[mine][:, rows, cols].sum(axis=0)
        else:  # the block's composite and observation counts hold for this tile as they are
            data = composite[:, rows, cols].copy()
            if stack.nobs is None:
                stack.nobs = stack.loaded_ok.sum(axis=0, dtype=np.int32)
            nobs = stack.nobs[rows, cols]
        valid = nobs > 0
        times = [stack.slices[t][0] for t in mine]
        extra_meta.update(
            {
                "n_dates": len(mine),
                "dates": sorted({str(np.datetime_as_string(t, unit="D")) for t in times}),
                "valid_fraction": float(valid.mean()),
                "valid_obs_mean": float(nobs.mean()),
                "harmonization": self._harmonization(stack, items),
            }
        )
        return data, valid, extra_meta

    @staticmethod
    def _harmonization(stack: _Stack, items) -> list[dict[str, Any]]:
        """Per signature group holding some of ``items``: its items and per-band scale / offset /
        nodata (groups in order of their first item)."""
        group_of = {i: gi for _, gi, ids in stack.slices for i in ids}
        out: dict[int, dict[str, Any]] = {}
        for it in items:
            gi = group_of.get(it.id)
            if gi is None:
                continue
            if gi not in out:
                out[gi] = {
                    "items": [],
                    "bands": {
                        b: {
                            "scale": s,
                            "offset": o,
                            "nodata": nd if nd is None or not math.isnan(nd) else "nan",
                        }
                        for b, (s, o, nd) in zip(stack.band_list, stack.sigs[gi])
                    },
                    "unit_factor": UNIT_FACTOR[stack.spec.modality],
                }
            out[gi]["items"].append(it.id)
        return list(out.values())

    def _configure_rio(self) -> None:
        """GDAL options of :mod:`.gdal_env` (+ ``rio_config`` overrides), once per provider."""
        with self._rio_lock:
            if not self._rio_configured:
                import odc.stac

                # upper-case GDAL names: none collides with configure_rio's own parameters
                options: dict[str, Any] = dict(self.gdal_options)
                odc.stac.configure_rio(cloud_defaults=True, **options)
                self._rio_configured = True

    def stats(self) -> dict[str, Any]:
        """Operational settings that do not shape the pixels (kept out of ``describe()``, which
        feeds store fingerprints): thread pool size, block size and the GDAL options."""
        return {
            "config": {
                "max_workers": self.max_workers,
                "max_block_px": self.max_block_px,
                "gdal": dict(self.gdal_options),
            }
        }

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "collections": {m: s.describe() for m, s in self.specs.items()},
            "cloudy_pct": self.cloudy_pct,
            "composite": self.composite,
            "composites": list(COMPOSITES),
            "groupby": "solar_day",
            "scl_invalid_classes": list(SCL_INVALID_CLASSES),
            "resampling": "nearest for every band and SCL (as Earth Engine's default)",
            "block_reads": "tiles of every size cut from one read and composite per block",
            "units": {"s2": "(DN*scale+offset)*10000", "s1": "linear sigma0 (DN*scale+offset)"},
        }


# --------------------------------------------------------------------------------------------
# static catalog
# --------------------------------------------------------------------------------------------


class LocalStacProvider(_OdcStacProvider):
    """Static local STAC catalog (pystac), items filtered in Python.

    Defaults fit :mod:`rs_embed_pipeline.providers.local_catalogs.synthetic` (collections
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
        **options: Unpack[ReadOptions],
    ) -> None:
        unknown = sorted(set(options) - set(ReadOptions.__annotations__))
        if unknown:  # local files: no URL signing, no HTTP read settings
            raise TypeError(f"LocalStacProvider got unexpected option(s) {unknown}; valid: "
                            f"{', '.join(ReadOptions.__annotations__)}")
        super().__init__(
            collection_specs(s2_collection, s1_collection, s2_assets, s1_assets, mask_asset), **options
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
                if not isinstance(cat, pystac.Catalog):  # a Collection is a Catalog too
                    raise ProviderError(
                        f"{self.catalog_path} is a STAC {type(cat).__name__}, not a catalog or collection"
                    )
                by_coll: dict[str, list[Any]] = {}
                for it in cat.get_items(recursive=True):
                    it.make_asset_hrefs_absolute()
                    by_coll.setdefault(it.collection_id or "", []).append(it)
                self._items = by_coll
            return self._items

    def _find_items(
        self, spec: CollectionSpec, tiles: Sequence[Tile], start: dt.datetime, end: dt.datetime, flt: SensorOptions
    ) -> list[Any]:
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
    (e.g. ``planetary_computer.sign``, or the name ``"planetary_computer"``). ``rio_config``:
    GDAL option overrides (upper-case keys) over :data:`.gdal_env.GDAL_HTTP_OPTIONS`, used by the
    windowed reads and ``odc.stac.configure_rio``. ``max_block_px``: block size (see
    :mod:`.blocks`). Searches use ``bbox`` (one around all tiles of the call, two across the
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
        search_retries: int = 2,
        page_size: int = 100,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        **options: Unpack[RemoteReadOptions],
    ) -> None:
        super().__init__(
            collection_specs(collection, s1_collection, s2_assets, s1_assets, mask_asset), **options
        )
        self.api_url = api_url
        self.search_retries = max(0, int(search_retries))
        self.page_size = int(page_size)
        self.headers = dict(headers or {})
        self.timeout = float(timeout)
        self.rio_config = dict(options.get("rio_config") or {})
        self._client: Any = None  # a pystac_client.Client, opened on first use
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        self._configure_rio()
        with self._lock:
            if self._client is None:
                import pystac_client

                self._client = pystac_client.Client.open(
                    self.api_url, headers=self.headers or None, timeout=self.timeout
                )
            return self._client

    def _find_items(
        self, spec: CollectionSpec, tiles: Sequence[Tile], start: dt.datetime, end: dt.datetime, flt: SensorOptions
    ) -> list[Any]:
        end_incl = end - dt.timedelta(microseconds=1)
        query: dict[str, dict[str, Any]] | None = None
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
                        time.sleep(backoff_s(SEARCH_BACKOFF_S, attempt))
            if last is not None:
                raise last
        return [it for it in found.values() if self._keep_item(it, spec, start, end, flt)]

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["config"]["search_retries"] = self.search_retries  # the client's retries of one search request
        return out

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
