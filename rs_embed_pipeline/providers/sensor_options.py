"""Sensor options (rs-embed's names: composite, cloudy_pct, orbit, ...), parsed once into a dataclass.

The imagery resources build the options from their fields and check them here at code-location
load; the STAC providers parse what ``fetch_patches`` receives with the same function. Every error
names the option and its valid values and carries them as attributes (``option``, ``value``,
``valid``) so that a caller can word it its own way (the resources keep rs-embed's messages).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from rs_embed_pipeline.core.vocabulary import COMPOSITES, DEFAULT_COMPOSITE, MODALITIES, S1_ORBITS

from .base import ProviderError

#: Options every provider takes, per modality (the Earth Engine provider takes a few more).
SENSOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "s2": ("composite", "cloudy_pct", "fill_value"),
    "s1": ("composite", "orbit", "use_float_linear", "fill_value"),
}
DEFAULT_CLOUDY_PCT: float = 30.0


class SensorOptionError(ProviderError, ValueError):
    """An invalid sensor option: ``option`` (its name), ``value`` and ``valid`` (a description of
    the valid values). A ProviderError for provider callers, a ValueError for resource fields."""

    def __init__(self, message: str, *, option: str, value: Any = None, valid: Any = None) -> None:
        super().__init__(message)
        self.option, self.value, self.valid = option, value, valid


@dataclasses.dataclass(frozen=True)
class SensorOptions:
    """One modality's parsed sensor options.

    ``cloudy_pct``: S2 only, None = no cloud-cover filter; ``orbit``: S1 only, ASCENDING |
    DESCENDING | None (both); ``fill_value``: data value of pixels without a valid observation;
    ``use_float_linear``: S1, False = the source holds dB (converted to linear power).
    """

    modality: str
    composite: str = DEFAULT_COMPOSITE
    cloudy_pct: float | None = None
    orbit: str | None = None
    fill_value: float = 0.0
    use_float_linear: bool = True

    @classmethod
    def parse(
        cls,
        modality: str,
        options: Mapping[str, Any],
        *,
        defaults: Mapping[str, Any] | None = None,
        valid_options: Sequence[str] | None = None,
    ) -> SensorOptions:
        """Check ``options`` (over ``defaults``) for ``modality``; ``valid_options``: the option
        names accepted (default :data:`SENSOR_OPTIONS`). Raises :class:`SensorOptionError`."""
        if modality not in MODALITIES:
            raise SensorOptionError(f"unknown modality {modality!r}; valid: {list(MODALITIES)}",
                                    option="modality", value=modality, valid=list(MODALITIES))
        valid = tuple(valid_options) if valid_options is not None else SENSOR_OPTIONS[modality]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise SensorOptionError(f"unknown {modality} sensor option(s) {unknown}; valid: {list(valid)}",
                                    option=str(unknown[0]), value=unknown, valid=list(valid))
        opts = {**(defaults or {}), **options}
        composite = parse_composite(opts.get("composite", DEFAULT_COMPOSITE))
        fill = opts.get("fill_value", 0.0)
        try:
            fill = float(fill)
        except (TypeError, ValueError):
            raise SensorOptionError(f"fill_value must be a number, got {fill!r}",
                                    option="fill_value", value=fill, valid="a number") from None
        if modality == "s1":
            return cls("s1", composite=composite, orbit=parse_orbit(opts.get("orbit")), fill_value=fill,
                       use_float_linear=parse_bool("use_float_linear", opts.get("use_float_linear", True)))
        return cls("s2", composite=composite, cloudy_pct=parse_cloudy_pct(opts.get("cloudy_pct", DEFAULT_CLOUDY_PCT)),
                   fill_value=fill)


def parse_composite(composite: Any) -> str:
    if composite not in COMPOSITES:
        raise SensorOptionError(f"unknown composite {composite!r}; valid: {list(COMPOSITES)}",
                                option="composite", value=composite, valid=list(COMPOSITES))
    return str(composite)


def parse_orbit(orbit: Any) -> str | None:
    """Upper-case orbit name, or None (both orbits)."""
    if orbit is None:
        return None
    if str(orbit).strip().upper() not in S1_ORBITS:
        raise SensorOptionError(f"unknown orbit {orbit!r}; valid: {list(S1_ORBITS)} or None",
                                option="orbit", value=orbit, valid=[*S1_ORBITS, None])
    return str(orbit).strip().upper()


def parse_cloudy_pct(cloudy: Any) -> float | None:
    if cloudy is None:
        return None
    try:
        value = float(cloudy)
    except (TypeError, ValueError):
        raise SensorOptionError(f"cloudy_pct must be a number in [0, 100] or None, got {cloudy!r}",
                                option="cloudy_pct", value=cloudy, valid="[0, 100] or None") from None
    if not 0 <= value <= 100:
        raise SensorOptionError(f"cloudy_pct must be in [0, 100] or None, got {value}",
                                option="cloudy_pct", value=cloudy, valid="[0, 100] or None")
    return value


def parse_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise SensorOptionError(f"{name} must be true or false, got {value!r}",
                                option=name, value=value, valid=[True, False])
    return bool(value)
