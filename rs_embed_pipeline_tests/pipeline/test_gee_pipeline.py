"""The patch assets through the real Earth Engine client, against the local REST stand-in."""

import dagster as dg
import numpy as np
import pytest

from rs_embed_pipeline.orchestration.resources import EarthEngineImagery
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline_tests.pipeline.conftest import build_test_definitions
from rs_embed_pipeline_tests.providers import ee_standin as S

KEY = dg.MultiPartitionKey({"region": "tiny", "window": "2024-01-01"})


@pytest.fixture
def gee_defs(tmp_path, synthetic_catalog, worker_python, standin):
    imagery = EarthEngineImagery(project="test-project", api_url=standin.url, anonymous=True)
    defs, store_root = build_test_definitions(tmp_path, synthetic_catalog, worker_python, imagery=imagery)
    job = dg.define_asset_job("fetch", selection=["tile_grid", "s2_patches", "s1_patches"])
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged, store_root


def test_patches_from_earth_engine_standin(gee_defs, standin):
    defs, store_root = gee_defs
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("fetch").execute_in_process(partition_key=KEY, instance=instance)
    assert result.success
    s2 = TileStore.open(str(store_root / "patches/s2/tiny/2024-01-01/p224.zarr"), "patches")
    assert s2.status_counts()["ok"] == len(s2.tile_ids) >= 1
    data = s2.read("data", [0])[0]
    assert data.shape == (12, 224, 224)
    # The stand-in's pixels are a deterministic function of the requested grid: the patch must be
    # exactly that function on the tile's own UTM grid (no resampling), band by band.
    import geopandas as gpd

    grid = gpd.read_parquet(store_root / "tile_grid/tiny/2024-01-01.parquet")
    tile = grid[grid["tile_id"] == s2.tile_ids[0]].iloc[0]
    b4 = S.expected_band(tile, S.S2_BASE["B4"])
    np.testing.assert_allclose(data[3], b4, rtol=0, atol=0.5)
    assert s2.settings["provider"]["provider"] == "gee"
    assert all(r.grid["crsCode"] == f"EPSG:{int(tile['utm_epsg'])}" for r in standin.pixel_requests
               if r.grid and str(tile["utm_epsg"]) in r.grid["crsCode"])

    mats = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    stats = mats["s2_patches"]["provider_stats"].value
    assert stats["requests"] >= 1 and stats["retries"] == 0
    assert mats["s2_patches"]["provider"].value == "gee"
    assert mats["s1_patches"]["tiles_ok"].value >= 1


def test_earth_engine_fetches_share_one_pool():
    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.settings import Settings

    defs = build_definitions(Settings.from_env({"RS_EMBED_PROVIDER": "gee", "RS_EMBED_STORE": "/tmp/unused",
                                                   "EE_PROJECT": "p"}))  # a project: needed at load (issue 24)
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("s2_patches")).pools == {"earth_engine"}
    assert "earthengine" in graph.get(dg.AssetKey("s1_patches")).kinds
