"""Environment-specific settings, read from the environment in this one place.

Everything else receives these values through resources (definitions.py), never via ``os.getenv``.

| variable | meaning | default |
| --- | --- | --- |
| ``RS_EMBED_CONFIG`` | regions / time-window YAML | the packaged ``config/pipeline.yaml`` |
| ``RS_EMBED_STORE`` | root of every store: a directory or ``s3://bucket/prefix`` | ``./data`` |
| ``RS_EMBED_PROVIDER`` | ``local_stac`` / ``stac`` / ``gee`` | ``local_stac`` |
| ``RS_EMBED_LOCAL_CATALOG`` | static STAC catalog for ``local_stac`` | ``<store>/catalogs/synthetic/catalog.json`` |
| ``RS_EMBED_STAC_URL`` | STAC API for ``stac`` | Earth Search v1 |
| ``EE_PROJECT`` | Earth Engine cloud project for ``gee`` | none |
| ``RS_EMBED_WORKER_PYTHON`` | interpreter of the model environment | ``<repo>/.venv-worker/bin/python`` |
| ``RS_EMBED_ALLOW_RANDOM_WEIGHTS`` | ``1``: run models on random weights when no checkpoint is found (labelled everywhere) | ``0`` |
| ``RS_EMBED_DEVICE`` | ``auto`` / ``cpu`` / ``cuda`` | ``auto`` |
| ``RS_EMBED_EXECUTOR`` | executor of ``build_embeddings``: ``multiprocess`` / ``k8s`` (executors.py) | ``multiprocess`` |
| ``RS_EMBED_CELERY_BROKER`` | broker of ``build_embeddings_celery`` (e.g. ``redis://host:6379/0``) | run config |
| ``RS_EMBED_CELERY_BACKEND`` | its result backend | the broker |

Model tuning knobs with rs-embed 0.3.1's names (``RS_EMBED_TERRAFM_BATCH_SIZE``,
``RS_EMBED_TERRAFM_FETCH_WORKERS``, ``RS_EMBED_THOR_MODEL_KEY``, ``RS_EMBED_THOR_CKPT``,
``RS_EMBED_THOR_PRETRAINED``, ``RS_EMBED_THOR_IMG``, ``RS_EMBED_THOR_NORMALIZE``,
``RS_EMBED_THOR_GROUP_MERGE``, ``RS_EMBED_THOR_PATCH_SIZE``, ``RS_EMBED_THOR_FETCH_WORKERS``,
``RS_EMBED_CHECK_INPUT``, ``RS_EMBED_CHECK_RAISE``) and the Hugging Face cache (``HF_HUB_CACHE`` /
``HUGGINGFACE_HUB_CACHE`` / ``HF_HOME``) are read here too, through the knob table of
``rs_embed_pipeline.models.knobs`` (``Settings.knobs``), and become the defaults of the resources'
fields in ``definitions.py``; explicit resource config wins. ``docs/knobs.md`` lists them all.

S3 credentials and endpoint are not settings of this package: the standard AWS environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE``, IRSA web identity, ECS task role)
is read by botocore wherever a store is opened, orchestrator and worker alike.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DEFAULT_CONFIG = PACKAGE_DIR / "config" / "pipeline.yaml"
PROVIDER_NAMES = ("local_stac", "stac", "gee")
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
EXECUTOR_NAMES = ("multiprocess", "k8s")  # of build_embeddings; see executors.py


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _executor(value: str | None) -> str:
    name = (value or "multiprocess").strip().lower()
    if name not in EXECUTOR_NAMES:
        raise ValueError(f"RS_EMBED_EXECUTOR={name!r} is not one of {', '.join(EXECUTOR_NAMES)}")
    return name


@dataclasses.dataclass(frozen=True)
class Settings:
    config_path: Path
    store_root: str
    provider: str
    local_catalog: str
    stac_url: str
    ee_project: str | None
    worker_python: str
    allow_random_weights: bool
    device: str
    executor: str = "multiprocess"
    celery_broker: str | None = None
    celery_backend: str | None = None
    # Resource fields set by the rs-embed knob variables: {"terrafm"|"thor"|"imagery": {field: value}}.
    knobs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=lambda: {"terrafm": {}, "thor": {}, "imagery": {}}
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        from rs_embed_pipeline.models.knobs import resource_values  # torch-free knob table

        knobs = resource_values(env)  # invalid values raise naming the variable and the valid values
        store_root = env.get("RS_EMBED_STORE") or str(Path.cwd() / "data")
        provider = (env.get("RS_EMBED_PROVIDER") or "local_stac").strip().lower()
        if provider not in PROVIDER_NAMES:
            raise ValueError(
                f"RS_EMBED_PROVIDER={provider!r} is not a known provider; valid: {', '.join(PROVIDER_NAMES)}"
            )
        return cls(
            config_path=Path(env.get("RS_EMBED_CONFIG") or DEFAULT_CONFIG),
            store_root=store_root,
            provider=provider,
            local_catalog=env.get("RS_EMBED_LOCAL_CATALOG")
            or f"{store_root.rstrip('/')}/catalogs/synthetic/catalog.json",
            stac_url=env.get("RS_EMBED_STAC_URL") or EARTH_SEARCH_URL,
            ee_project=env.get("EE_PROJECT") or None,
            worker_python=env.get("RS_EMBED_WORKER_PYTHON")
            or str(REPO_DIR / ".venv-worker" / "bin" / "python"),
            allow_random_weights=_flag(env.get("RS_EMBED_ALLOW_RANDOM_WEIGHTS")),
            device=env.get("RS_EMBED_DEVICE") or "auto",
            executor=_executor(env.get("RS_EMBED_EXECUTOR")),
            celery_broker=env.get("RS_EMBED_CELERY_BROKER") or None,
            celery_backend=env.get("RS_EMBED_CELERY_BACKEND") or None,
            knobs=knobs,
        )
