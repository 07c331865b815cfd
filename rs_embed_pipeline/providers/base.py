"""What every imagery provider returns, and the units it returns them in.

Provider units (docs/architecture.md), identical for every provider:

* Sentinel-2: harmonized surface-reflectance DN (reflectance x 10000, no offset), bands in the
  order the caller asked for.
* Sentinel-1: linear sigma0 power, bands ``VV``, ``VH``.

A provider never raises for one bad tile: it yields a ``Patch`` whose ``status`` is ``"no_data"``
(no imagery in the window) or ``"failed"`` (the request failed for good; ``meta["reason"]`` says
why), and goes on with the other tiles.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Protocol
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from rs_embed_pipeline.core.grid import Tile
from rs_embed_pipeline.core.vocabulary import MODALITIES, PATCH_STATUSES, S1_BANDS, S2_BANDS, PatchStatus

from .errors import ProviderError
from .sensor_options import SensorOptions

# The shared words live in rs_embed_pipeline.core.vocabulary; re-exported here for provider code.
__all__ = ["MODALITIES", "PATCH_STATUSES", "S1_BANDS", "S2_BANDS", "Patch", "PatchProvider", "PatchStatus",
           "ProviderError", "Tile", "backoff_s", "tile_rows"]


@dataclasses.dataclass
class Patch:
    """One tile's pixels for one time window.

    ``data`` is float32 ``[C, H, W]`` in provider units with bands in the asked order; ``valid`` is
    a bool ``[H, W]`` mask (False where no observation contributed). For ``no_data`` and
    ``failed`` patches both are filled (zeros / all False) so that stores can write them blindly.
    """

    tile_id: str
    data: np.ndarray
    valid: np.ndarray
    status: PatchStatus
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in PATCH_STATUSES:
            raise ValueError(f"Patch status {self.status!r} is not one of {PATCH_STATUSES}")
        if self.data.ndim != 3:
            raise ValueError(f"Patch data must be [C, H, W], got shape {self.data.shape}")
        if self.valid.shape != self.data.shape[1:]:
            raise ValueError(
                f"Patch valid mask {self.valid.shape} does not match data {self.data.shape}"
            )

    @classmethod
    def empty(
        cls,
        tile_id: str,
        n_bands: int,
        size_px: int,
        status: PatchStatus,
        **meta: Any,
    ) -> Patch:
        return cls(
            tile_id=tile_id,
            data=np.zeros((n_bands, size_px, size_px), dtype=np.float32),
            valid=np.zeros((size_px, size_px), dtype=bool),
            status=status,
            meta=dict(meta),
        )


class PatchProvider(Protocol):
    """The one method every provider shares (docs/architecture.md, "Layers and their contracts")."""

    name: str

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
        """Yield one ``Patch`` per row of ``tiles`` (a tile_grid GeoDataFrame, or an iterable of
        ``Tile`` / row mappings: :func:`tile_rows`), any order. Sensor options come parsed
        (``options``, e.g. an imagery resource's) or as keywords, parsed once at the provider
        boundary (:meth:`SensorOptions.for_fetch`), never both."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings that shaped the pixels (for metadata and fingerprints); never secrets."""
        ...

    def stats(self) -> dict[str, Any]:
        """Operational settings and counters that do not shape the pixels (threads, retries,
        requests): patch metadata only, never fingerprints; ``{}`` when there are none."""
        ...


def backoff_s(base_s: float, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt + 1`` (``attempt`` counts from 0): exponential,
    ``base_s * 2**attempt``, with x0.5-1.5 jitter so that parallel callers do not retry in step.
    Every retry owner of docs/architecture.md ("Who owns each failure") waits this way."""
    return float(base_s) * (2 ** int(attempt)) * (rng or random).uniform(0.5, 1.5)


_TILES_FORMS = ("tiles must be a (Geo)DataFrame of tile-grid rows or an iterable of Tile / mappings "
                "(tile_id, utm_epsg, x0, y0, size_px, scale_m)")


def _is_series(obj: Any) -> bool:
    """A pandas Series (one row, not accepted: it would iterate over its values)."""
    return hasattr(obj, "to_dict") and hasattr(obj, "index") and not hasattr(obj, "columns")


def tile_rows(tiles: Any) -> list[Mapping[str, Any] | Tile]:
    """The tiles of ``tiles`` one by one, as the providers read them: a (Geo)DataFrame of tile-grid
    rows (one mapping per row), or an iterable (list, tuple, generator) of :class:`Tile` and / or
    mappings. Mappings are checked later, by :meth:`Tile.from_row`, so that a bad row fails alone
    in the provider. Anything else raises TypeError naming the accepted forms."""
    if hasattr(tiles, "columns") and hasattr(tiles, "to_dict"):  # (Geo)DataFrame
        return list(tiles.to_dict("records"))
    if isinstance(tiles, (str, bytes, Mapping, Tile)) or not isinstance(tiles, Iterable) or _is_series(tiles):
        raise TypeError(f"{_TILES_FORMS}, got {type(tiles).__name__}")
    rows = list(tiles)
    for row in rows:
        if not isinstance(row, (Mapping, Tile)):
            raise TypeError(f"{_TILES_FORMS}, got a {type(row).__name__} among them")
    return rows

