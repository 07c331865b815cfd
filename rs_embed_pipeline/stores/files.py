"""Whole-file writes and reads for small artefacts (GeoParquet tile grids), local or on S3."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import fsspec


def write_bytes_atomic(uri: str, payload: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a whole file so that readers see the old or the new content, never a partial one."""
    if "://" not in uri:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.pipe_file(path, payload)  # object stores replace objects atomically


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs.cat_file(path)
