"""Fingerprints: a sha256 of everything that shaped a store's numbers (sorted-key JSON).

What goes in (and what deliberately does not):

* patch stores: modality, bands, tile size and scale, region, window (start, end), the tiles
  (``tiles_sha256``), the provider's settings that shape pixels (collections, composite, cloud
  filter, masks, resampling, catalog / endpoint identity) and the sensor options, the code
  version. Not the provider's thread count or retry budget (:data:`NON_NUMERIC_PROVIDER_SETTINGS`).
* embedding stores: the patch store's fingerprint, the adapter's settings (model id, weights
  sha256 - or the sha256 of a random initialisation -, architecture, normalization, patch / image
  size, group_merge, s2_branch, precision...) and the code version. Not the device, batch size or
  where the weights file was found (:data:`NON_NUMERIC_ADAPTER_SETTINGS`).
* cubes: :func:`cube_fingerprint`, the settings every window of a region's cube shares.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from collections.abc import Mapping

# Adapter settings that do not change the numbers (or only within float noise): a store may be
# resumed on another machine, device or batch size, or with the same weights found elsewhere
# (the weights are identified by their sha256), without being refused.
NON_NUMERIC_ADAPTER_SETTINGS = ("device", "batch_size", "weights_path", "hf_cache_dir", "weights_source",
                                "hf_repo", "hf_file", "cache_dir")
# Provider settings that change how pixels are fetched, not which pixels.
NON_NUMERIC_PROVIDER_SETTINGS = ("max_workers", "tile_retries", "search_retries", "max_concurrent_requests",
                                 "max_requests_per_second", "request_timeout_s")
CUBE_FINGERPRINT_VERSION = 1


def fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 of the settings as sorted-key JSON (values JSON cannot hold are written as ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def numeric_adapter_settings(adapter_settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(adapter_settings).items() if k not in NON_NUMERIC_ADAPTER_SETTINGS}


def numeric_provider_settings(provider_settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(provider_settings or {}).items() if k not in NON_NUMERIC_PROVIDER_SETTINGS}


def embedding_fingerprint(patches_fingerprint: str, adapter_settings: Mapping[str, Any], code_version: str) -> str:
    """An embedding store's fingerprint: its patch store's fingerprint, the adapter settings that
    shape the numbers and the code version (the worker computes it; the orchestrator may too)."""
    return fingerprint({"patches": patches_fingerprint, "adapter": numeric_adapter_settings(adapter_settings),
                        "code_version": code_version})


def cube_fingerprint(region: str, embedding_settings: Mapping[str, Any], patch_settings: Mapping[str, Any]) -> str:
    """What every window of a region's cube shares: the model and its settings, the provider and
    sensor settings, tile size and scale, the code version. Window-specific inputs (dates, scenes)
    are recorded per window instead (``window_provenance``)."""
    grid_dtype = embedding_settings.get("grid_dtype", "float32")
    # a grid stored in float16 / bfloat16 gives other cube values; float32 keeps earlier cubes' fingerprints
    lossy = {"grid_dtype": grid_dtype} if grid_dtype != "float32" else {}
    return fingerprint({
        **lossy,
        "version": CUBE_FINGERPRINT_VERSION,
        "region": region,
        "model": embedding_settings.get("model"),
        "modality": embedding_settings.get("modality"),
        "bands": embedding_settings.get("bands"),
        "size_px": embedding_settings.get("size_px"),
        "scale_m": embedding_settings.get("scale_m"),
        "adapter": numeric_adapter_settings(embedding_settings.get("adapter") or {}),
        "code_version": embedding_settings.get("code_version"),
        "provider": numeric_provider_settings(patch_settings.get("provider") or {}),
        "sensor_options": patch_settings.get("sensor_options"),
    })
