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
from typing import Any, Literal, Protocol
from collections.abc import Iterable, Iterator

import numpy as np

PatchStatus = Literal["ok", "no_data", "failed"]
PATCH_STATUSES: tuple[str, ...] = ("ok", "no_data", "failed")

# Sentinel-2 bands as Earth Engine / the models name them; B10 (cirrus) is not in L2A products.
S2_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12",
)
S1_BANDS: tuple[str, ...] = ("VV", "VH")
MODALITIES: tuple[str, ...] = ("s2", "s1")


class ProviderError(RuntimeError):
    """A provider was misconfigured or asked for something it cannot serve."""


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
        **sensor_options: Any,
    ) -> Iterator[Patch]:
        """Yield one ``Patch`` per row of ``tiles`` (a tile_grid GeoDataFrame), any order."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings that shaped the pixels (for metadata and fingerprints); never secrets."""
        ...
