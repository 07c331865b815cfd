"""Rules of real STAC catalogs of Sentinel-2 / Sentinel-1: asset keys, offsets, what S1 holds.

Sentinel-2 L2A offset (provider units are harmonized DN = reflectance x 10000, no offset), per item:

1. ``earthsearch:boa_offset_applied`` true: the COGs already hold harmonized DN -> offset 0, even
   when ``raster:bands`` still declares -0.1 (the older Earth Search ``sentinel-2-l2a``);
2. else the asset's ``raster:bands`` ``offset`` (Earth Search C1: -0.1 from baseline 04.00 on);
3. else -0.1 (x 10000 = -1000 DN) when ``s2:processing_baseline`` >= "04.00" (Planetary Computer
   ``sentinel-2-l2a``: no ``raster:bands``, not harmonized);
4. else 0.

The legacy Earth Search ``sentinel-2-l2a`` flag cannot be trusted when it says ``false`` for
baseline >= 04.00: many such COGs already hold harmonized DN (Element84/earth-search#66 and #71,
cirrus-geo/cirrus-earth-search#33). Those items are checked against their pixels
(:func:`legacy_offset_suspect`, :func:`judge_legacy_offset`, read by ``stac/legacy.py``): the
blue DN of clear pixels (SCL 4, 5, 6) tell raw from harmonized data; a corrected item carries
:data:`OFFSET_CHECK_PROPERTY` and gets offset 0 (rule 0 below), an undecidable one is refused.

Scale: the asset's ``raster:bands`` ``scale``, else 0.0001. The same scene thus gives the same DN
from Earth Search C1, the older Earth Search collection and Planetary Computer.

Sentinel-1: the models take linear backscatter power (VV, VH), recorded per patch as
``s1_backscatter`` (:func:`s1_backscatter`): ``sigma0`` (GRD: Earth Engine's
``COPERNICUS/S1_GRD_FLOAT``, the synthetic catalog) or ``gamma0_rtc`` (Planetary Computer's
``sentinel-1-rtc``: radiometrically terrain-corrected gamma0, linear float32, nodata -32768; what
TerraFM was trained on, Major TOM Core-S1RTC). On flat ground at IW incidence angles (30-46 deg)
gamma0 = sigma0 / cos(incidence), 0.6-1.6 dB above sigma0 (more on slopes facing the sensor,
less facing away). Earth Search's ``sentinel-1-grd`` holds uncalibrated DN and is refused with
an error naming the collection (:func:`check_s1_collection`).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from rs_embed_pipeline.core.vocabulary import S1_POLARISATIONS

__all__ = [
    "CATALOG_PRESETS",
    "PATCH_URL_CHOICES",
    "CatalogConfigError",
    "resolve_catalog",
    "PLANETARY_COMPUTER_S2_ASSETS",
    "S2_DEFAULT_SCALE",
    "check_s1_collection",
    "s1_backscatter",
    "RTC_COLLECTIONS",
    "s2_offset",
    "legacy_offset_suspect",
    "judge_legacy_offset",
    "OFFSET_CHECK_PROPERTY",
    "FALLBACK_PROPERTY",
    "known_gaps",
    "scene_gap",
]

S2_DEFAULT_SCALE = 0.0001
#: SCL classes treated as invalid by ``cloud_mask="scl"`` in every provider: 0 no data,
#: 1 saturated / defective, 3 cloud shadow, 8 / 9 cloud, 10 thin cirrus
SCL_INVALID_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
_BASELINE_OFFSET = -0.1  # reflectance offset of processing baseline >= 04.00

# Planetary Computer sentinel-2-l2a: asset keys are the band names, two digits
PLANETARY_COMPUTER_S2_ASSETS: dict[str, str] = {
    "B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B05", "B6": "B06", "B7": "B07",
    "B8": "B08", "B8A": "B8A", "B9": "B09", "B11": "B11", "B12": "B12",
}
#: Earth Search C1 asset keys: the default S2 asset map of the STAC providers and the synthetic /
#: user-scene catalogs.
EARTH_SEARCH_S2_ASSETS: dict[str, str] = {
    "B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "rededge1",
    "B6": "rededge2", "B7": "rededge3", "B8": "nir", "B8A": "nir08", "B9": "nir09",
    "B11": "swir16", "B12": "swir22",
}
_EARTH_SEARCH_ASSETS = EARTH_SEARCH_S2_ASSETS
#: S1 asset keys of every catalog the pipeline writes or reads by default (``vv``, ``vh``).
S1_ASSETS: dict[str, str] = {p: p.lower() for p in S1_POLARISATIONS}

#: Settings of the imagery resource per known catalog (``s2_assets`` / ``mask_asset`` /
#: ``s1_collection`` of the STAC providers); Planetary Computer hrefs need signing
#: (``StacProvider(patch_url="planetary_computer")``, package ``planetary-computer``).
CATALOG_PRESETS: dict[str, dict[str, Any]] = {
    "earth-search-c1": {
        "api_url": "https://earth-search.aws.element84.com/v1",
        "collection": "sentinel-2-c1-l2a", "s2_assets": _EARTH_SEARCH_ASSETS, "mask_asset": "scl",
        "s1_collection": None, "sign": None,
    },
    "earth-search-l2a": {
        "api_url": "https://earth-search.aws.element84.com/v1",
        "collection": "sentinel-2-l2a", "s2_assets": _EARTH_SEARCH_ASSETS, "mask_asset": "scl",
        "s1_collection": None, "sign": None,
    },
    "planetary-computer": {
        "api_url": "https://planetarycomputer.microsoft.com/api/stac/v1",
        "collection": "sentinel-2-l2a", "s2_assets": PLANETARY_COMPUTER_S2_ASSETS,
        # S1: the RTC gamma0 TerraFM was trained on (assets vv, vh)
        "mask_asset": "SCL", "s1_collection": "sentinel-1-rtc", "sign": "planetary_computer",
    },
}

#: ``patch_url`` values of the imagery resources: no signing, or Planetary Computer's SAS tokens
PATCH_URL_CHOICES: tuple[str, ...] = ("none", "planetary_computer")


class CatalogConfigError(ValueError):
    """An invalid catalog setting of an imagery resource; ``field`` names the resource field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def resolve_catalog(
    preset: str | None,
    *,
    api_url: str | None = None,
    s2_collection: str | None = None,
    s1_collection: str | None = None,
    s2_assets: Mapping[str, str] | None = None,
    mask_asset: str | None = None,
    patch_url: str | None = None,
) -> dict[str, Any]:
    """The catalog settings of an imagery resource: each field given wins over the preset's
    (:data:`CATALOG_PRESETS`); ``s2_assets`` entries are laid over the preset's band -> asset map;
    ``mask_asset="none"`` disables SCL masking; ``patch_url="none"`` disables signing.

    Returns ``api_url, collection, s1_collection, s2_assets, mask_asset, patch_url`` (None where
    neither the preset nor the field sets one). Raises :class:`CatalogConfigError` naming the
    field and its valid values."""
    from .base import S2_BANDS

    if preset is None:
        base: dict[str, Any] = {"api_url": None, "collection": None, "s2_assets": None, "mask_asset": None,
                                "s1_collection": None, "sign": None}
    elif preset in CATALOG_PRESETS:
        base = CATALOG_PRESETS[preset]
    else:
        raise CatalogConfigError("catalog_preset", f"catalog_preset {preset!r} is not a known catalog; valid: "
                                 f"{', '.join(CATALOG_PRESETS)}")
    if api_url is not None and not str(api_url).startswith(("http://", "https://")):
        raise CatalogConfigError("api_url", f"api_url {api_url!r} is not an http(s) URL of a STAC API")
    for field, value in (("s2_collection", s2_collection), ("s1_collection", s1_collection),
                         ("mask_asset", mask_asset)):
        if value is not None and not str(value).strip():
            raise CatalogConfigError(field, f"{field} is empty; give an id, or leave it unset for the "
                                     + ("preset's" if preset else "catalog's own"))
    assets = dict(base["s2_assets"] or {})
    if s2_assets:
        bad = sorted(set(s2_assets) - set(S2_BANDS))
        if bad:
            raise CatalogConfigError("s2_assets", f"s2_assets maps unknown band(s) {bad}; valid bands: "
                                     f"{', '.join(S2_BANDS)} (band -> asset key)")
        empty = sorted(b for b, k in s2_assets.items() if not isinstance(k, str) or not k.strip())
        if empty:
            raise CatalogConfigError("s2_assets", f"s2_assets gives no asset key for band(s) {empty}")
        assets.update(s2_assets)
    sign = base["sign"] if patch_url is None else patch_url
    if sign is not None and sign not in PATCH_URL_CHOICES:
        raise CatalogConfigError("patch_url", f"patch_url {patch_url!r} is not a known URL signing; valid: "
                                 f"{', '.join(PATCH_URL_CHOICES)}")
    s1 = s1_collection if s1_collection is not None else base["s1_collection"]
    if s1:
        try:
            check_s1_collection(s1)
        except ValueError as exc:
            raise CatalogConfigError("s1_collection", str(exc)) from None
    mask = mask_asset if mask_asset is not None else base["mask_asset"]
    return {
        "api_url": api_url or base["api_url"],
        "collection": s2_collection or base["collection"],
        "s1_collection": s1 or None,
        "s2_assets": assets or None,
        "mask_asset": mask,
        "patch_url": None if sign in (None, "none") else sign,
    }


# S1 collections known to hold no calibrated backscatter, and what they hold
_NOT_SIGMA0: dict[str, str] = {
    "sentinel-1-grd": "uncalibrated GRD digital numbers (Earth Search)",
}
#: S1 collections of radiometrically terrain-corrected gamma0 (their ``s1_backscatter``)
RTC_COLLECTIONS: tuple[str, ...] = ("sentinel-1-rtc",)


def s1_backscatter(collection: str, item: Any = None) -> str:
    """``gamma0_rtc`` for an RTC collection (Planetary Computer's items say ``sar:product_type``
    GRD: the collection decides) or an item with ``sar:product_type`` RTC, else ``sigma0``."""
    props = getattr(item, "properties", {}) or {}
    if collection in RTC_COLLECTIONS or str(props.get("sar:product_type", "")).upper() == "RTC":
        return "gamma0_rtc"
    return "sigma0"


#: Item property set on a legacy item whose pixels were found harmonized despite its flag
#: (the check's evidence as a string); :func:`s2_offset` then gives offset 0.
OFFSET_CHECK_PROPERTY = "rsep:harmonized_by_pixels"
#: SCL classes whose blue DN decide the legacy check: vegetation, not vegetated, water.
SCL_CLEAR_CLASSES: tuple[int, ...] = (4, 5, 6)
#: Raw baseline >= 04.00 DN are reflectance x 10000 + 1000: blue DN below 1000 mean a negative
#: reflectance (rare on clear pixels), while harmonized DN are below 1000 for most clear land
#: and water (blue reflectance < 0.1).
LEGACY_DARK_DN = 1000
LEGACY_MIN_CLEAR_PX = 100
LEGACY_HARMONIZED_FRACTION = 0.2  # at least this share of clear blue DN < 1000: harmonized
LEGACY_RAW_FRACTION = 0.02  # at most this share: raw DN (the flag holds)


def _flag(props: Mapping[str, Any]) -> bool | None:
    applied = props.get("earthsearch:boa_offset_applied")
    if isinstance(applied, str):
        return {"true": True, "false": False}.get(applied.lower())
    return applied if isinstance(applied, bool) else None


def _baseline(item: Any) -> tuple[int, int] | None:
    props: Mapping[str, Any] = getattr(item, "properties", {}) or {}
    baseline = props.get("s2:processing_baseline")
    if baseline is None:
        return None
    try:
        major, minor = (int(p) for p in str(baseline).split(".")[:2])
    except ValueError:
        raise ValueError(
            f"item {getattr(item, 'id', '?')}: s2:processing_baseline {baseline!r} is not "
            "'MM.mm'; cannot tell the reflectance offset"
        ) from None
    return major, minor


#: Days between two passes over a point, per modality, of the full constellation (S2A + S2B at the
#: equator; S1 after Sentinel-1B's loss): a window's expected scene count is its length over this.
REVISIT_DAYS: dict[str, float] = {"s2": 5.0, "s1": 12.0}
#: A tile with fewer scenes than this share of the expected count is reported (``scene_gap``).
SCENE_GAP_FRACTION = 0.25
#: Periods a collection is documented to lack (ISO dates, end exclusive), named in the gap report.
#: Earth Search C1: its README (April 2024) lists Nov 2016 - Nov 2019 and 2022 as not yet processed.
KNOWN_GAPS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sentinel-2-c1-l2a": (
        ("2016-11-01", "2019-11-01", "Earth Search C1 lacks Nov 2016 - Nov 2019 (its README, April 2024)"),
        ("2022-01-01", "2023-01-01", "Earth Search C1 lacks 2022 (its README, April 2024)"),
    ),
}


#: Item property set on a scene taken from ``fallback_collection`` inside a documented gap of the
#: primary collection (the gap's reason); the patches record such scenes in ``fallback_scenes``.
FALLBACK_PROPERTY = "rsep:fallback_for_gap"


def known_gaps(collection: str) -> tuple[tuple[str, str, str], ...]:
    """The documented gaps of ``collection``: ``(start, end exclusive, reason)``, ISO dates."""
    return KNOWN_GAPS.get(collection, ())


def scene_gap(collection: str, modality: str, start: str, end: str, days: float, found: int) -> dict[str, Any] | None:
    """The gap report of a tile with ``found`` scene dates in a window of ``days`` days, or None when
    the count is within :data:`SCENE_GAP_FRACTION` of the revisit expectation."""
    expected = max(1, int(days // REVISIT_DAYS[modality]))
    if found >= SCENE_GAP_FRACTION * expected:
        return None
    known = [why for a, b, why in KNOWN_GAPS.get(collection, ()) if a < end[:10] and start[:10] < b]
    return {"expected_scenes": expected, "found_scenes": found,
            "reason": "; ".join(known) if known else
            f"fewer than {SCENE_GAP_FRACTION:.0%} of the {expected} dates a {REVISIT_DAYS[modality]:g}-day "
            "revisit gives (catalog gap, cloud filter or orbit filter)"}


def s2_offset(item: Any, declared: float | None) -> tuple[float, str]:
    """The reflectance offset of an S2 item's spectral asset and the rule that chose it (see the
    module docstring); ``declared``: the asset's ``raster:bands`` offset or None."""
    props: Mapping[str, Any] = getattr(item, "properties", {}) or {}
    if props.get(OFFSET_CHECK_PROPERTY):
        return 0.0, "pixels: harmonized DN (earthsearch:boa_offset_applied false not trusted)"
    if _flag(props) is True:
        return 0.0, "earthsearch:boa_offset_applied"
    if declared is not None:
        return float(declared), "raster:bands"
    baseline = _baseline(item)
    if baseline is not None:
        if baseline >= (4, 0):
            return _BASELINE_OFFSET, "s2:processing_baseline >= 04.00"
        return 0.0, "s2:processing_baseline < 04.00"
    return 0.0, "none declared"


def legacy_offset_suspect(item: Any) -> bool:
    """A legacy Earth Search item whose ``false`` flag cannot be trusted: baseline >= 04.00 with
    ``earthsearch:boa_offset_applied`` false (and not checked yet)."""
    props: Mapping[str, Any] = getattr(item, "properties", {}) or {}
    if _flag(props) is not False or props.get(OFFSET_CHECK_PROPERTY):
        return False
    baseline = _baseline(item)
    return baseline is not None and baseline >= (4, 0)


def judge_legacy_offset(item_id: str, dark: int, clear: int) -> bool:
    """True when a suspect item's COGs hold harmonized DN, False when they hold raw DN (the flag
    holds), from ``dark`` (clear pixels with 0 < blue DN < 1000) of ``clear`` clear pixels.
    Raises ``ValueError`` naming the item, the field and the reason when the pixels cannot tell."""
    field = "earthsearch:boa_offset_applied"
    if clear < LEGACY_MIN_CLEAR_PX:
        raise ValueError(f"item {item_id}: {field} is false with s2:processing_baseline >= 04.00, a "
                         f"flag known to be wrong on many legacy items, and only {clear} clear pixels "
                         f"(SCL {list(SCL_CLEAR_CLASSES)}) to check it (< {LEGACY_MIN_CLEAR_PX}): refused")
    share = dark / clear
    if share >= LEGACY_HARMONIZED_FRACTION:
        return True
    if share <= LEGACY_RAW_FRACTION:
        return False
    raise ValueError(f"item {item_id}: {field} is false with s2:processing_baseline >= 04.00 and "
                     f"{share:.1%} of its clear blue DN are below {LEGACY_DARK_DN} (neither raw <= "
                     f"{LEGACY_RAW_FRACTION:.0%} nor harmonized >= {LEGACY_HARMONIZED_FRACTION:.0%}): refused")


def check_s1_collection(collection: str, item: Any = None) -> None:
    """Raise ``ValueError`` when an S1 collection holds no calibrated backscatter, or an item holds
    another quantity than its collection (gamma0 RTC items in a sigma0 collection)."""
    what = _NOT_SIGMA0.get(collection)
    if what is None and item is not None and s1_backscatter(collection, item) != s1_backscatter(collection):
        what = "radiometrically terrain-corrected gamma0 (sar:product_type RTC) in a sigma0 collection"
    if what is not None:
        where = f"item {item.id} of " if item is not None else ""
        raise ValueError(
            f"{where}S1 collection {collection!r} holds {what}, not the linear backscatter power the "
            "models take; supported: a STAC collection of calibrated linear sigma0 (VV, VH), Planetary "
            "Computer's sentinel-1-rtc (gamma0), or the Earth Engine provider (COPERNICUS/S1_GRD_FLOAT)"
        )
