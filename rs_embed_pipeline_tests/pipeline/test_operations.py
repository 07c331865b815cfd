"""Operations (issue 11, point 8): provider log lines in the run's event log, the preview's size
cap, metadata order, and the standard metadata keys of tile_grid."""

import importlib
import logging
import pkgutil

import dagster as dg
import numpy as np
import yaml

from rs_embed_pipeline_tests.pipeline.conftest import REPO


def test_provider_loggers_are_managed_and_reach_the_event_log():
    import rs_embed_pipeline.providers as providers

    managed = yaml.safe_load((REPO / "dagster.yaml").read_text())["python_logs"]["managed_python_loggers"]
    # Every module logger of the providers is below a managed logger name.
    names = []
    for info in pkgutil.walk_packages(providers.__path__, prefix="rs_embed_pipeline.providers."):
        module = importlib.import_module(info.name)
        names += [v.name for v in vars(module).values() if isinstance(v, logging.Logger)]
    assert names, "no provider logger found"
    assert all(any(n == m or n.startswith(m + ".") for m in managed) for n in names), (names, managed)

    @dg.asset
    def fetches() -> None:
        logging.getLogger(names[0]).info("block 3/7 planned")

    with dg.instance_for_test(overrides={"python_logs": {"managed_python_loggers": managed,
                                                         "python_log_level": "INFO"}}) as instance:
        result = dg.materialize([fetches], instance=instance)
        messages = [r.user_message for r in instance.all_logs(result.run_id)]
    assert "block 3/7 planned" in messages


def test_preview_is_capped_in_size_and_small_ones_enlarged():
    from PIL import Image
    import io

    from rs_embed_pipeline.products.pictures import PREVIEW_MAX_SIDE
    from rs_embed_pipeline.products.pictures import png as preview_png

    rng = np.random.default_rng(0)
    big = preview_png(rng.integers(0, 255, (2000, 1200, 3), dtype=np.uint8))
    assert Image.open(io.BytesIO(big)).size == (307, PREVIEW_MAX_SIDE)  # (w, h), aspect kept
    small = preview_png(rng.integers(0, 255, (3, 5, 3), dtype=np.uint8))
    assert Image.open(io.BytesIO(small)).size == (430, 258)  # whole factor 86, within the cap
    wide = preview_png(rng.integers(0, 255, (4, 400, 3), dtype=np.uint8))
    assert Image.open(io.BytesIO(wide)).size == (400, 4)  # no factor fits under the cap


def test_metadata_order_puts_outcome_and_varying_settings_first():
    from rs_embed_pipeline.orchestration.assets.embeddings import METADATA_ORDER
    from rs_embed_pipeline.orchestration.metadata import ordered_for_people

    md = {"weight_file": 1, "model_id": 2, "tile_status": 3, "zzz": 4, "normalization": 5}
    out = ordered_for_people(md, METADATA_ORDER)
    assert list(out) == ["tile_status", "model_id", "normalization", "weight_file", "zzz"]
    assert out == md


def test_metadata_order_puts_settings_that_do_not_apply_last_and_keeps_them():
    from rs_embed_pipeline.orchestration.assets.embeddings import METADATA_ORDER
    from rs_embed_pipeline.orchestration.metadata import ordered_for_people

    md = {"orbit": "n/a", "weight_file": dg.MetadataValue.text("n/a"), "model_id": "thor", "scale_m": 10.0,
          "s2_branch": dg.MetadataValue.text("l2a")}
    out = ordered_for_people(md, METADATA_ORDER)
    # orbit is in METADATA_ORDER but does not apply: it goes with the other n/a entries, in their order
    assert list(out) == ["model_id", "s2_branch", "scale_m", "orbit", "weight_file"]
    assert out == md


def test_tile_grid_has_standard_metadata(tmp_path, synthetic_catalog, worker_python):
    from rs_embed_pipeline.orchestration.assets.tile_grid import TILE_GRID_SCHEMA
    from rs_embed_pipeline_tests.pipeline.conftest import build_test_definitions

    defs, store = build_test_definitions(tmp_path, synthetic_catalog, worker_python)
    assert defs.resolve_assets_def("tile_grid").metadata_by_key[dg.AssetKey("tile_grid")][
        "dagster/column_schema"] == TILE_GRID_SCHEMA
    key = dg.MultiPartitionKey({"region": "tiny", "window": "2024-01-01"})
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[dg.define_asset_job("grid", ["tile_grid"])]))
    with dg.instance_for_test() as instance:
        result = job.resolve_job_def("grid").execute_in_process(partition_key=key, instance=instance)
    (mat,) = [e.materialization for e in result.get_asset_materialization_events()]
    md = mat.metadata
    assert md["dagster/row_count"].value == md["tiles"].value >= 2
    assert md["dagster/uri"].value == str(store / "tile_grid/tiny/2024-01-01.parquet")
    columns = [c.name for c in md["dagster/column_schema"].schema.columns]
    import geopandas as gpd

    assert columns == list(gpd.read_parquet(md["dagster/uri"].value).columns)
