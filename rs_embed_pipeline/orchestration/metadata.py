"""Helpers that turn run facts into Dagster metadata people can read in the UI.

Every materialization of an asset carries the same keys, so the UI can plot them over partitions.
"""

from __future__ import annotations

import json
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

from rs_embed_pipeline.core.vocabulary import TILE_STATUSES

STATUS_COLUMNS = TILE_STATUSES  # the status table's columns, in this order


def status_table(rows: Iterable[Mapping[str, Any]], label: str = "partition") -> dg.TableMetadataValue:
    """Per-partition (or per-store) tile status counts as a table."""
    schema = dg.TableSchema(
        columns=[dg.TableColumn(label, "string")]
        + [dg.TableColumn(c, "int") for c in STATUS_COLUMNS]
    )
    records = [
        dg.TableRecord({label: str(r[label]), **{c: int(r.get(c, 0)) for c in STATUS_COLUMNS}})
        for r in rows
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def add_partition_metadata(context: dg.AssetExecutionContext,
                           per_partition: Mapping[str, Mapping[str, Any]]) -> None:
    """Record values that belong to one partition on that partition's materialization only.

    A backfill run covers several partitions (``BackfillPolicy.multi_run``) and Dagster copies the
    metadata an asset returns onto every partition of the run. Values that are plotted over
    partitions in the UI (tile counts, coverage, store URI, preview) are set here per partition
    instead, and override returned keys of the same name. Every partition gets the same keys.
    """
    keysets = {tuple(sorted(md)) for md in per_partition.values()}
    if len(keysets) > 1:
        raise ValueError(f"per-partition metadata must have the same keys everywhere, got {keysets}")
    for partition_key, md in per_partition.items():
        context.add_asset_metadata(dict(md), partition_key=str(partition_key))


def json_value(value: Any) -> dg.JsonMetadataValue:
    return dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))


def path_value(uri: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)


NOT_APPLICABLE = "n/a"


def _is_not_applicable(value: Any) -> bool:
    return (value.value if isinstance(value, dg.MetadataValue) else value) == NOT_APPLICABLE


def ordered_for_people(metadata: Mapping[str, Any], first: Iterable[str]) -> dict[str, Any]:
    """The same entries, the ones a person looks for first (``first``, in that order: outcome,
    then the settings that vary between runs), then the rest as they came, and the settings that do
    not apply to this model or modality (value ``"n/a"``) last. The UI shows metadata in this order.

    The n/a entries stay: every materialization of every model carries the same keys (the rs-embed
    parity contract, and Dagster's metadata plots over partitions need them); they only move out of
    a person's way to the bottom of the table."""
    tail = [k for k in metadata if _is_not_applicable(metadata[k])]
    head = [k for k in first if k in metadata and k not in tail]
    body = [k for k in metadata if k not in head and k not in tail]
    return {k: metadata[k] for k in head + body + tail}


# ------------------------------------------------------------------ embeddings and cubes (assets/embeddings.py)
def run_metadata(adapter_settings: Mapping[str, Any], patches: Any) -> dict[str, Any]:
    """The docs/architecture.md run metadata shared by embeddings and cube materializations (same keys always),
    plus every field rs-embed's TerraFM-B / THOR pages list (``source``, ``grid_type``, weight file,
    ``model_key``, ``grid_kind``, ``cls_removed``, ``pooling``) and the sensor options; "n/a" where a
    setting does not apply to the model or modality. ``patches``: the partition's patch TileStore."""
    patch_settings = patches.settings
    provider = patch_settings.get("provider", {})
    sensor = patch_settings.get("sensor_options", {})
    modality = patch_settings.get("modality", "")
    collection = _collection(provider, modality)
    return {
        **_parity_metadata(adapter_settings, patch_settings, sensor, collection),
        "model_id": adapter_settings.get("model_id"),
        "weights_source": adapter_settings.get("weights_source"),
        "weights_sha256": adapter_settings.get("weights_sha256") or "none",
        "random_weights": bool(adapter_settings.get("random_weights", False)),
        "modality": patch_settings.get("modality"),
        "normalization": adapter_settings.get("normalization") or "none",
        "group_merge": adapter_settings.get("group_merge") or NOT_APPLICABLE,
        "image_size": adapter_settings.get("image_size") or 0,
        "patch_size": adapter_settings.get("patch_size") or 0,
        "ground_cover_m": float(adapter_settings.get("ground_cover_m")
                                or patch_settings.get("size_px", 0) * patch_settings.get("scale_m", 0)),
        "s2_branch": adapter_settings.get("s2_branch") or NOT_APPLICABLE,
        "provider": provider.get("provider") or provider.get("name") or "unknown",
        "collection": collection,
        "composite": sensor.get("composite", NOT_APPLICABLE),
        "cloudy_pct": float(sensor.get("cloudy_pct", -1)),
        "synthetic_imagery": bool(patches.group.attrs.get("synthetic_imagery", False)),
    }


def _parity_metadata(adapter_settings: Mapping[str, Any], patch_settings: Mapping[str, Any],
                     sensor: Mapping[str, Any], collection: str) -> dict[str, Any]:
    s1 = patch_settings.get("modality") == "s1"
    return {
        "model_key": adapter_settings.get("model_key") or adapter_settings.get("model_id") or "unknown",
        "source": collection,
        "grid_type": adapter_settings.get("grid_type") or "feature_map",
        "grid_kind": adapter_settings.get("grid_kind") or "unknown",
        "pooling": adapter_settings.get("pooling") or "unknown",
        "cls_removed": bool(adapter_settings.get("cls_removed", False)),
        "pretrained": bool(adapter_settings.get("pretrained", True)),
        "weight_file": adapter_settings.get("weights_path") or "none",
        "weight_file_size": int(adapter_settings.get("weights_size_bytes") or 0),
        "hf_repo": adapter_settings.get("hf_repo") or NOT_APPLICABLE,
        "hf_file": adapter_settings.get("hf_file") or NOT_APPLICABLE,
        "model_source": adapter_settings.get("model_source") or NOT_APPLICABLE,
        "device": str(adapter_settings.get("device") or NOT_APPLICABLE),
        "scale_m": float(patch_settings.get("scale_m", 0.0)),
        "fill_value": float(sensor.get("fill_value", 0.0)),
        "orbit": (sensor.get("orbit") or "both") if s1 else NOT_APPLICABLE,
        "use_float_linear": bool(sensor.get("use_float_linear", True)) if s1 else NOT_APPLICABLE,
    }


def _collection(provider: Mapping[str, Any], modality: str) -> str:
    """The collection id the patches came from, whatever shape the provider's describe() has."""
    per_modality = provider.get("collections", {}).get(modality)
    if isinstance(per_modality, dict):
        return str(per_modality.get("collection", "unknown"))
    return str(per_modality or provider.get("collection") or "unknown")


def embedding_run_metadata(results: Sequence[Any]) -> dict[str, Any]:
    """A worker run's outcome over all its partitions (``worker.protocol.PartitionResult``s): the
    status table per partition, summed timings, throughput."""
    stores = [r.store for r in results]
    timings = {k: round(sum(s.timings[k] for s in stores), 3) for k in stores[0].timings}
    wall = timings["wall_s"]
    ran: dict[str, Any] = next((s.embed_meta for s in stores if s.embed_meta), {})  # {}: every tile resumed
    return {
        "tile_status": status_table([{"partition": r.partition, **r.store.counts} for r in results]),
        "timings_s": json_value(timings),
        "wall_seconds": wall,
        "tiles_per_second": round(sum(s.tiles_embedded_now for s in stores) / wall, 3) if wall else 0.0,
        # what the forward passes ran at ("highest": the adapters hold float32 exact, whatever the
        # process's global setting; models/runtime.py)
        "float32_matmul_precision": ran.get("float32_matmul_precision", f"{NOT_APPLICABLE} (no tile embedded)"),
    }


def embedding_partition_metadata(result: Any, window: Mapping[str, str]) -> dict[str, Any]:
    """One partition's own values (``add_partition_metadata``): its window, tile counts and store."""
    store = result.store
    return {
        "time_window": json_value(dict(window)),
        "tiles_ok": store.counts["ok"],
        "tiles_no_data": store.counts["no_data"],
        "tiles_failed": store.counts["failed"],
        "tiles_embedded_now": store.tiles_embedded_now,
        "store_uri": path_value(store.embeddings_uri),
        "dagster/uri": str(store.embeddings_uri),
    }


def finite_check(results: Sequence[Any]) -> dg.AssetCheckResult:
    """all_values_finite per partition: fails when any partition of the run has a non-finite value,
    and names those partitions."""
    per_partition = {r.partition: int(r.store.nonfinite_values) for r in results}
    failing = sorted(key for key, n in per_partition.items() if n)
    return dg.AssetCheckResult(
        check_name="all_values_finite", passed=not failing,
        metadata={"failing_partitions": json_value(failing),
                  "nonfinite_per_partition": json_value(per_partition),
                  "nonfinite_values": sum(per_partition.values()),
                  "tiles_checked": sum(r.store.counts["ok"] for r in results)},
        description=f"Non-finite values in: {', '.join(failing)}." if failing else None,
    )


def coverage_check(coverage: Mapping[str, float], minimum: float) -> dg.AssetCheckResult:
    """The cube's coverage per partition: fails (warning) when any partition of the run has fewer
    than ``minimum`` of its tiles embedded, and names those partitions."""
    failing = sorted(key for key, c in coverage.items() if c < minimum)
    return dg.AssetCheckResult(
        check_name="coverage", passed=not failing, severity=dg.AssetCheckSeverity.WARN,
        metadata={"failing_partitions": json_value(failing),
                  "min_coverage": float(min(coverage.values(), default=0.0)),
                  "coverage_per_partition": json_value({k: round(float(c), 4) for k, c in coverage.items()})},
        description=(f"Fewer than {minimum:.0%} of the tiles have an embedding in: {', '.join(failing)}."
                     if failing else None),
    )


def georeferencing_check(groups: Sequence[tuple[bool, str]]) -> dg.AssetCheckResult:
    """dims_and_crs over every cube group a run wrote (``stores.cube.check_georeferencing``)."""
    if not groups:
        # Nothing written (no tile had imagery): nothing can be mis-georeferenced; coverage warns.
        groups = [(True, "no tile had an embedding: nothing was written")]
    return dg.AssetCheckResult(check_name="dims_and_crs", passed=all(ok for ok, _ in groups),
                               description="; ".join(message for _, message in groups))
