"""Embeddings and cubes: one pair of assets per (model, modality)."""


import dataclasses
import time
from typing import Any

import dagster as dg
import numpy as np
import xarray as xr

from rs_embed_pipeline.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.executors import GPU_STEP_TAGS, STEP_RETRY_POLICY
from rs_embed_pipeline.metadata import (
    add_partition_metadata, json_value, ordered_for_people, path_value, pca_rgb, preview_png,
    status_table,
)
from rs_embed_pipeline.partitions import BACKFILL_POLICY, RegionWindow, region_windows
from rs_embed_pipeline.resources import CODE_VERSION, ModelAdapterResource, PipelineStore, TerraFMAdapter, ThorAdapter
from rs_embed_pipeline.stores import StoreError, TileStore
from rs_embed_pipeline.fingerprint import cube_fingerprint
from rs_embed_pipeline.stores.cube import write_cube_window

# The UI shows metadata in this order: the run's outcome, then the settings that differ between
# models, modalities and runs; provenance and the rest (same keys everywhere) after them.
METADATA_ORDER = (
    "tile_status", "tiles_per_second", "wall_seconds", "model_id", "modality", "random_weights",
    "synthetic_imagery", "normalization", "group_merge", "image_size", "patch_size", "ground_cover_m",
    "s2_branch", "orbit", "composite", "cloudy_pct", "provider", "collection", "quantization",
    "weights_source", "weights_sha256",
)
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
# Built only when the model resource's ``modalities`` include it (THOR defaults to ["s2"]).
OPTIONAL_EMBEDDING_SPECS = (
    EmbeddingSpec("thor_s1", "thor", "thor_1_0_base", "s1", "THOR 1.0 base, Sentinel-1"),
)


def enabled_specs(resources: dict[str, Any] | None) -> list[EmbeddingSpec]:
    """The (model, modality) pairs to build: every spec whose model resource embeds its modality
    (``modalities``); resources without that field keep the default three."""
    out = []
    for spec in EMBEDDING_SPECS + OPTIONAL_EMBEDDING_SPECS:
        modalities = getattr((resources or {}).get(spec.resource_key), "modalities", None)
        if modalities is None:
            if spec in EMBEDDING_SPECS:
                out.append(spec)
        elif spec.modality in modalities:
            out.append(spec)
    return out


class EmbeddingsConfig(dg.Config):
    rebuild: bool = False
    """Accept an existing embedding store built with other settings and re-embed every tile."""
    force: bool = False
    """Re-embed every tile even though the store's settings match."""


class CubeConfig(dg.Config):
    rebuild: bool = False
    """Replace a cube built with other settings (it is deleted: re-materialize its other windows)."""
    quantization: str = "none"
    """Cube storage: "none" (float32), "int8_per_cell" (int8 + a float32 scale per cell, as TESSERA)
    or "int8_per_feature" (int8 + a scale and offset per feature and window). Part of the cube's
    identity: changing it needs `rebuild`. Readers (products.open_cube) de-quantize transparently."""


def _cube_time_axis(windows_def: Any, n_now: int) -> list[str]:
    """Window starts from the first window into the future, so the cube's time axis can be
    allocated with a margin (stores/cube.py): at least a block and a margin beyond today's windows."""
    import datetime as dt

    from rs_embed_pipeline.stores.cube import TIME_BLOCK, TIME_MARGIN

    years = 1
    while True:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=366 * years)
        keys = windows_def.get_partition_keys(current_time=later)
        if len(keys) >= n_now + 2 * TIME_BLOCK + TIME_MARGIN or years > 64:
            return keys
        years *= 2


def _model_id(spec: EmbeddingSpec, adapter: ModelAdapterResource) -> str:
    """Model id in store paths: the configured variant's (THOR model_key), spec's by default."""
    return getattr(adapter, "store_model_id", None) or spec.model_id


def _stores(spec: EmbeddingSpec, store: PipelineStore, adapter: ModelAdapterResource, part: RegionWindow) -> dict[str, str]:
    layout = store.layout
    return {
        "patches_uri": layout.patches(spec.modality, part.region, part.window, adapter.tile_size_px),
        "embeddings_uri": layout.embeddings(_model_id(spec, adapter), spec.modality, part.region, part.window),
    }


def run_metadata(adapter_settings: dict[str, Any], patches: TileStore) -> dict[str, Any]:
    """The docs/architecture.md run metadata shared by embeddings and cube materializations (same keys always),
    plus every field rs-embed's TerraFM-B / THOR pages list (``source``, ``grid_type``, weight file,
    ``model_key``, ``grid_kind``, ``cls_removed``, ``pooling``) and the sensor options; "n/a" where a
    setting does not apply to the model or modality."""
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
    spec: EmbeddingSpec, partitions_def: dg.MultiPartitionsDefinition, retry_policy: dg.RetryPolicy | None = None,
) -> list[dg.AssetsDefinition]:
    embeddings_name = f"{spec.name}_embeddings"
    cube_name = f"{spec.name}_cube"
    patches_name = f"{spec.modality}_patches"
    windows_def = partitions_def.get_partitions_def_for_dimension("window")

    @dg.asset(
        name=embeddings_name,
        deps=[patches_name],
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        group_name="embeddings",
        kinds={"pytorch", "zarr"},
        owners=["team:embeddings"],
        pool="gpu",
        retry_policy=retry_policy or STEP_RETRY_POLICY,  # a killed worker: the store resumes
        op_tags=GPU_STEP_TAGS,  # GPU node pool under the k8s executors; inert elsewhere
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
        if spec.modality not in adapter.modalities:
            raise dg.Failure(
                f"{embeddings_name}: the {spec.resource_key} resource embeds modalities {adapter.modalities}, "
                f"not {spec.modality!r}; add it to the resource's modalities", allow_retries=False)
        parts = region_windows(partitions_def, context.partition_keys)
        extras = {
            "modality": spec.modality,
            "rebuild": config.rebuild,
            "force": config.force,
            "code_version": CODE_VERSION,
            "storage_options": store.storage_options,
            "partitions": [{"key": p.key, "stores": [_stores(spec, store, adapter, p)]} for p in parts],
        }
        invocation = adapter.run_worker(context, pipes_subprocess_client, extras)
        store_errors = [m["store_error"] for m in invocation.get_custom_messages()
                        if isinstance(m, dict) and "store_error" in m]
        if store_errors:  # other settings / not a store: retrying cannot help (worker/embed.py)
            raise dg.Failure("; ".join(store_errors), allow_retries=False)
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
        # Per partition (a backfill run covers several): its window, tile counts and store.
        part_of = {p.key: p for p in parts}
        add_partition_metadata(context, {m["partition"]: {
            "time_window": json_value({"window": part_of[m["partition"]].window,
                                       "start": part_of[m["partition"]].start, "end": part_of[m["partition"]].end}),
            "tiles_ok": sum(s["counts"]["ok"] for s in m["stores"]),
            "tiles_no_data": sum(s["counts"]["no_data"] for s in m["stores"]),
            "tiles_failed": sum(s["counts"]["failed"] for s in m["stores"]),
            "tiles_embedded_now": sum(s["tiles_embedded_now"] for s in m["stores"]),
            "store_uri": path_value(m["stores"][0]["embeddings_uri"]),
            "dagster/uri": str(m["stores"][0]["embeddings_uri"]),
        } for m in messages})
        return dg.MaterializeResult(
            metadata=ordered_for_people({
                **run_metadata(adapter_settings, patches),
                # The whole run (all its partitions): status table, timings, throughput.
                "tile_status": status_table([{"partition": m["partition"], **s["counts"]}
                                             for m in messages for s in m["stores"]]),
                "timings_s": json_value(timings),
                "wall_seconds": timings["wall_s"],
                "tiles_per_second": round(sum(r["tiles_embedded_now"] for r in results) / timings["wall_s"], 3)
                if timings["wall_s"] else 0.0,
                "adapter_settings": json_value(adapter_settings),
            }, METADATA_ORDER),
            check_results=[_finite_result(messages, nonfinite, counts["ok"])],
        )

    @dg.asset(
        name=cube_name,
        deps=[embeddings_name, "tile_grid"],
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        group_name="cubes",
        retry_policy=retry_policy or STEP_RETRY_POLICY,  # windows are marked filled last: resumable
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
        context: dg.AssetExecutionContext, config: CubeConfig, store: PipelineStore, terrafm: TerraFMAdapter,
        thor: ThorAdapter,
    ) -> dg.MaterializeResult:
        adapter = terrafm if spec.resource_key == "terrafm" else thor
        from rs_embed_pipeline.products.quantize import QuantizationError, check_scheme

        try:
            check_scheme(config.quantization)
        except QuantizationError as exc:
            raise dg.Failure(f"{cube_name} config: {exc}", allow_retries=False) from exc
        min_cosines: list[float] = []
        window_keys = windows_def.get_partition_keys()
        time_axis = _cube_time_axis(windows_def, len(window_keys))
        t0 = time.perf_counter()
        rows, checks_ok, messages, coverage = [], [], [], []
        per_partition: dict[str, dict[str, Any]] = {}
        meta: dict[str, Any] = {}
        for part in region_windows(partitions_def, context.partition_keys):
            preview = None
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
            cube_uri = store.layout.cube(_model_id(spec, adapter), spec.modality, part.region)
            settings = emb.settings
            patches = TileStore.open(uris["patches_uri"], "patches", storage_options=store.storage_options)
            meta = run_metadata(settings["adapter"], patches)
            attrs = {
                "title": f"{spec.title} embedding cube, region {part.region}",
                "model_id": meta["model_id"], "modality": spec.modality, "region": part.region,
                "source": "rs_embed_pipeline", "random_weights": meta["random_weights"],
                "weights_sha256": meta["weights_sha256"],
            }
            try:
                written = write_cube_window(
                    cube_uri,
                    tiles=tiles[["tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m"]].to_dict("records"),
                    pooled=pooled,
                    grids=lambda tid, emb=emb, index_of=index_of: emb.read("grid", [index_of[tid]])[0],
                    read_grids=lambda tids, emb=emb, index_of=index_of: _read_rows(emb, [index_of[t] for t in tids]),
                    window_index=window_keys.index(part.window),
                    window_starts=time_axis,
                    windows_in_range=len(window_keys),
                    attrs=attrs,
                    storage_options=store.storage_options,
                    # Shared by every window of the cube; per-window facts go to window_provenance.
                    fingerprint=cube_fingerprint(part.region, settings, patches.settings),
                    provenance={"embeddings_fingerprint": emb.fingerprint, "tiles_ok": len(pooled),
                                "synthetic_imagery": meta["synthetic_imagery"]},
                    grid_shape=emb.group["grid"].shape[1:],
                    pooled_dim=emb.group["pooled"].shape[1],
                    rebuild=config.rebuild,
                    quantization=config.quantization,
                )
            except StoreError as exc:  # not a cube / other settings / other grid: retrying cannot help
                raise dg.Failure(str(exc), allow_retries=False) from exc
            counts = emb.status_counts()
            rows.append({"partition": part.key, **counts})
            coverage.append(len(pooled) / max(1, len(tiles)))
            min_cosines.extend(v for k, v in (written.get("quantization") or {}).items()
                               if k.startswith("min_cosine") and v is not None)
            window_index = window_keys.index(part.window)
            for g in written["groups"]:
                ds = xr.open_zarr(cube_uri, group=f"{g['group']}/grid", consolidated=False,
                                  storage_options=store.storage_options)
                crs_epsg = _crs_epsg(ds)
                dims_ok = tuple(ds["embedding"].dims) == ("time", "y", "x", "feature")
                checks_ok.append(dims_ok and crs_epsg == g["epsg"])
                messages.append(f"{g['group']}: dims {tuple(ds['embedding'].dims)}, CRS EPSG:{crs_epsg}")
                if preview is None and pooled:
                    source = "grid" if len(pooled) <= GRID_PREVIEW_MAX_TILES else "pooled"
                    if source == "pooled":
                        ds = xr.open_zarr(cube_uri, group=f"{g['group']}/pooled", consolidated=False,
                                          storage_options=store.storage_options)
                    plane = ds["embedding"].isel(time=window_index).values
                    caption = (f"First three principal components of {spec.name} {source} embeddings, "
                               f"{part.key}, {g['group']}"
                               + (" (RANDOM WEIGHTS)" if meta["random_weights"] else ""))
                    preview = _preview_with_input(plane, caption, patches, tiles, g["epsg"], source,
                                                  spec, part.key)
            per_partition[part.key] = {
                "tiles_ok": int(counts["ok"]),
                "coverage": float(coverage[-1]),
                "store_uri": path_value(cube_uri),
                "dagster/uri": str(cube_uri),
                "preview": preview or dg.MetadataValue.md("No tile of this window has an embedding."),
            }
            context.log.info(f"{part.key}: cube {cube_uri}: {written}")
        if not checks_ok:
            # Nothing written (no tile had imagery): nothing can be mis-georeferenced; coverage warns.
            messages.append("no tile had an embedding: nothing was written")
            checks_ok.append(True)
        # Per partition (a backfill run covers several): tile count, coverage, cube, its own preview.
        add_partition_metadata(context, per_partition)
        return dg.MaterializeResult(
            metadata=ordered_for_people({
                **meta,
                "tile_status": status_table(rows),
                "wall_seconds": round(time.perf_counter() - t0, 3),
                # int8 cubes: the lowest cosine of a stored cell to its float32 embedding (1.0: float32).
                "quantization": config.quantization,
                "quantization_min_cosine": float(min(min_cosines)) if min_cosines else 1.0,
            }, METADATA_ORDER),
            check_results=[
                dg.AssetCheckResult(check_name="dims_and_crs", passed=all(checks_ok),
                                    description="; ".join(messages)),
                _coverage_result({key: md["coverage"] for key, md in per_partition.items()}),
            ],
        )

    return [embeddings, cube]


def _preview_with_input(plane: np.ndarray, caption: str, patches: TileStore, tiles: Any, epsg: int, source: str,
                        spec: EmbeddingSpec, partition: str) -> dg.MarkdownMetadataValue:
    """The PCA picture, and next to it the window's input imagery (RGB) over the same extent."""
    from rs_embed_pipeline.products import pictures

    pca = pca_rgb(plane)
    images = [(preview_png(pca), caption)]
    zone_tiles = tiles[tiles["utm_epsg"] == epsg][["tile_id", "utm_epsg"]].to_dict("records")
    # Grid previews: 4 picture pixels per feature-map cell; pooled (large regions): 4 per tile.
    rows = [int(str(t["tile_id"]).rsplit("_r", 1)[1]) for t in zone_tiles] or [0]
    side = 4 * (pca.shape[0] // (max(rows) - min(rows) + 1)) if source == "grid" else 4
    rgb = None
    if len(zone_tiles) <= 4 * GRID_PREVIEW_MAX_TILES:
        try:
            rgb = pictures.patches_rgb(patches, zone_tiles, max(4, side))
        except Exception as exc:  # a picture must never fail the cube
            rgb = None
            caption += f" (no input picture: {type(exc).__name__}: {exc})"
    if rgb is not None:
        what = "true colour B4/B3/B2" if spec.modality == "s2" else "VV, VH, VV/VH dB"
        images.append((preview_png(rgb), f"Input imagery ({what}), {partition}, same extent"))
        caption += f" | right: the window's input imagery ({what}), same extent"
    return dg.MetadataValue.md(pictures.markdown(images, caption))


def _finite_result(messages: list[dict[str, Any]], nonfinite: int, tiles_ok: int) -> dg.AssetCheckResult:
    """all_values_finite per partition: fails when any partition of the run has a non-finite value,
    and names those partitions."""
    per_partition = {m["partition"]: sum(int(s["nonfinite_values"]) for s in m["stores"]) for m in messages}
    failing = sorted(key for key, n in per_partition.items() if n)
    return dg.AssetCheckResult(
        check_name="all_values_finite", passed=not failing,
        metadata={"failing_partitions": json_value(failing),
                  "nonfinite_per_partition": json_value(per_partition),
                  "nonfinite_values": nonfinite, "tiles_checked": tiles_ok},
        description=f"Non-finite values in: {', '.join(failing)}." if failing else None,
    )


def _coverage_result(coverage: dict[str, float]) -> dg.AssetCheckResult:
    """The cube's coverage per partition: fails (warning) when any partition of the run has fewer
    than MIN_CUBE_COVERAGE of its tiles embedded, and names those partitions."""
    failing = sorted(key for key, c in coverage.items() if c < MIN_CUBE_COVERAGE)
    return dg.AssetCheckResult(
        check_name="coverage", passed=not failing, severity=dg.AssetCheckSeverity.WARN,
        metadata={"failing_partitions": json_value(failing),
                  "min_coverage": float(min(coverage.values(), default=0.0)),
                  "coverage_per_partition": json_value({k: round(float(c), 4) for k, c in coverage.items()})},
        description=(f"Fewer than {MIN_CUBE_COVERAGE:.0%} of the tiles have an embedding in: {', '.join(failing)}."
                     if failing else None),
    )


def _parity_metadata(adapter_settings: dict[str, Any], patch_settings: dict[str, Any],
                     sensor: dict[str, Any], collection: str) -> dict[str, Any]:
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
        "hf_repo": adapter_settings.get("hf_repo") or "n/a",
        "hf_file": adapter_settings.get("hf_file") or "n/a",
        "model_source": adapter_settings.get("model_source") or "n/a",
        "device": str(adapter_settings.get("device") or "n/a"),
        "scale_m": float(patch_settings.get("scale_m", 0.0)),
        "fill_value": float(sensor.get("fill_value", 0.0)),
        "orbit": (sensor.get("orbit") or "both") if s1 else "n/a",
        "use_float_linear": bool(sensor.get("use_float_linear", True)) if s1 else "n/a",
    }


def _read_rows(emb: TileStore, indices: list[int]) -> np.ndarray:
    """Grids of several tiles in the order asked (one store read)."""
    order = np.argsort(indices)
    out = emb.read("grid", np.asarray(indices)[order])
    return out[np.argsort(order)]


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
