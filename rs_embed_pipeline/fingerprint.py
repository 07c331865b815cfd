"""Fingerprints: a sha256 of everything that shaped a store's numbers (sorted-key JSON)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
