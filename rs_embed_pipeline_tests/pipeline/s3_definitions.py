"""Definitions of the S3 / Celery tests, importable by Celery worker processes.

A Celery worker rebuilds the job from a code pointer (``dg.reconstructable``), so the job must come
from a module-level function; its parameters travel in the ``RS_EMBED_TEST_S3_DEFS`` environment
variable (JSON: config, catalog, worker_python, store_root, celery_broker), which the test sets in
its own process and in the workers' environment.
"""

from __future__ import annotations

import json
import os

import dagster as dg

ENV_VAR = "RS_EMBED_TEST_S3_DEFS"


def s3_test_definitions(config: str, catalog: str, worker_python: str, store_root: str,
                        celery_broker: str | None = None) -> dg.Definitions:
    """The pipeline over a tiny region with every store under ``store_root`` (``s3://...``)."""
    from rs_embed_pipeline.definitions import build_definitions
    from rs_embed_pipeline.resources import LocalStacImagery, PipelineStore
    from rs_embed_pipeline.settings import Settings
    from rs_embed_pipeline_tests.pipeline.conftest import reduced_model_resources

    env = {"RS_EMBED_CONFIG": config, "RS_EMBED_STORE": store_root}
    if celery_broker:
        env["RS_EMBED_CELERY_BROKER"] = celery_broker
    settings = Settings.from_env(env)
    resources = {
        "store": PipelineStore(root=store_root),
        "imagery": LocalStacImagery(catalog_path=catalog),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        **reduced_model_resources(worker_python),
    }
    return build_definitions(settings, resources=resources)


def celery_job() -> dg.JobDefinition:
    """``build_embeddings_celery`` of the definitions described by ``$RS_EMBED_TEST_S3_DEFS``."""
    return s3_test_definitions(**json.loads(os.environ[ENV_VAR])).resolve_job_def("build_embeddings_celery")
