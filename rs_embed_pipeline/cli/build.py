"""``python -m rs_embed_pipeline.cli.build`` (or ``python -m rs_embed_pipeline build``): materialize what
you name, for one or more regions and windows, without the UI, on the configured provider.

Examples::

    python -m rs_embed_pipeline.cli.build --region demo --window 2024-01-01
    python -m rs_embed_pipeline.cli.build --region lake-geneva --window 2024-04-01 2024-07-01 \\
        --models terrafm --modalities s2 --stages cubes
    python -m rs_embed_pipeline.cli.build --list          # regions, windows, models, assets
    python -m rs_embed_pipeline.cli.build ... --dry-run   # what would run, nothing runs

It runs the code location's own definitions (``build_definitions``: the same settings, resources,
checks and stores as ``dagster dev``) with Dagster's in-process executor, one run per region x
window, recorded in the Dagster instance at ``$DAGSTER_HOME`` when it is set (``make ui`` shows the
runs), else in a temporary one. Settings come from the environment as for the code location
(``RS_EMBED_PROVIDER``, ``RS_EMBED_STORE``, ``RS_EMBED_CONFIG``, ...).

What to build:

* ``--models``: model families, any name of a model (``terrafm``, ``terrafm_b``, ``thor``,
  ``thor_v1_base``, ...; ``cli/names.py``); default every family.
* ``--modalities``: the modalities each model embeds, ``s2`` / ``s1`` / ``s2,s1`` for every model
  named, or ``<model>=<modalities>`` per model (``terrafm=s2 thor=s2``). Default: each model
  resource's ``modalities`` (TerraFM S2 and S1, THOR S2) minus S1 when the imagery has no S1
  collection (``serves_s1``: the ``stac`` provider's default Earth Search presets configure none,
  their ``sentinel-1-grd`` being uncalibrated DN; the ``planetary-computer`` preset's is
  ``sentinel-1-rtc``, so S1 is built there), which is said on stderr; asking for S1 there is an
  error.
* ``--stages``: ``patches``, ``embeddings``, ``cubes``, ``products``, ``answers`` (asset groups;
  each with the stages it needs), default ``products answers``: everything. ``--assets``: asset
  names instead (a model id in place of the family works: ``terrafm_b_s2_cube``).
* ``--set RESOURCE.FIELD=VALUE``: a resource field for these runs (``imagery.cloudy_pct=20``,
  ``terrafm.checkpoint=TerraFM-B.pth``, ``thor.batch_size=64``); values are YAML
  (``true``, ``20``, ``[s2]``); docs/knobs.md lists the fields.

An unknown region, window, model, modality, stage, asset or field is an error (exit 2) listing the
valid ones. Exit 1 when a run fails (its failed steps and their errors are printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, cast, get_args

import dagster as dg
import yaml

from rs_embed_pipeline.cli.names import UsageError, asset_name, check_region, check_window, model_names, valid_model_names
from rs_embed_pipeline.core.regions import ConfigError, load_pipeline_config
from rs_embed_pipeline.core.vocabulary import MODALITIES
from rs_embed_pipeline.models.registry import families, get_family
from rs_embed_pipeline.orchestration.definitions import build_definitions, resources_for
from rs_embed_pipeline.orchestration.resources import (
    EarthEngineImagery,
    ImageryResource,
    LocalStacImagery,
    ModelResource,
    StacImagery,
)
from rs_embed_pipeline.orchestration.settings import Settings
from rs_embed_pipeline.providers.local_catalogs.user_scenes import catalog_collections

#: Stages (asset groups) and the groups each needs, in order.
STAGES: dict[str, tuple[str, ...]] = {
    "patches": ("inputs", "patches"),
    "embeddings": ("inputs", "patches", "embeddings"),
    "cubes": ("inputs", "patches", "embeddings", "cubes"),
    "products": ("inputs", "patches", "embeddings", "cubes", "products"),
    "answers": ("inputs", "patches", "embeddings", "cubes", "answers"),
}
JOB = "cli_build"


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """What one invocation builds: definitions, the assets to run and the partitions."""

    defs: dg.Definitions
    assets: tuple[str, ...]
    partitions: tuple[tuple[str, str], ...]   # (region key, window)
    modalities: dict[str, list[str]]          # family -> modalities embedded
    notes: tuple[str, ...]                    # said on stderr before anything runs


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rs_embed_pipeline.cli.build", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--region", nargs="+", help="region names of the regions config (a split region: its cell keys)")
    ap.add_argument("--window", nargs="+", help="window starts, e.g. 2024-01-01")
    ap.add_argument("--models", nargs="+", help=f"model names ({valid_model_names()}); default: all")
    ap.add_argument("--modalities", nargs="+", default=[],
                    help="s2 | s1 | s2,s1 for every model named, or <model>=<modalities> per model")
    ap.add_argument("--stages", nargs="+", default=["products", "answers"], help=f"{' | '.join(STAGES)}")
    ap.add_argument("--assets", nargs="+", help="exact asset names instead of --stages")
    ap.add_argument("--set", dest="fields", action="append", default=[], metavar="RESOURCE.FIELD=VALUE",
                    help="a resource field for these runs (YAML value), e.g. imagery.cloudy_pct=20")
    ap.add_argument("--dry-run", action="store_true", help="print what would run and stop")
    ap.add_argument("--list", action="store_true", help="print the regions, windows, models and assets and stop")
    return ap


def _modalities(args: Sequence[str], selected: Sequence[str], settings: Settings) -> dict[str, list[str]]:
    """``--modalities`` as {family: [modality, ...]} for the families it names."""
    out: dict[str, list[str]] = {}
    for arg in args:
        name, sep, value = arg.rpartition("=")
        fams = [model_names(name, settings).family] if sep else list(selected)
        mods = [m.strip().lower() for m in value.split(",") if m.strip()]
        for fam in fams:
            valid = get_family(fam).modalities
            bad = [m for m in mods if m not in valid]
            if bad or not mods:
                raise UsageError(f"--modalities {arg!r}: {fam} embeds {', '.join(valid)} (comma-separated, e.g. "
                                 f"{fam}={','.join(valid)}), got {value!r}")
            out[fam] = [m for m in MODALITIES if m in mods]
    return out


def serves_s1(imagery: ImageryResource) -> bool:
    """Whether the imagery resource has a Sentinel-1 collection of linear backscatter to fetch from:
    Earth Engine always (``COPERNICUS/S1_GRD_FLOAT``, sigma0); a STAC API or local catalog when its
    resolved catalog names an ``s1_collection`` (the ``planetary-computer`` preset: ``sentinel-1-rtc``,
    gamma0 RTC; the Earth Search presets: none) or, for a local catalog, the catalog holds one."""
    if isinstance(imagery, EarthEngineImagery):
        return True
    if isinstance(imagery, StacImagery):
        return bool(imagery.catalog()["s1_collection"])
    if isinstance(imagery, LocalStacImagery):
        return bool(imagery.catalog()["s1_collection"] or catalog_collections(imagery.catalog_path)["s1_collection"])
    return True


def _set_fields(resources: dict[str, Any], assignments: Sequence[str]) -> None:
    """Apply ``RESOURCE.FIELD=VALUE`` to copies of the resources (a frozen resource is replaced)."""
    for item in assignments:
        target, sep, raw = item.partition("=")
        key, dot, field = target.partition(".")
        configurable = {k: r for k, r in resources.items() if isinstance(r, dg.ConfigurableResource)}
        if not sep or not dot or key not in configurable:
            raise UsageError(f"--set {item!r}: expected RESOURCE.FIELD=VALUE with RESOURCE one of "
                             f"{', '.join(configurable)}")
        fields = type(configurable[key]).model_fields
        if field not in fields:
            raise UsageError(f"--set {item!r}: {key} has no field {field!r}; fields: {', '.join(fields)}")
        value = yaml.safe_load(raw)
        if value is not None and not isinstance(value, str) and str in (fields[field].annotation,
                                                                         *get_args(fields[field].annotation)):
            value = raw  # a text field keeps the text (a JSON object for arch_json, a path of digits)
        current = configurable[key]
        # Built anew, not model_copy'd: the value is checked against the field's type.
        resources[key] = type(current)(**{**{n: getattr(current, n) for n in fields}, field: value})


def plan_request(args: argparse.Namespace, settings: Settings) -> BuildRequest:
    """Resolve and check every name of the command line; build the definitions."""
    notes: list[str] = []
    selected = list(dict.fromkeys(model_names(m, settings).family for m in (args.models or
                                                                          [f.name for f in families()])))
    resources = resources_for(settings)
    _set_fields(resources, args.fields)
    asked = _modalities(args.modalities, selected, settings)
    imagery = resources["imagery"]
    has_s1 = not isinstance(imagery, ImageryResource) or serves_s1(imagery)
    preset = getattr(imagery, "catalog_preset", None)
    where = f" (catalog_preset {preset})" if isinstance(preset, str) else ""
    modalities: dict[str, list[str]] = {}
    for fam in selected:
        model = cast(ModelResource, resources[fam])
        mods = asked.get(fam, list(model.modalities))
        if "s1" in mods and not has_s1:
            if fam in asked:
                raise UsageError(f"--modalities: {fam} s1 asked, but the {settings.provider} provider{where} has no "
                                 "Sentinel-1 (linear backscatter) collection: embed s2 only, or use "
                                 "--set imagery.catalog_preset=planetary-computer (sentinel-1-rtc), "
                                 "RS_EMBED_PROVIDER=gee or a catalog with S1 (imagery.s1_collection)")
            mods = [m for m in mods if m != "s1"]
            notes.append(f"{fam}: S1 switched off, the {settings.provider} provider{where} has no Sentinel-1 "
                         f"collection (--modalities {fam}=s2 says so explicitly)")
        if not mods:
            raise UsageError(f"{fam} has no modality left to embed; name one with --modalities {fam}=s2")
        modalities[fam] = mods
        resources[fam] = model.model_copy(update={"modalities": mods})
    defs = build_definitions(settings, resources=resources)
    partitions_def = cast(dg.MultiPartitionsDefinition, defs.resolve_job_def("build_embeddings").partitions_def)
    region_keys = partitions_def.get_partitions_def_for_dimension("region").get_partition_keys()
    windows = partitions_def.get_partitions_def_for_dimension("window").get_partition_keys()
    config = load_pipeline_config(settings.config_path)
    if args.list:
        return BuildRequest(defs, (), (), modalities, tuple(notes))
    if not args.region or not args.window:
        raise UsageError("--region and --window are required (--list shows the valid ones); configured regions: "
                         f"{', '.join(config.region_names)}")
    parts = tuple((check_region(config, region_keys, r), check_window(windows, w))
                  for r in args.region for w in args.window)
    specs = {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}
    if args.assets:
        named = {a: asset_name(a, list(specs)) for a in args.assets}  # model ids work as prefixes too
        unknown = [a for a, found in named.items() if found is None]
        if unknown:
            raise UsageError(f"unknown asset(s) {', '.join(unknown)}; assets: {', '.join(sorted(specs))}")
        assets = tuple(sorted({str(found) for found in named.values()}))
    else:
        bad = [s for s in args.stages if s not in STAGES]
        if bad:
            raise UsageError(f"unknown stage(s) {', '.join(bad)}; stages: {', '.join(STAGES)}")
        groups = {g for s in args.stages for g in STAGES[s]}
        mine = {"tile_grid", *(f"{m}_patches" for ms in modalities.values() for m in ms)}
        prefixes = tuple(f"{fam}_{m}_" for fam, ms in modalities.items() for m in ms)
        assets = tuple(sorted(a for a, g in specs.items() if g in groups and (a in mine or a.startswith(prefixes))))
    return BuildRequest(defs, assets, parts, modalities, tuple(notes))


def _instance() -> tuple[dg.DagsterInstance, str]:
    """The instance at ``$DAGSTER_HOME`` (Dagster reads the variable), else a temporary one, with why."""
    try:
        return dg.DagsterInstance.get(), "the Dagster instance at $DAGSTER_HOME (make ui shows the runs)"
    except dg.DagsterError as exc:  # DAGSTER_HOME unset (DagsterHomeNotSetError) or unusable: said
        why = str(exc).strip().splitlines()[0]
        return dg.DagsterInstance.ephemeral(), f"a temporary Dagster instance ({why}; set DAGSTER_HOME to keep runs)"


def _print_listing(request: BuildRequest, settings: Settings) -> None:
    config = load_pipeline_config(settings.config_path)
    pdef = cast(dg.MultiPartitionsDefinition, request.defs.resolve_job_def("build_embeddings").partitions_def)
    print(f"regions ({config.path}): {', '.join(pdef.get_partitions_def_for_dimension('region').get_partition_keys())}")
    print(f"windows: {', '.join(pdef.get_partitions_def_for_dimension('window').get_partition_keys())}")
    print(f"models: {valid_model_names()}")
    print(f"stages: {', '.join(STAGES)}")
    print(f"assets: {', '.join(sorted(s.key.to_user_string() for s in request.defs.resolve_all_asset_specs()))}")


def _step_errors(result: Any) -> list[str]:
    """Each failed step with its error: the innermost cause's message (a retry policy wraps the
    asset's error as "Exceeded max_retries"; the worker's error comes through Pipes as a cause)."""
    out = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            messages = []
            while error is not None:
                messages.append(error.message.strip())
                error = error.cause or error.context
            text = next((m for m in reversed(messages) if m), event.message or "")
            out.append(f"  {event.step_key}: {text}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    try:
        request = plan_request(args, settings)
    except (UsageError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in request.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.list:
        _print_listing(request, settings)
        return 0
    mods = ", ".join(f"{fam} {'+'.join(ms)}" for fam, ms in request.modalities.items())
    print(f"Provider {settings.provider}, store {settings.store_root}; models: {mods}")
    print(f"Assets ({len(request.assets)}): {', '.join(request.assets)}")
    print(f"Partitions: {', '.join(f'{r}|{w}' for r, w in request.partitions)}")
    if args.dry_run:
        return 0
    job = dg.Definitions.merge(request.defs, dg.Definitions(jobs=[dg.define_asset_job(
        JOB, selection=list(request.assets), description="python -m rs_embed_pipeline.cli.build")])
    ).resolve_job_def(JOB)
    instance, where = _instance()
    print(f"Runs recorded in {where}")
    failed = 0
    for region, window in request.partitions:
        key = dg.MultiPartitionKey({"region": region, "window": window})
        print(f"Materializing {region}|{window} ...", flush=True)
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        if not result.success:
            failed += 1
            print(f"FAILED {region}|{window} (run {result.run_id}):", *_step_errors(result), sep="\n")
            continue
        print(f"done {region}|{window} (run {result.run_id})")
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            name, md = mat.asset_key.to_user_string(), mat.metadata
            if name.endswith("_cube"):
                random = "random_weights" in md and md["random_weights"].value
                print(f"  {name:18s} {md['store_uri'].value}  [{'RANDOM WEIGHTS' if random else 'pretrained'}]")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
