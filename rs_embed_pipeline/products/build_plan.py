"""A build plan before the build (issue 19 point 4): what a configuration x window range will cost.

Dagster-free: the command line (``python -m rs_embed_pipeline.cli.plan_build``) resolves the
code location's plan (models, tile sizes, backfill batch) and hands this module plain values.
:func:`plan_build` returns one JSON-ready dict:

- ``partitions`` and ``runs``: region partitions (split cells included) x windows, and the runs a
  backfill of every partition makes with at most ``partitions_per_run`` partitions per run
  (``BackfillPolicy.multi_run``), counted as Dagster groups them (:func:`backfill_runs`);
- ``tiles``: per tile size and per model x modality (every window);
- ``bytes``: what each asset family stores (tile grid, patches, embeddings, cubes, products,
  search indexes): the stores' uncompressed payload (shapes and dtypes as the stores write them)
  x a compression ratio, plus per-tile and per-store metadata. The ratios are measured
  (:data:`SYNTHETIC_STORAGE`: the demo's synthetic catalog; see its source) or assumed
  (:data:`REAL_STORAGE`), and the plan says which;
- ``imagery``: STAC: one windowed read per (block, solar day, asset) of the block-read model
  (:mod:`rs_embed_pipeline.providers.blocks`: the providers' own grouping), the COG tiles each read
  intersects x the COG's compressed bytes per pixel; Earth Engine: computePixels requests as the
  provider packs them (:func:`rs_embed_pipeline.providers.gee.request_blocks.pack_requests`) and
  their time at the configured concurrency, rate and an assumed latency (:func:`ee_estimate`);
- ``model_time``: tiles / images per second per device: CPU measured here (``bench_models.py``),
  GPU labelled estimates from a named source (:data:`DEVICE_RATES`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rs_embed_pipeline.core.grid import Tile, build_tile_grid, cell_ids_of_tiles
from rs_embed_pipeline.core.regions import PipelineConfig, RegionPartition
from rs_embed_pipeline.providers.blocks import DEFAULT_MAX_BLOCK_PX, group_blocks
from rs_embed_pipeline.providers.gee.estimate import fetch_seconds
from rs_embed_pipeline.providers.gee.request_blocks import pack_requests

CADENCE_MONTHS = {"monthly": 1, "quarterly": 3, "yearly": 12}
S2_NATIVE_M = {"B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20, "B8": 10, "B8A": 20,
               "B9": 60, "B11": 20, "B12": 20, "SCL": 20}
F32 = 4


@dataclasses.dataclass(frozen=True)
class PlannedModel:
    """One model x modality as the stores hold it: pooled [D], grid [D', h, w] float32 per tile."""

    name: str                  # asset prefix, e.g. "terrafm_s2"
    modality: str
    bands: tuple[str, ...]     # the patch stores' bands of the modality (core.vocabulary.MODALITY_BANDS)
    tile_size_px: int
    scale_m: float
    pooled_dim: int
    grid_shape: tuple[int, int, int]
    family: str                # the key of DEVICE_RATES rows: "terrafm" | "thor"


@dataclasses.dataclass(frozen=True)
class Storage:
    """Compression ratios (stored / uncompressed payload) and the metadata bytes of the stores:
    per tile, per store (a region x window partition's Zarr, Parquet, COGs, index) and per cube."""

    source: str
    s2_patch_ratio: float      # uint16 codes as row differences, Blosc zstd (stores/patch_encoding.py)
    s1_patch_ratio: float      # float32 sigma0
    float_ratio: float         # float32 embeddings, cubes, COGs (the search index stores raw .npy)
    patch_meta_per_tile: int   # tile_meta JSON (provenance), status, tile id
    patch_store: int           # zarr.json of one patch store
    embedding_store: int
    cube_store: int            # one cube per region partition: groups, coordinates, time axis
    products_store: int        # GeoParquet, COG headers, STAC item per region x window
    search_store: int          # cells.parquet and manifests per region x window (grid and pooled)
    change_store: int          # per region x window after the region's first window
    tile_grid_store: int
    tile_grid_per_tile: int


#: Measured on a split demo AOI (3 km cells, 2 quarters, every asset) over the demo's synthetic
#: catalog with the reduced test models: stored bytes / uncompressed payload and metadata bytes
#: per store. The synthetic imagery is smooth noise: real scenes compress differently. Re-measured
#: on the 5 km split of test_build_plan after two layout changes: S2 patches hold row differences of
#: their uint16 codes (0.205 -> 0.115: 0.48x instead of 0.86x float32's bytes, README Benchmarks)
#: and each product partition also writes the Hive GeoParquet copy, the stac-geoparquet Items and
#: the VRTs (about 85 KB more per region x window and model x modality).
SYNTHETIC_STORAGE = Storage(
    source="measured: split demo AOI over the synthetic catalog, reduced test models (README Continental builds)",
    s2_patch_ratio=0.115, s1_patch_ratio=0.73, float_ratio=0.8,
    patch_meta_per_tile=1100, patch_store=6200, embedding_store=6400, cube_store=60000,
    products_store=115000, search_store=13000, change_store=8000, tile_grid_store=12500, tile_grid_per_tile=250)
#: Real Sentinel scenes: ASSUMED ratios (not measured in this project): uint16 DN of real L2A
#: scenes with zstd about half their size, float32 sigma0 and trained embeddings barely.
REAL_STORAGE = dataclasses.replace(
    SYNTHETIC_STORAGE, source="patches ASSUMED for real imagery (S2 0.55, S1 0.85, not measured here); "
    "stores' metadata measured on the synthetic build", s2_patch_ratio=0.55, s1_patch_ratio=0.85, float_ratio=0.9)


@dataclasses.dataclass(frozen=True)
class StacImagery:
    """The block-read model's inputs: solar days per window, COG layout and bytes per pixel."""

    days_per_window: Mapping[str, float]         # modality -> solar days with a scene, per window
    cog_tile_px: int = 1024                      # Earth Search C1: 1024 px internal tiles
    bytes_per_pixel: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"s2": 1.1, "s1": 2.0})  # compressed COG bytes per native pixel (assumed)
    mask_asset: str | None = "SCL"
    max_block_px: int = DEFAULT_MAX_BLOCK_PX
    source: str = "assumed: 5-day S2 revisit, 6-day S1, Earth Search COGs"


@dataclasses.dataclass(frozen=True)
class EarthEngine:
    """The Earth Engine provider's throughput settings, plus an assumed request latency."""

    max_concurrent_requests: int = 40
    max_requests_per_second: float = 100.0
    latency_s: float = 3.0        # ASSUMED seconds per computePixels request (not measured here)
    band_bytes: int = 4           # float32 values sent per band (median composites)


#: Images per second per model x modality and device. CPU: bench_models.py on this project's
#: 2-core AMD EPYC (README "Benchmarks", two threads, bf16 / fp32). GPU: ESTIMATES, not measured:
#: timm ViT-B/16 at batch 256 in fp16, A100-40GB, PyTorch 1.12 eager: 2,226 img/s (AITemplate's
#: examples/04_vit README), times each model's rate relative to a ViT-B/16 on the CPU above.
DEVICE_RATES: dict[str, dict[str, float]] = {
    "cpu-2core-bf16": {"terrafm_s2": 6.0, "terrafm_s1": 8.1, "thor_s2": 3.56},
    "cpu-2core-fp32": {"terrafm_s2": 3.5, "terrafm_s1": 4.09, "thor_s2": 2.11},
    "gpu-a100-fp16 (estimate)": {"terrafm_s2": 2226 * 0.81, "terrafm_s1": 2226 * 1.0, "thor_s2": 2226 * 0.41},
}
DEVICE_SOURCES = {
    "cpu-2core-bf16": "measured: benchmarks/bench_models.py, 2-core AMD EPYC, 2 threads (README Benchmarks)",
    "cpu-2core-fp32": "measured: benchmarks/bench_models.py, 2-core AMD EPYC, 2 threads (README Benchmarks)",
    "gpu-a100-fp16 (estimate)": "ESTIMATE: ViT-B/16 2,226 img/s (A100-40GB, fp16, batch 256; "
                                "facebookincubator/AITemplate examples/04_vit) x the model's CPU rate / ViT-B/16's",
}


def windows_between(cadence: str, start: str, end: str) -> list[tuple[str, str]]:
    """The ``cadence`` windows ``[window start, window end)`` from ``start`` (a window start)
    to ``end`` (exclusive); ValueError naming the cadence or the date."""
    if cadence not in CADENCE_MONTHS:
        raise ValueError(f"cadence {cadence!r} is not one of {', '.join(CADENCE_MONTHS)}")
    step = CADENCE_MONTHS[cadence]
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if first.day != 1 or (first.month - 1) % step:
        raise ValueError(f"{start} is not the start of a {cadence} window")
    out = []
    while first < last:
        months = first.year * 12 + first.month - 1 + step
        nxt = dt.date(months // 12, months % 12 + 1, 1)
        if nxt > last:
            break
        out.append((first.isoformat(), nxt.isoformat()))
        first = nxt
    if not out:
        raise ValueError(f"no complete {cadence} window between {start} and {end}")
    return out


def window_days(windows: Sequence[tuple[str, str]]) -> float:
    """Mean length of the windows in days."""
    spans = [(dt.date.fromisoformat(b) - dt.date.fromisoformat(a)).days for a, b in windows]
    return sum(spans) / len(spans)


def partition_tiles(partitions: Sequence[RegionPartition],
                    tile_sizes: Sequence[tuple[int, float]]) -> dict[str, dict[int, list[Tile]]]:
    """Tiles per region partition and tile size: one grid per region and size, split regions
    grouped by cell (the same tiles as each partition's ``tile_grid``, without one grid per cell)."""
    out: dict[str, dict[int, list[Tile]]] = {p.key: {} for p in partitions}
    by_region: dict[str, list[RegionPartition]] = {}
    for p in partitions:
        by_region.setdefault(p.region.name, []).append(p)
    for parts in by_region.values():
        region = parts[0].region
        for size, scale in tile_sizes:
            grid = build_tile_grid(region.aoi, size, scale)
            tiles = [Tile.from_row(row) for row in grid.drop(columns="geometry").to_dict("records")]
            if region.split_km is None:
                out[parts[0].key][size] = tiles
                continue
            cells = cell_ids_of_tiles(grid, region.split_km) if len(grid) else np.array([], dtype=str)
            grouped: dict[str, list[Tile]] = {}
            for tile, cell in zip(tiles, cells):
                grouped.setdefault(str(cell), []).append(tile)
            for p in parts:
                assert p.cell is not None  # a split region's partitions are cells
                out[p.key][size] = grouped.get(p.cell.cell_id, [])
    return out


def _cog_tiles(length_px: float, tile_px: int) -> float:
    """Expected COG tiles a read of ``length_px`` native pixels spans along one axis (any offset)."""
    return (max(length_px, 1.0) - 1.0) / tile_px + 1.0


def stac_estimate(tiles: Sequence[Tile], bands: Sequence[str], modality: str, imagery: StacImagery,
                  windows: int) -> dict[str, float]:
    """Reads (one per block, solar day and asset) and COG bytes of one partition's fetches."""
    assets = list(bands) + ([imagery.mask_asset] if modality == "s2" and imagery.mask_asset else [])
    days = imagery.days_per_window.get(modality, 0.0)
    reads, nbytes = 0.0, 0.0
    for block in group_blocks(tiles, imagery.max_block_px):
        for asset in assets:
            native = S2_NATIVE_M.get(asset, 10) if modality == "s2" else 10
            wn, hn = block.width * block.scale_m / native, block.height * block.scale_m / native
            cog_tiles = _cog_tiles(wn, imagery.cog_tile_px) * _cog_tiles(hn, imagery.cog_tile_px)
            # a COG tile read by the block holds min(tile, raster) pixels: count the block's own
            # share when the block is smaller than a COG tile (the rest of the tile is read too)
            pixels = cog_tiles * imagery.cog_tile_px ** 2
            reads += days
            nbytes += days * pixels * imagery.bytes_per_pixel.get(modality, 1.0)
    return {"reads": reads * windows, "cog_bytes": nbytes * windows}


def ee_estimate(tiles_by_size: Mapping[int, Sequence[Tile]], n_bands: int, ee: EarthEngine,
                windows: int) -> dict[str, float]:
    """Earth Engine requests of one region partition over ``windows`` windows: computePixels requests
    as the provider packs them (each tile size apart, whole adjacent tiles under the 48 MiB rule, at
    most ceil(tiles / concurrency) tiles per request so that every slot has work) plus the one
    scene-list query per fetch (``providers/gee``: one per region x window and modality)."""
    pixel_requests = 0
    for tiles in tiles_by_size.values():
        if not tiles:
            continue
        cap = max(1, math.ceil(len(tiles) / ee.max_concurrent_requests))
        pixel_requests += len(pack_requests(tiles, band_bytes=[ee.band_bytes] * n_bands, max_tiles=cap))
    scene_queries = windows if pixel_requests else 0
    return {"pixel_requests": float(pixel_requests * windows), "scene_queries": float(scene_queries),
            "requests": float(pixel_requests * windows + scene_queries)}


def ee_seconds(requests: float, ee: EarthEngine) -> float:
    """Wall time of ``requests`` at the concurrency and rate limits with the assumed latency
    (``providers/gee/estimate.fetch_seconds``, the client at the ceiling)."""
    return fetch_seconds(requests, concurrency=ee.max_concurrent_requests, rate_per_s=ee.max_requests_per_second,
                         latency_s=ee.latency_s)


def store_bytes(model: PlannedModel, tiles: int, partitions: int, region_partitions: int, windows: int,
                storage: Storage) -> dict[str, float]:
    """Bytes of one model x modality's embeddings, cube, products, search index and change for
    ``tiles`` tiles (every window) over ``partitions`` = ``region_partitions`` x ``windows``."""
    d_grid, h, w = model.grid_shape
    pooled_raw, grid_raw = model.pooled_dim * F32, d_grid * h * w * F32
    compressed = (pooled_raw + grid_raw) * storage.float_ratio
    return {
        "embeddings": tiles * compressed + partitions * storage.embedding_store,
        "cubes": tiles * compressed + region_partitions * storage.cube_store,
        # COG of the grid and of the pooled cells, pooled GeoParquet, STAC item
        "products": tiles * compressed + partitions * storage.products_store,
        "search": tiles * (pooled_raw + grid_raw) + partitions * storage.search_store,
        # distances per grid cell between consecutive windows (small next to its metadata)
        "change": tiles * h * w * (F32 + 1) * storage.float_ratio * (windows - 1) / windows
        + region_partitions * (windows - 1) * storage.change_store,
    }


def patch_bytes(modality: str, n_bands: int, size_px: int, tiles: int, stores: int, storage: Storage) -> float:
    """Bytes of the patch stores of one modality and tile size: data, valid mask, metadata."""
    value_bytes, ratio = (2, storage.s2_patch_ratio) if modality == "s2" else (F32, storage.s1_patch_ratio)
    return tiles * (n_bands * size_px ** 2 * value_bytes * ratio + storage.patch_meta_per_tile) \
        + stores * storage.patch_store


def backfill_runs(regions: int, windows: int, partitions_per_run: int) -> int:
    """Runs a backfill of every region x window partition of one asset makes (or of assets
    requested together: the same partitions and policy share runs), as Dagster 1.9.12+ builds them:
    the keys are grouped by the dimension with fewer distinct values (ties: the window, the
    primary dimension; dagster-io/dagster#27746), each group is one range along the other
    dimension, and each range is cut into runs of at most ``partitions_per_run`` keys. So 5
    regions x 3 windows make 3 x ceil(5 / 4) = 6 runs, not ceil(15 / 4) = 4; a run never mixes two
    values of the grouping dimension. A backfill of the whole graph makes these runs once per wave
    of assets whose parents are done."""
    if regions <= 0 or windows <= 0:
        return 0
    groups, along = (regions, windows) if regions < windows else (windows, regions)
    return groups * math.ceil(along / partitions_per_run)


def plan_build(config: PipelineConfig, partitions: Sequence[RegionPartition], windows: Sequence[tuple[str, str]],
               models: Sequence[PlannedModel], *, partitions_per_run: int, storage: Storage,
               imagery: StacImagery | EarthEngine, device_rates: Mapping[str, Mapping[str, float]] = DEVICE_RATES,
               ) -> dict[str, Any]:
    """The plan as a JSON-ready dict (see the module docstring)."""
    tile_sizes = sorted({(m.tile_size_px, m.scale_m) for m in models})
    tiles = partition_tiles(partitions, tile_sizes)
    n_windows = len(windows)
    n_parts = len(partitions) * n_windows
    modalities = sorted({m.modality for m in models}, key=lambda m: (m != "s2", m))
    sizes_of = {mod: sorted({m.tile_size_px for m in models if m.modality == mod}) for mod in modalities}
    bands_of = {mod: max((m.bands for m in models if m.modality == mod), key=len) for mod in modalities}

    tiles_per_size = {size: sum(len(t.get(size, [])) for t in tiles.values()) for size, _ in tile_sizes}
    nbytes: dict[str, float] = {
        "tile_grid": n_windows * sum(tiles_per_size.values()) * storage.tile_grid_per_tile
        + n_parts * storage.tile_grid_store}
    for mod in modalities:
        for size in sizes_of[mod]:
            nbytes[f"{mod}_patches_p{size}"] = patch_bytes(mod, len(bands_of[mod]), size,
                                                           tiles_per_size[size] * n_windows, n_parts, storage)
    per_model: dict[str, Any] = {}
    for m in models:
        n_tiles = tiles_per_size[m.tile_size_px] * n_windows
        for kind, value in store_bytes(m, n_tiles, n_parts, len(partitions), n_windows, storage).items():
            nbytes[f"{m.name}_{kind}"] = value
        per_model[m.name] = {
            "tiles": n_tiles, "tile_size_px": m.tile_size_px,
            "seconds": {device: round(n_tiles / rates[m.name], 2)
                        for device, rates in device_rates.items() if m.name in rates}}

    imagery_out: dict[str, Any]
    if isinstance(imagery, StacImagery):
        imagery_out = {"provider": "stac", "source": imagery.source, "cog_tile_px": imagery.cog_tile_px,
                       "days_per_window": dict(imagery.days_per_window)}
        for mod in modalities:
            reads = cog = 0.0
            for per_size in tiles.values():
                part_tiles = [t for size in sizes_of[mod] for t in per_size.get(size, [])]
                est = stac_estimate(part_tiles, bands_of[mod], mod, imagery, n_windows)
                reads, cog = reads + est["reads"], cog + est["cog_bytes"]
            imagery_out[mod] = {"reads": round(reads), "cog_bytes": round(cog)}
    else:
        imagery_out = {"provider": "gee", "max_concurrent_requests": imagery.max_concurrent_requests,
                       "max_requests_per_second": imagery.max_requests_per_second,
                       "latency_s (assumed)": imagery.latency_s}
        for mod in modalities:
            requests = sum(ee_estimate({s: per_size.get(s, []) for s in sizes_of[mod]}, len(bands_of[mod]),
                                       imagery, n_windows)["requests"] for per_size in tiles.values())
            imagery_out[mod] = {"requests": round(requests), "hours": round(ee_seconds(requests, imagery) / 3600, 3)}

    groups = {"tile_grid": ["tile_grid"], "patches": [k for k in nbytes if "_patches_" in k],
              **{kind: [k for k in nbytes if k.endswith(f"_{kind}")]
                 for kind in ("embeddings", "cubes", "products", "search", "change")}}
    return {
        "config": str(config.path), "cadence": config.cadence,
        "windows": [w for w, _ in windows],
        "partitions": {"regions": len(partitions), "windows": n_windows, "per_asset": n_parts},
        "runs": {"partitions_per_run": partitions_per_run, "backfill_runs": backfill_runs(len(partitions), n_windows, partitions_per_run),
                 "policy": f"BackfillPolicy.multi_run(max_partitions_per_run={partitions_per_run})"},
        "tiles": {"per_window_by_size": {str(s): n for s, n in tiles_per_size.items()},
                  "by_model": {name: v["tiles"] for name, v in per_model.items()}},
        "bytes": {"by_store": {k: round(v) for k, v in nbytes.items()},
                  "by_asset_family": {g: round(sum(nbytes[k] for k in keys)) for g, keys in groups.items()},
                  "total": round(sum(nbytes.values())), "storage_source": storage.source},
        "imagery": imagery_out,
        "model_time": {"by_model": per_model, "sources": {d: DEVICE_SOURCES.get(d, "given") for d in device_rates}},
    }


def local_catalog_imagery(catalog: str | Path, partitions: Iterable[RegionPartition],
                          windows: Sequence[tuple[str, str]], modalities: Iterable[str]) -> StacImagery:
    """The block-read model's inputs read from a static catalog: solar days per window with an
    item over the AOIs (the mean over windows), the COGs' internal tile size and compressed bytes
    per pixel of a whole internal tile (edge tiles count whole: a read fetches them whole), from
    the first item of each modality."""
    import pystac
    import rasterio
    import shapely
    from shapely.geometry import shape

    aoi = shapely.union_all([p.region.aoi for p in partitions])
    cat = pystac.Catalog.from_file(str(catalog))
    items = list(cat.get_items(recursive=True))
    days: dict[str, float] = {}
    per_pixel: dict[str, float] = {}
    tile_px = DEFAULT_MAX_BLOCK_PX
    for mod in modalities:
        mine = [it for it in items if _modality_of(it) == mod and shape(it.geometry).intersects(aoi)]
        counts = [len({it.datetime.date() for it in mine if it.datetime
                       and w0 <= it.datetime.date().isoformat() < w1}) for w0, w1 in windows]
        days[mod] = sum(counts) / len(counts) if counts else 0.0
        if not mine:
            continue
        sizes, pixels = 0, 0
        for asset in mine[0].assets.values():
            if asset.media_type and "tiff" not in asset.media_type:
                continue
            with rasterio.open(asset.get_absolute_href() or asset.href) as src:
                (tile_px, tile_w), = {src.block_shapes[0]}
                blocks = [(r, c) for r in range(math.ceil(src.height / tile_px))
                          for c in range(math.ceil(src.width / tile_w))]
                sizes += sum(src.block_size(1, r, c) for r, c in blocks)
                pixels += len(blocks) * tile_px * tile_w  # a COG tile is read whole, edge tiles included
        per_pixel[mod] = sizes / pixels if pixels else 1.0
    return StacImagery(days_per_window=days, cog_tile_px=tile_px, bytes_per_pixel=per_pixel,
                       source=f"read from the static catalog {catalog}")


def _modality_of(item: Any) -> str:
    text = json.dumps([item.collection_id, item.properties.get("constellation", "")]).lower()
    return "s1" if "sentinel-1" in text or "s1" in str(item.collection_id).lower() else "s2"
