"""Stores on S3: how a store root such as ``s3://bucket/prefix`` is reached (no Dagster here).

Every store (tile-grid GeoParquet, patch and embedding Zarr stores, cubes) is opened through
fsspec with a URI and optional *storage options*; for ``s3://`` fsspec uses s3fs (aiobotocore),
which resolves credentials, region and endpoint exactly like the AWS CLI and boto3:

- credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
  ``AWS_PROFILE``, IRSA web identity (``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``), the ECS
  task role, EC2 instance metadata;
- region: ``AWS_REGION`` / ``AWS_DEFAULT_REGION``;
- endpoint (MinIO, moto, LocalStack, ...): ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.

The orchestrator and the model worker (a Pipes subprocess, which inherits the orchestrator's
environment; in a cluster the pod's or task's own role) therefore need no configuration of their
own. Storage options are for non-secret settings only (e.g. ``{"endpoint_url": ...}`` when the
environment cannot carry it): they travel in Pipes extras and may be shown in logs, so any key that
looks like a credential is refused.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

# fsspec / s3fs / botocore spellings of secrets. Matching is on lower-cased keys, recursively.
CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "password", "session_token", "security_token",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "access_key", "secret_key", "access_key_id", "secret_access_key", "credentials",
})
# The standard AWS environment that reaches a store (tests clear it to start from nothing).
AWS_ENV_NAMES = (
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)


def credential_keys(options: Mapping[str, Any] | None, _prefix: str = "") -> list[str]:
    """Keys of ``options`` (nested dicts included) that hold secrets."""
    found: list[str] = []
    for key, value in (options or {}).items():
        name = f"{_prefix}{key}"
        if str(key).lower() in CREDENTIAL_KEYS:
            found.append(name)
        elif isinstance(value, Mapping):
            found.extend(credential_keys(value, f"{name}."))
    return found


def check_storage_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return the options unchanged, or refuse them when they carry credentials."""
    secrets = credential_keys(options)
    if secrets:
        raise ValueError(
            f"Store storage options must not hold credentials (found {', '.join(sorted(secrets))}): "
            "they travel in Pipes extras and run logs. Put them in the standard AWS environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, IRSA, the ECS task role) instead."
        )
    return dict(options) if options else None

