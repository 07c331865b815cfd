"""Where steps run: the executor of each job, and the step tags that place steps in a cluster.

Chosen in one place (``definitions.py`` calls :func:`executor_for`) from
:class:`rs_embed_pipeline.settings.Settings`:

| job | executor |
| --- | --- |
| ``build_embeddings`` | ``RS_EMBED_EXECUTOR``: ``multiprocess`` (default; one process per step on this machine) or ``k8s`` (dagster-k8s ``k8s_job_executor``: one Kubernetes Job per step, for the Helm deployment in ``deploy/``) |
| ``build_embeddings_celery`` | dagster-celery: steps go to Celery workers through a broker (``RS_EMBED_CELERY_BROKER``, e.g. ``redis://host:6379/0``; without it the broker comes from run config ``execution: config: broker: ...``) |

The embedding steps carry :data:`GPU_STEP_TAGS`: a ``dagster-k8s/config`` tag that puts their
pod on the GPU node pool (node selector, ``nvidia.com/gpu`` toleration and limit). Only the
Kubernetes executors read it; locally and under Celery it is an inert tag.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:  # pragma: no cover
    from rs_embed_pipeline.settings import Settings


# The node label and taint of the GPU node pool (deploy/README.md says how to label the pool).
GPU_NODE_SELECTOR = {"rs-embed/node-pool": "gpu"}
GPU_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
        },
        # The worker venv in the image (Dockerfile); the step's Pipes subprocess runs it on the GPU.
        "env": [{"name": "RS_EMBED_DEVICE", "value": "cuda"}],
    },
    "pod_spec_config": {
        "node_selector": GPU_NODE_SELECTOR,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
# Tag values must be strings; dagster-k8s parses this one as JSON.
GPU_STEP_TAGS = {"dagster-k8s/config": json.dumps(GPU_STEP_K8S_CONFIG, sort_keys=True)}


def default_executor(settings: "Settings") -> dg.ExecutorDefinition:
    """The executor of ``build_embeddings``."""
    if settings.executor == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.multiprocess_executor


def celery_executor(settings: "Settings") -> dg.ExecutorDefinition:
    """dagster-celery with the configured broker (Redis or RabbitMQ); see ``deploy/celery``."""
    from dagster_celery import celery_executor as executor

    if not settings.celery_broker:
        return executor  # broker and backend from run config
    return executor.configured(
        {"broker": settings.celery_broker, "backend": settings.celery_backend or settings.celery_broker},
        name="celery",
    )
