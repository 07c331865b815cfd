"""The worker's embed loop (rs_embed_pipeline.worker.embed) in the worker environment: reads and
preprocessing on a background thread, the model on the main one, progress reports, and the Pipes
protocol end to end (a real ``python -m rs_embed_pipeline.worker.embed`` subprocess speaking
dagster-pipes through files, as Dagster's subprocess client does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rs_embed_pipeline.models import load_adapter
from rs_embed_pipeline.stores import ArraySpec, TileStore
from rs_embed_pipeline.worker.embed import embed_store
from rs_embed_pipeline.worker.protocol import EmbedRequest, PartitionJob, progress_of, read_messages

from .conftest import REPO_ROOT, THOR_TINY

SIDE = 64  # THOR at 10 m: 640 m tiles, 4x4 + 2x2 tokens at patch 16 (fast, same code path)
S2_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
ADAPTER_OPTIONS = {"arch": THOR_TINY, "device": "cpu", "allow_random_weights": True, "pretrained": False,
                   "image_size": SIDE, "batch_size": 2, "use_env": False}


def make_patch_store(uri: str, n: int, bad: tuple[int, ...] = (), no_data: tuple[int, ...] = ()) -> np.ndarray:
    """A patches store of ``n`` ok tiles of 10-band S2 DN; ``bad`` tiles are all-NaN (the model
    input check rejects them), ``no_data`` tiles carry that status."""
    rng = np.random.default_rng(0)
    data = rng.uniform(200, 6000, size=(n, len(S2_BANDS), SIDE, SIDE)).astype(np.float32)
    data[list(bad)] = np.nan
    settings = {"modality": "s2", "bands": S2_BANDS, "size_px": SIDE, "scale_m": 10.0}
    store = TileStore.create_or_open(
        uri, "patches", tile_ids=[f"t{i:04d}" for i in range(n)],
        arrays=[ArraySpec("data", (len(S2_BANDS), SIDE, SIDE), ("band", "y", "x")),
                ArraySpec("valid", (SIDE, SIDE), ("y", "x"), dtype="bool", fill_value=False)],
        fingerprint="test-patches", attrs=settings,
    )
    ok = [i for i in range(n) if i not in no_data]
    store.write_tiles(ok, ["ok"] * len(ok), [{}] * len(ok), data=data[ok], valid=np.ones((len(ok), SIDE, SIDE), bool))
    for i in no_data:
        store.write_tile(i, "no_data", {"reason": "no scene"})
    return data


@pytest.fixture(scope="module")
def adapter():
    import torch

    torch.manual_seed(0)
    return load_adapter("thor_1_0_base", **ADAPTER_OPTIONS)


def test_embed_loop_overlaps_preprocessing_and_reports_progress(tmp_path, adapter):
    data = make_patch_store(str(tmp_path / "p.zarr"), 11, bad=(4,), no_data=(9,))
    progress: list[dict] = []
    result = embed_store(adapter, "s2", str(tmp_path / "p.zarr"), str(tmp_path / "e.zarr"), batch_size=2,
                         code_version="test", progress_fn=progress.append, progress_every=2)
    # 10 ok patches -> 5 batches; reports after batches 2, 4 and the last one.
    assert [p["batches_done"] for p in progress] == [2, 4, 5]
    assert all(p["batches_total"] == 5 and p["tiles_total"] == 10 for p in progress)
    assert [p["tiles_done"] for p in progress] == [4, 7, 9]  # tile 4 (all NaN) failed, alone
    assert progress[-1]["tiles_failed"] == 1 and progress[-1]["eta_s"] == 0.0
    assert all(p["tiles_per_s"] > 0 for p in progress)
    assert result.counts == {"pending": 0, "ok": 9, "no_data": 1, "failed": 1}
    assert result.timings["prepare_s"] > 0 and result.timings["embed_s"] > 0
    assert 0 < result.model_busy_fraction <= 1
    emb = TileStore.open(str(tmp_path / "e.zarr"), "embeddings")
    assert "all values are NaN" in emb.tile_meta(4)["reason"] or "finite" in emb.tile_meta(4)["reason"]
    # The two-step path (prepare on the reader thread, run on the main one) = adapter.embed.
    ok = [0, 1, 2, 3, 5, 6, 7, 8, 10]
    ref = adapter.embed(data[ok], "s2", "both")
    np.testing.assert_allclose(emb.read("pooled", ok), ref.pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(emb.read("grid", ok), ref.grid, rtol=1e-6, atol=1e-6)


def test_progress_every_is_validated(tmp_path, adapter):
    make_patch_store(str(tmp_path / "p.zarr"), 2)
    with pytest.raises(ValueError, match=r"progress_every must be a positive number of batches, got 0"):
        embed_store(adapter, "s2", str(tmp_path / "p.zarr"), str(tmp_path / "e.zarr"), batch_size=2,
                    code_version="test", progress_every=0)


def test_worker_reports_progress_through_pipes(tmp_path):
    """The worker as Dagster launches it: context and messages through dagster-pipes files."""
    from dagster_pipes import encode_param

    make_patch_store(str(tmp_path / "p.zarr"), 7)
    options = {k: v for k, v in ADAPTER_OPTIONS.items() if k not in ("device", "use_env")}
    context = {
        "asset_keys": ["thor_s2_embeddings"], "code_version_by_asset_key": None, "provenance_by_asset_key": None,
        "partition_key": None, "partition_key_range": None, "partition_time_window": None,
        "run_id": "test-run", "job_name": "test", "retry_number": 0,
        "extras": EmbedRequest(
            model="thor_1_0_base", modality="s2", adapter_options=options, code_version="t", progress_every=2,
            partitions=(PartitionJob("demo|2024-01-01", str(tmp_path / "p.zarr"), str(tmp_path / "e.zarr")),),
        ).to_extras(),
    }
    (tmp_path / "context.json").write_text(json.dumps(context))
    messages = tmp_path / "messages.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               DAGSTER_PIPES_CONTEXT=encode_param({"path": str(tmp_path / "context.json")}),
               DAGSTER_PIPES_MESSAGES=encode_param({"path": str(messages)}),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "rs_embed_pipeline.worker.embed"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in messages.read_text().splitlines()]
    custom = [m["params"]["payload"] for m in lines if m["method"] == "report_custom_message"]
    progress = [p for p in map(progress_of, custom) if p is not None]
    # 7 tiles, batch 2 -> 4 batches: reports after batch 2 and after the last.
    assert [(p["tiles_done"], p["tiles_total"], p["batches_done"]) for p in progress] == [(4, 7, 2), (7, 7, 4)]
    assert all(p["partition"] == "demo|2024-01-01" and p["tiles_per_s"] > 0 for p in progress)
    assert progress[0]["eta_s"] > 0 and progress[-1]["eta_s"] == 0.0
    logs = [m["params"]["message"] for m in lines if m["method"] == "log"]
    assert any(msg.startswith("progress demo|2024-01-01: 4/7 tiles, ") and "tiles/s, ETA " in msg for msg in logs)
    final = read_messages(custom)
    assert not final.failures and len(final.results) == 1 and final.results[0].store.counts["ok"] == 7
    assert final.results[0].partition == "demo|2024-01-01"
    assert 0 < final.results[0].store.model_busy_fraction <= 1
