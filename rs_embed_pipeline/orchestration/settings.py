"""Environment-specific settings, read from the environment in this one place.

Everything else receives these values through resources (definitions.py), never via ``os.getenv``.

| variable | meaning | default |
| --- | --- | --- |
| ``RS_EMBED_CONFIG`` | regions / time-window YAML | the packaged ``config/pipeline.yaml`` |
| ``RS_EMBED_STORE`` | root of every store: a directory or ``s3://bucket/prefix`` | ``./data`` |
| ``RS_EMBED_PROVIDER`` | ``local_stac`` / ``stac`` / ``gee`` | ``local_stac`` |
| ``RS_EMBED_LOCAL_CATALOG`` | static STAC catalog for ``local_stac`` | ``<store>/catalogs/synthetic/catalog.json`` |
| ``RS_EMBED_STAC_URL`` | STAC API for ``stac`` | Earth Search v1 |
| ``EE_PROJECT`` | Earth Engine cloud project for ``gee``: ``EarthEngineImagery.project`` unless set there (definitions.py); the provider reads no variable; without either (or a service-account key file's ``project_id``) the load fails naming it | none |
| ``RS_EMBED_WORKER_PYTHON`` | interpreter of the model environment | ``<repo>/.venv-worker/bin/python`` |
| ``RS_EMBED_ALLOW_RANDOM_WEIGHTS`` | ``1``: run models on random weights when no checkpoint is found (labelled everywhere) | ``0`` |
| ``RS_EMBED_DEVICE`` | ``auto`` / ``cpu`` / ``cuda`` | the model resources' ``device`` (``auto``) |
| ``RS_EMBED_EXECUTOR`` | executor of every job, UI materializations and backfills included: ``multiprocess`` / ``k8s`` / ``celery`` (executors.py) | ``multiprocess`` |
| ``RS_EMBED_CELERY_BROKER`` | broker of ``build_embeddings_celery`` and of ``RS_EMBED_EXECUTOR=celery`` (e.g. ``redis://host:6379/0``) | run config |
| ``RS_EMBED_CELERY_BACKEND`` | its result backend | the broker |
| ``RS_EMBED_STEP_RETRIES`` | retries of a failed or killed asset step (exponential backoff) | ``2`` |
| ``RS_EMBED_STEP_RETRY_DELAY_S`` | wait before the first step retry, seconds (doubles, +-50 % jitter) | ``30`` |
| ``RS_EMBED_LEASE_WAIT_S`` | how long a step waits for another run writing the same region x window (leases.py) | ``PipelineStore.lease_wait_s``'s |
| ``RS_EMBED_LEASE_TTL_S`` | a writer's lease lapses this long after its last heartbeat (a killed writer) | ``PipelineStore.lease_ttl_s``'s |
| ``RS_EMBED_MAX_PARTITIONS`` | the most region x window partitions per asset the code location loads (partitions.py; README "Continental builds") | ``100000`` |

Model tuning knobs with rs-embed 0.3.1's names (``RS_EMBED_TERRAFM_BATCH_SIZE``,
``RS_EMBED_TERRAFM_FETCH_WORKERS``, ``RS_EMBED_THOR_MODEL_KEY``, ``RS_EMBED_THOR_CKPT``,
``RS_EMBED_THOR_PRETRAINED``, ``RS_EMBED_THOR_IMG``, ``RS_EMBED_THOR_NORMALIZE``,
``RS_EMBED_THOR_GROUP_MERGE``, ``RS_EMBED_THOR_PATCH_SIZE``, ``RS_EMBED_THOR_FETCH_WORKERS``,
``RS_EMBED_CHECK_INPUT``, ``RS_EMBED_CHECK_RAISE``) and the Hugging Face cache (``HF_HUB_CACHE`` /
``HUGGINGFACE_HUB_CACHE`` / ``HF_HOME``) are read here too, through the knob table of
``rs_embed_pipeline.models.knobs`` (``Settings.knobs``), and become the defaults of the resources'
fields in ``definitions.py``; explicit resource config wins. ``docs/knobs.md`` lists them all (generated
from the resources' knob fields by :mod:`rs_embed_pipeline.orchestration.knobs_doc`). Settings that set a
resource field (``RS_EMBED_DEVICE``, ``RS_EMBED_LEASE_*``) are ``None`` when unset: the field's own
default (declared once, on the resource) applies.

``PYTHONPATH`` is read here too, by :func:`worker_environment`, when an embeddings step launches the
worker (resources.py): from a source checkout the worker's ``PYTHONPATH`` is the checkout, then this
process's own. It is the process's import path, not a setting a deployment forwards
(:func:`environment_variables` leaves it out).

S3 credentials and endpoint are not settings of this package: the standard AWS environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE``, IRSA web identity, ECS task role)
is read by botocore wherever a store is opened, orchestrator and worker alike.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from rs_embed_pipeline.models.registry import families

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rs_embed_pipeline/
REPO_DIR = PACKAGE_DIR.parent
DEFAULT_CONFIG = PACKAGE_DIR / "config" / "pipeline.yaml"
PROVIDER_NAMES = ("local_stac", "stac", "gee")
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
EXECUTOR_NAMES = ("multiprocess", "k8s", "celery")  # of every job; see executors.py


DEVICES = ("auto", "cpu", "cuda")  # and cuda:<index>
# Dagster's documented guidance: at most 100,000 partitions per asset (README "Continental builds").
DEFAULT_MAX_PARTITIONS = 100_000


def _flag(value: str | None, name: str = "flag") -> bool:
    v = (value or "").strip().lower()
    if v in {"", "0", "false", "no", "off"}:
        return False
    if v in {"1", "true", "yes", "on"}:
        return True
    raise ValueError(f"{name}={value!r} is invalid; valid values: 1/0, true/false, yes/no, on/off")


def _device(value: str | None) -> str | None:
    """The device setting; None when unset (the model resources' own default applies)."""
    if value is None or not value.strip():
        return None
    v = value.strip().lower()
    if v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError(f"RS_EMBED_DEVICE={value!r} is invalid; valid values: {', '.join(DEVICES)}, cuda:<index>")


def _executor(value: str | None) -> str:
    name = (value or "multiprocess").strip().lower()
    if name not in EXECUTOR_NAMES:
        raise ValueError(f"RS_EMBED_EXECUTOR={name!r} is not one of {', '.join(EXECUTOR_NAMES)}")
    return name


def _number(env: Mapping[str, str], name: str, default: float | None, minimum: float, kind: type = int) -> Any:
    """A numeric setting (``default`` when unset, None: the resource field's own); an invalid value is
    an error naming the variable and the valid values."""
    raw = env.get(name)
    if raw is None or not str(raw).strip():
        return None if default is None else kind(default)
    try:
        value = kind(str(raw).strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}={raw!r} is invalid; valid values: {what} >= {minimum}")
    return value


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
    device: str | None  # None: the model resources' default
    executor: str = "multiprocess"
    celery_broker: str | None = None
    celery_backend: str | None = None
    step_retries: int = 2
    step_retry_delay_s: float = 30.0
    lease_wait_s: float | None = None  # None: PipelineStore's default
    lease_ttl_s: float | None = None
    max_partitions: int = DEFAULT_MAX_PARTITIONS
    # Planetary Computer SAS tokens: the SDK's own variable, optional (anonymous tokens without it)
    pc_subscription_key: str | None = None
    # Resource fields set by the rs-embed knob variables: {family ("terrafm", "thor", ...) or "imagery": {field: value}}.
    knobs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=lambda: {**{f.name: {} for f in families()}, "imagery": {}}
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
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
            ee_project=(env.get("EE_PROJECT") or "").strip() or None,  # empty = unset
            worker_python=env.get("RS_EMBED_WORKER_PYTHON")
            or str(REPO_DIR / ".venv-worker" / "bin" / "python"),
            allow_random_weights=_flag(env.get("RS_EMBED_ALLOW_RANDOM_WEIGHTS"), "RS_EMBED_ALLOW_RANDOM_WEIGHTS"),
            device=_device(env.get("RS_EMBED_DEVICE")),
            executor=_executor(env.get("RS_EMBED_EXECUTOR")),
            celery_broker=env.get("RS_EMBED_CELERY_BROKER") or None,
            celery_backend=env.get("RS_EMBED_CELERY_BACKEND") or None,
            step_retries=_number(env, "RS_EMBED_STEP_RETRIES", 2, 0),
            step_retry_delay_s=_number(env, "RS_EMBED_STEP_RETRY_DELAY_S", 30, 0, float),
            lease_wait_s=_number(env, "RS_EMBED_LEASE_WAIT_S", None, 0, float),
            lease_ttl_s=_number(env, "RS_EMBED_LEASE_TTL_S", None, 5, float),
            max_partitions=_number(env, "RS_EMBED_MAX_PARTITIONS", DEFAULT_MAX_PARTITIONS, 1),
            pc_subscription_key=(env.get("PC_SDK_SUBSCRIPTION_KEY") or "").strip() or None,
            knobs=knobs,
        )


class _ReadRecorder(dict):
    """A mapping that records every variable asked for and holds none."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.names.append(key)
        return default


def environment_variables() -> list[str]:
    """Every variable :meth:`Settings.from_env` reads (settings, model knobs, Hugging Face cache),
    found by letting it read an empty environment: the list that a deployment must forward to run
    and step processes (deploy/ecs/dagster.yaml, deploy/k8s/settings-configmap.yaml; a test checks)."""
    recorder = _ReadRecorder()
    Settings.from_env(recorder)
    return sorted(set(recorder.names))


def worker_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables to add to the worker's environment when an embeddings step launches it (Pipes,
    ``ModelResource.run_worker``); read when the worker is launched, from ``environ`` (default
    ``os.environ``).

    From a source checkout (``pyproject.toml`` beside the package) the worker imports this very tree,
    its venv may lack an install: ``PYTHONPATH`` is the checkout, then this process's ``PYTHONPATH``.
    From an installed package the package's parent is site-packages, never put on the worker's path:
    nothing is added."""
    env = os.environ if environ is None else environ
    if not (REPO_DIR / "pyproject.toml").exists():
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")]))}
