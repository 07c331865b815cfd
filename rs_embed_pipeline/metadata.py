"""Helpers that turn run facts into Dagster metadata people can read in the UI.

Every materialization of an asset carries the same keys, so the UI can plot them over partitions.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from collections.abc import Iterable, Mapping

import dagster as dg
import numpy as np

STATUS_COLUMNS = ("ok", "no_data", "failed", "pending")


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


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """First three principal components of ``[..., D]`` features as uint8 RGB ``[..., 3]``.

    NaN cells (tiles without an embedding) come out black. Each component is stretched between its
    2nd and 98th percentile so that one outlier does not wash out the picture.
    """
    shape = features.shape[:-1]
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    ok = np.isfinite(flat).all(axis=1)
    rgb = np.zeros((flat.shape[0], 3), dtype=np.uint8)
    if ok.sum() >= 2:
        x = flat[ok] - flat[ok].mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps = x @ vt[:3].T
        if comps.shape[1] < 3:
            comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
        lo, hi = np.percentile(comps, 2, axis=0), np.percentile(comps, 98, axis=0)
        scaled = np.clip((comps - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
        rgb[ok] = (scaled * 255).round().astype(np.uint8)
    return rgb.reshape(*shape, 3)


# The preview is stored in the event log with every materialization: small regions are enlarged
# (whole pixels, no smoothing) to be visible, large ones shrunk so that no side exceeds this.
PREVIEW_MAX_SIDE = 512


def preview_png(rgb: np.ndarray, min_side: int = 256, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """``[h, w, 3]`` uint8 as a PNG whose longer side is at most ``max_side`` pixels: enlarged by
    a whole factor towards ``min_side`` (nearest neighbour), or shrunk (box filter) to fit."""
    from PIL import Image

    image = Image.fromarray(rgb, mode="RGB")
    h, w = rgb.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    factor = max(1, min(factor, max_side // max(1, h, w)))
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    elif factor > 1:
        image = image.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


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


def preview_markdown(png: bytes, caption: str) -> dg.MarkdownMetadataValue:
    encoded = base64.b64encode(png).decode()
    return dg.MetadataValue.md(f"![{caption}](data:image/png;base64,{encoded})\n\n{caption}")
