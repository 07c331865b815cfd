"""Sensor options travel as one parsed object: the imagery resource parses its fields once, the
patch fetch hands that object to the provider, and bad fields still fail the code-location load
with rs-embed's messages."""

from __future__ import annotations

import pytest

from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
from rs_embed_pipeline.orchestration.definitions import validate_resources
from rs_embed_pipeline.orchestration.patch_fetch import fetch_into_stores
from rs_embed_pipeline.orchestration.resources import (
    EarthEngineImagery,
    LocalStacImagery,
    StacImagery,
    TerraFMResource,
)
from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog
from rs_embed_pipeline.providers.sensor_options import EarthEngineSensorOptions, SensorOptions
from rs_embed_pipeline.stores import ArraySpec, TileStore

BBOX = (14.900, 45.000, 14.914, 45.010)
START, END = "2024-01-01", "2024-04-01"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return generate_synthetic_catalog(tmp_path_factory.mktemp("synthetic"), BBOX, START, END, seed=0,
                                      s2_revisit_days=15)


def test_the_resources_parsed_options_reach_the_provider_parsed_once(catalog, tmp_path, monkeypatch):
    parses: list[str] = []
    parse = SensorOptions.parse.__func__  # type: ignore[attr-defined]

    def counted(cls, modality, options, **kw):
        parses.append(modality)
        return parse(cls, modality, options, **kw)

    monkeypatch.setattr(SensorOptions, "parse", classmethod(counted))
    imagery = LocalStacImagery(catalog_path=str(catalog), composite="mosaic", fill_value=-1.0, max_workers=1)
    provider = imagery.build()
    received: list[dict] = []
    fetch = provider.fetch_patches

    def recording(*args, **kwargs):
        received.append(kwargs)
        return fetch(*args, **kwargs)

    monkeypatch.setattr(provider, "fetch_patches", recording)
    tiles = build_tile_grid(bbox_aoi(*BBOX), 32, 10.0).iloc[:4].drop(columns="geometry").reset_index(drop=True)
    store = TileStore.create_or_open(
        str(tmp_path / "p32.zarr"), "patches", tile_ids=list(tiles["tile_id"]),
        arrays=[ArraySpec("data", (1, 32, 32), ("band", "y", "x")),
                ArraySpec("valid", (32, 32), ("y", "x"), dtype="bool", fill_value=False)],
        fingerprint="f", attrs={"size_px": 32})

    options = imagery.sensor_options("s2")
    result = fetch_into_stores(provider, {32: store}, tiles, start=START, end=END, modality="s2", bands=["B4"],
                               sensor_options=options)

    assert parses == ["s2"]  # the resource's parse; the provider parsed nothing again
    assert [call["options"] for call in received] == [options] and received[0]["options"] is options
    assert set(received[0]) == {"start", "end", "modality", "bands", "options"}  # no option keywords
    assert result.fetched == 4 and store.status_counts()["ok"] >= 1
    ok = store.indices_with_status("ok").tolist()
    assert all(store.tile_meta(i)["composite"] == "mosaic" and store.tile_meta(i)["fill_value"] == -1.0
               for i in ok)


def test_each_resource_parses_into_its_providers_options():
    s2 = LocalStacImagery(catalog_path="x").sensor_options("s2")
    assert type(s2) is SensorOptions and s2.as_dict() == {"composite": "median", "fill_value": 0.0, "cloudy_pct": 30,
                                                          "cloud_mask": "scl"}
    s1 = EarthEngineImagery(s1_relax_iw_on_empty=False).sensor_options("s1")
    assert type(s1) is EarthEngineSensorOptions and (s1.require_iw, s1.relax_iw_on_empty) == (True, False)
    # S2's Cloud Score+ settings stay the provider's: the recorded options are the shared ones
    assert EarthEngineImagery().sensor_options("s2").as_dict() == {"composite": "median", "fill_value": 0.0,
                                                                    "cloudy_pct": 30, "cloud_mask": "scl"}


@pytest.mark.parametrize("imagery, message", [
    (EarthEngineImagery(s1_orbit="north"),
     "Invalid resource field imagery.s1_orbit: Unknown S1 orbit='north'. Use 'ASCENDING' or 'DESCENDING'."),
    (EarthEngineImagery(composite="max"),
     "Invalid resource field imagery.composite: Unknown composite='max'. Use 'median' or 'mosaic'."),
    (StacImagery(cloudy_pct=150),
     "Invalid resource field imagery.cloudy_pct: cloudy_pct must be within [0, 100], got 150.0"),
    (LocalStacImagery(catalog_path="x", s1_orbit="up"),
     "Invalid resource field imagery.s1_orbit: Unknown S1 orbit='up'. Use 'ASCENDING' or 'DESCENDING'."),
])
def test_bad_sensor_options_still_fail_the_load_with_rs_embeds_messages(imagery, message):
    resources = {"imagery": imagery, "terrafm": TerraFMResource(worker_python="python", modalities=["s2", "s1"])}
    with pytest.raises(ValueError) as err:
        validate_resources(resources)
    assert str(err.value) == message
