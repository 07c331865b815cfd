"""``python -m rs_embed_pipeline.cli.plan_build``: what a build will cost, before it runs.

Examples::

    python -m rs_embed_pipeline.cli.plan_build --start 2024-01-01 --end 2025-01-01
    RS_EMBED_CONFIG=alps.yaml RS_EMBED_PROVIDER=gee python -m rs_embed_pipeline.cli.plan_build \\
        --start 2024-01-01 --end 2024-07-01 --json plan.json

For the configuration the code location would load (``RS_EMBED_CONFIG``, the model resources of
the environment: tile sizes, embedding sizes) and the windows ``[--start, --end)``, prints and
writes as JSON: partitions and backfill runs, tiles per model and tile size, bytes each asset will
store, imagery work (STAC reads and COG bytes from the block-read model; Earth Engine computePixels
requests and hours) and model hours per device. The planning itself is
:mod:`rs_embed_pipeline.products.build_plan` (no Dagster); README "Continental builds" says how
close it came to a measured build.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rs_embed_pipeline.cli.names import UsageError, model_names, valid_model_names
from rs_embed_pipeline.core.regions import load_pipeline_config
from rs_embed_pipeline.core.vocabulary import MODALITY_BANDS
from rs_embed_pipeline.orchestration.definitions import resources_for
from rs_embed_pipeline.orchestration.partitions import BACKFILL_POLICY
from rs_embed_pipeline.orchestration.plan import EmbeddingSpec, plan_pipeline
from rs_embed_pipeline.orchestration.resources import EarthEngineImagery, LocalStacImagery
from rs_embed_pipeline.orchestration.settings import Settings
from rs_embed_pipeline.products import build_plan as bp

FULL_SIZE_DIM = 768  # TerraFM-B and THOR 1.0 base: ViT-B width
PATCH_PX = 16        # TerraFM's patch; THOR's default patch_size


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rs_embed_pipeline.cli.plan_build", description=__doc__.splitlines()[0])
    ap.add_argument("--start", required=True, help="first window's start, e.g. 2024-01-01")
    ap.add_argument("--end", required=True, help="end of the last window (exclusive), e.g. 2025-01-01")
    ap.add_argument("--json", type=Path, default=Path("build_plan.json"), help="where to write the plan")
    ap.add_argument("--storage", choices=("auto", "synthetic", "real"), default="auto",
                    help="compression ratios: measured on the synthetic catalog, or assumed for real scenes "
                         "(auto: synthetic for the synthetic demo catalog)")
    ap.add_argument("--ee-latency-s", type=float, default=bp.EarthEngine.latency_s,
                    help="assumed seconds per computePixels request")
    ap.add_argument("--models", nargs="+",
                    help=f"plan only these models (any model name: {valid_model_names()}); default: every model built")
    return ap


def planned_models(specs: Sequence[EmbeddingSpec], resources: dict[str, Any]) -> list[bp.PlannedModel]:
    """The stores' embedding shapes of each spec: the resource's ``arch_json`` width (reduced test
    models) or ViT-B's 768, grid side = tile / patch (THOR: its ``patch_size``)."""
    out = []
    for spec in specs:
        resource = resources[spec.resource_key]
        arch = json.loads(resource.arch_json) if getattr(resource, "arch_json", None) else {}
        dim = int(arch.get("embed_dim", FULL_SIZE_DIM))
        side = spec.tile_size_px // int(getattr(resource, "patch_size", PATCH_PX))
        out.append(bp.PlannedModel(
            name=spec.name, modality=spec.modality, bands=MODALITY_BANDS[spec.modality],
            tile_size_px=spec.tile_size_px, scale_m=spec.scale_m, pooled_dim=dim, grid_shape=(dim, side, side),
            family=spec.resource_key))
    return out


def plan_for(settings: Settings, start: str, end: str, *, resources: dict[str, Any] | None = None,
             storage: str = "auto", ee_latency_s: float = bp.EarthEngine.latency_s,
             models: Sequence[str] | None = None) -> dict[str, Any]:
    """The plan of the environment's configuration (what the code location would load);
    ``models``: model names (:func:`rs_embed_pipeline.cli.names.model_names`: family, model id or
    alias) to plan alone, default every model the code location builds. The partitions keep the
    cells of every tile size the code location uses: the other models' sizes still split the AOI."""
    resources = resources if resources is not None else resources_for(settings)
    config = load_pipeline_config(settings.config_path)
    plan = plan_pipeline(resources)
    partitions = config.partitions(plan.tile_sizes())
    windows = bp.windows_between(config.cadence, max(start, config.start), end)
    specs: Sequence[EmbeddingSpec] = plan.specs
    if models:
        families = {model_names(m, settings).family for m in models}
        specs = [s for s in specs if s.resource_key in families]
        if not specs:
            raise UsageError(f"the code location builds no model named {list(models)}; it builds "
                             f"{sorted({s.resource_key for s in plan.specs})}")
    planned = planned_models(specs, resources)
    imagery_resource = resources["imagery"]
    imagery: bp.StacImagery | bp.EarthEngine
    synthetic = False
    if isinstance(imagery_resource, EarthEngineImagery):
        imagery = bp.EarthEngine(max_concurrent_requests=imagery_resource.max_concurrent_requests,
                                 max_requests_per_second=imagery_resource.max_requests_per_second,
                                 latency_s=ee_latency_s)
    elif isinstance(imagery_resource, LocalStacImagery) and Path(imagery_resource.catalog_path).exists():
        imagery = bp.local_catalog_imagery(imagery_resource.catalog_path, partitions, windows, plan.modalities)
        synthetic = "synthetic" in Path(imagery_resource.catalog_path).read_text().lower()
    else:
        days = {m: bp.window_days(windows) / revisit for m, revisit in (("s2", 5.0), ("s1", 6.0))}
        imagery = bp.StacImagery(days_per_window=days)
    chosen = {"synthetic": bp.SYNTHETIC_STORAGE, "real": bp.REAL_STORAGE}.get(
        storage, bp.SYNTHETIC_STORAGE if synthetic else bp.REAL_STORAGE)
    per_run = BACKFILL_POLICY.max_partitions_per_run or 1
    return bp.plan_build(config, partitions, windows, planned, partitions_per_run=per_run, storage=chosen,
                         imagery=imagery)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    return str(n)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds:,.0f} s"


def render(plan: dict[str, Any]) -> str:
    """The plan as a few lines of text."""
    p, r = plan["partitions"], plan["runs"]
    lines = [f"Build plan for {plan['config']} ({plan['cadence']}, windows {plan['windows'][0]} .. {plan['windows'][-1]})",
             f"  partitions: {p['regions']:,} region partitions x {p['windows']} windows = {p['per_asset']:,} per asset",
             f"  backfill runs: {r['backfill_runs']:,} ({r['policy']})",
             "  tiles per window by size: " + ", ".join(f"{s} px: {n:,}" for s, n in plan['tiles']['per_window_by_size'].items()),
             "  bytes stored:"]
    lines += [f"    {k:12s} {_human(v)}" for k, v in plan["bytes"]["by_asset_family"].items()]
    lines.append(f"    {'total':12s} {_human(plan['bytes']['total'])}   ({plan['bytes']['storage_source']})")
    im = plan["imagery"]
    for mod in ("s2", "s1"):
        if mod in im:
            if im["provider"] == "stac":
                lines.append(f"  imagery {mod}: {im[mod]['reads']:,} COG reads, {_human(im[mod]['cog_bytes'])} ({im['source']})")
            else:
                lines.append(f"  imagery {mod}: {im[mod]['requests']:,} computePixels requests, {im[mod]['hours']} h at "
                             f"{im['max_concurrent_requests']} concurrent / {im['max_requests_per_second']:g} per s, "
                             f"{im['latency_s (assumed)']} s latency (assumed)")
    lines.append("  model time per device:")
    for name, m in plan["model_time"]["by_model"].items():
        lines.append(f"    {name:12s} {m['tiles']:,} tiles: " + ", ".join(f"{d} {_hours(s)}" for d, s in m["seconds"].items()))
    lines += [f"    ({d}: {s})" for d, s in plan["model_time"]["sources"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        plan = plan_for(Settings.from_env(), args.start, args.end, storage=args.storage, ee_latency_s=args.ee_latency_s,
                        models=args.models)
    except ValueError as exc:  # ConfigError and bad dates: the message names the problem
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.json.write_text(json.dumps(plan, indent=2))
    print(render(plan))
    print(f"  written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
