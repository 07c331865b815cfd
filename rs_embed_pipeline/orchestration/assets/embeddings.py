"""Embeddings and cubes: one pair of assets per (model, modality).

``<model>_<modality>_embeddings`` sends one request for every partition of the run to the model
worker (``worker/embed.py``; request and results: ``worker/protocol.py``) and shapes its results
into metadata (``metadata.py``). ``<model>_<modality>_cube`` writes each partition's embeddings
as one window of its region's cube (``stores/cube/writer.py``), checks what was written and previews it
(``products/preview.py``).
"""


import dataclasses
import time
from typing import Any

import dagster as dg

from rs_embed_pipeline.orchestration.assets.per_model import cube_uri as spec_cube_uri
from rs_embed_pipeline.orchestration.assets.per_model import model_tiles, partition_job, spec_asset, store_array
from rs_embed_pipeline.orchestration.executors import GPU_STEP_TAGS, STEP_RETRY_POLICY
from rs_embed_pipeline.orchestration.knob_fields import knob
from rs_embed_pipeline.core.fingerprint import cube_fingerprint
from rs_embed_pipeline.orchestration.metadata import (
    add_partition_metadata, coverage_check, embedding_partition_metadata, embedding_run_metadata, finite_check,
    georeferencing_check, json_value, ordered_for_people, path_value, run_metadata, status_table,
)
from rs_embed_pipeline.orchestration.partitions import RegionWindow, region_windows
from rs_embed_pipeline.orchestration.plan import EmbeddingSpec, PlanMismatch
from rs_embed_pipeline.products.preview import cube_window_preview
from rs_embed_pipeline.orchestration.resources import ModelResource, PipelineStore
from rs_embed_pipeline.stores import StoreError, TileStore
from rs_embed_pipeline.stores.cube import (
    TIME_BLOCK, TIME_MARGIN, CubeWindowWrite, CubeWindowWritten, TileStoreGrids, check_georeferencing,
    write_cube_window,
)
from rs_embed_pipeline.stores.cube.codec import QuantizationError, Scheme, check_scheme
import datetime as dt

# The UI shows metadata in this order: the run's outcome, then the settings that differ between
# models, modalities and runs; provenance and the rest (same keys everywhere) after them.
METADATA_ORDER = (
    "tile_status", "tiles_per_second", "wall_seconds", "model_id", "modality", "random_weights",
    "synthetic_imagery", "normalization", "group_merge", "image_size", "patch_size", "ground_cover_m",
    "s2_branch", "orbit", "composite", "cloudy_pct", "provider", "collection", "quantization",
    "weights_source", "weights_sha256",
)
MIN_CUBE_COVERAGE = 0.5


class EmbeddingsConfig(dg.Config):
    """Run config of the ``<model>_<modality>_embeddings`` assets; each field a knob of docs/knobs.md."""

    rebuild: bool = knob("Embeddings rebuild", default=False,
                         help="Accept an existing embedding store built with other settings and re-embed every tile.",
                         changes="the embedding store's settings and fingerprint become this run's; every tile "
                         "re-embedded")
    force: bool = knob("Embeddings re-embed", default=False,
                       help="Re-embed every tile even though the store's settings match.",
                       changes="every tile re-embedded (`tile_status`); the numbers only change with the weights")


class CubeConfig(dg.Config):
    """Run config of the ``<model>_<modality>_cube`` assets; each field a knob of docs/knobs.md."""

    rebuild: bool = knob("Cube rebuild", default=False,
                         help="Replace a cube built with other settings (it is deleted: re-materialize its other "
                         "windows).",
                         changes="the cube is deleted and written anew with this run's settings")
    quantization: Scheme = knob(
        "Cube quantization", default="none",
        help='Cube storage: "none" (float32), "int8_per_cell" (int8 + a float32 scale per cell, as TESSERA) or '
        '"int8_per_feature" (int8 + a scale and offset per feature and window). Part of the cube\'s identity: '
        "changing it needs `rebuild`. Readers (products.open_cube) de-quantize transparently.",
        changes="cube `quantization`, `quantization_min_cosine`; the cube's dtype and size")


def _cube_time_axis(windows_def: Any, n_now: int) -> list[str]:
    """Window starts from the first window into the future, so the cube's time axis can be
    allocated with a margin (stores/cube/time_axis.py): at least a block and a margin beyond today's windows."""

    years = 1
    while True:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=366 * years)
        keys = windows_def.get_partition_keys(current_time=later)
        if len(keys) >= n_now + 2 * TIME_BLOCK + TIME_MARGIN or years > 64:
            return keys
        years *= 2


def build_embedding_assets(
    spec: EmbeddingSpec, partitions_def: dg.MultiPartitionsDefinition, retry_policy: dg.RetryPolicy | None = None,
) -> list[dg.AssetsDefinition]:
    """The embeddings asset (the only one that runs the model) and the cube asset of one spec."""
    embeddings_name, cube_name = f"{spec.name}_embeddings", f"{spec.name}_cube"
    windows_def = partitions_def.get_partitions_def_for_dimension("window")

    @spec_asset(
        name=embeddings_name, partitions_def=partitions_def, group_name="embeddings",
        retry_policy=retry_policy or STEP_RETRY_POLICY,  # a killed worker: the store resumes
        deps=[f"{spec.modality}_patches"], kinds={"pytorch", "zarr"}, pool="gpu",
        op_tags=GPU_STEP_TAGS,  # GPU node pool under the k8s executors; inert elsewhere
        # Only this spec's model resource. Its key differs per spec, so the asset names its resources
        # here and reads them from the context (Dagster refuses resource parameters next to this).
        required_resource_keys={"store", spec.resource_key, "pipes_subprocess_client"},
        check_specs=[dg.AssetCheckSpec(
            "all_values_finite", asset=embeddings_name, blocking=True,
            description="Every pooled and grid value of every embedded tile is finite (blocks the cube).")],
        description=(
            f"{spec.title} embeddings per tile, computed in the worker environment through Dagster Pipes: "
            "pooled [tile, D] and grid [tile, D', h, w] Zarr arrays with a per-tile status. Patches stream "
            "through in batches, so memory is bounded by the batch, not the region."
        ),
    )
    def embeddings(context: dg.AssetExecutionContext, config: EmbeddingsConfig) -> dg.MaterializeResult:
        store: PipelineStore = context.resources.store
        model: ModelResource = getattr(context.resources, spec.resource_key)
        try:
            spec.check_resource(model)  # a run's config must keep the planned tile size and store paths
        except PlanMismatch as exc:
            raise dg.Failure(str(exc), allow_retries=False) from exc
        for note in spec.ignored_overrides(model):
            context.log.warning(f"{embeddings_name}: {note}")
        parts = {p.key: p for p in region_windows(partitions_def, context.partition_keys)}
        # One worker process embeds every partition of the run (worker/embed.py, worker/protocol.py).
        report = model.run_worker(
            context, context.resources.pipes_subprocess_client, modality=spec.modality,
            partitions=[partition_job(spec, store, p) for p in parts.values()],
            rebuild=config.rebuild, force=config.force, storage_options=store.storage_options)
        if report.failures:  # other settings / not a store: retrying cannot help
            raise dg.Failure("; ".join(f.message for f in report.failures), allow_retries=False)
        if len(report.results) != len(parts):
            raise dg.Failure(f"The worker reported {len(report.results)} of {len(parts)} partitions")
        results = report.results
        adapter_settings = results[0].adapter
        if adapter_settings.get("random_weights"):
            context.log.warning(f"{embeddings_name}: computed with RANDOM WEIGHTS, not the pretrained model")
        patches = TileStore.open(results[0].store.patches_uri, "patches", storage_options=store.storage_options)
        # Per partition (a backfill run covers several): its window, tile counts and store.
        add_partition_metadata(context, {r.partition: embedding_partition_metadata(
            r, {"window": parts[r.partition].window, "start": parts[r.partition].start,
                "end": parts[r.partition].end}) for r in results})
        return dg.MaterializeResult(
            metadata=ordered_for_people({
                **run_metadata(adapter_settings, patches),
                **embedding_run_metadata(results),  # the whole run: status table, timings, throughput
                "adapter_settings": json_value(adapter_settings),
            }, METADATA_ORDER),
            check_results=[finite_check(results)],
        )

    @spec_asset(
        name=cube_name, partitions_def=partitions_def, group_name="cubes",
        retry_policy=retry_policy or STEP_RETRY_POLICY,  # windows are marked filled last: resumable
        deps=[embeddings_name, "tile_grid"], kinds={"zarr", "xarray"},
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
    def cube(context: dg.AssetExecutionContext, config: CubeConfig, store: PipelineStore) -> dg.MaterializeResult:
        _check_quantization(cube_name, config.quantization)
        window_keys = list(windows_def.get_partition_keys())
        time_axis = _cube_time_axis(windows_def, len(window_keys))
        t0 = time.perf_counter()
        windows = []
        for part in region_windows(partitions_def, context.partition_keys):
            windows.append(_cube_window(spec, store, part, window_keys, time_axis, config))
            context.log.info(f"{part.key}: cube {windows[-1].cube_uri}: {windows[-1].written}")
        # Per partition (a backfill run covers several): tile count, coverage, cube, its own preview.
        add_partition_metadata(context, {w.partition: w.partition_metadata() for w in windows})
        cosines = [c for w in windows for c in w.min_cosines]
        return dg.MaterializeResult(
            metadata=ordered_for_people({
                **(windows[-1].run_metadata if windows else {}),
                "tile_status": status_table([{"partition": w.partition, **w.counts} for w in windows]),
                "wall_seconds": round(time.perf_counter() - t0, 3),
                # int8 cubes: the lowest cosine of a stored cell to its float32 embedding (1.0: float32).
                "quantization": config.quantization,
                "quantization_min_cosine": float(min(cosines)) if cosines else 1.0,
            }, METADATA_ORDER),
            check_results=[georeferencing_check([g for w in windows for g in w.georeferencing]),
                           coverage_check({w.partition: w.coverage for w in windows}, MIN_CUBE_COVERAGE)],
        )

    return [embeddings, cube]


def _check_quantization(cube_name: str, scheme: str) -> None:
    """Refuse an unknown cube storage scheme before anything is written."""
    try:
        check_scheme(scheme)
    except QuantizationError as exc:
        raise dg.Failure(f"{cube_name} config: {exc}", allow_retries=False) from exc


@dataclasses.dataclass
class CubeWindow:
    """What writing one partition's window into its region's cube did."""

    partition: str
    cube_uri: str
    written: CubeWindowWritten                   # write_cube_window's report
    counts: dict[str, int]                       # the embedding store's tiles per status
    coverage: float                              # tiles with an embedding / the region's tiles
    run_metadata: dict[str, Any]
    georeferencing: list[tuple[bool, str]]       # dims_and_crs per zone group written
    preview: str | None                          # markdown; None when no tile has an embedding

    @property
    def min_cosines(self) -> list[float]:
        return self.written.min_cosines

    def partition_metadata(self) -> dict[str, Any]:
        return {
            "tiles_ok": int(self.counts["ok"]),
            "coverage": float(self.coverage),
            "store_uri": path_value(self.cube_uri),
            "dagster/uri": str(self.cube_uri),
            "preview": dg.MetadataValue.md(self.preview or "No tile of this window has an embedding."),
        }


def check_cube_outputs(emb: TileStore) -> None:
    """The cube mosaics the grid and holds the pooled vectors: an embedding store written with
    ``outputs`` pooled or grid only fails the cube (and so the products) naming the field."""
    held = emb.settings.get("outputs", "both")
    if held != "both":
        raise dg.Failure(f"{emb.uri} holds outputs={held!r} (the model resource's `outputs`); the cube and the "
                         "products need 'both' (choices: pooled, grid, both). Set outputs: both and re-materialize "
                         "the embeddings with rebuild; nothing was written.", allow_retries=False)


def _cube_window(spec: EmbeddingSpec, store: PipelineStore, part: RegionWindow, window_keys: list[str],
                 time_axis: list[str], config: CubeConfig) -> CubeWindow:
    """Write one partition's embeddings into its region's cube; check and preview what was written."""
    job = partition_job(spec, store, part)
    options = store.storage_options
    try:
        emb = TileStore.open(job.embeddings_uri, "embeddings", storage_options=options)
    except StoreError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    check_cube_outputs(emb)
    tiles = model_tiles(spec, store, part)
    ok = emb.indices_with_status("ok")
    pooled = dict(zip([emb.tile_ids[i] for i in ok], emb.read("pooled", ok)))
    cube_uri = spec_cube_uri(spec, store, part.region)
    patches = TileStore.open(job.patches_uri, "patches", storage_options=options)
    meta = run_metadata(emb.settings["adapter"], patches)
    window_index = window_keys.index(part.window)
    try:
        written = write_cube_window(cube_uri, CubeWindowWrite(
            tiles=tiles[["tile_id", "utm_epsg", "x0", "y0", "size_px", "scale_m"]].to_dict("records"),
            pooled=pooled, reader=TileStoreGrids(emb),
            window_index=window_index, window_starts=time_axis, windows_in_range=len(window_keys),
            attrs={"title": f"{spec.title} embedding cube, region {part.region}", "model_id": meta["model_id"],
                   "modality": spec.modality, "region": part.region, "source": "rs_embed_pipeline",
                   "random_weights": meta["random_weights"], "weights_sha256": meta["weights_sha256"]},
            storage_options=options,
            # Shared by every window of the cube; per-window facts go to window_provenance.
            fingerprint=cube_fingerprint(part.region, emb.settings, patches.settings),
            provenance={"embeddings_fingerprint": emb.fingerprint, "tiles_ok": len(pooled),
                        "synthetic_imagery": meta["synthetic_imagery"]},
            grid_shape=store_array(emb, "grid").shape[1:], pooled_dim=store_array(emb, "pooled").shape[1],
            rebuild=config.rebuild, quantization=config.quantization,
        ))
    except StoreError as exc:  # not a cube / other settings / other grid: retrying cannot help
        raise dg.Failure(str(exc), allow_retries=False) from exc
    groups = written.groups
    preview = None
    if pooled and groups:  # the first zone's picture
        preview = cube_window_preview(
            cube_uri, groups[0].group, groups[0].epsg, window_index, n_tiles=len(pooled), name=spec.name,
            partition=part.key, modality=spec.modality, random_weights=meta["random_weights"], patches=patches,
            tiles=tiles, storage_options=options)
    return CubeWindow(
        partition=part.key, cube_uri=cube_uri, written=written, counts=emb.status_counts(),
        coverage=len(pooled) / max(1, len(tiles)), run_metadata=meta,
        georeferencing=[check_georeferencing(cube_uri, g.group, g.epsg, options) for g in groups],
        preview=preview,
    )

