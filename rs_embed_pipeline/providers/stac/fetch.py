"""The fetch path both STAC providers share: validation, item filtering, blocks, patches."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import Any, TypedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import shapely
from shapely.geometry import shape as shapely_shape

from rs_embed_pipeline.core.vocabulary import COMPOSITES, MODALITIES, S1_BANDS, S2_BANDS

from ..base import Patch, ProviderError, Tile, tile_rows
from ..blocks import DEFAULT_MAX_BLOCK_PX, Block, group_blocks
from ..catalogs import FALLBACK_PROPERTY, known_gaps, s1_backscatter, scene_gap
from ..gdal_env import gdal_options
from ..sensor_options import SensorOptions, parse_composite
from .compositing import composite_box, cut_tile, own_planes
from .items import item_time, kept_item_time, parse_time, resolve_patch_url, usable_items
from .legacy import LegacyOffsetCheck, latest_sequences
from .reads import BlockReader
from .specs import SCL_INVALID_CLASSES, CollectionSpec
from .stack import S2_CLAMP, SceneStack

log = logging.getLogger(__name__)


class ReadOptions(TypedDict, total=False):
    """Read options every STAC provider takes (their defaults: :class:`OdcStacProvider`)."""

    max_workers: int
    cloudy_pct: float | None
    composite: str
    max_block_px: int
    fallback_collection: str | None


class RemoteReadOptions(ReadOptions, total=False):
    """:class:`ReadOptions` plus those of assets read over HTTP (a STAC API's)."""

    patch_url: Callable[[str], str] | str | None
    rio_config: Mapping[str, Any] | None


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


class OdcStacProvider:
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
        fallback_collection: str | None = None,
    ) -> None:
        self.specs = dict(specs)
        self.fallback_collection = fallback_collection or None
        primary = self.specs["s2"].collection if "s2" in self.specs else None
        if self.fallback_collection is not None and self.fallback_collection == primary:
            raise ProviderError(f"fallback_collection {fallback_collection!r} is the S2 collection itself; give "
                                "another collection (e.g. Earth Search's legacy 'sentinel-2-l2a'), or None")
        patch_url = resolve_patch_url(patch_url)
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
        self._legacy = LegacyOffsetCheck()
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
                    ". S1 through STAC needs an S1 collection (s1_collection): Planetary Computer's "
                    "sentinel-1-rtc (gamma0 RTC, the planetary-computer preset's) or one of calibrated "
                    "linear sigma0; Earth Search has none: use the Earth Engine provider for S1, or no "
                    "model that embeds S1"
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

    def _options(self, modality: str, options: SensorOptions | None, sensor_options: Mapping[str, Any]) -> SensorOptions:
        """``options`` as parsed already, or the keywords parsed over this provider's defaults."""
        return SensorOptions.for_fetch(modality, options, sensor_options,
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

    def _fallback_items(self, spec: CollectionSpec, tiles: Sequence[Tile], start: dt.datetime, end: dt.datetime,
                        flt: SensorOptions) -> list[Any]:
        """S2 items of ``fallback_collection`` inside the documented gaps of the S2 collection
        (:func:`..catalogs.known_gaps`, e.g. Earth Search C1's Nov 2016 - Nov 2019 and 2022) that
        overlap ``[start, end)``, each marked with :data:`..catalogs.FALLBACK_PROPERTY` (the gap's
        reason); none without a fallback collection or outside the gaps (no scene is taken twice)."""
        if spec.modality != "s2" or not self.fallback_collection:
            return []
        fallback = dataclasses.replace(spec, collection=self.fallback_collection)
        out: list[Any] = []
        for a, b, why in known_gaps(spec.collection):
            lo, hi = max(start, parse_time(a, "gap start")), min(end, parse_time(b, "gap end"))
            if lo >= hi:
                continue
            for it in self._find_items(fallback, tiles, lo, hi, flt):
                it = it.clone()
                it.properties[FALLBACK_PROPERTY] = why
                out.append(it)
        return out

    # ---- the contract -----------------------------------------------------------------------

    def fetch_patches(
        self,
        tiles: Any,
        start: str,
        end: str,
        modality: str,
        bands: Iterable[str] | None = None,
        *,
        options: SensorOptions | None = None,
        **sensor_options: Any,
    ) -> Iterator[Patch]:
        """Yield one :class:`Patch` per tile row (order of completion). Sensor options: ``options``
        (parsed, e.g. by the imagery resource) or keywords (parsed here), not both. Validation errors
        (modality, bands, composite, options, dates) raise :class:`ProviderError` at call time."""
        spec = self._spec(modality)
        band_list = self._bands(modality, bands, spec)
        flt = self._options(modality, options, sensor_options)
        cloudy_pct, composite = flt.cloudy_pct, flt.composite
        if flt.cloud_mask == "cloud_score_plus":
            raise ProviderError("cloud_mask 'cloud_score_plus' is Earth Engine's Cloud Score+ "
                                "(GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED), which no STAC catalog serves; "
                                "valid for the STAC providers: 'scl', 'none'")
        if flt.cloud_mask == "none" and spec.mask_asset:
            spec = dataclasses.replace(spec, mask_asset=None)  # the scene filter only: SCL not read
        t0, t1 = parse_time(start, "start"), parse_time(end, "end")
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
        if modality == "s2" and self.fallback_collection:
            base_meta["fallback_collection"] = self.fallback_collection
        if modality == "s2":
            base_meta["cloud_mask"] = flt.cloud_mask if spec.mask_asset or flt.cloud_mask == "none" else (
                f"{flt.cloud_mask} (collection {spec.collection!r} has no SCL asset configured: not applied)")
            base_meta["clamp"] = S2_CLAMP
        if modality == "s1":
            base_meta["use_float_linear"] = flt.use_float_linear
            backscatter = s1_backscatter(spec.collection)
            base_meta["s1_backscatter"] = backscatter
            base_meta["s1_source_units"] = (("linear sigma0" if backscatter == "sigma0" else "linear gamma0 (RTC)")
                                            if flt.use_float_linear else "dB (converted to linear)")
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
            items = self._find_items(spec, tiles, t0, t1, flt) + self._fallback_items(spec, tiles, t0, t1, flt)
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
        items, dropped = usable_items(items, spec, band_list)
        corrections: list[tuple[Any, dict[str, Any]]] = []
        if spec.modality == "s2":
            # one observation per legacy scene; legacy offset flags checked against the pixels
            items, superseded = latest_sequences(items)
            try:
                # the collection's own SCL decides the check, whatever the cloud_mask
                items, refused, corrections = self._legacy.check(items, self.specs["s2"], self.patch_url,
                                                                 self.gdal_options)
            except Exception as exc:
                log.exception("legacy offset check failed")
                for t in tiles:
                    yield _empty(t.tile_id, n, t.size_px, "failed", base_meta,
                                 reason=f"legacy offset check failed: {type(exc).__name__}: {exc}")
                return
            dropped = [*dropped, *superseded, *refused]
        items = sorted(items, key=lambda it: (item_time(it), it.id))
        prepared = [(it, shapely_shape(it.geometry) if it.geometry else None) for it in items]
        # Blocks one after the other (memory: one block's stack at a time); the reads inside a
        # block run on the thread pool (odc-stac ``pool``).
        for block in group_blocks(tiles, self.max_block_px):
            yield from self._fetch_block(block, prepared, spec, band_list, flt, base_meta, dropped, corrections)

    # ---- one block --------------------------------------------------------------------------

    def _fetch_block(
        self, block: Block, prepared, spec: CollectionSpec, band_list, flt: SensorOptions, base_meta,
        dropped: Sequence[tuple[Any, dict[str, str]]] = (),
        corrections: Sequence[tuple[Any, dict[str, Any]]] = (),
    ) -> Iterator[Patch]:
        """Read the block once, composite it once, cut its tiles (see :mod:`..blocks`)."""
        n = len(band_list)
        t_start = time.perf_counter()
        fp_block = shapely.union_all([t.footprint for t in block.tiles])
        block_items = [it for it, g in prepared if g is None or g.intersects(fp_block)]
        tile_items: dict[str, list[Any]] = {}
        for t in block.tiles:
            tile_items[t.tile_id] = [
                it for it, g in prepared if (g is None or g.intersects(t.footprint))
            ]

        gap_logged: list[bool] = []  # one warning per block

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
            days = {kept_item_time(it).date() for it in its}
            gap = scene_gap(spec.collection, spec.modality, base_meta["start"], base_meta["end"],
                            (parse_time(base_meta["end"], "end") - parse_time(base_meta["start"], "start")).days,
                            len(days))
            meta["found_scenes"] = len(days)
            if gap is not None:
                meta["scene_gap"] = gap
                if not gap_logged:
                    log.warning("tile %s: %d scene dates in %s .. %s, %d expected: %s", tile.tile_id,
                                len(days), base_meta["start"], base_meta["end"], gap["expected_scenes"],
                                gap["reason"])
                    gap_logged.append(True)
            gone = [d for it, d in dropped if it.geometry is None
                    or shapely_shape(it.geometry).intersects(tile.footprint)]
            if gone:
                meta["dropped_items"] = gone
            fallback = [{"id": it.id, "collection": it.collection_id, "reason": it.properties[FALLBACK_PROPERTY]}
                        for it in its if FALLBACK_PROPERTY in it.properties]
            if fallback:
                meta["fallback_scenes"] = fallback
            mine = {it.id for it in its}
            checked = [r for it, r in corrections if it.id in mine]
            if checked:
                meta["offset_checks"] = checked
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
                mine = own_planes(stack, block, t, tile_items[t.tile_id])
                if mine is not None:
                    rows, cols = block.box(t)
                    own[t.tile_id] = composite_box(stack, flt, rows, cols, mine)
            composite = composite_box(stack, flt, rows=slice(None), cols=slice(None), in_place=True)
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
            data, valid, extra = cut_tile(stack, composite, block, t, tile_items[t.tile_id],
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

    # ---- loading: every scene asset once per block ------------------------------------------

    def _load_block(self, block: Block, items, spec: CollectionSpec, band_list, flt: SensorOptions) -> SceneStack:
        """Every asset of every scene once over the block (:class:`.reads.BlockReader`)."""
        self._configure_rio()
        return BlockReader(self.patch_url, self.gdal_options, self.max_workers).load(block, items, spec, band_list, flt)

    def _configure_rio(self) -> None:
        """GDAL options of :mod:`..gdal_env` (+ ``rio_config`` overrides), once per provider."""
        with self._rio_lock:
            if not self._rio_configured:
                import odc.stac  # heavy (dask, xarray): imported on the first read

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
        out: dict[str, Any] = {
            "provider": self.name,
            "collections": {m: s.describe() for m, s in self.specs.items()},
            "cloudy_pct": self.cloudy_pct,
            "composite": self.composite,
            "composites": list(COMPOSITES),
            "groupby": "solar_day",
            "scl_invalid_classes": list(SCL_INVALID_CLASSES),
            "cloud_masks": {"scl": "SCL asset classes above invalid (default)", "none": "no per-pixel mask",
                            "cloud_score_plus": "refused (Earth Engine only)"},
            "s2_clamp": S2_CLAMP,
            "legacy_earth_search": "one item per scene (highest sequence); earthsearch:boa_offset_applied "
                                   "false with baseline >= 04.00 checked against the pixels",
            "resampling": "nearest for every band and SCL (as Earth Engine's default)",
            "block_reads": "tiles of every size cut from one read and composite per block",
            "units": {"s2": "(DN*scale+offset)*10000", "s1": "linear sigma0 (DN*scale+offset)"},
        }
        if self.fallback_collection:  # only when set: the stores built without one keep their fingerprint
            out["fallback_collection"] = self.fallback_collection
        return out
