"""Patches: provider pixels per tile, stored once so that no model run ever refetches.

Resume and faults: a run fetches only the tiles that are ``pending`` (never fetched, or killed
before their status was written) or ``failed``; ``ok`` and ``no_data`` tiles are done (``force``
refetches every tile, e.g. to pick up scenes published late). A tile that fails is retried in
the same run, ``tile_retries`` times with exponential backoff and jitter; what still fails is
recorded as ``failed`` with its reason and attempt count, and the partition fails only when more
than ``ImageryResource.max_failure_fraction`` of its tiles failed. The store fingerprint covers
the inputs (tile ids, region, window), the provider settings that shape pixels (not its thread
count or retry budget) and the code version.

The asset reads as its data flow: partitions -> one store per tile size -> one fetch for every size
(``patch_fetch.fetch_into_stores``) -> the run's tally (``patch_fetch.PatchTally``: statuses per
partition, failure budget) -> metadata and checks.
"""


import hashlib
from collections.abc import Sequence
from typing import Any

import dagster as dg
import pandas as pd

from rs_embed_pipeline.orchestration.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.orchestration.executors import STEP_RETRY_POLICY
from rs_embed_pipeline.core.fingerprint import fingerprint, numeric_provider_settings
from rs_embed_pipeline.orchestration.metadata import add_partition_metadata, json_value, path_value, status_table
from rs_embed_pipeline.orchestration.partitions import BACKFILL_POLICY, RegionWindow, region_windows
from rs_embed_pipeline.orchestration.patch_fetch import PatchTally, fetch_into_stores
from rs_embed_pipeline.orchestration.knob_fields import knob
from rs_embed_pipeline.orchestration.resources import CODE_VERSION, ImageryResource, PipelineStore
from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore
from rs_embed_pipeline.stores.patch_encoding import encoding_for
from rs_embed_pipeline.core.vocabulary import MODALITY_BANDS, PATCH_STATUSES, PROVIDER_UNITS, S1_POLARISATIONS

UNITS = {"s2": PROVIDER_UNITS["s2"], "s1": f"{PROVIDER_UNITS['s1']}, {' and '.join(S1_POLARISATIONS)}"}
MAX_FAILED_TILES_IN_METADATA = 50


class PatchesConfig(dg.Config):
    """Run config of the ``<modality>_patches`` assets (launchpad); each field a knob of docs/knobs.md."""

    rebuild: bool = knob("Patches rebuild", default=False,
                         help="Accept an existing store built with other settings and refetch every tile.",
                         changes="the patch store's settings and fingerprint become this run's; every tile "
                         "refetched (`tiles_fetched_now`)")
    force: bool = knob("Patches refetch", default=False,
                       help="Refetch every tile even though the store's settings match (e.g. scenes published late).",
                       changes="patches `tiles_fetched_now` (every tile)")
    tile_retries: int = knob("Tile retry rounds", default=3,
                             help="Times a failed tile is requested again within the run (exponential backoff, jitter).",
                             changes="patches `tile_retries`, `tiles_recovered_by_retry`, `failed_tiles` (`attempts`)")
    retry_backoff_s: float = knob("Tile retry backoff", default=2.0,
                                  help="Wait before the first retry round, seconds; doubles each round (x0.5-1.5 jitter).",
                                  changes="none (the wait between retry rounds)")


def patches_fingerprint(settings: dict[str, Any]) -> str:
    """The digest of what shaped a patch store's pixels (operational provider settings left out)."""
    return fingerprint({**settings, "provider": numeric_provider_settings(settings.get("provider") or {})})


def tiles_sha256(tiles: pd.DataFrame) -> str:
    """Digest of the tiles a store holds (ids encode zone, size, scale and lattice position)."""
    return hashlib.sha256("\n".join(map(str, tiles["tile_id"])).encode()).hexdigest()


def build_patches_asset(
    modality: str, partitions_def: dg.MultiPartitionsDefinition, *, patch_sizes: Sequence[int], fetch_workers: int,
    pool: str | None = None, retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """The ``<modality>_patches`` asset. From the pipeline plan (plan.py): ``patch_sizes``, the tile
    sizes of the models that embed ``modality`` (one store each), and ``fetch_workers``, the provider's
    threads. ``pool="earth_engine"`` when the provider is Earth Engine: runs then share one project quota."""
    bands = MODALITY_BANDS[modality]
    sizes = sorted(patch_sizes)
    name = f"{modality}_patches"
    coverage_check = dg.AssetCheckSpec(
        name="valid_coverage", asset=name,
        description="Share of tiles with pixels (status ok) is at least 50%.",
    )
    inspection_check = dg.AssetCheckSpec(
        name="input_inspection", asset=name, blocking=True,
        description="Every patch fetched is what the models expect: channel count, value range of the "
        "modality's units, fill / NaN fraction, not constant, no unit mismatch (dB where linear is "
        "expected, ...). Per-tile flags in tile_meta['input_check']. Warns, or fails with ERROR severity "
        "(blocking the embeddings) when the imagery resource's check_raise is set.",
    )

    @dg.asset(
        name=name,
        deps=["tile_grid"],
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        retry_policy=retry_policy or STEP_RETRY_POLICY,  # executors.step_retry_policy
        group_name="patches",
        kinds={"zarr", "earthengine" if pool == "earth_engine" else "stac"},
        pool=pool,
        owners=["team:embeddings"],
        code_version=CODE_VERSION,
        check_specs=[coverage_check, inspection_check],
        description=(
            f"Sentinel-{modality[1]} patches fetched through the configured provider, one Zarr store per "
            f"tile size: data [tile, band, y, x] in provider units ({UNITS[modality]}), valid mask "
            "[tile, y, x], per-tile status (ok / no_data / failed with reason) and provenance (scene "
            "ids, image count, composite, cloud filter)."
        ),
    )
    def patches(
        context: dg.AssetExecutionContext, config: PatchesConfig, store: PipelineStore, imagery: ImageryResource,
    ) -> dg.MaterializeResult:
        provider = imagery.build(fetch_workers=fetch_workers)
        sensor_options = imagery.sensor_options(modality)  # parsed once, passed down as the object
        recorded_options = sensor_options.as_dict()
        provider_settings = provider.describe()
        tally = PatchTally()
        for part in region_windows(partitions_def, context.partition_keys):
            grid = read_tile_grid(store, part.region, part.window)
            tiles = grid[grid["size_px"].isin(sizes)].reset_index(drop=True)
            # A split region's cell may hold centres of one tile size only: its other stores are
            # empty, at the grid's scale (one scale per plan today).
            scale_m = float(grid["scale_m"].iloc[0]) if len(grid) else 10.0
            stores = {size: _open_store(store, config, part, modality, size, scale_m, tiles[tiles["size_px"] == size],
                                        provider_settings, recorded_options) for size in sizes}
            # One fetch for every tile size: block-reading providers read each scene pixel once.
            result = fetch_into_stores(
                provider, stores, tiles, start=part.start, end=part.end, modality=modality, bands=bands,
                sensor_options=sensor_options, inspect=imagery.check_input,
                tile_retries=config.tile_retries, retry_backoff_s=config.retry_backoff_s)
            for counted in tally.add(part.key, stores, result):
                context.log.info(f"{counted.label}: {counted.counts} "
                                 f"({result.per_size[counted.size_px].fetched} fetched)")
            context.log.info(f"{part.key}: {result.fetched} tiles of sizes {sizes} fetched in one pass "
                             f"in {result.fetch_s} s")

        metadata = _run_metadata(tally, modality, imagery, provider_settings, recorded_options, provider.stats())
        over_budget = tally.budget_error(imagery.max_failure_fraction, config.tile_retries)
        if over_budget:
            # No step retry: the tiles were already retried with backoff in this run. They are
            # recorded (status failed, reason, attempts) and the next run fetches only them.
            raise dg.Failure(over_budget, metadata=metadata, allow_retries=False)
        # Per partition (a backfill run covers several), over its stores of every tile size.
        add_partition_metadata(context, {key: {
            **{f"tiles_{c}": counts[c] for c in PATCH_STATUSES},
            "store_uri": path_value(tally.first_uri(key)),
        } for key, counts in tally.per_partition().items()})
        return dg.MaterializeResult(metadata=metadata, check_results=[
            _coverage_result(tally),
            _inspection_result(tally.inspections, imagery.check_input, imagery.check_raise),
        ])

    return patches


def _open_store(store: PipelineStore, config: PatchesConfig, part: RegionWindow, modality: str, size: int,
                scale_m: float, tiles: pd.DataFrame, provider_settings: dict[str, Any], sensor_options: dict[str, Any]) -> TileStore:
    """The partition's patch store of one tile size (``tiles``: its tile_grid rows, none in a split
    region's cell that holds tile centres of other sizes only), created or reopened under the
    fingerprint of what shapes its pixels; a store built with other settings fails the step (no
    retry) unless ``rebuild``."""
    tiles = tiles.reset_index(drop=True)
    bands = MODALITY_BANDS[modality]
    # S2 DN as uint16 codes, S1 (and S2 with a fill value the codes cannot hold) float32.
    encoding = encoding_for(modality, float(sensor_options.get("fill_value", 0.0)))
    settings = {
        "modality": modality, "bands": list(bands), "size_px": size,
        "scale_m": float(tiles["scale_m"].iloc[0]) if len(tiles) else scale_m,
        "data_encoding": encoding.name,
        "region": part.region, "window": part.window, "start": part.start, "end": part.end,
        "tiles_sha256": tiles_sha256(tiles),
        "provider": provider_settings, "sensor_options": sensor_options,
        "code_version": CODE_VERSION,
    }
    try:
        return TileStore.create_or_open(
            store.layout.patches(modality, part.region, part.window, size), "patches",
            tile_ids=list(tiles["tile_id"]),
            # S2 codes as row differences (lossless, not in the fingerprint: stores.patch_encoding)
            arrays=[ArraySpec("data", (len(bands), size, size), ("band", "y", "x"), encoding=encoding,
                              filter=encoding.store_filter),
                    ArraySpec("valid", (size, size), ("y", "x"), dtype="bool", fill_value=False)],
            fingerprint=patches_fingerprint(settings), attrs=settings, rebuild=config.rebuild,
            force=config.force, storage_options=store.storage_options,
        )
    except StoreError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc


def _run_metadata(tally: PatchTally, modality: str, imagery: ImageryResource, provider_settings: dict[str, Any],
                  sensor_options: dict[str, Any], provider_stats: dict[str, Any]) -> dict[str, Any]:
    """The materialization's metadata (also on the failure when the run exceeds its failure budget)."""
    total = tally.totals()
    n_tiles = sum(total.values())
    return {
        "tile_status": status_table([{"partition": s.label, **s.counts} for s in tally.stores]),
        "tiles_ok": total["ok"], "tiles_no_data": total["no_data"], "tiles_failed": total["failed"],
        "failed_fraction": total["failed"] / n_tiles if n_tiles else 0.0,
        "tiles_fetched_now": tally.fetched,
        "fetch_seconds": round(tally.fetch_s, 3),
        "tiles_per_second": round(tally.fetched / tally.fetch_s, 3) if tally.fetch_s else 0.0,
        "modality": modality,
        "bands": json_value(list(MODALITY_BANDS[modality])),
        "provider": provider_settings.get("provider", imagery.provider_name),
        "provider_settings": json_value(provider_settings),
        "sensor_options": json_value(sensor_options),
        "synthetic_imagery": tally.synthetic,
        "provider_stats": json_value(provider_stats),
        "tile_retries": tally.retries,
        "tiles_recovered_by_retry": tally.recovered,
        "failed_tiles": json_value(tally.failed_tiles[:MAX_FAILED_TILES_IN_METADATA]),
        "store_uri": path_value(tally.stores[0].uri),
    }


MIN_VALID_COVERAGE = 0.5


def _coverage_result(tally: PatchTally) -> dg.AssetCheckResult:
    """valid_coverage per partition (a backfill run covers several): it fails when any partition
    of the run has fewer than half its tiles with imagery, and names those partitions."""
    per_partition = {key: (c["ok"], sum(c.values())) for key, c in tally.per_partition().items()}
    cover = {key: (ok / tiles if tiles else 0.0) for key, (ok, tiles) in per_partition.items()}
    failing = sorted(key for key, c in cover.items() if c < MIN_VALID_COVERAGE)
    total = tally.totals()
    n_tiles = sum(total.values())
    return dg.AssetCheckResult(
        check_name="valid_coverage",
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failing_partitions": json_value(failing),
            "min_coverage": float(min(cover.values(), default=0.0)),
            "coverage_per_partition": json_value({k: round(c, 4) for k, c in cover.items()}),
            "coverage": total["ok"] / n_tiles if n_tiles else 0.0, "tiles": n_tiles,  # the whole run
        },
        description=None if not failing else
        f"Fewer than {MIN_VALID_COVERAGE:.0%} of the tiles have imagery in: {', '.join(failing)}.",
    )


def _inspection_result(summaries: list[dict[str, Any]], enabled: bool, raise_: bool) -> dg.AssetCheckResult:
    """The input_inspection check over the patches fetched in this run (resumed tiles were checked
    when they were fetched; their flags stay in tile_meta)."""
    inspected = sum(s["inspected"] for s in summaries)
    flagged = sum(s["flagged"] for s in summaries)
    kinds: dict[str, int] = {}
    for s in summaries:
        for k, v in s["issue_counts"].items():
            kinds[k] = kinds.get(k, 0) + v
    examples = [e for s in summaries for e in s["examples"]][:5]
    if not enabled:
        description = "input inspection disabled (imagery resource check_input: false)"
    elif flagged:
        description = "; ".join(f"{e['tile_id']}: {', '.join(e['issues'])}" for e in examples)
    else:
        description = f"{inspected} patches inspected, none flagged"
    return dg.AssetCheckResult(
        check_name="input_inspection",
        passed=flagged == 0,
        severity=dg.AssetCheckSeverity.ERROR if raise_ else dg.AssetCheckSeverity.WARN,
        metadata={"enabled": enabled, "check_raise": raise_, "inspected": inspected, "flagged": flagged,
                  "issue_counts": json_value(kinds), "examples": json_value(examples)},
        description=description,
    )
