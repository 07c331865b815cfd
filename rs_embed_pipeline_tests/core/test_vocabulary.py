"""The shared vocabulary, the sensor-options parser, the retry backoff and the tile-row reader."""

import random

import pandas as pd
import pytest

from rs_embed_pipeline.core import vocabulary as V
from rs_embed_pipeline.providers import ProviderError, SensorOptionError, SensorOptions
from rs_embed_pipeline.providers.base import Tile, backoff_s, tile_rows


def test_one_definition_of_each_word():
    import rs_embed_pipeline.core.inspection as inspection
    import rs_embed_pipeline.providers as providers
    import rs_embed_pipeline.providers.base as base
    import rs_embed_pipeline.stores.tile_store as tile_store

    # stored codes: never renumbered (0 = the fill value = pending)
    assert V.STATUS_CODES == {"pending": 0, "ok": 1, "no_data": 2, "failed": 3}
    assert V.STATUS_NAMES == {0: "pending", 1: "ok", 2: "no_data", 3: "failed"}
    assert set(V.TILE_STATUSES) == set(V.STATUS_CODES) and set(V.PATCH_STATUSES) < set(V.TILE_STATUSES)
    assert tile_store.STATUS_CODES is V.STATUS_CODES and tile_store.STATUS_NAMES is V.STATUS_NAMES
    assert base.PATCH_STATUSES is V.PATCH_STATUSES and providers.COMPOSITES is V.COMPOSITES
    assert base.MODALITIES is V.MODALITIES and base.S1_BANDS == V.S1_POLARISATIONS == ("VV", "VH")
    assert inspection.UNITS is V.PROVIDER_UNITS
    assert V.status_code("no_data") == 2
    with pytest.raises(ValueError, match=r"status 'done' is not one of \['pending', 'ok', 'no_data', 'failed'\]"):
        V.status_code("done")
    assert V.check_modality(" S1 ") == "s1"
    with pytest.raises(ValueError, match=r"unknown modality 's3'; valid: \['s2', 's1'\]"):
        V.check_modality("s3")


def test_sensor_options_parse():
    s2 = SensorOptions.parse("s2", {})
    assert (s2.composite, s2.cloudy_pct, s2.fill_value, s2.orbit) == ("median", 30.0, 0.0, None)
    s2 = SensorOptions.parse("s2", {"cloudy_pct": None}, defaults={"composite": "mosaic", "cloudy_pct": 10})
    assert (s2.composite, s2.cloudy_pct) == ("mosaic", None)
    s1 = SensorOptions.parse("s1", {"orbit": "descending", "use_float_linear": False, "fill_value": -1})
    assert (s1.orbit, s1.use_float_linear, s1.fill_value, s1.cloudy_pct) == ("DESCENDING", False, -1.0, None)


@pytest.mark.parametrize("modality, options, option, match", [
    ("s3", {}, "modality", r"unknown modality 's3'; valid: \['s2', 's1'\]"),
    ("s2", {"cloud": 5}, "cloud", r"unknown s2 sensor option\(s\) \['cloud'\]; valid: \['composite', 'cloudy_pct'"),
    ("s1", {"cloudy_pct": 5}, "cloudy_pct", r"unknown s1 sensor option.*'orbit', 'use_float_linear'"),
    ("s2", {"composite": "max"}, "composite", r"unknown composite 'max'; valid: \['median', 'mosaic'\]"),
    ("s2", {"cloudy_pct": 150}, "cloudy_pct", r"cloudy_pct must be in \[0, 100\] or None, got 150.0"),
    ("s2", {"cloudy_pct": "x"}, "cloudy_pct", r"cloudy_pct must be a number"),
    ("s2", {"fill_value": "x"}, "fill_value", r"fill_value must be a number, got 'x'"),
    ("s1", {"orbit": "north"}, "orbit", r"unknown orbit 'north'; valid: \['ASCENDING', 'DESCENDING'\] or None"),
    ("s1", {"use_float_linear": "no"}, "use_float_linear", r"use_float_linear must be true or false, got 'no'"),
])
def test_sensor_option_errors_name_the_option_and_the_valid_values(modality, options, option, match):
    with pytest.raises(SensorOptionError, match=match) as err:
        SensorOptions.parse(modality, options)
    assert err.value.option == option
    # a ProviderError for provider callers, a ValueError for resource fields
    assert isinstance(err.value, ProviderError) and isinstance(err.value, ValueError)


def test_backoff_is_exponential_with_jitter():
    rng = random.Random(0)
    for attempt in range(5):
        waits = [backoff_s(2.0, attempt, rng) for _ in range(200)]
        assert 2.0 * 2**attempt * 0.5 <= min(waits) and max(waits) <= 2.0 * 2**attempt * 1.5
        assert len(set(waits)) > 100  # jittered: parallel callers do not retry in step
    assert backoff_s(0.0, 3) == 0.0


def test_tile_rows_reads_a_frame_or_an_iterable_of_tiles_and_mappings():
    df = pd.DataFrame({"tile_id": ["a", "b"], "size_px": [4, 4]})
    assert tile_rows(df) == [{"tile_id": "a", "size_px": 4}, {"tile_id": "b", "size_px": 4}]
    tile = Tile("c", 32633, 0.0, 0.0, 4, 10.0)
    rows = tile_rows(iter([{"tile_id": "a"}, tile]))
    assert rows == [{"tile_id": "a"}, tile] and rows[1] is tile  # mappings are checked later, alone
    assert tile_rows([]) == [] and tile_rows(df.iloc[:0]) == []
    # anything else names the accepted forms
    for bad in (None, {"tile_id": "a"}, df.iloc[0], "a", tile, [("bad",)], [df.iloc[0]]):
        with pytest.raises(TypeError, match=r"a \(Geo\)DataFrame of tile-grid rows or an iterable of Tile / mappings"):
            tile_rows(bad)
