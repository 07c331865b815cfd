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
    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.resources import LocalStacImagery, PipelineStore
    from rs_embed_pipeline.orchestration.settings import Settings
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


def main() -> None:
    """Launch ``build_embeddings_celery`` for one partition and write ``{run_id, success}`` as JSON.

    ``python -m rs_embed_pipeline_tests.pipeline.s3_definitions <out.json> <tags JSON>``, with
    ``DAGSTER_HOME`` and ``$RS_EMBED_TEST_S3_DEFS`` set. The test runs this in its own process: two
    Dagster runs in one process (one in a thread) can deadlock inside ``logging`` (a run's
    ``dictConfig`` holds the logging module lock while another thread's handler waits for it).
    """
    import sys

    out, tags = sys.argv[1], json.loads(sys.argv[2])
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(celery_job), instance=instance, tags=tags)
        with open(out, "w") as f:
            json.dump({"run_id": result.run_id, "success": result.success}, f)


if __name__ == "__main__":
    main()
