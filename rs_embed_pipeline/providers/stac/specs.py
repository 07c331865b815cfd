"""STAC collections as the providers read them: band -> asset maps, masks, nodata and scale defaults."""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping

from ..base import ProviderError
from ..catalogs import (
    EARTH_SEARCH_S2_ASSETS,
    S1_ASSETS,
    S2_DEFAULT_SCALE,
    SCL_INVALID_CLASSES,
    check_s1_collection,
    s1_backscatter,
)

__all__ = ["SCL_INVALID_CLASSES", "CollectionSpec", "collection_specs", "s1_spec", "s2_spec"]


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
# nodata assumed when an asset declares none (matches the odc-stac fallback config of :mod:`.reads`)
DEFAULT_NODATA = {"s2": 0.0, "s1": 0.0}


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
            # the S1 quantity (sigma0 | gamma0_rtc): stores of the two never mix
            **({"s1_backscatter": s1_backscatter(self.collection)} if self.modality == "s1" else {}),
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
