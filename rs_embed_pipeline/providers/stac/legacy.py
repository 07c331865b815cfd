"""Legacy Earth Search ``sentinel-2-l2a`` items: one observation per scene, and the
``earthsearch:boa_offset_applied`` flag checked against the scene's pixels where it cannot be trusted.

Legacy ids are ``<platform>_<utm><band><square>_<yyyymmdd>_<sequence>_L2A``; a scene processed
twice exists as ``..._0_L2A`` and ``..._1_L2A`` (often with different flags): the highest sequence
number is kept, the others are dropped and recorded. A suspect item (``false`` flag, baseline >=
04.00: :func:`..catalogs.legacy_offset_suspect`) is read once at low resolution (blue band and SCL,
at most :data:`CHECK_PX` pixels a side) and judged by :func:`..catalogs.judge_legacy_offset`.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..catalogs import (
    LEGACY_DARK_DN,
    OFFSET_CHECK_PROPERTY,
    SCL_CLEAR_CLASSES,
    judge_legacy_offset,
    legacy_offset_suspect,
)
from .specs import CollectionSpec

_LEGACY_ID = re.compile(r"^(?P<scene>S2[A-D]_\d{1,2}[C-X][A-Z]{2}_\d{8})_(?P<seq>\d+)_L2A$")
#: pixels a side of the low-resolution read of a suspect scene
CHECK_PX = 512
#: the band whose clear-pixel DN decide the check
CHECK_BAND = "B2"


def latest_sequences(items: Sequence[Any]) -> tuple[list[Any], list[tuple[Any, dict[str, str]]]]:
    """Items with one per legacy scene (the highest sequence number), and the dropped ones with
    their reason (``dropped_items`` records)."""
    best: dict[str, tuple[int, Any]] = {}
    for it in items:
        m = _LEGACY_ID.match(str(it.id))
        if m:
            seq = int(m["seq"])
            if m["scene"] not in best or seq > best[m["scene"]][0]:
                best[m["scene"]] = (seq, it)
    keep, dropped = [], []
    for it in items:
        m = _LEGACY_ID.match(str(it.id))
        winner = best[m["scene"]][1] if m else it
        if winner is it:
            keep.append(it)
        else:
            dropped.append((it, {"id": it.id, "reason": f"same scene as {winner.id}: the highest "
                                 "sequence number is kept"}))
    return keep, dropped


class LegacyOffsetCheck:
    """The pixel check of suspect legacy items, decided once per item id per provider."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decided: dict[str, tuple[bool | None, str]] = {}

    def _read(self, item: Any, spec: CollectionSpec, sign: Callable[[str], str] | None,
              gdal_options: Mapping[str, Any]) -> tuple[int, int]:
        """(dark, clear) pixel counts of the scene at low resolution (nearest)."""
        import rasterio  # heavy (GDAL): only a suspect item needs it
        from rasterio.enums import Resampling

        def href(key: str) -> str:
            h = item.assets[key].href
            return sign(h) if sign else h

        with rasterio.Env(**gdal_options):
            with rasterio.open(href(spec.assets[CHECK_BAND])) as ds:
                scale = max(ds.width, ds.height) / CHECK_PX
                shape = (max(1, round(ds.height / max(scale, 1))), max(1, round(ds.width / max(scale, 1))))
                blue = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
            if spec.mask_asset:
                with rasterio.open(href(spec.mask_asset)) as ds:
                    scl = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
                clear = np.isin(scl, SCL_CLEAR_CLASSES) & (blue > 0)
            else:  # no SCL: every pixel with data counts
                clear = blue > 0
        return int((clear & (blue < LEGACY_DARK_DN)).sum()), int(clear.sum())

    def _decide(self, item: Any, spec: CollectionSpec, sign, gdal_options) -> tuple[bool | None, str]:
        if spec.assets.get(CHECK_BAND) not in item.assets:
            return None, (f"item {item.id}: earthsearch:boa_offset_applied is false with "
                          "s2:processing_baseline >= 04.00 and it has no blue asset to check it: refused")
        dark, clear = self._read(item, spec, sign, gdal_options)
        try:
            harmonized = judge_legacy_offset(item.id, dark, clear)
        except ValueError as exc:
            return None, str(exc)
        return harmonized, (f"{dark} of {clear} clear pixels (SCL {list(SCL_CLEAR_CLASSES)}) have blue DN "
                            f"< {LEGACY_DARK_DN}: " + ("harmonized, offset 0" if harmonized
                                                        else "raw DN, the declared offset holds"))

    def check(self, items: Sequence[Any], spec: CollectionSpec, sign: Callable[[str], str] | None,
              gdal_options: Mapping[str, Any]):
        """``(items, refused, corrections)``: suspect items found harmonized are replaced by a copy
        carrying :data:`..catalogs.OFFSET_CHECK_PROPERTY`; refused ones leave the list (with a
        ``dropped_items`` record); ``corrections``: (item, record) of every checked item."""
        keep: list[Any] = []
        refused: list[tuple[Any, dict[str, str]]] = []
        corrections: list[tuple[Any, dict[str, Any]]] = []
        for it in items:
            if spec.modality != "s2" or not legacy_offset_suspect(it):
                keep.append(it)
                continue
            with self._lock:
                decided = self._decided.get(it.id)
            if decided is None:
                decided = self._decide(it, spec, sign, gdal_options)
                with self._lock:
                    self._decided[it.id] = decided
            harmonized, evidence = decided
            if harmonized is None:
                refused.append((it, {"id": it.id, "reason": evidence}))
                continue
            record = {"id": it.id, "field": "earthsearch:boa_offset_applied", "declared": False,
                      "offset": 0.0 if harmonized else "declared", "evidence": evidence}
            if harmonized:
                it = it.clone()
                it.properties[OFFSET_CHECK_PROPERTY] = evidence
            keep.append(it)
            corrections.append((it, record))
        return keep, refused, corrections
