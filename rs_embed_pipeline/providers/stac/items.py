"""STAC items: their times, raster metadata and harmonization, filters, search boxes, URL signing."""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rs_embed_pipeline.core.timeparse import parse_utc

from ..base import ProviderError
from ..catalogs import check_s1_collection, s2_offset
from ..sensor_options import SensorOptions
from .specs import DEFAULT_NODATA, CollectionSpec

log = logging.getLogger(__name__)


def parse_time(v: Any, what: str) -> dt.datetime:
    try:
        return parse_utc(v)
    except ValueError as exc:
        raise ProviderError(f"{what} {exc}") from None


def item_time(item) -> dt.datetime | None:
    t = item.datetime
    if t is None:
        s = item.properties.get("start_datetime")
        if s is None:
            return None
        t = parse_time(s, "start_datetime")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t


def kept_item_time(item) -> dt.datetime:
    """The time of an item that ``keep_item`` kept (it drops the items without one)."""
    t = item_time(item)
    if t is None:
        raise ProviderError(f"item {item.id} has no datetime")
    return t


def raster_meta(asset) -> dict[str, Any]:
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


def raster_dtype(asset) -> str | None:
    """``data_type`` of a single-band asset as declared (raster v1 or STAC 1.1), or None."""
    ef = asset.extra_fields
    for key in ("raster:bands", "bands"):
        rb = ef.get(key)
        if isinstance(rb, list) and rb and isinstance(rb[0], Mapping) and rb[0].get("data_type"):
            return str(rb[0]["data_type"])
    return ef.get("data_type")


def nodata_value(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        return float("nan") if v.lower() == "nan" else float(v)
    return float(v)


def search_bboxes(footprints: Sequence[Any]) -> list[tuple[float, float, float, float]]:
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


def resolve_patch_url(patch_url: Any) -> Callable[[str], str] | None:
    """A callable as is; a name of :data:`PATCH_URL_SIGNERS` -> that signing function."""
    if patch_url is None or callable(patch_url):
        return patch_url
    if isinstance(patch_url, str) and patch_url in PATCH_URL_SIGNERS:
        module, fn, package = PATCH_URL_SIGNERS[patch_url]
        try:
            return getattr(importlib.import_module(module), fn)
        except ImportError:
            raise ProviderError(
                f"patch_url {patch_url!r} needs the {package!r} package (pip install {package})"
            ) from None
    raise ProviderError(
        f"patch_url must be a callable or one of {sorted(PATCH_URL_SIGNERS)}, got {patch_url!r}"
    )


def configure_sas_signing(subscription_key: str | None) -> bool:
    """Give Planetary Computer's SAS token requests the subscription key (process-wide, as the
    ``planetary-computer`` SDK keeps it; set once when the code location loads, so the key never
    appears in a resource's config). True when set; False without a key or without the package."""
    if not subscription_key:
        return False
    try:
        module = importlib.import_module(PATCH_URL_SIGNERS["planetary_computer"][0])
    except ImportError:
        return False
    module.set_subscription_key(subscription_key)
    return True


def keep_item(item, spec: CollectionSpec, start, end, flt: SensorOptions) -> bool:
    """Window ``[start, end)``, cloud cover (items without the property are kept) and orbit
    direction (``sat:orbit_state``; items without it are dropped when an orbit is asked)."""
    t = item_time(item)
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


def usable_items(items, spec: CollectionSpec, band_list) -> tuple[list, list[tuple[Any, dict[str, str]]]]:
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


def signature_groups(items, spec: CollectionSpec, band_list) -> list[tuple[tuple, list]]:
    """Items grouped by identical per-band (scale, offset, nodata), in order of first item
    (items sorted by time, id), so that the planes of a group share them. S2 offsets follow
    :func:`..catalogs.s2_offset`; an undeclared nodata is 0 for integer assets and an error for
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
            rm = raster_meta(asset)
            scale = spec.default_scale if rm["scale"] is None else float(rm["scale"])
            if spec.modality == "s2":
                try:
                    offset, _ = s2_offset(it, None if rm["offset"] is None else float(rm["offset"]))
                except ValueError as exc:
                    raise ProviderError(str(exc)) from None
            else:
                offset = spec.default_offset if rm["offset"] is None else float(rm["offset"])
            nod = nodata_value(rm["nodata"])
            if nod is None:
                dtype = str(raster_dtype(asset) or "")
                if dtype.startswith(("float", "cfloat")):
                    raise ProviderError(
                        f"item {it.id} asset {k!r} (band {b}): {dtype} data without a declared "
                        "nodata (raster:bands nodata); declare it (e.g. \"nan\") instead of "
                        "letting 0 mean no data"
                    )
                nod = DEFAULT_NODATA[spec.modality]
            sig.append((scale, offset, nod))
        if spec.mask_asset and spec.mask_asset not in it.assets:
            raise ProviderError(f"item {it.id} has no mask asset {spec.mask_asset!r}")
        groups.setdefault(tuple(sig), []).append(it)
    return list(groups.items())
