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
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DEFAULT_CONFIG = PACKAGE_DIR / "config" / "pipeline.yaml"
PROVIDER_NAMES = ("local_stac", "stac", "gee")
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


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

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
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
        )
