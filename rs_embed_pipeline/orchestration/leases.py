"""One writer per region x window: a lease in the store, held by one run at a time.

Two runs of the same partition (a backfill over a scheduled run, a retry beside a manual run) would
otherwise write the same patch, embedding and cube stores at once. Every step that opens the store
resource (``PipelineStore``) takes the lease of each region x window of its run first:

* the lease is ``<store root>/leases/<region>/<window>.json``: the run that holds it and its live
  holders (one per step process; each with an expiry that a heartbeat thread pushes forward);
* a step of the *same* run joins it (steps of one run run side by side, a retried step re-enters);
* a step of *another* run waits, up to ``wait_s``, logging which run holds it; then it fails naming
  that run (the step retry policy tries again later). A holder killed without releasing (SIGKILL,
  lost pod) lapses ``ttl_s`` after its last heartbeat;
* updates are atomic: an exclusive ``flock`` on a local store, conditional writes
  (``If-None-Match`` / ``If-Match``) on S3.

Two runs of one partition therefore alternate step by step, never write at once; the stores resume,
so the result equals one run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

LEASE_DIR = "leases"


class LeaseBusy(Exception):
    """Another run holds the lease."""

    def __init__(self, key: str, doc: dict[str, Any]):
        self.key, self.run_id = key, doc.get("run_id")
        holders = doc.get("holders") or {}
        self.steps = sorted({h.get("step") or "?" for h in holders.values()})
        self.since = doc.get("since")
        super().__init__(f"{key} is being written by run {self.run_id} (steps {', '.join(self.steps)}, "
                         f"since {_iso(self.since)})")


def _iso(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t else "?"


# ------------------------------------------------------------------------- atomic read-modify-write
class _LocalFile:
    def __init__(self, path: str):
        self.path = Path(path)

    def update(self, fn: Callable[[dict | None], dict]) -> dict:
        import fcntl  # noqa: PLC0415 - POSIX only (the local-file lease); absent on Windows

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = json.loads(self.path.read_text()) if self.path.exists() else None
                new = fn(doc)
                tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
                tmp.write_text(json.dumps(new, sort_keys=True))
                os.replace(tmp, self.path)
                return new
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class _S3File:
    """Compare-and-swap on one S3 object with conditional writes (S3 and moto support them)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None):
        import boto3  # noqa: PLC0415 - boto3 (slow to import) only for leases on s3:// stores

        self.bucket, self.key = uri[len("s3://"):].split("/", 1)
        options = storage_options or {}
        endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
        self.client = boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")

    def update(self, fn: Callable[[dict | None], dict]) -> dict:
        from botocore.exceptions import ClientError  # noqa: PLC0415 - botocore comes with boto3: s3:// stores only

        for _ in range(50):
            try:
                got = self.client.get_object(Bucket=self.bucket, Key=self.key)
                doc, condition = json.loads(got["Body"].read()), {"IfMatch": got["ETag"]}
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
                doc, condition = None, {"IfNoneMatch": "*"}
            new = fn(doc)
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(new, sort_keys=True).encode(),
                                       ContentType="application/json", **condition)
                return new
            except ClientError as exc:  # someone else wrote in between: read again
                if exc.response.get("Error", {}).get("Code") not in (
                        "PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    raise
                time.sleep(0.05)
        raise RuntimeError(f"s3://{self.bucket}/{self.key}: too much contention updating the lease")


def _lease_file(uri: str, storage_options: dict[str, Any] | None):
    if uri.startswith("s3://"):
        return _S3File(uri, storage_options)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"{uri}: leases support local directories and s3:// stores")
    return _LocalFile(uri.removeprefix("file://"))


def lease_uri(root: str, region: str, window: str) -> str:
    return f"{root.rstrip('/')}/{LEASE_DIR}/{region}/{window}.json"


# ------------------------------------------------------------------------------------- the lease
@dataclasses.dataclass
class _Holder:
    key: str
    file: Any
    holder_id: str


def _acquire(file: Any, key: str, run_id: str, holder_id: str, step: str, ttl_s: float, now: float) -> None:
    def take(doc: dict | None) -> dict:
        doc = dict(doc or {})
        holders = {h: v for h, v in (doc.get("holders") or {}).items() if v.get("expires", 0) > now}
        if holders and doc.get("run_id") != run_id:
            raise LeaseBusy(key, {**doc, "holders": holders})
        if not holders or doc.get("run_id") != run_id:
            doc["since"] = now
        holders[holder_id] = {"step": step, "host": socket.gethostname(), "pid": os.getpid(),
                              "expires": now + ttl_s}
        return {**doc, "key": key, "run_id": run_id, "holders": holders}

    file.update(take)


def _renew(file: Any, holder_id: str, ttl_s: float) -> bool:
    state = {"ok": False}

    def renew(doc: dict | None) -> dict:
        doc = dict(doc or {})
        holders = dict(doc.get("holders") or {})
        if holder_id in holders:
            holders[holder_id] = {**holders[holder_id], "expires": time.time() + ttl_s}
            state["ok"] = True
        return {**doc, "holders": holders}

    file.update(renew)
    return state["ok"]


def _release(file: Any, holder_id: str) -> None:
    def drop(doc: dict | None) -> dict:
        doc = dict(doc or {})
        holders = {h: v for h, v in (doc.get("holders") or {}).items() if h != holder_id}
        return {**doc, "holders": holders}

    file.update(drop)


@contextlib.contextmanager
def partition_leases(
    root: str,
    partitions: list[tuple[str, str]],
    *,
    run_id: str,
    step: str,
    wait_s: float,
    ttl_s: float,
    storage_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    poll_s: float | None = None,
) -> Iterator[list[str]]:
    """Hold the lease of every ``(region, window)`` while the block runs (taken in sorted order,
    so that two runs over overlapping batches cannot deadlock). Raises :class:`LeaseBusy` naming
    the other run after ``wait_s``."""
    holders: list[_Holder] = []
    stop = threading.Event()
    poll = poll_s if poll_s is not None else max(0.2, min(5.0, ttl_s / 8))
    try:
        for region, window in sorted(set(partitions)):
            key = f"{region}|{window}"
            file = _lease_file(lease_uri(root, region, window), storage_options)
            holder = _Holder(key, file, f"{run_id}:{uuid.uuid4().hex[:12]}")
            deadline, told = time.monotonic() + wait_s, None
            while True:
                try:
                    _acquire(file, key, run_id, holder.holder_id, step, ttl_s, time.time())
                    break
                except LeaseBusy as busy:
                    if time.monotonic() >= deadline:
                        raise LeaseBusy(key, {"run_id": busy.run_id, "since": busy.since,
                                              "holders": {s: {"step": s} for s in busy.steps}}) from None
                    if told != busy.run_id:
                        log(f"{busy}; waiting up to {wait_s:.0f} s for it to finish")
                        told = busy.run_id
                    time.sleep(poll)
            holders.append(holder)

        def beat() -> None:
            while not stop.wait(ttl_s / 4):
                for h in holders:
                    try:
                        if not _renew(h.file, h.holder_id, ttl_s):
                            log(f"lease {h.key} lapsed (no heartbeat for {ttl_s:.0f} s); another run may write it")
                    except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the ttl covers it
                        log(f"lease {h.key}: heartbeat failed: {exc!r}")

        thread = threading.Thread(target=beat, name="rs-embed-lease", daemon=True)
        thread.start()
        yield [h.key for h in holders]
    finally:
        stop.set()
        for h in holders:
            try:
                _release(h.file, h.holder_id)
            except Exception as exc:  # noqa: BLE001 - it lapses after ttl_s anyway
                log(f"lease {h.key}: release failed ({exc!r}); it lapses after {ttl_s:.0f} s")
