"""A cube's store below zarr: raw access to its keys (metadata documents, chunk listings) and its
root group, created once whoever comes first and validated by every writer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fsspec
import zarr

from rs_embed_pipeline.stores.cube.attributes import CUBE_SCHEMA, CUBE_SCHEMA_VERSION
from rs_embed_pipeline.stores.files import write_bytes_atomic
from rs_embed_pipeline.stores.tile_store import AccessMode, StoreError, remove_tree

ROOT_CREATION_WAIT_S = 10.0  # a root's creation is one small write and a rename: far less than this


class CubeError(StoreError):
    """A cube is not a cube, was built with other settings, or does not fit this window."""


class CubeKeys:
    """Raw access to a cube's keys (metadata documents and chunk listings) through fsspec."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None):
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = fsspec.core.url_to_fs(self.uri, **self.storage_options)

    def _key(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self._key(*parts, "zarr.json")))
        except FileNotFoundError:
            return None

    def write_json(self, doc: Mapping[str, Any], *parts: str) -> None:
        payload = json.dumps(doc, indent=2).encode()
        write_bytes_atomic("/".join([self.uri, *parts, "zarr.json"]), payload, self.storage_options)

    def filled_windows(self, group: str) -> list[int]:
        """Time indices whose ``window_filled`` chunk exists: the windows written so far."""
        try:
            names = self.fs.ls(self._key(group, "window_filled", "c"), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            tail = str(name).rstrip("/").rsplit("/", 1)[-1]
            if tail.isdigit():
                out.append(int(tail))
        return out

    def open_root(self, mode: AccessMode = "r+", consolidated: bool | None = False) -> zarr.Group:
        return zarr.open_group(self.uri, mode=mode, use_consolidated=consolidated, zarr_format=3,
                               storage_options=self.storage_options or None)


def consolidated_metadata(root_doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{array or group path: its metadata}`` from the root document's consolidated metadata."""
    return dict((((root_doc or {}).get("consolidated_metadata") or {}).get("metadata")) or {})


def open_or_create_root(
    cube: CubeKeys, attrs: Mapping[str, Any], fingerprint: str | None, rebuild: bool, window_starts: Sequence[str]
) -> dict[str, Any]:
    """The root's metadata document (created when missing; validated when present)."""
    head = list(window_starts[:3])
    root_attrs = {"Conventions": "CF-1.8", **attrs, "schema": CUBE_SCHEMA, "schema_version": CUBE_SCHEMA_VERSION,
                  "fingerprint": fingerprint or "", "time_axis_head": head}
    doc = cube.read_json()
    entries = cube.fs.ls(cube.path, detail=False) if doc is None and cube.fs.exists(cube.path) else []
    if entries and _only_partial_writes(entries):  # another writer is creating the root right now
        doc = _wait_for_root(cube)
        if doc is None:  # its creator died before the rename: its temporary files are garbage
            try:
                cube.fs.rm(list(entries))
            except FileNotFoundError:
                pass  # another waiting writer removed them first
        entries = []
    if entries:
        if not rebuild:
            raise CubeError(f"{cube.uri} exists but is not a Zarr group; it was left untouched. Point the "
                            "pipeline at another store root, delete it, or materialize the cube with rebuild.")
        remove_tree(cube.uri, cube.storage_options)  # asked for (e.g. a rebuild killed while deleting)
    if doc is not None:
        found = doc.get("attributes", {})
        problem = None
        if found.get("schema") != CUBE_SCHEMA or found.get("schema_version") != CUBE_SCHEMA_VERSION:
            problem = (f"is not a cube of this version (schema={found.get('schema')!r}, "
                       f"schema_version={found.get('schema_version')!r})")
        elif fingerprint is not None and found.get("fingerprint") != fingerprint:
            problem = (f"was built with other settings (fingerprint {str(found.get('fingerprint'))[:12]} "
                       f"!= {fingerprint[:12]})")
        elif list(found.get("time_axis_head") or [])[:len(head)] != head[:len(found.get("time_axis_head") or [])]:
            problem = (f"has a time axis that differs from the partitions definition's windows (it starts "
                       f"{found.get('time_axis_head')}, the windows start {head}: cadence or start changed)")
        if problem is None:
            return doc
        if not rebuild:
            raise CubeError(f"Cube {cube.uri} {problem}. Nothing was changed. Materialize the cube with "
                            "rebuild (config `rebuild: true`: the cube is deleted and re-created, its other "
                            "windows must be re-materialized), or use another store root.")
        remove_tree(cube.uri, cube.storage_options)
    try:
        zarr.open_group(cube.uri, mode="w-", attributes=root_attrs, zarr_format=3,
                        storage_options=cube.storage_options or None)
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        pass  # a concurrent creator won; its root is validated below
    return open_or_create_root(cube, attrs, fingerprint, False, window_starts)


def _only_partial_writes(entries: Sequence[str]) -> bool:
    """zarr writes a document to ``<name>.<hex>.partial`` and renames it into place: a cube folder that
    holds only such files is a root another writer is creating right now (or one whose creator was
    killed before the rename): not a foreign folder to refuse. The writer waits for that root."""
    return all(str(e).rstrip("/").rsplit("/", 1)[-1].endswith(".partial") for e in entries)


def _wait_for_root(cube: CubeKeys) -> dict[str, Any] | None:
    """The root document once another writer's creation has renamed it into place; None when none
    appears within ``ROOT_CREATION_WAIT_S`` (the creator was killed mid-way)."""
    deadline = time.monotonic() + ROOT_CREATION_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        doc = cube.read_json()
        if doc is not None:
            return doc
    return None


def create_missing(parent: zarr.Group, name: str, create: Callable[[], object]) -> None:
    """Run ``create`` unless ``parent`` holds ``name``; another writer creating it first is fine."""
    if name in parent:
        return
    try:
        create()
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        pass  # another writer created the same node (with the same metadata)
