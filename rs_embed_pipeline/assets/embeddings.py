"""Embeddings and cubes: one pair of assets per (model, modality)."""


import dataclasses
from typing import Any

import dagster as dg
import numpy as np
import xarray as xr

from rs_embed_pipeline.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.metadata import json_value, path_value, pca_rgb, preview_markdown, preview_png, status_table
from rs_embed_pipeline.partitions import RegionWindow, region_windows
from rs_embed_pipeline.resources import CODE_VERSION, ModelAdapterResource, PipelineStore, TerraFMAdapter, ThorAdapter
from rs_embed_pipeline.stores import StoreError, TileStore
from rs_embed_pipeline.stores.cube import write_cube_window

# Grid previews read the whole feature-map mosaic; above this many tiles the pooled cube is used.
GRID_PREVIEW_MAX_TILES = 64
MIN_CUBE_COVERAGE = 0.5


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """One model x modality combination of the pipeline."""

    name: str            # asset name prefix, e.g. "terrafm_s2"
    resource_key: str    # "terrafm" | "thor"
    model_id: str        # "terrafm_b" | "thor_1_0_base"
    modality: str        # "s2" | "s1"
    title: str


EMBEDDING_SPECS = (
    EmbeddingSpec("terrafm_s2", "terrafm", "terrafm_b", "s2", "TerraFM-B, Sentinel-2"),
    EmbeddingSpec("terrafm_s1", "terrafm", "terrafm_b", "s1", "TerraFM-B, Sentinel-1"),
    EmbeddingSpec("thor_s2", "thor", "thor_1_0_base", "s2", "THOR 1.0 base, Sentinel-2"),
)


class EmbeddingsConfig(dg.Config):
    rebuild: bool = False
    """Accept an existing embedding store built with other settings and re-embed every tile."""


def _stores(spec: EmbeddingSpec, store: PipelineStore, adapter: ModelAdapterResource, part: RegionWindow) -> dict[str, str]:
    layout = store.layout
    return {
        "patches_uri": layout.patches(spec.modality, part.region, part.window, adapter.tile_size_px),
        "embeddings_uri": layout.embeddings(spec.model_id, spec.modality, part.region, part.window),
    }


def run_metadata(adapter_settings: dict[str, Any], patches: TileStore) -> dict[str, Any]:
    """The DESIGN.md run metadata shared by embeddings and cube materializations (same keys always)."""
    patch_settings = patches.settings
    provider = patch_settings.get("provider", {})
    sensor = patch_settings.get("sensor_options", {})
    return {
        "model_id": adapter_settings.get("model_id"),
        "weights_source": adapter_settings.get("weights_source"),
        "weights_sha256": adapter_settings.get("weights_sha256") or "none",
        "random_weights": bool(adapter_settings.get("random_weights", False)),
        "modality": patch_settings.get("modality"),
        "normalization": adapter_settings.get("normalization") or "none",
        "group_merge": adapter_settings.get("group_merge") or "n/a",
        "image_size": adapter_settings.get("image_size") or 0,
        "patch_size": adapter_settings.get("patch_size") or 0,
        "ground_cover_m": float(adapter_settings.get("ground_cover_m")
                                or patch_settings.get("size_px", 0) * patch_settings.get("scale_m", 0)),
        "s2_branch": adapter_settings.get("s2_branch") or "n/a",
        "provider": provider.get("provider") or provider.get("name") or "unknown",
        "collection": _collection(provider, patch_settings.get("modality", "")),
        "composite": sensor.get("composite", "n/a"),
        "cloudy_pct": float(sensor.get("cloudy_pct", -1)),
        "synthetic_imagery": bool(patches.group.attrs.get("synthetic_imagery", False)),
    }


def build_embedding_assets(
    spec: EmbeddingSpec, partitions_def: dg.MultiPartitionsDefinition
) -> list[dg.AssetsDefinition]:
    embeddings_name = f"{spec.name}_embeddings"
    cube_name = f"{spec.name}_cube"
    patches_name = f"{spec.modality}_patches"
    windows_def = partitions_def.get_partitions_def_for_dimension("window")

    @dg.asset(
        name=embeddings_name,
        deps=[patches_name],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=4),
        group_name="embeddings",
        kinds={"pytorch", "zarr"},
        owners=["team:embeddings"],
        pool="gpu",
        code_version=CODE_VERSION,
        check_specs=[dg.AssetCheckSpec(
            "all_values_finite", asset=embeddings_name, blocking=True,
            description="Every pooled and grid value of every embedded tile is finite (blocks the cube).")],
        description=(
            f"{spec.title} embeddings per tile, computed in the worker environment through Dagster Pipes: "
            "pooled [tile, D] and grid [tile, D', h, w] Zarr arrays with a per-tile status. Patches stream "
            "through in batches, so memory is bounded by the batch, not the region."
        ),
    )
    def embeddings(
        context: dg.AssetExecutionContext,
        config: EmbeddingsConfig,
        store: PipelineStore,
        pipes_subprocess_client: dg.PipesSubprocessClient,
        terrafm: TerraFMAdapter,
        thor: ThorAdapter,
    ) -> dg.MaterializeResult:
        adapter = terrafm if spec.resource_key == "terrafm" else thor
        parts = region_windows(partitions_def, context.partition_keys)
        extras = {
            "modality": spec.modality,
            "rebuild": config.rebuild,
            "code_version": CODE_VERSION,
            "storage_options": store.storage_options,
            "partitions": [{"key": p.key, "stores": [_stores(spec, store, adapter, p)]} for p in parts],
        }
        invocation = adapter.run_worker(context, pipes_subprocess_client, extras)
        messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and "partition" in m]
        if len(messages) != len(parts):
            raise dg.Failure(f"The worker reported {len(messages)} of {len(parts)} partitions")
        results = [s for m in messages for s in m["stores"]]
        adapter_settings = messages[0]["adapter"]
        patches = TileStore.open(results[0]["patches_uri"], "patches", storage_options=store.storage_options)
        counts = {k: sum(r["counts"][k] for r in results) for k in ("ok", "no_data", "failed", "pending")}
        timings = {k: round(sum(r["timings"][k] for r in results), 3) for k in results[0]["timings"]}
        nonfinite = sum(int(r["nonfinite_values"]) for r in results)
        if adapter_settings.get("random_weights"):
            context.log.warning(f"{embeddings_name}: computed with RANDOM WEIGHTS, not the pretrained model")
        return dg.MaterializeResult(
            metadata={
                **run_metadata(adapter_settings, patches),
                "time_window": json_value([{"window": p.window, "start": p.start, "end": p.end} for p in parts]),
                "tile_status": status_table([{"partition": m["partition"], **s["counts"]}
                                             for m in messages for s in m["stores"]]),
                "tiles_ok": counts["ok"], "tiles_no_data": counts["no_data"], "tiles_failed": counts["failed"],
                "tiles_embedded_now": sum(r["tiles_embedded_now"] for r in results),
                "timings_s": json_value(timings),
                "wall_seconds": timings["wall_s"],
                "tiles_per_second": round(sum(r["tiles_embedded_now"] for r in results) / timings["wall_s"], 3)
                if timings["wall_s"] else 0.0,
                "adapter_settings": json_value(adapter_settings),
                "store_uri": path_value(results[0]["embeddings_uri"]),
            },
            check_results=[dg.AssetCheckResult(
                check_name="all_values_finite", passed=nonfinite == 0,
                metadata={"nonfinite_values": nonfinite, "tiles_checked": counts["ok"]},
            )],
        )

    @dg.asset(
        name=cube_name,
        deps=[embeddings_name, "tile_grid"],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=4),
        group_name="cubes",
        kinds={"zarr", "xarray"},
        owners=["team:embeddings"],
        code_version=CODE_VERSION,
        check_specs=[
            dg.AssetCheckSpec("dims_and_crs", asset=cube_name,
                              description="Cube opens with xarray as (time, y, x, feature) with the tiles' UTM CRS."),
            dg.AssetCheckSpec("coverage", asset=cube_name,
                              description=f"At least {MIN_CUBE_COVERAGE:.0%} of the region's tiles have an embedding."),
        ],
        description=(
            f"{spec.title} cube per region: a georeferenced Zarr with (time, y, x, feature) in the tiles' "
            "UTM CRS (CF grid_mapping 'spatial_ref'), one group per UTM zone: '<EPSG>/grid' mosaics the "
            "feature maps at their own resolution, '<EPSG>/pooled' holds one cell per tile. Each time "
            "window is its own slice; appending a window never rewrites another."
        ),
    )
    def cube(
        context: dg.AssetExecutionContext, store: PipelineStore, terrafm: TerraFMAdapter, thor: ThorAdapter
    ) -> dg.MaterializeResult:
        adapter = terrafm if spec.resource_key == "terrafm" else thor
        window_keys = windows_def.get_partition_keys()
        rows, checks_ok, messages, coverage, cube_uris = [], [], [], [], []
        preview = None
        meta: dict[str, Any] = {}
        for part in region_windows(partitions_def, context.partition_keys):
            uris = _stores(spec, store, adapter, part)
            try:
                emb = TileStore.open(uris["embeddings_uri"], "embeddings", storage_options=store.storage_options)
            except StoreError as exc:
                raise dg.Failure(str(exc), allow_retries=False) from exc
            grid_df = read_tile_grid(store, part.region, part.window)
            tiles = grid_df[grid_df["size_px"] == adapter.tile_size_px]
            tile_ids = list(emb.tile_ids)
            index_of = {tid: i for i, tid in enumerate(tile_ids)}
            ok = emb.indices_with_status("ok")
            pooled = dict(zip([tile_ids[i] for i in ok], emb.read("pooled", ok)))
            cube_uri = store.layout.cube(spec.model_id, spec.modality, part.region)
            cube_uris.append(cube_uri)
            settings = emb.settings
            patches = TileStore.open(uris["patches_uri"], "patches", storage_options=store.storage_options)
            meta = run_metadata(settings["adapter"], patches)
            attrs = {
                "title": f"{spec.title} embedding cube, region {part.region}",
                "model_id": spec.model_id, "modality": spec.modality, "region": part.region,
                "source": "rs_embed_pipeline", "random_weights": meta["random_weights"],
                "weights_sha256": meta["weights_sha256"],
                "synthetic_imagery": meta["synthetic_imagery"],
            }
            written = write_cube_window(
                cube_uri,
                tiles=tiles[["tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m"]].to_dict("records"),
                pooled=pooled,
                grids=lambda tid: emb.read("grid", [index_of[tid]])[0],
                window_index=window_keys.index(part.window),
                window_starts=window_keys,
                attrs=attrs,
                storage_options=store.storage_options,
            )
            counts = emb.status_counts()
            rows.append({"partition": part.key, **counts})
            coverage.append(len(pooled) / max(1, len(tiles)))
            window_index = window_keys.index(part.window)
            for g in written["groups"]:
                ds = xr.open_zarr(cube_uri, group=f"{g['group']}/grid", consolidated=False,
                                  storage_options=store.storage_options)
                crs_epsg = _crs_epsg(ds)
                dims_ok = tuple(ds["embedding"].dims) == ("time", "y", "x", "feature")
                checks_ok.append(dims_ok and crs_epsg == g["epsg"])
                messages.append(f"{g['group']}: dims {tuple(ds['embedding'].dims)}, CRS EPSG:{crs_epsg}")
                if preview is None:
                    source = "grid" if len(pooled) <= GRID_PREVIEW_MAX_TILES else "pooled"
                    if source == "pooled":
                        ds = xr.open_zarr(cube_uri, group=f"{g['group']}/pooled", consolidated=False,
                                          storage_options=store.storage_options)
                    plane = ds["embedding"].isel(time=window_index).values
                    caption = (f"First three principal components of {spec.name} {source} embeddings, "
                               f"{part.key}, {g['group']}"
                               + (" (RANDOM WEIGHTS)" if meta["random_weights"] else ""))
                    preview = preview_markdown(preview_png(pca_rgb(plane)), caption)
            context.log.info(f"{part.key}: cube {cube_uri}: {written}")
        if not checks_ok:
            # Nothing written (no tile had imagery): nothing can be mis-georeferenced; coverage warns.
            messages.append("no tile had an embedding: nothing was written")
            checks_ok.append(True)
        return dg.MaterializeResult(
            metadata={
                **meta,
                "tile_status": status_table(rows),
                "tiles_ok": sum(r["ok"] for r in rows),
                "store_uri": path_value(cube_uris[0]),
                "preview": preview or dg.MetadataValue.md("No tile of this window has an embedding."),
            },
            check_results=[
                dg.AssetCheckResult(check_name="dims_and_crs", passed=all(checks_ok),
                                    description="; ".join(messages)),
                dg.AssetCheckResult(check_name="coverage", passed=min(coverage) >= MIN_CUBE_COVERAGE,
                                    severity=dg.AssetCheckSeverity.WARN,
                                    metadata={"min_coverage": float(min(coverage))}),
            ],
        )

    return [embeddings, cube]


def _collection(provider: dict[str, Any], modality: str) -> str:
    """The collection id the patches came from, whatever shape the provider's describe() has."""
    per_modality = provider.get("collections", {}).get(modality)
    if isinstance(per_modality, dict):
        return str(per_modality.get("collection", "unknown"))
    return str(per_modality or provider.get("collection") or "unknown")


def _crs_epsg(ds: xr.Dataset) -> int | None:
    from pyproj import CRS

    wkt = ds["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in ds.variables else None
    return CRS.from_wkt(wkt).to_epsg() if wkt else None
