"""One writer per region x window (rs_embed_pipeline/orchestration/leases.py), on a local store and on S3 (moto):
a second run waits or fails naming the running run; a run's own steps share the lease; a killed
holder lapses after its ttl. The two-runs-at-once pipeline test is in test_crash_resume.py."""

from __future__ import annotations

import threading
import time

import pytest

from rs_embed_pipeline.orchestration.leases import LeaseBusy, lease_uri, partition_leases

PART = [("tiny", "2024-01-01")]


def _hold(root, run_id, storage_options=None, **kw):
    kw.setdefault("wait_s", 0)
    kw.setdefault("ttl_s", 30)
    return partition_leases(root, PART, run_id=run_id, step="s", storage_options=storage_options,
                            log=lambda m: None, **kw)


def _semantics(root: str, storage_options=None) -> None:
    with _hold(root, "run-a", storage_options):
        with pytest.raises(LeaseBusy, match=r"tiny\|2024-01-01 is being written by run run-a \(steps s, since "):
            with _hold(root, "run-b", storage_options):
                pass
        with _hold(root, "run-a", storage_options):  # another step of the same run joins
            pass
    with _hold(root, "run-b", storage_options):  # released: the next run takes it
        pass
    # A second run waits while the first holds it, and gets it when the first is done.
    order: list[str] = []
    with _hold(root, "run-a", storage_options) as keys:
        assert keys == ["tiny|2024-01-01"]

        def second() -> None:
            with _hold(root, "run-b", storage_options, wait_s=30, poll_s=0.05):
                order.append("b")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        order.append("a done")
    thread.join(30)
    assert order == ["a done", "b"]


def test_lease_on_a_local_store(tmp_path):
    _semantics(str(tmp_path / "store"))
    assert (tmp_path / "store" / "leases" / "tiny" / "2024-01-01.json").exists()


def test_a_killed_holder_lapses_after_its_ttl(tmp_path):
    import json

    root = str(tmp_path / "store")
    with _hold(root, "run-a", ttl_s=5):
        pass
    # Forge a holder that died without releasing (SIGKILL): its expiry passes, it no longer counts.
    path = lease_uri(root, *PART[0])
    doc = json.loads(open(path).read())
    doc["run_id"], doc["holders"] = "run-dead", {"run-dead:x": {"step": "s", "expires": time.time() + 1}}
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(LeaseBusy, match="run run-dead"):
        with _hold(root, "run-b"):
            pass
    time.sleep(1.2)
    with _hold(root, "run-b"):
        pass


def test_lease_on_s3_with_conditional_writes(tmp_path, monkeypatch):
    from rs_embed_pipeline_tests.pipeline.servers import moto_server

    with moto_server(tmp_path) as endpoint:
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint}.items():
            monkeypatch.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket="leases")
        _semantics("s3://leases/prefix")
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="leases")["Contents"]]
        assert keys == ["prefix/leases/tiny/2024-01-01.json"]
