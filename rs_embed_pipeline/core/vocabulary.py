"""The pipeline's shared words, each defined once: modalities, tile statuses, composites, orbits,
polarisations and units.

Both environments import this module (the orchestrator venv with Dagster, the worker venv with
torch), so it imports neither: only the standard library. Everything else (providers, stores,
resources, the worker, the assets) imports these names instead of spelling the strings again.
"""

from __future__ import annotations

from typing import Literal

#: Modalities a model can embed and a provider can fetch, in the order the pipeline builds them.
Modality = Literal["s2", "s1"]
MODALITIES: tuple[str, ...] = ("s2", "s1")

#: Per-tile status a provider returns for one patch. A provider never raises for one bad tile:
#: ``no_data`` = no imagery in the window, ``failed`` = the request failed for good.
PatchStatus = Literal["ok", "no_data", "failed"]
PATCH_STATUSES: tuple[str, ...] = ("ok", "no_data", "failed")

#: Every status a tile can hold in a store: the provider statuses plus ``pending`` (not written yet).
TILE_STATUSES: tuple[str, ...] = ("ok", "no_data", "failed", "pending")

#: Integer codes of the statuses in the stores' ``status`` arrays (uint8). Stored on disk: never
#: renumber (0 is the fill value, so an unwritten tile reads as ``pending``).
STATUS_CODES: dict[str, int] = {"pending": 0, "ok": 1, "no_data": 2, "failed": 3}
STATUS_NAMES: dict[int, str] = {code: name for name, code in STATUS_CODES.items()}
STATUS_PENDING: int = STATUS_CODES["pending"]
STATUS_OK: int = STATUS_CODES["ok"]
STATUS_NO_DATA: int = STATUS_CODES["no_data"]
STATUS_FAILED: int = STATUS_CODES["failed"]

#: Statuses that end a tile's fetch (not fetched again unless forced); ``failed`` is retried.
DONE_STATUSES: tuple[str, ...] = ("ok", "no_data")

#: How the observations of one time window are combined: per-pixel median of the valid
#: observations, or a mosaic (latest valid observation on top).
Composite = Literal["median", "mosaic"]
COMPOSITES: tuple[str, ...] = ("median", "mosaic")
DEFAULT_COMPOSITE: str = "median"

#: Sentinel-2 per-pixel cloud masks, the same meaning in every provider: ``scl`` (Scene
#: Classification classes 0, 1, 3, 8, 9, 10 invalid), ``cloud_score_plus`` (Earth Engine's Cloud
#: Score+ threshold), ``none`` (the scene-level cloud filter only, as rs-embed 0.3.1).
CloudMask = Literal["scl", "cloud_score_plus", "none"]
CLOUD_MASKS: tuple[str, ...] = ("scl", "cloud_score_plus", "none")
DEFAULT_CLOUD_MASK: str = "scl"

#: Sentinel-1 orbit directions as the providers and the user write them (upper case); ``None`` in
#: an option means both.
S1_ORBITS: tuple[str, ...] = ("ASCENDING", "DESCENDING")

#: Sentinel-1 polarisations the pipeline fetches, in band order.
S1_POLARISATIONS: tuple[str, ...] = ("VV", "VH")
S1_BANDS: tuple[str, ...] = S1_POLARISATIONS

#: Sentinel-2 L2A bands as Earth Engine / the models name them (B10, cirrus, is not in L2A).
S2_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12",
)

#: Bands of each modality in provider order.
MODALITY_BANDS: dict[str, tuple[str, ...]] = {"s2": S2_BANDS, "s1": S1_BANDS}

#: Provider units, identical for every provider (docs/architecture.md):
#: S2 harmonized surface-reflectance DN (reflectance x 10000, no offset); S1 linear backscatter
#: power, recorded per patch as one of :data:`S1_BACKSCATTER` (sigma0 from GRD: Earth Engine, the
#: synthetic catalog; gamma0 from radiometrically terrain-corrected products: Planetary Computer's
#: sentinel-1-rtc, what TerraFM was trained on).
S2_UNITS: str = "surface reflectance DN (x 10000)"
S1_UNITS: str = "linear sigma0 power"
#: The S1 backscatter quantities a patch can hold (``s1_backscatter`` in its metadata): ``sigma0``
#: (ellipsoid-normalised GRD) or ``gamma0_rtc`` (radiometrically terrain-corrected gamma0).
S1_BACKSCATTER: tuple[str, ...] = ("sigma0", "gamma0_rtc")
PROVIDER_UNITS: dict[str, str] = {"s2": S2_UNITS, "s1": S1_UNITS}
#: Factor from reflectance (0..1) to S2 provider DN; S1 has none.
S2_REFLECTANCE_SCALE: float = 10000.0
UNIT_FACTOR: dict[str, float] = {"s2": S2_REFLECTANCE_SCALE, "s1": 1.0}


def check_modality(modality: str, what: str = "modality") -> str:
    """``modality`` normalised (lower case), or ValueError naming the valid modalities."""
    m = str(modality).lower().strip()
    if m not in MODALITIES:
        raise ValueError(f"unknown {what} {modality!r}; valid: {list(MODALITIES)}")
    return m


def status_code(status: str) -> int:
    """The stored integer code of a tile status, or ValueError naming the valid statuses."""
    try:
        return STATUS_CODES[status]
    except KeyError:
        raise ValueError(f"status {status!r} is not one of {list(STATUS_CODES)}") from None
