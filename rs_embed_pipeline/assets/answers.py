"""Answers from the cubes, per model x modality, partitioned like the cubes (region x window):

* ``<model>_<modality>_search_index``: the cells of a window, normalised, with an HNSW index for
  large windows, so "where else looks like this?" costs milliseconds (products/search.py; query it
  with ``python -m rs_embed_pipeline.search``);
* ``<model>_<modality>_change``: the per-cell cosine distance between a window and the previous
  window (or a configured baseline), with a check that warns when the changed area share is above
  a configured share (products/change.py).

Both are thin: they resolve partitions, call the products layer and shape metadata (a map each).
"""


import time
from typing import Any

import dagster as dg
import numpy as np

from rs_embed_pipeline.assets.embeddings import EmbeddingSpec
from rs_embed_pipeline.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.metadata import add_partition_metadata, json_value, path_value
from rs_embed_pipeline.partitions import BACKFILL_POLICY, region_windows
from rs_embed_pipeline.resources import CODE_VERSION, PipelineStore, TerraFMResource, ThorResource

DEFAULT_CHANGE_THRESHOLD = 0.05
DEFAULT_MAX_CHANGED_SHARE = 0.2
QUERY_REPEATS = 20


class SearchIndexConfig(dg.Config):
    kinds: list[str] = ["grid", "pooled"]
    """Which cells to index: "grid" (feature-map cells) and / or "pooled" (one per tile)."""
    ann: str = "auto"
    """"auto": exact numpy search below ann_min_cells cells, a FAISS HNSW index above; "exact"; "hnsw"."""
    ann_min_cells: int = 50_000
    """Windows with at least this many cells get an HNSW index (auto)."""


class ChangeConfig(dg.Config):
    baseline_window: str | None = None
    """Compare every window with this one (a window start, e.g. "2024-01-01"); default: the previous window."""
    distance_threshold: float = DEFAULT_CHANGE_THRESHOLD
    """A cell has changed when its cosine distance (1 - cosine) to the baseline is above this."""
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE
    """The check `changed_area_share` warns when more than this share of cells changed."""
    kind: str = "grid"
    """Compare "grid" cells (feature maps) or "pooled" tiles."""


def build_answer_assets(spec: EmbeddingSpec, partitions_def: dg.MultiPartitionsDefinition,
                        retry_policy: dg.RetryPolicy | None = None) -> list[dg.AssetsDefinition]:
    cube_name = f"{spec.name}_cube"
    index_name = f"{spec.name}_search_index"
    change_name = f"{spec.name}_change"
    windows_def = partitions_def.get_partitions_def_for_dimension("window")

    @dg.asset(
        name=index_name,
        deps=[cube_name, "tile_grid"],
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        retry_policy=retry_policy,
        group_name="answers",
        kinds={"numpy", "parquet"},
        owners=["team:embeddings"],
        code_version=CODE_VERSION,
        description=(
            f"Similarity-search index of the {spec.title} cube, per region and window: every cell with an "
            "embedding (grid cells and pooled tiles), L2-normalised, with a FAISS HNSW index from "
            "ann_min_cells cells on (exact numpy search below). Query it with `python -m "
            "rs_embed_pipeline.search` or products.search.search(); the map shows the cosine similarity "
            "of every cell to the region's centre cell."
        ),
    )
    def search_index(context: dg.AssetExecutionContext, config: SearchIndexConfig, store: PipelineStore,
                     terrafm: TerraFMResource, thor: ThorResource) -> dg.MaterializeResult:
        from rs_embed_pipeline.products import search as S

        bad = [k for k in config.kinds if k not in S.KINDS] or ([] if config.kinds else ["(none)"])
        if bad or config.ann not in ("auto", "exact", "hnsw"):
            raise dg.Failure(f"{index_name} config: kinds must be among {list(S.KINDS)} (got {config.kinds}) and "
                             f"ann one of auto, exact, hnsw (got {config.ann!r})", allow_retries=False)
        adapter = spec.adapter(terrafm, thor)
        model_id = adapter.store_model_id
        per_partition: dict[str, dict[str, Any]] = {}
        totals = {"cells": 0, "build_s": 0.0}
        for part in region_windows(partitions_def, context.partition_keys):
            cube_uri = store.layout.cube(model_id, spec.modality, part.region)
            grid = read_tile_grid(store, part.region, part.window)
            tiles = grid[grid["size_px"] == adapter.tile_size_px]
            md: dict[str, Any] = {}
            picture = None
            for kind in ("grid", "pooled"):
                if kind not in config.kinds:
                    md.update({f"{kind}_cells": 0, f"{kind}_method": "not built", f"{kind}_query_ms": 0.0})
                    continue
                try:
                    index = S.build_index(cube_uri, part.window, kind, storage_options=store.storage_options,
                                          tiles=tiles, ann=config.ann, ann_min_cells=config.ann_min_cells)
                except S.SearchError as exc:
                    if "no cell with an embedding" not in str(exc):
                        raise dg.Failure(f"{index_name} {part.key}: {exc}", allow_retries=False) from exc
                    md.update({f"{kind}_cells": 0, f"{kind}_method": "empty", f"{kind}_query_ms": 0.0})
                    continue
                uri = S.index_uri(store.layout.root, model_id, spec.modality, part.region, part.window, kind)
                S.save_index(index, uri, store.storage_options)
                centre = _centre_cell(index)
                query_ms = _query_ms(index, centre)
                md.update({f"{kind}_cells": len(index), f"{kind}_method": index.method, f"{kind}_query_ms": query_ms})
                totals["cells"] += len(index)
                totals["build_s"] += float(index.info["build_seconds"])
                if kind == "grid" or picture is None:
                    picture = _similarity_map(index, centre, spec, part.key)
            per_partition[part.key] = {
                **md,
                "store_uri": path_value(S.index_uri(store.layout.root, model_id, spec.modality, part.region,
                                                    part.window, "")[:-1]),
                "similarity_map": picture or dg.MetadataValue.md("No cell of this window has an embedding."),
            }
            context.log.info(f"{part.key}: search index {md}")
        add_partition_metadata(context, per_partition)
        return dg.MaterializeResult(metadata={
            "model_id": model_id, "modality": spec.modality,
            "cells_indexed": int(totals["cells"]), "build_seconds": round(totals["build_s"], 3),
            "index_settings": json_value({"ann": config.ann, "ann_min_cells": config.ann_min_cells,
                                          "hnsw": {"M": S.HNSW_M, "efConstruction": S.HNSW_EF_CONSTRUCTION,
                                                   "efSearch": S.HNSW_EF_SEARCH}, "metric": "cosine"}),
        })

    @dg.asset(
        name=change_name,
        deps=[cube_name],
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        retry_policy=retry_policy,
        group_name="answers",
        kinds={"zarr", "xarray"},
        owners=["team:embeddings"],
        code_version=CODE_VERSION,
        check_specs=[dg.AssetCheckSpec(
            "changed_area_share", asset=change_name,
            description="Warns when the share of cells whose cosine distance to the baseline window is above "
                        "the threshold exceeds max_changed_share (config).")],
        description=(
            f"Change between windows of the {spec.title} cube: per-cell cosine distance (1 - cosine) between "
            "this window and the previous one (or a configured baseline), as Zarr per region and window "
            "(cosine_distance and a changed mask, georeferenced like the cube), with a histogram and a map."
        ),
    )
    def change(context: dg.AssetExecutionContext, config: ChangeConfig, store: PipelineStore,
               terrafm: TerraFMResource, thor: ThorResource) -> dg.MaterializeResult:
        from rs_embed_pipeline.products import change as C
        from rs_embed_pipeline.products import pictures

        window_keys = windows_def.get_partition_keys()
        if config.baseline_window is not None and config.baseline_window not in window_keys:
            raise dg.Failure(f"{change_name} config: baseline_window {config.baseline_window!r} is not a window; "
                             f"windows: {', '.join(window_keys[:8])}{' ...' if len(window_keys) > 8 else ''}",
                             allow_retries=False)
        if not 0 < config.distance_threshold <= 2 or not 0 <= config.max_changed_share <= 1 \
                or config.kind not in ("grid", "pooled"):
            raise dg.Failure(f"{change_name} config: distance_threshold must be in (0, 2] (got "
                             f"{config.distance_threshold}), max_changed_share in [0, 1] (got "
                             f"{config.max_changed_share}), kind grid or pooled (got {config.kind!r})",
                             allow_retries=False)
        adapter = spec.adapter(terrafm, thor)
        model_id = adapter.store_model_id
        per_partition: dict[str, dict[str, Any]] = {}
        findings = []
        for part in region_windows(partitions_def, context.partition_keys):
            cube_uri = store.layout.cube(model_id, spec.modality, part.region)
            position = window_keys.index(part.window)
            baseline = config.baseline_window or (window_keys[position - 1] if position > 0 else None)
            uri = C.change_uri(store.layout.root, model_id, spec.modality, part.region, part.window)
            result = None
            if baseline is not None and baseline != part.window:
                try:
                    result = C.change_between(cube_uri, part.window, baseline, config.kind,
                                              storage_options=store.storage_options)
                except C.BaselineMissing as exc:  # the baseline window was never built: say so, warn
                    context.log.warning(f"{part.key}: no baseline: {exc}")
                except C.ChangeError as exc:
                    raise dg.Failure(f"{change_name} {part.key}: {exc}", allow_retries=False) from exc
            if result is None:
                why = ("first window: nothing to compare with" if baseline in (None, part.window)
                       else f"baseline window {baseline} is not in the cube (materialize {cube_name} for it)")
                per_partition[part.key] = _no_change_metadata(baseline, why, uri)
                findings.append((part.key, None, why))
                continue
            C.write_change(result, uri, config.distance_threshold, store.storage_options)
            summary = result.summary(config.distance_threshold)
            counts, edges = result.histogram()
            first_changed = int(np.searchsorted(edges, config.distance_threshold, side="right")) - 1
            zone, ds = next(iter(result.zones.items()))
            dist = ds["cosine_distance"].values
            hi = max(2 * config.distance_threshold, float(np.nanpercentile(dist, 99.5)) if np.isfinite(dist).any() else 1)
            map_rgb = pictures.colormap(dist, 0.0, hi)
            changed = np.where(np.isfinite(dist), (dist > config.distance_threshold), False)
            mask_rgb = np.where(changed[..., None], np.uint8([220, 40, 40]), np.uint8([235, 235, 235]))
            mask_rgb[~np.isfinite(dist)] = pictures.NAN_RGB
            caption = (f"Cosine distance {part.window} vs {baseline} ({spec.name} {config.kind}, {part.key}, {zone}; "
                       f"dark 0 .. bright {hi:.3f}) | cells above {config.distance_threshold} in red: "
                       f"{summary['changed_share']:.1%}")
            per_partition[part.key] = {
                "baseline_window": baseline,
                "changed_share": float(summary["changed_share"]),
                "changed_cells": int(summary["changed_cells"]),
                "cells_compared": int(summary["cells"]),
                "median_distance": float(summary["median"]),
                "p99_distance": float(summary["p99"]),
                "histogram": _histogram_table(counts, edges),
                "histogram_picture": dg.MetadataValue.md(pictures.markdown(
                    [(pictures.histogram_png(counts, highlight_from=first_changed), "cosine distance histogram")],
                    f"Cells per cosine-distance bin (0 .. 1 in steps of {edges[1]:.2f}, sqrt scale); red: above "
                    f"the threshold {config.distance_threshold}")),
                "change_map": dg.MetadataValue.md(pictures.markdown(
                    [(pictures.png(map_rgb), "cosine distance"), (pictures.png(mask_rgb), "changed cells")], caption)),
                "store_uri": path_value(uri),
            }
            findings.append((part.key, summary["changed_share"], None))
        add_partition_metadata(context, per_partition)
        shares = [s for _, s, _ in findings if s is not None]
        too_much = [f"{key}: {share:.1%}" for key, share, _ in findings
                    if share is not None and share > config.max_changed_share]
        description = (f"changed area above {config.max_changed_share:.0%} in {', '.join(too_much)}" if too_much
                       else "; ".join(f"{key}: {share:.1%} changed" if share is not None else f"{key}: {why}"
                                      for key, share, why in findings))
        return dg.MaterializeResult(
            metadata={"distance_threshold": float(config.distance_threshold),
                      "max_changed_share": float(config.max_changed_share),
                      "max_changed_share_found": float(max(shares)) if shares else 0.0},
            check_results=[dg.AssetCheckResult(
                check_name="changed_area_share", passed=not too_much, severity=dg.AssetCheckSeverity.WARN,
                description=description,
                metadata={"changed_share": float(max(shares)) if shares else 0.0,
                          "max_changed_share": float(config.max_changed_share)})],
        )

    return [search_index, change]


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


def _centre_cell(index) -> int:
    """The cell nearest the centre of the index's first zone (the map's query)."""
    cells = index.cells[index.cells["epsg"] == index.cells["epsg"].iat[0]]
    cx, cy = cells["x"].mean(), cells["y"].mean()
    return int(cells.index[np.argmin((cells["x"] - cx) ** 2 + (cells["y"] - cy) ** 2)])


def _query_ms(index, cell: int) -> float:
    """Median milliseconds of a top-20 query (the centre cell's vector) over a few repeats."""
    times = []
    for _ in range(QUERY_REPEATS):
        t0 = time.perf_counter()
        index.top_k(index.vectors[cell], 20, must_include=cell)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(times)), 3)


def _similarity_map(index, cell: int, spec: EmbeddingSpec, partition: str) -> dg.MarkdownMetadataValue:
    from rs_embed_pipeline.products import pictures
    from rs_embed_pipeline.products.search import similarity_plane

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
