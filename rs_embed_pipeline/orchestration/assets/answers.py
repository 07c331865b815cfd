"""Answers from the cubes, per model x modality, partitioned like the cubes (region x window):

* ``<model>_<modality>_search_index``: the cells of a window, normalised, with an HNSW index for
  large windows, so "where else looks like this?" costs milliseconds (products/similarity.py; query it
  with ``python -m rs_embed_pipeline.cli.search``);
* ``<model>_<modality>_change``: the per-cell cosine distance between a window and the previous
  window (or a configured baseline), with a check that warns when the changed area share is above
  a configured share (products/change.py).

Both are thin: they check their config, then per partition call one step below (``_index_partition``,
``_change_partition``: the products layer, then a map each) and shape metadata. They need only the
store: the model's tile size and store id come from the plan's spec.
"""

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import dagster as dg
import numpy as np

from rs_embed_pipeline.orchestration.assets.per_model import cube_uri, model_tiles, spec_asset
from rs_embed_pipeline.orchestration.knob_fields import knob
from rs_embed_pipeline.orchestration.metadata import add_partition_metadata, json_value, path_value
from rs_embed_pipeline.orchestration.partitions import RegionWindow, region_windows
from rs_embed_pipeline.orchestration.plan import EmbeddingSpec
from rs_embed_pipeline.orchestration.resources import PipelineStore
from rs_embed_pipeline.products import pictures
from rs_embed_pipeline.products.similarity import KINDS, AnnMethod, index_uri, similarity_plane
from rs_embed_pipeline.stores.cube.reader import Kind
from rs_embed_pipeline.products import change as C
from rs_embed_pipeline.products import similarity as S

if TYPE_CHECKING:
    from rs_embed_pipeline.products.change import ChangeResult
    from rs_embed_pipeline.products.similarity import SearchIndex

QUERY_REPEATS = 20
ANN_CHOICES = ("auto", "exact", "hnsw")
CHANGE_KINDS = ("grid", "pooled")
INDEX_DESCRIPTION = (
    "Similarity-search index of the {title} cube, per region and window: every cell with an embedding (grid "
    "cells and pooled tiles), L2-normalised, with a FAISS HNSW index from ann_min_cells cells on (exact numpy "
    "search below). Query it with `python -m rs_embed_pipeline.cli.search` or products.similarity.search(); the map "
    "shows the cosine similarity of every cell to the region's centre cell.")
CHANGE_DESCRIPTION = (
    "Change between windows of the {title} cube: per-cell cosine distance (1 - cosine) between this window "
    "and the previous one (or a configured baseline), as Zarr per region and window (cosine_distance and a "
    "changed mask, georeferenced like the cube), with a histogram and a map.")


class SearchIndexConfig(dg.Config):
    """Run config of the ``<model>_<modality>_search_index`` assets; each field a knob of docs/knobs.md."""

    # list[str], checked by _check_index_config: Dagster 1.13 makes no config type of list[Literal[...]].
    kinds: list[str] = knob("Search index kinds", default=["grid", "pooled"],
                            help='Which cells to index: "grid" (feature-map cells) and / or "pooled" (one per tile).',
                            changes="search index `cells_indexed`; the index files per kind")
    ann: AnnMethod = knob("Search index method", default="auto",
                          help='"auto": exact numpy search below ann_min_cells cells, a FAISS HNSW index above; '
                          '"exact"; "hnsw".',
                          changes="search index `index_settings.ann`, `build_seconds`; query speed, not the top hits "
                          "of exact search")
    ann_min_cells: int = knob("Search index method", default=50_000,
                              help="Windows with at least this many cells get an HNSW index (auto).")


class ChangeConfig(dg.Config):
    """Run config of the ``<model>_<modality>_change`` assets; each field a knob of docs/knobs.md."""

    baseline_window: str | None = knob(
        "Change baseline", default=None, why="the previous window",
        help='Compare every window with this one (a window start, e.g. "2024-01-01"); default: the previous window.',
        changes="change: the window each partition is compared with (per-partition metadata)")
    distance_threshold: float = knob(
        "Change threshold", default=0.05,
        help="A cell has changed when its cosine distance (1 - cosine) to the baseline is above this.",
        changes="change `distance_threshold`; the `changed` mask and shares")
    max_changed_share: float = knob(
        "Changed-area warning", default=0.2,
        help="The check `changed_area_share` warns when more than this share of cells changed.",
        changes="change `max_changed_share`; check `changed_area_share` severity")
    kind: Kind = knob("Change cells", default="grid", help='Compare "grid" cells (feature maps) or "pooled" tiles.',
                      changes="change: the cells compared (feature-map cells or one per tile)")


def build_answer_assets(spec: EmbeddingSpec, partitions_def: dg.MultiPartitionsDefinition,
                        retry_policy: dg.RetryPolicy | None = None) -> list[dg.AssetsDefinition]:
    """The search-index and change assets of one model x modality."""
    cube_name, index_name, change_name = f"{spec.name}_cube", f"{spec.name}_search_index", f"{spec.name}_change"
    windows_def = partitions_def.get_partitions_def_for_dimension("window")
    common: dict[str, Any] = dict(partitions_def=partitions_def, group_name="answers", retry_policy=retry_policy)

    @spec_asset(name=index_name, deps=[cube_name, "tile_grid"], kinds={"numpy", "parquet"},
                description=INDEX_DESCRIPTION.format(title=spec.title), **common)
    def search_index(context: dg.AssetExecutionContext, config: SearchIndexConfig,
                     store: PipelineStore) -> dg.MaterializeResult:

        _check_index_config(index_name, config)
        per_partition: dict[str, dict[str, Any]] = {}
        built: list[SearchIndex] = []
        for part in region_windows(partitions_def, context.partition_keys):
            indexed = _index_partition(spec, store, part, config)
            per_partition[part.key] = indexed.metadata()
            built.extend(indexed.indexes)
            context.log.info(f"{part.key}: search index {indexed.summary}")
        add_partition_metadata(context, per_partition)
        return dg.MaterializeResult(metadata={
            "model_id": spec.store_model_id, "modality": spec.modality,
            "cells_indexed": int(sum(len(i) for i in built)),
            "build_seconds": round(sum(float(i.info["build_seconds"]) for i in built), 3),
            "index_settings": json_value({"ann": config.ann, "ann_min_cells": config.ann_min_cells,
                                          "hnsw": {"M": S.HNSW_M, "efConstruction": S.HNSW_EF_CONSTRUCTION,
                                                   "efSearch": S.HNSW_EF_SEARCH}, "metric": "cosine"}),
        })

    @spec_asset(name=change_name, deps=[cube_name], kinds={"zarr", "xarray"},
                check_specs=[dg.AssetCheckSpec(
                    "changed_area_share", asset=change_name,
                    description="Warns when the share of cells whose cosine distance to the baseline window is "
                                "above the threshold exceeds max_changed_share (config).")],
                description=CHANGE_DESCRIPTION.format(title=spec.title), **common)
    def change(context: dg.AssetExecutionContext, config: ChangeConfig, store: PipelineStore) -> dg.MaterializeResult:
        window_keys = list(windows_def.get_partition_keys())
        _check_change_config(change_name, config, window_keys)
        per_partition: dict[str, dict[str, Any]] = {}
        findings: list[ChangeFinding] = []
        for part in region_windows(partitions_def, context.partition_keys):
            baseline = config.baseline_window or _previous(window_keys, part.window)
            per_partition[part.key], finding = _change_partition(spec, store, part, baseline, config, context.log)
            findings.append(finding)
        add_partition_metadata(context, per_partition)
        shares = [f.share for f in findings if f.share is not None]
        return dg.MaterializeResult(
            metadata={"distance_threshold": float(config.distance_threshold),
                      "max_changed_share": float(config.max_changed_share),
                      "max_changed_share_found": float(max(shares)) if shares else 0.0},
            check_results=[_changed_area_check(findings, config.max_changed_share)],
        )

    return [search_index, change]


# --------------------------------------------------------------------------------------------- search index
def _check_index_config(index_name: str, config: SearchIndexConfig) -> None:
    bad = [k for k in config.kinds if k not in KINDS] or ([] if config.kinds else ["(none)"])
    if bad or config.ann not in ANN_CHOICES:
        raise dg.Failure(f"{index_name} config: kinds must be among {list(KINDS)} (got {config.kinds}) and "
                         f"ann one of {', '.join(ANN_CHOICES)} (got {config.ann!r})", allow_retries=False)


@dataclasses.dataclass
class IndexedWindow:
    """What indexing one partition's window built."""

    summary: dict[str, Any]          # per kind: cells, method ("not built", "empty", exact / hnsw), query_ms
    indexes: list["SearchIndex"]     # the kinds built, grid first
    picture: dg.MetadataValue        # similarity map of the first kind built
    store_uri: str

    def metadata(self) -> dict[str, Any]:
        return {**self.summary, "store_uri": path_value(self.store_uri), "similarity_map": self.picture}


def _index_partition(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow,
                     config: SearchIndexConfig) -> IndexedWindow:
    """Build and save the partition's index of each kind configured, and map the first one built."""

    tiles = model_tiles(spec, store, part)
    summary: dict[str, Any] = {}
    built = []
    for kind in S.KINDS:
        index, method = None, "not built"
        if kind in config.kinds:
            index = _build_index(spec, store, part, kind, tiles, config)
            method = index.method if index is not None else "empty"
        if index is not None:
            S.save_index(index, _index_uri(spec, store, part, kind), store.storage_options)
            built.append(index)
        summary.update({f"{kind}_cells": len(index) if index is not None else 0, f"{kind}_method": method,
                        f"{kind}_query_ms": _query_ms(index, _centre_cell(index)) if index is not None else 0.0})
    picture = (_similarity_map(built[0], _centre_cell(built[0]), spec, part.key) if built
               else dg.MetadataValue.md("No cell of this window has an embedding."))
    return IndexedWindow(summary=summary, indexes=built, picture=picture,
                         store_uri=_index_uri(spec, store, part, "")[:-1])


def _index_uri(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow, kind: str) -> str:
    return index_uri(store.layout.root, spec.store_model_id, spec.modality, part.region, part.window, kind)


def _build_index(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow, kind: str, tiles: Any,
                 config: SearchIndexConfig) -> "SearchIndex | None":
    """The window's index of one kind; None when no cell has an embedding."""

    try:
        return S.build_index(cube_uri(spec, store, part.region), part.window, kind, storage_options=store.storage_options,
                             tiles=tiles, ann=config.ann, ann_min_cells=config.ann_min_cells)
    except S.SearchError as exc:
        if "no cell with an embedding" not in str(exc):
            raise dg.Failure(f"{spec.name}_search_index {part.key}: {exc}", allow_retries=False) from exc
        return None


def _centre_cell(index: "SearchIndex") -> int:
    """The cell nearest the centre of the index's first zone (the map's query)."""
    cells = index.cells[index.cells["epsg"] == index.cells["epsg"].iat[0]]
    cx, cy = cells["x"].mean(), cells["y"].mean()
    return int(cells.index[np.argmin((cells["x"] - cx) ** 2 + (cells["y"] - cy) ** 2)])


def _query_ms(index: "SearchIndex", cell: int) -> float:
    """Median milliseconds of a top-20 query (the centre cell's vector) over a few repeats."""
    times = []
    for _ in range(QUERY_REPEATS):
        t0 = time.perf_counter()
        index.top_k(index.vectors[cell], 20, must_include=cell)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(times)), 3)


def _similarity_map(index: "SearchIndex", cell: int, spec: EmbeddingSpec, partition: str) -> dg.MetadataValue:
    epsg = int(index.cells["epsg"].iat[cell])
    plane = similarity_plane(index, index.vectors[cell], epsg)
    finite = plane[np.isfinite(plane)]
    lo = float(np.percentile(finite, 2)) if finite.size else 0.0
    top = set(index.top_k(index.vectors[cell], 10, must_include=cell)[0].tolist())
    rgb = pictures.colormap(plane, lo, 1.0)
    rows = index.cells.loc[sorted(top)]
    rgb = pictures.mark(rgb, [(r.iy, r.ix) for r in rows.itertuples() if r.epsg == epsg and r.Index != cell],
                        (255, 140, 0))
    rgb = pictures.mark(rgb, [(index.cells.iy.iat[cell], index.cells.ix.iat[cell])], (255, 0, 0))
    caption = (f"Cosine similarity of every {index.kind} cell to the centre cell {index.cells.cell_id.iat[cell]} "
               f"(red) of {spec.name}, {partition}, EPSG:{epsg} (dark {lo:.3f} .. bright 1); orange: its top 10")
    return dg.MetadataValue.md(pictures.markdown([(pictures.png(rgb), "similarity map")], caption))


# --------------------------------------------------------------------------------------------------- change
@dataclasses.dataclass(frozen=True)
class ChangeFinding:
    """One partition's outcome for the check: its changed share, or why none was computed."""

    partition: str
    share: float | None
    why: str | None = None


def _check_change_config(change_name: str, config: ChangeConfig, window_keys: list[str]) -> None:
    if config.baseline_window is not None and config.baseline_window not in window_keys:
        raise dg.Failure(f"{change_name} config: baseline_window {config.baseline_window!r} is not a window; "
                         f"windows: {', '.join(window_keys[:8])}{' ...' if len(window_keys) > 8 else ''}",
                         allow_retries=False)
    if not 0 < config.distance_threshold <= 2 or not 0 <= config.max_changed_share <= 1 \
            or config.kind not in CHANGE_KINDS:
        raise dg.Failure(f"{change_name} config: distance_threshold must be in (0, 2] (got "
                         f"{config.distance_threshold}), max_changed_share in [0, 1] (got "
                         f"{config.max_changed_share}), kind grid or pooled (got {config.kind!r})",
                         allow_retries=False)


def _previous(window_keys: list[str], window: str) -> str | None:
    position = window_keys.index(window)
    return window_keys[position - 1] if position > 0 else None


def _change_partition(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow, baseline: str | None,
                      config: ChangeConfig, log: Any) -> tuple[dict[str, Any], ChangeFinding]:
    """Compare the partition's window with ``baseline`` and write the distances; its metadata and finding."""

    uri = C.change_uri(store.layout.root, spec.store_model_id, spec.modality, part.region, part.window)
    result = None
    if not len(model_tiles(spec, store, part)):  # a split region's cell with other models' tile sizes only
        why = "no tile of this model's size in the partition"
        return _no_change_metadata(baseline, why, uri), ChangeFinding(part.key, None, why)
    if baseline is not None and baseline != part.window:
        try:
            result = C.change_between(cube_uri(spec, store, part.region), part.window, baseline, config.kind,
                                      storage_options=store.storage_options)
        except C.BaselineMissing as exc:  # the baseline window was never built: say so, warn
            log.warning(f"{part.key}: no baseline: {exc}")
        except C.ChangeError as exc:
            raise dg.Failure(f"{spec.name}_change {part.key}: {exc}", allow_retries=False) from exc
    if result is None or baseline is None:
        why = ("first window: nothing to compare with" if baseline in (None, part.window)
               else f"baseline window {baseline} is not in the cube (materialize {spec.name}_cube for it)")
        return _no_change_metadata(baseline, why, uri), ChangeFinding(part.key, None, why)
    C.write_change(result, uri, config.distance_threshold, store.storage_options)
    summary = result.summary(config.distance_threshold)
    return {
        "baseline_window": baseline,
        "changed_share": float(summary["changed_share"]),
        "changed_cells": int(summary["changed_cells"]),
        "cells_compared": int(summary["cells"]),
        "median_distance": float(summary["median"]),
        "p99_distance": float(summary["p99"]),
        **_change_pictures(result, spec, part, baseline, config, float(summary["changed_share"])),
        "store_uri": path_value(uri),
    }, ChangeFinding(part.key, float(summary["changed_share"]))


def _change_pictures(result: "ChangeResult", spec: EmbeddingSpec, part: RegionWindow, baseline: str,
                     config: ChangeConfig, changed_share: float) -> dict[str, Any]:
    """The histogram (table and picture) and the map of distances and changed cells of the first zone."""
    threshold = config.distance_threshold
    counts, edges = result.histogram()
    first_changed = int(np.searchsorted(edges, threshold, side="right")) - 1
    zone, ds = next(iter(result.zones.items()))
    dist = ds["cosine_distance"].values
    hi = max(2 * threshold, float(np.nanpercentile(dist, 99.5)) if np.isfinite(dist).any() else 1)
    map_rgb = pictures.colormap(dist, 0.0, hi)
    changed = np.where(np.isfinite(dist), (dist > threshold), False)
    mask_rgb = np.where(changed[..., None], np.array([220, 40, 40], dtype=np.uint8),
                        np.array([235, 235, 235], dtype=np.uint8))
    mask_rgb[~np.isfinite(dist)] = pictures.NAN_RGB
    caption = (f"Cosine distance {part.window} vs {baseline} ({spec.name} {config.kind}, {part.key}, {zone}; "
               f"dark 0 .. bright {hi:.3f}) | cells above {threshold} in red: {changed_share:.1%}")
    return {
        "histogram": _histogram_table(counts, edges),
        "histogram_picture": dg.MetadataValue.md(pictures.markdown(
            [(pictures.histogram_png(counts.tolist(), highlight_from=first_changed), "cosine distance histogram")],
            f"Cells per cosine-distance bin (0 .. 1 in steps of {edges[1]:.2f}, sqrt scale); red: above "
            f"the threshold {threshold}")),
        "change_map": dg.MetadataValue.md(pictures.markdown(
            [(pictures.png(map_rgb), "cosine distance"), (pictures.png(mask_rgb), "changed cells")], caption)),
    }


def _changed_area_check(findings: list[ChangeFinding], max_changed_share: float) -> dg.AssetCheckResult:
    """changed_area_share: warns, naming the partitions, when more than the share changed."""
    shares = [f.share for f in findings if f.share is not None]
    too_much = [f"{f.partition}: {f.share:.1%}" for f in findings if f.share is not None and f.share > max_changed_share]
    description = (f"changed area above {max_changed_share:.0%} in {', '.join(too_much)}" if too_much
                   else "; ".join(f"{f.partition}: {f.share:.1%} changed" if f.share is not None
                                  else f"{f.partition}: {f.why}" for f in findings))
    return dg.AssetCheckResult(
        check_name="changed_area_share", passed=not too_much, severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={"changed_share": float(max(shares)) if shares else 0.0, "max_changed_share": float(max_changed_share)})


def _no_change_metadata(baseline: str | None, why: str, uri: str) -> dict[str, Any]:
    return {
        "baseline_window": baseline or "none", "changed_share": 0.0, "changed_cells": 0, "cells_compared": 0,
        "median_distance": 0.0, "p99_distance": 0.0,
        "histogram": _histogram_table(np.zeros(0, dtype=int), np.zeros(1)),
        "histogram_picture": dg.MetadataValue.md(f"No change computed: {why}."),
        "change_map": dg.MetadataValue.md(f"No change computed: {why}."),
        "store_uri": path_value(uri),
    }


def _histogram_table(counts: np.ndarray, edges: np.ndarray) -> dg.TableMetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn("from", "float"), dg.TableColumn("to", "float"),
                                     dg.TableColumn("cells", "int")])
    records = [dg.TableRecord({"from": float(edges[i]), "to": float(edges[i + 1]), "cells": int(c)})
               for i, c in enumerate(counts)]
    return dg.MetadataValue.table(records=records, schema=schema)
