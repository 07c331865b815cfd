"""``python -m rs_embed_pipeline.cli.build_status``: how much of a build is done, at a glance.

Examples::

    python -m rs_embed_pipeline.cli.build_status                       # every asset, every window
    python -m rs_embed_pipeline.cli.build_status --window 2024-01-01 --asset s2_patches --json status.json
    python -m rs_embed_pipeline.cli.build_status --model thor_v1_base   # a model's assets (any model name)

Reads the Dagster instance at ``$DAGSTER_HOME`` (the one ``dagster dev`` / the daemon use) and the
code location of the environment (``RS_EMBED_CONFIG``: its region x window partitions) and prints,
per asset and window, the region partitions done / failed / in progress / pending, tiles per
second and an ETA, then the failed partitions with their reasons
(:mod:`rs_embed_pipeline.orchestration.progress`). ``--model`` takes any model name of
:mod:`rs_embed_pipeline.cli.names` (family, model id or alias) and keeps that model's assets;
``--asset`` also takes a model id or alias as the asset's prefix (``terrafm_b_s2_cube``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from rs_embed_pipeline.cli.names import UsageError, asset_name, model_names, valid_model_names
from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.orchestration.progress import STATES, build_status
from rs_embed_pipeline.orchestration.settings import Settings


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rs_embed_pipeline.cli.build_status",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--window", action="append", help="a window key (its start date); repeat; default: all")
    ap.add_argument("--asset", action="append", help="an asset name (terrafm_s2_cube, or with a model id as its "
                    "prefix: terrafm_b_s2_cube); repeat; default: every partitioned asset")
    ap.add_argument("--model", action="append",
                    help=f"only this model's assets; repeat; any model name ({valid_model_names()})")
    ap.add_argument("--json", type=Path, help="also write the status as JSON here")
    return ap


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def render(status: dict[str, Any]) -> str:
    """One line per asset and window, then the failed partitions."""
    lines = [f"{'asset':28s} {'window':10s} " + " ".join(f"{s:>11s}" for s in STATES) + "   tiles/s       ETA"]
    for asset, info in status["assets"].items():
        for window, counts in sorted(info["by_window"].items()):
            lines.append(f"{asset:28s} {window:10s} " + " ".join(f"{counts[s]:>11,}" for s in STATES))
        t = info["total"]
        rate = f"{info['tiles_per_s']:.2f}" if info["tiles_per_s"] is not None else "-"
        lines.append(f"{asset:28s} {'all':10s} " + " ".join(f"{t[s]:>11,}" for s in STATES)
                     + f" {rate:>9s} {_duration(info['eta_s']):>9s}")
    if status["failed"]:
        lines.append(f"\nFailed partitions ({len(status['failed'])}):")
        lines += [f"  {f['asset']} {f['partition']} (run {f['run_id'][:8]}): {f['reason'].splitlines()[0]}"
                  for f in status["failed"]]
    return "\n".join(lines)


def selected_assets(defs: dg.Definitions, settings: Settings, assets: Sequence[str] | None,
                    models: Sequence[str] | None) -> list[str] | None:
    """The asset names ``--asset`` and ``--model`` select (None: every partitioned asset). An asset
    named with a model id or alias as its prefix means the family's asset; a model keeps the assets
    of its family (``<family>_...``), within the named assets when both are given. UsageError
    (a ValueError) naming the valid names for a model that does not exist."""
    graph = defs.get_repository_def().asset_graph
    partitioned = sorted(k.to_user_string() for k in graph.materializable_asset_keys
                         if graph.get(k).partitions_def is not None)
    # unknown asset names pass through unchanged: build_status lists the valid ones
    chosen = None if assets is None else [asset_name(a, partitioned) or a for a in assets]
    if models:
        families = {model_names(m, settings).family for m in models}
        chosen = [a for a in (chosen if chosen is not None else partitioned)
                  if any(a.startswith(f + "_") for f in families)]
        if not chosen:
            raise UsageError(f"no partitioned asset of model(s) {sorted(families)} among "
                             f"{assets if assets is not None else 'the assets'}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    defs = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:
        try:
            assets = selected_assets(defs, settings, args.asset, args.model)
            status = build_status(instance, defs, windows=args.window, assets=assets)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.json:
        args.json.write_text(json.dumps(status, indent=2))
    print(render(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
