"""The whole graph for one partition of a small region, with a real Dagster instance."""

import dagster as dg
import numpy as np
import pytest
import xarray as xr
from pyproj import CRS

from rs_embed_pipeline.stores.cube import TIME_BLOCK
from rs_embed_pipeline_tests.pipeline.conftest import WINDOW, build_test_definitions

CUBES = {"terrafm_s2_cube": "terrafm_b_s2", "terrafm_s1_cube": "terrafm_b_s1", "thor_s2_cube": "thor_1_0_base_s2"}
RUN_METADATA_KEYS = {
    "model_id", "weights_source", "weights_sha256", "modality", "normalization", "group_merge",
    "image_size", "patch_size", "ground_cover_m", "s2_branch", "provider", "collection", "composite",
    "cloudy_pct", "tile_status", "tiles_ok", "store_uri",
}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, synthetic_catalog, worker_python):
    defs, store_root = build_test_definitions(tmp_path_factory.mktemp("e2e"), synthetic_catalog, worker_python)
    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def("build_embeddings")
        key = dg.MultiPartitionKey({"region": "tiny", "window": WINDOW})
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        yield {"result": result, "instance": instance, "store_root": store_root, "key": key}


def test_run_succeeds_and_checks_pass(materialized):
    result = materialized["result"]
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    checks = {(e.asset_check_evaluation_data.asset_check_key.name): e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks["all_values_finite"] is True
    assert checks["dims_and_crs"] is True


@pytest.mark.parametrize("asset_name", sorted(CUBES))
def test_cube_opens_with_xarray_georeferenced(materialized, asset_name):
    cube_uri = materialized["store_root"] / "cubes" / CUBES[asset_name] / "tiny.zarr"
    ds = xr.open_zarr(cube_uri, group="EPSG32632/grid", consolidated=False)
    emb = ds["embedding"]
    assert emb.dims == ("time", "y", "x", "feature")
    # The time axis is allocated for the partitions definition's range plus a margin (stores/cube/time_axis.py).
    assert emb.sizes["time"] % TIME_BLOCK == 0 and emb.sizes["feature"] == 64
    assert str(ds["time"].values[0])[:10] == WINDOW
    assert ds["window_filled"].values.tolist() == [1] + [0] * (emb.sizes["time"] - 1)
    assert CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_epsg() == 32632
    assert emb.attrs["grid_mapping"] == "spatial_ref"
    # cell size = tile side / feature-map cells: 224 px * 10 m / 14 for TerraFM, 288 * 10 / 18 for THOR
    expected_cell = 160.0
    assert np.allclose(np.diff(ds["x"].values), expected_cell)
    assert np.allclose(np.diff(ds["y"].values), -expected_cell)
    assert float(ds["x"].values[0]) % expected_cell == pytest.approx(expected_cell / 2)
    values = emb.isel(time=0).values
    assert np.isfinite(values).all(), "every tile of the tiny region has imagery, so no cell is empty"
    pooled = xr.open_zarr(cube_uri, group="EPSG32632/pooled", consolidated=False)["embedding"]
    assert pooled.dims == ("time", "y", "x", "feature")
    assert np.isfinite(pooled.isel(time=0).values).all()


def test_metadata_recorded_on_instance(materialized):
    instance = materialized["instance"]
    for asset_name in list(CUBES) + ["terrafm_s2_embeddings", "thor_s2_embeddings"]:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset_name))
        assert event is not None, asset_name
        md = event.asset_materialization.metadata
        missing = RUN_METADATA_KEYS - set(md)
        assert not missing, f"{asset_name} lacks {missing}"
        assert md["tiles_ok"].value >= 1
        assert md["provider"].value == "local_stac"
        assert md["synthetic_imagery"].value is True
        assert len(md["weights_sha256"].value) == 64
    cube_md = instance.get_latest_materialization_event(dg.AssetKey("thor_s2_cube")).asset_materialization.metadata
    assert cube_md["preview"].value.startswith("![First three principal components")
    assert "data:image/png;base64," in cube_md["preview"].value
    assert cube_md["group_merge"].value == "mean" and cube_md["patch_size"].value == 16
    assert cube_md["ground_cover_m"].value == 2880.0
    tf_md = instance.get_latest_materialization_event(dg.AssetKey("terrafm_s2_cube")).asset_materialization.metadata
    assert tf_md["s2_branch"].value == "l2a" and tf_md["image_size"].value == 224
    for asset_name in ("terrafm_s2_embeddings", "terrafm_s1_embeddings", "thor_s2_embeddings"):
        md = instance.get_latest_materialization_event(dg.AssetKey(asset_name)).asset_materialization.metadata
        assert md["float32_matmul_precision"].value == "highest", asset_name


# rs-embed's page fields (issue #6) next to the docs/architecture.md ones, the same keys on every materialization.
PARITY_KEYS = {
    "modality", "source", "grid_type", "weight_file", "weight_file_size", "model_key", "normalization",
    "group_merge", "patch_size", "ground_cover_m", "grid_kind", "cls_removed", "pooling", "scale_m",
    "fill_value", "orbit", "use_float_linear", "composite", "cloudy_pct", "pretrained", "hf_repo",
}


def test_parity_metadata_same_keys_on_every_materialization(materialized):
    from rs_embed_pipeline.orchestration.assets.embeddings import run_metadata  # noqa: F401 - the one builder of these keys

    instance = materialized["instance"]
    key_sets = {}
    for asset_name in list(CUBES) + ["terrafm_s2_embeddings", "terrafm_s1_embeddings", "thor_s2_embeddings"]:
        md = instance.get_latest_materialization_event(dg.AssetKey(asset_name)).asset_materialization.metadata
        assert PARITY_KEYS <= set(md), f"{asset_name} lacks {PARITY_KEYS - set(md)}"
        key_sets[asset_name] = frozenset(k for k in md if k in PARITY_KEYS | RUN_METADATA_KEYS)
    assert len(set(key_sets.values())) == 1, key_sets
    thor = instance.get_latest_materialization_event(dg.AssetKey("thor_s2_cube")).asset_materialization.metadata
    assert thor["model_key"].value == "thor_v1_base" and thor["grid_kind"].value == "thor_group_grid"
    assert thor["pooling"].value == "mean" and thor["cls_removed"].value is False
    assert thor["source"].value == thor["collection"].value == "synthetic-s2-l2a"
    assert thor["weight_file"].value.endswith("weights.pt") and thor["weight_file_size"].value > 0
    s1 = instance.get_latest_materialization_event(dg.AssetKey("terrafm_s1_embeddings")).asset_materialization.metadata
    assert s1["use_float_linear"].value is True and s1["orbit"].value == "both"
    assert s1["grid_type"].value == "feature_map" and s1["pooling"].value == "cls_token" and s1["cls_removed"].value
