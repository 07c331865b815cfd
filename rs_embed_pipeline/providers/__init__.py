"""Imagery providers: every provider yields :class:`Patch` objects in provider units.

``GEEProvider`` (Earth Engine) is imported lazily from ``.gee`` so that this package imports
without earthengine-api (and before ``gee.py`` exists).
"""

from __future__ import annotations

from typing import Any

from rs_embed_pipeline.core.vocabulary import COMPOSITES

from .base import (
    MODALITIES,
    PATCH_STATUSES,
    S1_BANDS,
    S2_BANDS,
    Patch,
    PatchProvider,
    PatchStatus,
    ProviderError,
)
from .sensor_options import SENSOR_OPTIONS, SensorOptionError, SensorOptions
from .stac import SCL_INVALID_CLASSES, CollectionSpec, LocalStacProvider, StacProvider
import importlib

__all__ = [
    "COMPOSITES",
    "CollectionSpec",
    "GEEProvider",
    "LocalStacProvider",
    "MODALITIES",
    "PATCH_STATUSES",
    "Patch",
    "PatchProvider",
    "PatchStatus",
    "ProviderError",
    "S1_BANDS",
    "S2_BANDS",
    "SCL_INVALID_CLASSES",
    "SENSOR_OPTIONS",
    "SensorOptionError",
    "SensorOptions",
    "StacProvider",
]

_LAZY = {"GEEProvider": ".gee"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:

        module = importlib.import_module(_LAZY[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
