"""The offline demo: synthetic catalog -> one region x window materialized end to end.

``make demo`` runs ``python -m rs_embed_pipeline.demo`` after building both environments. With no
credentials and no network it

1. generates the deterministic synthetic STAC catalog (labelled synthetic everywhere) around the
   ``demo`` region, unless it exists already;
2. materializes every asset of the ``demo`` region for the window 2024-01-01 .. 2024-04-01 into the
   Dagster instance at ``$DAGSTER_HOME`` (so ``make ui`` shows the run, lineage and metadata);
3. prints where each cube is, whether the models ran on pretrained or RANDOM weights, and how to
   open the UI.

Pretrained weights are used when they are in the Hugging Face cache or at ``--terrafm-checkpoint``
/ ``--thor-checkpoint``; without them the models run on random weights, which the log, the
metadata and this summary say loudly.
"""

import argparse
import os
import sys
from pathlib import Path

import dagster as dg

from rs_embed_pipeline.providers.synthetic import generate_synthetic_catalog
from rs_embed_pipeline.regions import load_pipeline_config
from rs_embed_pipeline.settings import Settings

DEMO_REGION = "demo"
DEMO_WINDOW = "2024-01-01"
DEMO_WINDOW_END = "2024-04-01"
# The synthetic rasters reach one THOR tile beyond the AOI so that edge tiles are fully covered.
CATALOG_PAD_M = 3000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terrafm-checkpoint", default=None)
    parser.add_argument("--thor-checkpoint", default=None)
    parser.add_argument("--regenerate-catalog", action="store_true")
    args = parser.parse_args(argv)

    os.environ.setdefault("RS_EMBED_ALLOW_RANDOM_WEIGHTS", "1")
    # Offline by default: pretrained weights come from the Hugging Face cache only (HF_HUB_OFFLINE=0
    # lets the workers download them), so a machine without network does not wait on timeouts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings.from_env()
    if settings.provider != "local_stac":
        print(f"The demo runs on the synthetic local catalog; RS_EMBED_PROVIDER={settings.provider} is ignored.")
        os.environ["RS_EMBED_PROVIDER"] = "local_stac"
        settings = Settings.from_env()
    config = load_pipeline_config(settings.config_path)
    region = config.region(DEMO_REGION)

    catalog = Path(settings.local_catalog)
    if args.regenerate_catalog or not catalog.exists():
        print(f"Generating the synthetic demo catalog (SYNTHETIC imagery) at {catalog.parent} ...")
        generate_synthetic_catalog(catalog.parent, region.aoi.bounds, DEMO_WINDOW, DEMO_WINDOW_END,
                                   seed=0, pad_m=CATALOG_PAD_M)

    from rs_embed_pipeline.definitions import build_definitions, resources_for

    resources = resources_for(settings)
    for key, checkpoint in (("terrafm", args.terrafm_checkpoint), ("thor", args.thor_checkpoint)):
        if checkpoint:
            resources[key] = resources[key].model_copy(update={"checkpoint": checkpoint})
    defs = build_definitions(settings, resources=resources)
    job = defs.resolve_job_def("build_embeddings")
    partition = dg.MultiPartitionKey({"region": DEMO_REGION, "window": DEMO_WINDOW})
    instance = dg.DagsterInstance.get()
    print(f"Materializing {partition} (Dagster instance: {os.environ.get('DAGSTER_HOME')}) ...")
    result = job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False)
    if not result.success:
        print("The demo run FAILED; see the log above or the run in the UI (make ui).")
        return 1

    print("\n=== rs_embed_pipeline demo: done ===")
    print(f"Region {DEMO_REGION!r}, window {DEMO_WINDOW} .. {DEMO_WINDOW_END} (end exclusive), "
          "imagery: SYNTHETIC local STAC catalog")
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        name = mat.asset_key.to_user_string()
        if not name.endswith("_cube"):
            continue
        md = mat.metadata
        random = md["random_weights"].value if "random_weights" in md else None
        weights = "RANDOM WEIGHTS (not pretrained)" if random else f"pretrained, sha256 {md['weights_sha256'].value[:12]}"
        print(f"  {name:18s} {md['store_uri'].value}  [{weights}]")
    print("\nOpen a cube:  .venv/bin/python -c \"import xarray as xr; "
          "print(xr.open_datatree('data/cubes/terrafm_b_s2/demo.zarr', engine='zarr'))\"")
    print("Open the UI:  make ui   then browse http://127.0.0.1:3000 (Assets -> lineage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
