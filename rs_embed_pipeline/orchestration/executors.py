"""Where steps run and how a crashed step is retried: one executor for every job, step tags that
place steps in a cluster, and one step retry policy.

Chosen in one place (``definitions.py`` calls :func:`executor_for` and :func:`step_retry_policy`)
from :class:`rs_embed_pipeline.orchestration.settings.Settings`:

| ``RS_EMBED_EXECUTOR`` | executor of every job (the implicit asset job of UI materializations and backfills included) |
| --- | --- |
| ``multiprocess`` (default) | one process per step on this machine |
| ``k8s`` | dagster-k8s ``k8s_job_executor``: one Kubernetes Job per step (Helm deployment in ``deploy/``) |
| ``celery`` | dagster-celery: steps go to Celery workers through ``RS_EMBED_CELERY_BROKER`` |

``build_embeddings_celery`` always runs on Celery, whatever ``RS_EMBED_EXECUTOR`` says (a
broker from ``RS_EMBED_CELERY_BROKER``, or from run config ``execution: config: broker: ...``).

The embedding steps carry :data:`GPU_STEP_TAGS`: a ``dagster-k8s/config`` tag that puts their pod
on the GPU node pool (node selector, ``nvidia.com/gpu`` toleration and limit, a persistent Hugging
Face cache volume) and a ``dagster-celery/queue`` tag that sends them to the ``gpu`` Celery queue.
Each executor reads only its own tag; the multiprocess executor reads neither.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:  # pragma: no cover
    from rs_embed_pipeline.orchestration.settings import Settings


# The node label and taint of the GPU node pool (deploy/README.md says how to label the pool).
GPU_NODE_SELECTOR = {"rs-embed/node-pool": "gpu"}
# The Celery queue of the GPU steps: start GPU workers with `-q gpu`, CPU workers on the default
# queue `dagster` (deploy/README.md).
GPU_QUEUE = "gpu"
# A PersistentVolumeClaim that keeps downloaded weights between step pods (deploy/README.md creates
# it); mounted at the image's HF_HOME, so the hub cache is $HF_HOME/hub.
HF_CACHE_CLAIM = "rs-embed-hf-cache"
HF_CACHE_MOUNT = "/opt/hf-cache"
GPU_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
        },
        # The worker venv in the image (Dockerfile); the step's Pipes subprocess runs it on the GPU.
        "env": [{"name": "RS_EMBED_DEVICE", "value": "cuda"}, {"name": "HF_HOME", "value": HF_CACHE_MOUNT}],
        "volume_mounts": [{"name": "hf-cache", "mount_path": HF_CACHE_MOUNT}],
    },
    "pod_spec_config": {
        "node_selector": GPU_NODE_SELECTOR,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "hf-cache", "persistent_volume_claim": {"claim_name": HF_CACHE_CLAIM}}],
    },
}
# Tag values must be strings; dagster-k8s parses this one as JSON.
GPU_STEP_TAGS = {
    "dagster-k8s/config": json.dumps(GPU_STEP_K8S_CONFIG, sort_keys=True),
    "dagster-celery/queue": GPU_QUEUE,
}


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """The executor of every job (``dg.Definitions(executor=...)``), from ``RS_EMBED_EXECUTOR``."""
    if settings.executor == "k8s":
        from dagster_k8s import k8s_job_executor  # noqa: PLC0415 - optional extra, needed only when the k8s executor is chosen

        return k8s_job_executor
    if settings.executor == "celery":
        return celery_executor(settings)
    return dg.multiprocess_executor


def celery_executor(settings: Settings) -> dg.ExecutorDefinition:
    """dagster-celery with the configured broker (Redis or RabbitMQ); see ``deploy/celery``."""
    from dagster_celery import celery_executor as executor  # noqa: PLC0415 - optional extra, needed only when the celery executor is chosen

    if not settings.celery_broker:
        return executor  # broker and backend from run config
    return executor.configured(
        {"broker": settings.celery_broker, "backend": settings.celery_backend or settings.celery_broker},
        name="celery",
    )


def step_retry_policy(settings: Settings) -> dg.RetryPolicy:
    """The retry policy of every asset step: a step killed mid-write (preemption, OOM, a lost node,
    a SIGKILLed model worker) is retried with exponential backoff and resumes from its stores.

    Failures that retrying cannot fix (a store built with other settings, a failure budget spent
    after per-tile retries) raise ``dg.Failure(allow_retries=False)`` and are not retried.
    A crashed *run* (its run pod or task gone) is the daemon's job: run_monitoring notices it and
    run_retries starts a new run (dagster.yaml)."""
    return dg.RetryPolicy(max_retries=settings.step_retries, delay=settings.step_retry_delay_s,
                          backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


# The default of the asset factories (with the default settings: 2 retries, 30 s, doubling).
STEP_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                   jitter=dg.Jitter.PLUS_MINUS)
