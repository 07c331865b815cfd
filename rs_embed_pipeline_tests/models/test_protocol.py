"""The orchestrator <-> worker contract (rs_embed_pipeline.worker.protocol): requests and results
survive the trip through JSON, bad requests are refused by name, and the module imports neither
Dagster nor torch (both environments load it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rs_embed_pipeline.worker.protocol import (
    EmbedRequest, PartitionJob, PartitionResult, StoreFailure, StoreResult, progress_message, progress_of,
    read_messages,
)

from .conftest import REPO_ROOT


def _result(key: str) -> PartitionResult:
    store = StoreResult(
        embeddings_uri=f"/s/emb/{key}.zarr", patches_uri=f"/s/p/{key}.zarr", size_px=224, tiles_total=4,
        tiles_embedded_now=3, tiles_skipped_done=0, tiles_recomputed_for_alignment=1,
        counts={"pending": 0, "ok": 3, "no_data": 1, "failed": 0},
        timings={"read_s": 0.1, "embed_s": 1.0, "wall_s": 1.5}, model_busy_fraction=0.6667, tiles_per_s=2.0,
        nonfinite_values=0, embed_meta={"precision": "fp32"}, fingerprint="abc",
    )
    return PartitionResult(partition=key, adapter={"model_id": "terrafm_b"}, store=store)


def test_request_round_trips_through_json():
    request = EmbedRequest(model="terrafm_b", modality="s2", adapter_options={"device": "cpu"}, code_version="1",
                           rebuild=True, storage_options={"anon": True},
                           partitions=(PartitionJob("demo|2024-01-01", "/p.zarr", "/e.zarr"),))
    extras = json.loads(json.dumps(request.to_extras()))
    assert extras["partitions"] == [{"key": "demo|2024-01-01", "patches_uri": "/p.zarr", "embeddings_uri": "/e.zarr"}]
    assert EmbedRequest.from_extras(extras) == request
    # Defaults: what an older orchestrator leaves out.
    minimal = EmbedRequest.from_extras({"model": "thor_1_0_base", "modality": "s1", "partitions": []})
    assert (minimal.rebuild, minimal.force, minimal.code_version, minimal.progress_every) == (False, False, "", 10)


def test_bad_requests_are_refused_by_name():
    with pytest.raises(ValueError, match=r"worker request lacks \['partitions'\]"):
        EmbedRequest.from_extras({"model": "terrafm_b", "modality": "s2"})
    with pytest.raises(ValueError, match=r"unknown keys \['batch'\]; valid: "):
        EmbedRequest.from_extras({"model": "terrafm_b", "modality": "s2", "partitions": [], "batch": 3})


def test_messages_are_read_back_whatever_their_order():
    messages = json.loads(json.dumps([
        progress_message("a|2024-01-01", {"tiles_done": 2, "tiles_total": 4}),
        _result("a|2024-01-01").to_message(),
        "a stray log line",
        StoreFailure("b|2024-01-01", "Cube was built with other settings").to_message(),
    ]))
    report = read_messages(messages)
    assert report.results == (_result("a|2024-01-01"),)
    assert report.failures == (StoreFailure("b|2024-01-01", "Cube was built with other settings"),)
    assert progress_of(messages[0]) == {"partition": "a|2024-01-01", "tiles_done": 2, "tiles_total": 4}
    assert progress_of(messages[1]) is None


def test_protocol_imports_neither_dagster_nor_torch():
    code = ("import sys, rs_embed_pipeline.worker.protocol; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_pipes', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO_ROOT), check=True)
    assert out.stdout.strip() == "[]"
