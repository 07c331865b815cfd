"""Sensor options (rs-embed's names: composite, cloudy_pct, orbit, ...), parsed once into a dataclass.

The imagery resources parse their fields here at code-location load and hand the parsed object
down to ``fetch_patches(..., options=...)``; a caller that passes option keywords instead has them
parsed at the provider boundary by the same function (:meth:`SensorOptions.for_fetch`). The Earth
Engine provider's extra options are the fields of :class:`EarthEngineSensorOptions`, parsed by the
same ``parse``. Every error names the option and its valid values and carries them as attributes
(``option``, ``value``, ``valid``) so that a caller can word it its own way (the resources keep
rs-embed's messages).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self
from collections.abc import Mapping, Sequence

import numpy as np

from rs_embed_pipeline.core.vocabulary import (
    CLOUD_MASKS,
    COMPOSITES,
    DEFAULT_CLOUD_MASK,
    DEFAULT_COMPOSITE,
    MODALITIES,
    S1_ORBITS,
)

from .errors import ProviderError

#: Options every provider takes, per modality (the Earth Engine provider takes a few more).
SENSOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "s2": ("composite", "cloudy_pct", "cloud_mask", "fill_value"),
    "s1": ("composite", "orbit", "use_float_linear", "fill_value"),
}
#: The Earth Engine provider's options: :data:`SENSOR_OPTIONS` and its own (Cloud Score+, IW mode).
EE_SENSOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "s2": ("composite", "cloudy_pct", "cloud_mask", "cloud_score_plus", "cs_threshold", "cs_band", "fill_value"),
    "s1": ("composite", "orbit", "use_float_linear", "require_iw", "relax_iw_on_empty", "fill_value"),
}
DEFAULT_CLOUDY_PCT: float = 30.0
#: Cloud Score+ bands an Earth Engine S2 fetch can threshold (``cs_band``).
CLOUD_SCORE_PLUS_BANDS: tuple[str, ...] = ("cs_cdf", "cs")


class SensorOptionError(ProviderError, ValueError):
    """An invalid sensor option: ``option`` (its name), ``value`` and ``valid`` (a description of
    the valid values). A ProviderError for provider callers, a ValueError for resource fields."""

    def __init__(self, message: str, *, option: str, value: Any = None, valid: Any = None) -> None:
        super().__init__(message)
        self.option, self.value, self.valid = option, value, valid


@dataclasses.dataclass(frozen=True)
class SensorOptions:
    """One modality's parsed sensor options.

    ``cloudy_pct``: S2 only, None = no cloud-cover filter (an int stays an int: stores record the
    value as configured); ``cloud_mask``: S2 only, the per-pixel mask (:data:`CLOUD_MASKS`, default
    ``scl``; None for S1); ``orbit``: S1 only, ASCENDING | DESCENDING | None (both);
    ``fill_value``: data value of pixels without a valid observation; ``use_float_linear``: S1,
    False = the source holds dB (converted to linear power).
    """

    modality: str
    composite: str = DEFAULT_COMPOSITE
    cloudy_pct: float | None = None
    orbit: str | None = None
    fill_value: float = 0.0
    use_float_linear: bool = True
    cloud_mask: str | None = None

    #: the option names this class parses, per modality
    OPTION_NAMES: ClassVar[Mapping[str, tuple[str, ...]]] = SENSOR_OPTIONS
    #: ``cloud_mask`` when none is given (None: the provider decides, :meth:`_with_defaults`)
    DEFAULT_CLOUD_MASK: ClassVar[str | None] = DEFAULT_CLOUD_MASK

    @classmethod
    def parse(
        cls,
        modality: str,
        options: Mapping[str, Any],
        *,
        defaults: Mapping[str, Any] | None = None,
        valid_options: Sequence[str] | None = None,
    ) -> Self:
        """Check ``options`` (over ``defaults``) for ``modality``; ``valid_options``: the option
        names accepted (default :attr:`OPTION_NAMES`). Raises :class:`SensorOptionError`."""
        if modality not in MODALITIES:
            raise SensorOptionError(f"unknown modality {modality!r}; valid: {list(MODALITIES)}",
                                    option="modality", value=modality, valid=list(MODALITIES))
        valid = tuple(valid_options) if valid_options is not None else cls.OPTION_NAMES[modality]
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
        own = cls._parse_own(modality, opts, given=options)
        if modality == "s1":
            return cls("s1", composite=composite, orbit=parse_orbit(opts.get("orbit")), fill_value=fill,
                       use_float_linear=parse_bool("use_float_linear", opts.get("use_float_linear", True)),
                       **own)
        mask = opts.get("cloud_mask")
        own.setdefault("cloud_mask", cls.DEFAULT_CLOUD_MASK if mask is None else parse_cloud_mask(mask))
        return cls("s2", composite=composite, cloudy_pct=parse_cloudy_pct(opts.get("cloudy_pct", DEFAULT_CLOUDY_PCT)),
                   fill_value=fill, **own)

    @classmethod
    def _parse_own(cls, modality: str, opts: Mapping[str, Any], given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The fields a subclass adds, parsed from ``opts`` (``given``: the options without the
        provider's defaults); none here."""
        return {}

    @classmethod
    def for_fetch(cls, modality: str, options: SensorOptions | None, keywords: Mapping[str, Any], *,
                  defaults: Mapping[str, Any] | None = None) -> Self:
        """The sensor options of one ``fetch_patches`` call: ``options`` as parsed already (an imagery
        resource's), or the option ``keywords`` parsed here over the provider's ``defaults``.

        ``options`` may be of this class or of a class it extends (the fields it lacks then take
        the provider's ``defaults``: :meth:`_with_defaults`). Raises :class:`SensorOptionError`
        for options given both ways, of another provider's class, or of another modality."""
        if options is None:
            return cls.parse(modality, keywords, defaults=defaults)._with_defaults(defaults or {})
        if keywords:
            raise SensorOptionError(f"sensor options given twice: options= and the keyword(s) {sorted(keywords)}; "
                                    "pass one or the other", option=str(sorted(keywords)[0]),
                                    value=sorted(keywords), valid="options= or keywords")
        if not isinstance(options, SensorOptions) or type(options) not in cls.__mro__:
            accepted = [c.__name__ for c in cls.__mro__ if issubclass(c, SensorOptions)]
            raise SensorOptionError(f"options must be one of {accepted}, got {type(options).__name__}",
                                    option="options", value=options, valid=accepted)
        if options.modality != modality:
            raise SensorOptionError(f"options are for modality {options.modality!r}, the fetch asks for {modality!r}",
                                    option="modality", value=options.modality, valid=[modality])
        # a base class's options: this class's own fields at their field defaults
        resolved = options if isinstance(options, cls) else cls(
            **{f.name: getattr(options, f.name) for f in dataclasses.fields(options)})
        return resolved._with_defaults(defaults or {})

    def _with_defaults(self, defaults: Mapping[str, Any]) -> Self:
        """These options with the fields left to the provider taken from its ``defaults``; none here."""
        return self

    def as_dict(self) -> dict[str, Any]:
        """The options as ``fetch_patches`` keywords: what the patch stores (fingerprints) and the
        run metadata record (``parse(modality, as_dict())`` gives these options back)."""
        out: dict[str, Any] = {"composite": self.composite, "fill_value": self.fill_value}
        if self.modality == "s2":
            out["cloudy_pct"] = self.cloudy_pct
            if self.cloud_mask is not None:
                out["cloud_mask"] = self.cloud_mask
        else:
            if self.orbit is not None:
                out["orbit"] = self.orbit
            out["use_float_linear"] = self.use_float_linear
        return out


@dataclasses.dataclass(frozen=True)
class EarthEngineSensorOptions(SensorOptions):
    """:class:`SensorOptions` plus the Earth Engine provider's own.

    S2: ``cloud_mask`` as every provider's; ``cloud_score_plus`` (true: ``cloud_mask`` defaults to
    ``cloud_score_plus``, the older spelling), ``cs_threshold`` in [0, 1], ``cs_band``
    (:data:`CLOUD_SCORE_PLUS_BANDS`); None: the provider's setting (``GEEProvider(cloud_score_plus=...)``;
    an unset ``cloud_mask`` is ``cloud_score_plus`` when that setting is true, else ``scl``).
    S1: ``require_iw`` (IW mode only), ``relax_iw_on_empty`` (retry without it when nothing is found).
    """

    cloud_score_plus: bool | None = None
    cs_threshold: float | None = None
    cs_band: str | None = None
    require_iw: bool = True
    relax_iw_on_empty: bool = True

    OPTION_NAMES: ClassVar[Mapping[str, tuple[str, ...]]] = EE_SENSOR_OPTIONS
    DEFAULT_CLOUD_MASK: ClassVar[str | None] = None
    _PROVIDER_SETTINGS: ClassVar[tuple[str, ...]] = ("cloud_score_plus", "cs_threshold", "cs_band")

    @classmethod
    def _parse_own(cls, modality: str, opts: Mapping[str, Any], given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if modality == "s1":
            return {"require_iw": parse_bool("require_iw", opts.get("require_iw", True)),
                    "relax_iw_on_empty": parse_bool("relax_iw_on_empty", opts.get("relax_iw_on_empty", True))}
        own: dict[str, Any] = {}
        if "cloud_score_plus" in opts:
            own["cloud_score_plus"] = parse_bool("cloud_score_plus", opts["cloud_score_plus"])
        if "cs_threshold" in opts:
            own["cs_threshold"] = parse_number_within("cs_threshold", opts["cs_threshold"], 0, 1)
        if "cs_band" in opts:
            cs_band = str(opts["cs_band"])
            if cs_band not in CLOUD_SCORE_PLUS_BANDS:
                raise SensorOptionError(f"cs_band {cs_band!r} is not one of {list(CLOUD_SCORE_PLUS_BANDS)}",
                                        option="cs_band", value=cs_band, valid=list(CLOUD_SCORE_PLUS_BANDS))
            own["cs_band"] = cs_band
        mask = None if opts.get("cloud_mask") is None else parse_cloud_mask(opts["cloud_mask"])
        given = opts if given is None else given  # the options themselves, not the provider's defaults
        csp = parse_bool("cloud_score_plus", given["cloud_score_plus"]) if "cloud_score_plus" in given else None
        if mask is not None and csp is not None and csp != (mask == "cloud_score_plus"):
            raise SensorOptionError(f"cloud_mask {mask!r} contradicts cloud_score_plus={csp}; give cloud_mask only",
                                    option="cloud_mask", value=mask, valid=list(CLOUD_MASKS))
        if mask is None and csp:
            mask = "cloud_score_plus"
        if mask is not None:
            own["cloud_mask"] = mask
        return own

    def _with_defaults(self, defaults: Mapping[str, Any]) -> Self:
        if self.modality != "s2":
            return self
        unset = {k: v for k, v in defaults.items() if k in self._PROVIDER_SETTINGS and getattr(self, k) is None}
        own = {k: v for k, v in self._parse_own("s2", unset).items() if k != "cloud_mask"}
        out = dataclasses.replace(self, **own) if own else self
        if out.cloud_mask is None:  # the provider's cloud_score_plus setting decides, else scl
            out = dataclasses.replace(out, cloud_mask="cloud_score_plus" if out.cloud_score_plus else DEFAULT_CLOUD_MASK)
        return out

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        if self.modality == "s1":
            out.update(require_iw=self.require_iw, relax_iw_on_empty=self.relax_iw_on_empty)
        else:  # the provider's settings are recorded by its describe(), not here
            out.update({k: getattr(self, k) for k in self._PROVIDER_SETTINGS if getattr(self, k) is not None})
        return out


def parse_composite(composite: Any) -> str:
    if composite not in COMPOSITES:
        raise SensorOptionError(f"unknown composite {composite!r}; valid: {list(COMPOSITES)}",
                                option="composite", value=composite, valid=list(COMPOSITES))
    return str(composite)


def parse_cloud_mask(mask: Any) -> str:
    """One of :data:`CLOUD_MASKS` (lower case)."""
    name = str(mask).strip().lower() if isinstance(mask, str) else mask
    if name not in CLOUD_MASKS:
        raise SensorOptionError(f"unknown cloud_mask {mask!r}; valid: {list(CLOUD_MASKS)}",
                                option="cloud_mask", value=mask, valid=list(CLOUD_MASKS))
    return str(name)


def parse_orbit(orbit: Any) -> str | None:
    """Upper-case orbit name, or None (both orbits)."""
    if orbit is None:
        return None
    if str(orbit).strip().upper() not in S1_ORBITS:
        raise SensorOptionError(f"unknown orbit {orbit!r}; valid: {list(S1_ORBITS)} or None",
                                option="orbit", value=orbit, valid=[*S1_ORBITS, None])
    return str(orbit).strip().upper()


def parse_cloudy_pct(cloudy: Any) -> float | None:
    """A percentage in [0, 100] or None; an int is kept as an int (the stores record it as configured)."""
    if cloudy is None:
        return None
    try:
        value = cloudy if type(cloudy) is int else float(cloudy)
    except (TypeError, ValueError):
        raise SensorOptionError(f"cloudy_pct must be a number in [0, 100] or None, got {cloudy!r}",
                                option="cloudy_pct", value=cloudy, valid="[0, 100] or None") from None
    if not 0 <= value <= 100:
        raise SensorOptionError(f"cloudy_pct must be in [0, 100] or None, got {float(value)}",
                                option="cloudy_pct", value=cloudy, valid="[0, 100] or None")
    return value


def parse_number_within(name: str, value: Any, lo: float, hi: float) -> float:
    """``value`` as a float within ``[lo, hi]``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SensorOptionError(f"{name} must be a number, got {value!r}",
                                option=name, value=value, valid=f"[{lo}, {hi}]") from None
    if not lo <= number <= hi:
        raise SensorOptionError(f"{name} must be within [{lo}, {hi}], got {number}",
                                option=name, value=value, valid=f"[{lo}, {hi}]")
    return number


def parse_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise SensorOptionError(f"{name} must be true or false, got {value!r}",
                                option=name, value=value, valid=[True, False])
    return bool(value)
