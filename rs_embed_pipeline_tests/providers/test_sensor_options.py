"""Sensor options at the provider boundary: one parser for every provider, parsed objects passed
through as they are, keywords parsed once, the Earth Engine options in the same typed object."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rs_embed_pipeline.providers import LocalStacProvider, SensorOptionError, SensorOptions
from rs_embed_pipeline.providers.sensor_options import EarthEngineSensorOptions

from . import ee_standin as S
from .conftest import END, START
from .gee_fetch import Q1, fetch

EE_DEFAULTS = {"cloud_score_plus": True, "cs_threshold": 0.4, "cs_band": "cs"}


@pytest.fixture
def count_parses(monkeypatch):
    """Counts SensorOptions.parse calls (the subclass's included: it inherits the classmethod)."""
    calls: list[tuple[str, str]] = []
    parse = SensorOptions.parse.__func__  # type: ignore[attr-defined]

    def counted(cls, modality, options, **kw):
        calls.append((cls.__name__, modality))
        return parse(cls, modality, options, **kw)

    monkeypatch.setattr(SensorOptions, "parse", classmethod(counted))
    return calls


def test_as_dict_round_trips_and_keeps_the_configured_number_type():
    for options in (SensorOptions.parse("s2", {"cloudy_pct": 30, "composite": "mosaic"}),
                    SensorOptions.parse("s2", {"cloudy_pct": None, "fill_value": -1}),
                    SensorOptions.parse("s1", {"orbit": "descending", "use_float_linear": False}),
                    EarthEngineSensorOptions.parse("s1", {"require_iw": False}),
                    EarthEngineSensorOptions.parse("s2", {"cs_band": "cs", "cs_threshold": 0.5})):
        assert type(options).parse(options.modality, options.as_dict()) == options
    s2 = SensorOptions.parse("s2", {"cloudy_pct": 30})
    assert json.dumps(s2.as_dict()) == '{"composite": "median", "fill_value": 0.0, "cloudy_pct": 30, "cloud_mask": "scl"}'
    assert SensorOptions.parse("s2", {"cloudy_pct": 30.0}).cloudy_pct == 30.0
    assert SensorOptions.parse("s1", {}).as_dict() == {"composite": "median", "fill_value": 0.0,
                                                         "use_float_linear": True}
    # Earth Engine: S2's Cloud Score+ settings and cloud mask are recorded only when given (else the provider's)
    assert EarthEngineSensorOptions.parse("s2", {}).as_dict() == {"composite": "median", "fill_value": 0.0,
                                                                   "cloudy_pct": 30.0}
    assert EarthEngineSensorOptions.parse("s1", {}).as_dict()["require_iw"] is True


def test_for_fetch_passes_parsed_options_through_and_parses_keywords_once(count_parses):
    parsed = SensorOptions.parse("s2", {"composite": "mosaic"})
    count_parses.clear()
    assert SensorOptions.for_fetch("s2", parsed, {}, defaults={"composite": "median"}) is parsed
    assert count_parses == []
    got = SensorOptions.for_fetch("s2", None, {"cloudy_pct": 10}, defaults={"composite": "mosaic"})
    assert (got.composite, got.cloudy_pct) == ("mosaic", 10) and count_parses == [("SensorOptions", "s2")]


@pytest.mark.parametrize("cls, modality, options, keywords, match", [
    (SensorOptions, "s2", SensorOptions("s2"), {"composite": "mosaic"},
     r"sensor options given twice: options= and the keyword\(s\) \['composite'\]; pass one or the other"),
    (SensorOptions, "s1", SensorOptions("s2"), {}, r"options are for modality 's2', the fetch asks for 's1'"),
    (SensorOptions, "s1", EarthEngineSensorOptions("s1"), {},
     r"options must be one of \['SensorOptions'\], got EarthEngineSensorOptions"),
    (EarthEngineSensorOptions, "s2", {"composite": "median"}, {},
     r"options must be one of \['EarthEngineSensorOptions', 'SensorOptions'\], got dict"),
])
def test_for_fetch_refuses_options_it_cannot_take(cls, modality, options, keywords, match):
    with pytest.raises(SensorOptionError, match=match):
        cls.for_fetch(modality, options, keywords)


def test_earth_engine_options_extend_the_shared_ones():
    # a plain SensorOptions (another resource's) takes the provider's Cloud Score+ settings and IW defaults
    s2 = EarthEngineSensorOptions.for_fetch("s2", SensorOptions.parse("s2", {"cloudy_pct": 5}), {},
                                            defaults=EE_DEFAULTS)
    assert (type(s2), s2.cloudy_pct, s2.cloud_score_plus, s2.cs_threshold, s2.cs_band) == (
        EarthEngineSensorOptions, 5, True, 0.4, "cs")
    s1 = EarthEngineSensorOptions.for_fetch("s1", SensorOptions.parse("s1", {"orbit": "ASCENDING"}), {},
                                            defaults=EE_DEFAULTS)
    assert (s1.orbit, s1.require_iw, s1.relax_iw_on_empty, s1.cloud_score_plus) == ("ASCENDING", True, True, None)
    # a setting given wins over the provider's
    own = EarthEngineSensorOptions.for_fetch("s2", None, {"cs_threshold": 0.9}, defaults=EE_DEFAULTS)
    assert (own.cs_threshold, own.cs_band) == (0.9, "cs")
    for options, match in (({"cs_threshold": 2}, r"cs_threshold must be within \[0, 1\], got 2.0"),
                           ({"cs_band": "qa"}, r"cs_band 'qa' is not one of \['cs_cdf', 'cs'\]"),
                           ({"cloud_score_plus": "yes"}, r"cloud_score_plus must be true or false, got 'yes'")):
        with pytest.raises(SensorOptionError, match=match):
            EarthEngineSensorOptions.parse("s2", options)
    with pytest.raises(SensorOptionError, match=r"unknown s2 sensor option\(s\) \['cs_band'\]"):
        SensorOptions.parse("s2", {"cs_band": "cs"})  # the STAC providers' options have no Cloud Score+


def test_stac_provider_takes_parsed_options_like_keywords(synthetic_catalog, inner_tiles, count_parses):
    provider = LocalStacProvider(synthetic_catalog, max_workers=1)
    tiles = inner_tiles.iloc[:2]
    options = SensorOptions.parse("s2", {"composite": "mosaic", "fill_value": -1.0})
    count_parses.clear()
    parsed = {p.tile_id: p for p in provider.fetch_patches(tiles, START, END, "s2", bands=["B4"], options=options)}
    assert count_parses == []  # parsed once, by the caller
    by_keywords = {p.tile_id: p for p in provider.fetch_patches(tiles, START, END, "s2", bands=["B4"],
                                                               composite="mosaic", fill_value=-1.0)}
    assert count_parses == [("SensorOptions", "s2")]
    for tid, p in parsed.items():
        assert p.status == "ok" and p.meta["composite"] == "mosaic" and p.meta["fill_value"] == -1.0
        np.testing.assert_array_equal(p.data, by_keywords[tid].data)
    with pytest.raises(SensorOptionError, match="given twice"):
        provider.fetch_patches(tiles, START, END, "s2", options=options, composite="median")


def test_earth_engine_provider_takes_parsed_options_like_keywords(standin, make_provider, count_parses):
    rows = S.tile_rows(1)
    options = EarthEngineSensorOptions.parse("s2", {"cloud_score_plus": True, "cs_threshold": 0.6})
    first, second = make_provider(), make_provider()  # each checks its own defaults once, here
    count_parses.clear()
    [parsed] = fetch(first, rows, bands=["B4"], options=options).values()
    assert count_parses == []
    [by_keywords] = fetch(second, rows, bands=["B4"], cloud_score_plus=True, cs_threshold=0.6).values()
    assert count_parses == [("EarthEngineSensorOptions", "s2")]
    np.testing.assert_array_equal(parsed.data, by_keywords.data)
    np.testing.assert_array_equal(parsed.valid, by_keywords.valid)
    assert parsed.meta["filters"] == by_keywords.meta["filters"]
    assert parsed.meta["filters"]["CLOUDY_PIXEL_PERCENTAGE_lte"] == 30  # a whole percentage, as before
    with pytest.raises(SensorOptionError, match=r"GEE provider: options are for modality 's2', the fetch asks for 's1'"):
        make_provider().fetch_patches(rows, *Q1, "s1", options=options)
