"""Static STAC catalogs this package writes (the synthetic catalog, user scenes): one folder
holding ``catalog.json`` and a sub-folder per collection."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path


def clear_catalog(out: Path, collections: Iterable[str]) -> None:
    """Remove ``catalog.json`` and the collections' folders under ``out`` (written again next),
    leaving anything else the folder holds."""
    for name in ("catalog.json", *collections):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
