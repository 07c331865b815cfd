"""Patches: provider pixels per tile, stored once so that no model run ever refetches."""


import time
from typing import Any

import dagster as dg
import numpy as np

from rs_embed_pipeline.assets.tile_grid import read_tile_grid
from rs_embed_pipeline.fingerprint import fingerprint
from rs_embed_pipeline.metadata import json_value, path_value, status_table
from rs_embed_pipeline.partitions import region_windows
from rs_embed_pipeline.providers.base import S1_BANDS, S2_BANDS
from rs_embed_pipeline.resources import CODE_VERSION, ImageryResource, PipelineStore, TerraFMAdapter, ThorAdapter
from rs_embed_pipeline.stores import ArraySpec, StoreError, TileStore

BANDS = {"s2": S2_BANDS, "s1": S1_BANDS}
UNITS = {"s2": "surface reflectance DN x 10000", "s1": "linear sigma0 power, VV and VH"}


class PatchesConfig(dg.Config):
    rebuild: bool = False
    """Accept an existing store built with other settings and refetch every tile."""


def patch_sizes(modality: str, terrafm: TerraFMAdapter, thor: ThorAdapter) -> list[int]:
    # THOR is wired for S2 only (issue scope); TerraFM-B embeds both modalities.
    sizes = {terrafm.tile_size_px}
    if modality == "s2":
        sizes.add(thor.tile_size_px)
    return sorted(sizes)


def fetch_into_store(
    provider: Any,
    store: TileStore,
    tiles: Any,
    *,
    start: str,
    end: str,
    modality: str,
    bands: tuple[str, ...],
    sensor_options: dict[str, Any],
) -> dict[str, Any]:
    """Fetch the tiles not yet ``ok`` (pending, failed, no_data) and write each as it arrives."""
    index_of = {tid: i for i, tid in enumerate(store.tile_ids)}
    todo = set(store.indices_with_status("pending", "failed", "no_data").tolist())
    rows = tiles[tiles["tile_id"].map(index_of).isin(todo)]
    t0 = time.perf_counter()
    synthetic = bool(store.group.attrs.get("synthetic_imagery", False))
    for patch in provider.fetch_patches(rows, start=start, end=end, modality=modality,
                                        bands=list(bands), **sensor_options):
        index = index_of[patch.tile_id]
        meta = dict(patch.meta)
        meta["valid_fraction"] = float(np.mean(patch.valid)) if patch.valid.size else 0.0
        synthetic = synthetic or bool(meta.get("synthetic", False))
        store.write_tile(index, patch.status, meta,
                         data=patch.data.astype(np.float32, copy=False), valid=patch.valid)
    # Any synthetic pixel labels the whole store (and everything built from it) synthetic.
    store.group.attrs["synthetic_imagery"] = synthetic
    return {"fetched": len(rows), "fetch_s": round(time.perf_counter() - t0, 3), "synthetic": synthetic}


def build_patches_asset(
    modality: str, partitions_def: dg.PartitionsDefinition, pool: str | None = None
) -> dg.AssetsDefinition:
    """``pool="earth_engine"`` when the provider is Earth Engine: runs then share one project quota."""
    bands = BANDS[modality]
    name = f"{modality}_patches"
    coverage_check = dg.AssetCheckSpec(
        name="valid_coverage", asset=name,
        description="Share of tiles with pixels (status ok) is at least 50%.",
    )

    @dg.asset(
        name=name,
        deps=["tile_grid"],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=4),
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                    jitter=dg.Jitter.PLUS_MINUS),
        group_name="patches",
        kinds={"zarr", "earthengine" if pool == "earth_engine" else "stac"},
        pool=pool,
        owners=["team:embeddings"],
        code_version=CODE_VERSION,
        check_specs=[coverage_check],
        description=(
            f"Sentinel-{modality[1]} patches fetched through the configured provider, one Zarr store per "
            f"tile size: data [tile, band, y, x] in provider units ({UNITS[modality]}), valid mask "
            "[tile, y, x], per-tile status (ok / no_data / failed with reason) and provenance (scene "
            "ids, image count, composite, cloud filter)."
        ),
    )
    def patches(
        context: dg.AssetExecutionContext,
        config: PatchesConfig,
        store: PipelineStore,
        imagery: ImageryResource,
        terrafm: TerraFMAdapter,
        thor: ThorAdapter,
    ):
        provider = imagery.build()
        sensor_options = imagery.sensor_options(modality)
        provider_settings = provider.describe()
        rows: list[dict[str, Any]] = []
        fetch_s = 0.0
        fetched = 0
        synthetic = False
        for part in region_windows(partitions_def, context.partition_keys):
            grid = read_tile_grid(store, part.region, part.window)
            for size in patch_sizes(modality, terrafm, thor):
                tiles = grid[grid["size_px"] == size].reset_index(drop=True)
                scale_m = float(tiles["scale_m"].iloc[0])
                settings = {
                    "modality": modality, "bands": list(bands), "size_px": size, "scale_m": scale_m,
                    "region": part.region, "window": part.window, "start": part.start, "end": part.end,
                    "provider": provider_settings, "sensor_options": sensor_options,
                    "code_version": CODE_VERSION,
                }
                uri = store.layout.patches(modality, part.region, part.window, size)
                try:
                    tile_store = TileStore.create_or_open(
                        uri, "patches", tile_ids=list(tiles["tile_id"]),
                        arrays=[ArraySpec("data", (len(bands), size, size), ("band", "y", "x")),
                                ArraySpec("valid", (size, size), ("y", "x"), dtype="bool", fill_value=False)],
                        fingerprint=fingerprint(settings), attrs=settings, rebuild=config.rebuild,
                        storage_options=store.storage_options,
                    )
                except StoreError as exc:
                    raise dg.Failure(str(exc), allow_retries=False) from exc
                stats = fetch_into_store(provider, tile_store, tiles, start=part.start, end=part.end,
                                         modality=modality, bands=bands, sensor_options=sensor_options)
                fetch_s += stats["fetch_s"]
                fetched += stats["fetched"]
                synthetic = synthetic or stats["synthetic"]
                counts = tile_store.status_counts()
                rows.append({"partition": f"{part.key} p{size}", "uri": uri, **counts})
                context.log.info(f"{part.key} p{size}: {counts} ({stats['fetched']} fetched in {stats['fetch_s']} s)")

        total = {k: sum(r[k] for r in rows) for k in ("ok", "no_data", "failed", "pending")}
        n_tiles = sum(total.values())
        failed_fraction = total["failed"] / n_tiles if n_tiles else 0.0
        provider_stats = provider.stats() if hasattr(provider, "stats") else {}
        metadata = {
            "tile_status": status_table(rows),
            "tiles_ok": total["ok"], "tiles_no_data": total["no_data"], "tiles_failed": total["failed"],
            "failed_fraction": failed_fraction,
            "tiles_fetched_now": fetched,
            "fetch_seconds": round(fetch_s, 3),
            "tiles_per_second": round(fetched / fetch_s, 3) if fetch_s else 0.0,
            "modality": modality,
            "bands": json_value(list(bands)),
            "provider": provider_settings.get("provider", imagery.provider_name),
            "provider_settings": json_value(provider_settings),
            "sensor_options": json_value(sensor_options),
            "synthetic_imagery": synthetic,
            "provider_stats": json_value(provider_stats),
            "store_uri": path_value(rows[0]["uri"]),
        }
        if failed_fraction > imagery.max_failure_fraction:
            raise dg.Failure(
                f"{total['failed']} of {n_tiles} tiles failed ({failed_fraction:.1%} > "
                f"max_failure_fraction {imagery.max_failure_fraction:.1%}); they are recorded in the "
                "store and the next run retries only them.",
                metadata=metadata,
            )
        coverage = total["ok"] / n_tiles if n_tiles else 0.0
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name="valid_coverage",
                    passed=coverage >= 0.5,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"coverage": coverage, "tiles": n_tiles},
                    description=None if coverage >= 0.5 else "Fewer than half the tiles have imagery in this window.",
                )
            ],
        )

    return patches
