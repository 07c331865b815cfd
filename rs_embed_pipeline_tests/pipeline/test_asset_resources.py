"""Each per-model asset gets only the resources it uses, and the embeddings asset refuses a run
whose model resource no longer matches the plan the code location was loaded with."""

from pathlib import Path

import dagster as dg
import pytest

from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.orchestration.settings import Settings

PER_MODEL_KINDS = ("cube", "geoparquet", "cog", "stac", "search_index", "change")


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def defs(store_root) -> dg.Definitions:
    return build_definitions(Settings.from_env({"RS_EMBED_STORE": str(store_root)}))


def _resources(defs: dg.Definitions, name: str) -> set[str]:
    return set(defs.resolve_assets_def(name).required_resource_keys) - {"io_manager"}


def test_only_the_embeddings_asset_takes_a_model_resource_and_only_its_own(defs):
    assert _resources(defs, "terrafm_s2_embeddings") == {"store", "terrafm", "pipes_subprocess_client"}
    assert _resources(defs, "terrafm_s1_embeddings") == {"store", "terrafm", "pipes_subprocess_client"}
    assert _resources(defs, "thor_s2_embeddings") == {"store", "thor", "pipes_subprocess_client"}
    for spec in ("terrafm_s2", "terrafm_s1", "thor_s2"):
        for kind in PER_MODEL_KINDS:
            assert _resources(defs, f"{spec}_{kind}") == {"store"}, f"{spec}_{kind}"


def _run_with_resource_config(defs: dg.Definitions, name: str, model_key: str, model_config: dict) -> str:
    """Materialize one embeddings asset with a run config that overrides its model resource; the
    step's error message."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(name)})
    partitions_def = defs.resolve_assets_def(name).partitions_def
    assert partitions_def is not None
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config={"resources": {model_key: {"config": model_config}}}, instance=instance,
            partition_key=partitions_def.get_partition_keys()[0], raise_on_error=False)
        events = [e.event_type_value for e in result.all_events]
    failures = [e for e in result.all_events if e.is_step_failure]
    assert not result.success and len(failures) == 1
    assert "STEP_UP_FOR_RETRY" not in events  # allow_retries=False: no retry can fix the config
    assert failures[0].step_failure_data.error is not None
    return failures[0].step_failure_data.error.message


def test_a_run_resource_with_another_tile_size_fails_naming_it(defs, store_root):
    message = _run_with_resource_config(defs, "thor_s2_embeddings", "thor", {"worker_python": "python", "image_size": 224})
    assert ("thor_s2: this run's thor resource has tile size 224, the code location was loaded with 288"
            in message)
    assert "reload the code location" in message
    assert not (store_root / "embeddings").exists()  # refused before the worker started


def test_a_run_resource_without_the_modality_fails_naming_it(defs, store_root):
    message = _run_with_resource_config(defs, "terrafm_s1_embeddings", "terrafm", {"worker_python": "python", "modalities": ["s2"]})
    assert "terrafm_s1: the terrafm resource embeds modalities ['s2'], not 's1'" in message
    assert not (store_root / "embeddings").exists()
