"""Fixtures of the answers tests: the pipeline tests' worker fixture, and one planted two-window run."""

import os

import dagster as dg
import pytest

from rs_embed_pipeline_tests.pipeline.conftest import build_test_definitions, worker_python  # noqa: F401

from rs_embed_pipeline_tests.products.answers import planted as P

ANSWER_CHAIN = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube", "terrafm_s2_search_index",
                "terrafm_s2_change"]
CHANGE_THRESHOLD = 0.01   # the reduced random-weight test model moves little: its noise is < 0.005
RUN_CONFIG = {"ops": {"terrafm_s2_cube": {"config": {"quantization": "int8_per_cell"}},
                      "terrafm_s2_change": {"config": {"distance_threshold": CHANGE_THRESHOLD,
                                                       "max_changed_share": 0.2}}}}


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory, worker_python):  # noqa: F811
    """Region "twins" (3 x 2 TerraFM tiles, planted patterns), windows 1 and 2, through the
    int8 cube, the search index and the change asset, in one Dagster instance."""
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    tmp = tmp_path_factory.mktemp("answers")
    bbox = P.region_bbox()
    catalog = generate_synthetic_catalog(tmp / "catalog", bbox, P.WINDOW_1, "2024-07-01", seed=0, pad_m=400.0,
                                         s1=False, s2_revisit_days=15, planted=P.planted())
    defs, store_root = build_test_definitions(tmp, catalog, worker_python, regions=[{"name": "twins", "bbox": bbox}])
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[dg.define_asset_job("answers", selection=ANSWER_CHAIN)])
                               ).resolve_job_def("answers")
    with dg.instance_for_test() as instance:
        results = {}
        for window in (P.WINDOW_1, P.WINDOW_2):
            key = dg.MultiPartitionKey({"region": "twins", "window": window})
            results[window] = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False,
                                                     run_config=RUN_CONFIG)
        yield {"results": results, "instance": instance, "store_root": store_root, "catalog": catalog,
               "env": {**os.environ}}
