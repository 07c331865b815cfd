"""What the command lines accept and list: one model name mapping for every CLI, and the regions,
windows and stores that exist, for errors that say what to type instead.

A model has three kinds of names (README "Model names"):

| name | example | where |
| --- | --- | --- |
| family (asset prefix, resource key) | ``terrafm``, ``thor`` | assets ``terrafm_s2_cube``, resources, ``--models`` |
| model id (store paths) | ``terrafm_b``, ``thor_1_0_base`` (``thor_1_0_<size>``) | ``cubes/terrafm_b_s2/...``, metadata ``model_id`` |
| alias (``embed_arrays``, rs-embed) | ``thor``, ``thor_v1_base``, ``terrafm`` | the Python API |

Every CLI takes any of them (case-insensitive) wherever it asks for a model: :func:`model_names`
resolves one to its family and its store model id, through the model registry
(``models/registry.py``), so a name the Python API accepts is accepted here too. A family name or
a size-less alias (``thor``) means the size the pipeline builds: the THOR resource's
``model_key`` (``RS_EMBED_THOR_MODEL_KEY``, default base).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

import fsspec

from rs_embed_pipeline.core.regions import PipelineConfig
from rs_embed_pipeline.models.errors import ModelInputError
from rs_embed_pipeline.models.registry import families, get_family
from rs_embed_pipeline.orchestration.definitions import resources_for
from rs_embed_pipeline.orchestration.resources import ModelResource
from rs_embed_pipeline.orchestration.settings import Settings


class UsageError(ValueError):
    """A command-line value that names nothing that exists; the message lists what does."""


@dataclasses.dataclass(frozen=True)
class ModelName:
    family: str        # asset prefix and resource key: "terrafm", "thor"
    model_id: str      # store paths and metadata: "terrafm_b", "thor_1_0_base"


def valid_model_names() -> str:
    """``terrafm (terrafm_b, ...), thor (thor_1_0_base, thor, ...)``: every accepted spelling, per family."""
    return "; ".join(f"{f.name}: {', '.join(dict.fromkeys([f.name, *f.ids]))}" for f in families())


def model_names(name: str, settings: Settings | None = None) -> ModelName:
    """The family and the store model id of any model name (family, model id or alias); a name of
    the family's configurable size (the family name, ``thor``, ``thor_1_0_base``) takes the size the
    pipeline's resource builds. :class:`UsageError` listing every valid name otherwise."""
    try:
        family = get_family(name)
    except ModelInputError:
        raise UsageError(f"unknown model {name!r}; valid names: {valid_model_names()}") from None
    key = str(name).strip().lower()
    if key in family.ids and key not in family.env_variant_ids and key != family.name:
        return ModelName(family.name, family.model_id(family.ids[key]))
    resource = cast(ModelResource, resources_for(settings or Settings.from_env())[family.name])
    return ModelName(family.name, resource.store_model_id)


def asset_name(name: str, assets: Sequence[str]) -> str | None:
    """The asset ``name`` means: itself, or with a model id or alias as its prefix in place of the
    family (``terrafm_b_s2_cube`` -> ``terrafm_s2_cube``, ``thor_v1_base_s2_cube`` -> ``thor_s2_cube``);
    None when it names none of ``assets``."""
    if name in assets:
        return name
    for family in families():
        for model_id in sorted(family.ids, key=len, reverse=True):  # thor_1_0_base before thor
            if name.startswith(model_id + "_") and f"{family.name}{name[len(model_id):]}" in assets:
                return f"{family.name}{name[len(model_id):]}"
    return None


def check_region(config: PipelineConfig, region_keys: Sequence[str], region: str) -> str:
    """``region`` when it is a region partition key (a region, or a split region's cell); otherwise
    :class:`UsageError` listing the regions of the config (and how to add one)."""
    if region in region_keys:
        return region
    if any(r.name == region and r.split_km is not None for r in config.regions):
        cells = [k for k in region_keys if k.startswith(region + "-")]
        raise UsageError(f"region {region!r} is split into {len(cells)} cells (split_km); name one of them: "
                         f"{', '.join(cells[:5])}{' ...' if len(cells) > 5 else ''}")
    raise UsageError(f"unknown region {region!r} in {config.path}; configured regions: "
                     f"{', '.join(config.region_names)} (README 'Adding a region')")


def check_window(windows: Sequence[str], window: str) -> str:
    """``window`` when it is a window key; otherwise :class:`UsageError` listing the windows."""
    if window in windows:
        return window
    shown = list(windows) if len(windows) <= 12 else [*windows[:4], "...", *windows[-4:]]
    raise UsageError(f"unknown window {window!r}; windows are the first days of the configured cadence's periods: "
                     f"{', '.join(shown)}")


def cubes_in_store(root: str) -> dict[str, list[str]]:
    """``{"<model id>_<modality>": [regions with a cube]}`` under ``<root>/cubes``; empty when none."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/cubes")
    if not fs.isdir(path):
        return {}
    out: dict[str, list[str]] = {}
    for sub in sorted(fs.ls(path, detail=False)):
        name = str(sub).rstrip("/").rsplit("/", 1)[-1]
        regions = sorted(str(p).rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")
                         for p in fs.ls(sub, detail=False) if str(p).rstrip("/").endswith(".zarr"))
        if regions:
            out[name] = regions
    return out


def missing_cube_message(root: str, model_id: str, modality: str, region: str) -> str:
    """Why there is no cube to read, with the regions and cubes that do exist in the store."""
    cubes = cubes_in_store(root)
    name = f"{model_id}_{modality}"
    if not cubes:
        return (f"no cube in the store {root} yet: build one first, e.g. python -m rs_embed_pipeline.cli.build "
                f"--region {region} --window <window> (README 'Build your own region')")
    here = f"regions with a {name} cube: {', '.join(cubes[name])}" if name in cubes else f"no {name} cube at all"
    listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in cubes.items())
    return f"no {name} cube for region {region!r} in {root} ({here}); cubes in this store: {listing}"
