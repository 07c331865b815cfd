"""Whole-build progress from the Dagster instance (issue 19 point 5): per asset and window, the
region partitions done / failed / in progress / pending, tiles per second and an ETA, and the
failed partitions with their reasons.

What Dagster keeps is read, nothing else: the per-partition status (the same cache the UI's
partition bars draw, :meth:`dagster.DagsterInstance.get_status_by_partition`), the
materializations' ``tiles_ok`` / ``tiles_no_data`` / ``tiles_failed`` metadata and timestamps
(tiles per second: the tiles of the partitions done over the span between the first and the last
materialization), and for a failed partition the latest failed run covering it (its partition or
backfill range tags) and the error of the step that failed in that run. ``python -m rs_embed_pipeline.cli.build_status`` prints it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from rs_embed_pipeline.orchestration.partitions import region_windows

TILE_COUNT_KEYS = ("tiles_ok", "tiles_no_data", "tiles_failed")
STATES = ("done", "failed", "in_progress", "pending")
MAX_REASON_CHARS = 500
# Dagster's run tags of a partition and of a backfill batch's range (the UI's "Partition" column)
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclasses.dataclass(frozen=True)
class FailedPartition:
    asset: str
    partition: str
    run_id: str
    reason: str


def _state(status: Any) -> str:
    name = getattr(status, "name", None)
    return {"MATERIALIZED": "done", "FAILED": "failed", "IN_PROGRESS": "in_progress"}.get(str(name), "pending")


def _tiles(metadata: Mapping[str, Any]) -> int:
    return int(sum(int(metadata[k].value) for k in TILE_COUNT_KEYS if k in metadata))


def _first_message(error: Any) -> str:
    """The first message along an error's cause chain that is not the retry policy's own."""
    while error is not None:
        if "RetryRequestedFromPolicy" not in error.message:
            return str(error.message).strip()
        error = error.cause
    return ""


def _step_errors(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """The error message of each failed step of a run, by step key; a step that failed after its
    retries reads "Exceeded max_retries of N: <the last attempt's error>"."""
    last_attempt: dict[str, str] = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY):
        event = record.dagster_event
        if event is not None and event.step_key is not None:
            message = _first_message(event.step_retry_data.error)
            if message:
                last_attempt[event.step_key] = message
    out = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        message = _first_message(event.step_failure_data.error) or "step failed"
        if event.step_key in last_attempt:
            message = f"{message}: {last_attempt[event.step_key]}"
        out[event.step_key] = message
    return out


def _run_partitions(tags: Mapping[str, str], index: Mapping[str, int], keys: Sequence[str]) -> list[str]:
    """The partition keys a run covers: its ``dagster/partition`` or its range (a backfill batch)."""
    start, end = tags.get(RANGE_START_TAG, ""), tags.get(RANGE_END_TAG, "")
    if start in index and end in index:
        return list(keys[index[start]:index[end] + 1])
    one = tags.get(PARTITION_TAG, "")
    return [one] if one in index else []


def failure_reasons(instance: dg.DagsterInstance, asset_key: dg.AssetKey, failed: Sequence[str],
                    all_keys: Sequence[str]) -> list[FailedPartition]:
    """For each ``failed`` partition of ``asset_key``, the latest failed run covering it and why:
    the error of the asset's own step, else the step that failed before it (upstream)."""
    wanted = set(failed)
    index = {k: i for i, k in enumerate(all_keys)}
    out = []
    # newest first: the first failed run seen per partition is the latest
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
        if not wanted:
            break
        run = record.dagster_run
        if run.asset_selection and asset_key not in run.asset_selection:  # job runs: empty
            continue
        hit = [k for k in _run_partitions(run.tags, index, all_keys) if k in wanted]
        if not hit:
            continue
        errors = _step_errors(instance, run.run_id)
        own = errors.get(asset_key.to_python_identifier())
        reason = own or ("; ".join(f"upstream step {step} failed: {msg}" for step, msg in errors.items())
                         or "the run failed before the step started")
        for key in hit:
            wanted.discard(key)
            out.append(FailedPartition(asset_key.to_user_string(), key, run.run_id, reason[:MAX_REASON_CHARS]))
    return sorted(out, key=lambda f: (f.asset, f.partition))


def build_status(instance: dg.DagsterInstance, defs: dg.Definitions, *, windows: Sequence[str] | None = None,
                 assets: Sequence[str] | None = None) -> dict[str, Any]:
    """The progress of every partitioned asset of ``defs`` over the windows ``windows`` (window
    keys; None: every window of the partitions definition), as a JSON-ready dict."""
    repo = defs.get_repository_def()
    asset_graph = repo.asset_graph
    keys = [k for k in asset_graph.materializable_asset_keys
            if asset_graph.get(k).partitions_def is not None
            and (assets is None or k.to_user_string() in assets)]
    if assets is not None:
        unknown = sorted(set(assets) - {k.to_user_string() for k in keys})
        if unknown:
            valid = sorted(k.to_user_string() for k in asset_graph.materializable_asset_keys)
            raise ValueError(f"unknown asset(s) {unknown}; valid: {', '.join(valid)}")
    out_assets: dict[str, Any] = {}
    failed: list[FailedPartition] = []
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        partitions_def = asset_graph.get(key).partitions_def
        assert isinstance(partitions_def, dg.MultiPartitionsDefinition)  # region x window (partitions.py)
        all_keys = [str(k) for k in partitions_def.get_partition_keys()
                    if windows is None or k.keys_by_dimension["window"] in windows]
        status = instance.get_status_by_partition(key, all_keys, partitions_def) or {}
        per_window: dict[str, dict[str, int]] = {}
        failed_keys = []
        for part in region_windows(partitions_def, all_keys):
            state = _state(status.get(part.key))
            counts = per_window.setdefault(part.window, dict.fromkeys(STATES, 0))
            counts[state] += 1
            if state == "failed":
                failed_keys.append(part.key)
        totals = {s: sum(c[s] for c in per_window.values()) for s in STATES}
        out_assets[key.to_user_string()] = {"by_window": per_window, "total": totals,
                                           **_throughput(instance, key, totals)}
        failed.extend(failure_reasons(instance, key, failed_keys, all_keys))
    return {"assets": out_assets, "failed": [dataclasses.asdict(f) for f in failed]}


def _throughput(instance: dg.DagsterInstance, key: dg.AssetKey, totals: Mapping[str, int]) -> dict[str, Any]:
    """Tiles per second over the materializations so far and the ETA of the pending partitions
    (at the mean tiles per partition done, the same rate)."""
    tiles, stamps, partitions = 0, [], set()
    cursor = None
    while True:
        result = instance.fetch_materializations(key, limit=1000, cursor=cursor)
        for record in result.records:
            mat = record.asset_materialization
            if mat is None or mat.partition in partitions:  # the latest one per partition counts
                continue
            partitions.add(mat.partition)
            tiles += _tiles(mat.metadata)
            stamps.append(record.timestamp)
        if not result.has_more:
            break
        cursor = result.cursor
    out: dict[str, Any] = {"tiles_done": tiles, "tiles_per_s": None, "eta_s": None}
    if len(stamps) >= 2 and max(stamps) > min(stamps) and tiles:
        rate = tiles / (max(stamps) - min(stamps))
        per_partition = tiles / len(partitions)
        remaining = totals["pending"] + totals["in_progress"] + totals["failed"]
        out["tiles_per_s"] = round(rate, 3)
        out["eta_s"] = round(remaining * per_partition / rate, 1)
    return out
