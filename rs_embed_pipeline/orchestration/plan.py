"""What the code location builds, decided once from the model resources: the (model, modality) pairs,
their tile sizes, the patch sizes to fetch per modality and the fetch threads.

``build_definitions`` computes one :class:`PipelinePlan` and hands it to every asset factory, so no
asset needs a model resource to learn a tile size or a store path: only the embeddings assets run a
model, and only they receive one. A model resource overridden in a run's config must keep the
planned tile size (the tile grid and the patch stores were laid out for it);
:meth:`EmbeddingSpec.check_resource` says so by name when it does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from rs_embed_pipeline.core.vocabulary import MODALITIES
from rs_embed_pipeline.models.registry import families

if TYPE_CHECKING:
    from rs_embed_pipeline.orchestration.resources import ModelResource


#: The model resource keys, in the order their assets appear; each key also prefixes its asset names
#: (``terrafm_s2_embeddings``).
MODEL_RESOURCE_KEYS: tuple[str, ...] = tuple(f.name for f in families())  # the registry's families
SENSOR_TITLES = {"s2": "Sentinel-2", "s1": "Sentinel-1"}


class PlanMismatch(ValueError):
    """A run's model resource disagrees with the plan the code location was loaded with."""


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """One model x modality combination of the pipeline, with what its assets need to know about the
    model without holding its resource."""

    name: str             # asset name prefix, e.g. "terrafm_s2"
    resource_key: str     # "terrafm" | "thor"
    modality: str         # "s2" | "s1"
    title: str            # e.g. "TerraFM-B, Sentinel-2"
    store_model_id: str   # model id in store paths (THOR: thor_1_0_<variant>)
    tile_size_px: int     # the model's native tile side
    scale_m: float        # ground sampling distance of its tiles
    fetch_workers: int    # the model resource's fetch_workers when the code location loaded

    def check_resource(self, resource: ModelResource) -> None:
        """Fail, naming the field, when a run's model resource no longer matches the plan."""
        if self.modality not in resource.modalities:
            raise PlanMismatch(
                f"{self.name}: the {self.resource_key} resource embeds modalities {list(resource.modalities)}, "
                f"not {self.modality!r}; add it to the resource's modalities")
        planned = {"tile size": (self.tile_size_px, resource.tile_size_px),
                   "store model id": (self.store_model_id, resource.store_model_id),
                   "scale_m": (self.scale_m, float(resource.scale_m))}
        for what, (plan_value, run_value) in planned.items():
            if plan_value != run_value:
                raise PlanMismatch(
                    f"{self.name}: this run's {self.resource_key} resource has {what} {run_value!r}, the code "
                    f"location was loaded with {plan_value!r} (the tile grid and patch stores follow it). Set "
                    f"the value where the resources are chosen (environment / definitions.py) and reload the "
                    f"code location instead of overriding it in a run's config.")

    def ignored_overrides(self, resource: ModelResource) -> list[str]:
        """Settings of a run's model resource that its patches step could not use (it ran with the
        plan's): said in the embeddings step's log rather than silently dropped."""
        if resource.fetch_workers != self.fetch_workers:
            return [f"{self.resource_key}.fetch_workers {resource.fetch_workers} in this run's config was not used: "
                    f"fetch threads are read when the code location loads ({self.fetch_workers}); for one run, "
                    f"set the imagery resource's max_workers"]
        return []


@dataclasses.dataclass(frozen=True)
class PipelinePlan:
    """The specs to build and what follows from them (see the module docstring)."""

    specs: tuple[EmbeddingSpec, ...]

    @property
    def modalities(self) -> list[str]:
        """Modalities some model embeds, in :data:`MODALITIES` order (only these get patch assets)."""
        return [m for m in MODALITIES if any(s.modality == m for s in self.specs)]

    def tile_sizes(self) -> list[tuple[int, float]]:
        """(size_px, scale_m) of every model's native tile: one tile grid per distinct size."""
        return sorted({(s.tile_size_px, s.scale_m) for s in self.specs})

    def patch_sizes(self, modality: str) -> list[int]:
        """Tile sizes of the models that embed ``modality``."""
        return sorted({s.tile_size_px for s in self.specs if s.modality == modality})

    def fetch_workers(self, modality: str) -> int:
        """Fetch threads: the largest ``fetch_workers`` of the models that embed ``modality``."""
        return max(s.fetch_workers for s in self.specs if s.modality == modality)


def plan_pipeline(resources: Mapping[str, Any]) -> PipelinePlan:
    """The plan for these model resources: one spec per model and modality it embeds (``modalities``)."""
    missing = sorted(set(MODEL_RESOURCE_KEYS) - set(resources))
    if missing:
        raise ValueError(f"the embedding assets need the model resources {missing}; got {sorted(resources)}")
    models = {key: cast("ModelResource", resources[key]) for key in MODEL_RESOURCE_KEYS}
    specs = [
        EmbeddingSpec(name=f"{key}_{modality}", resource_key=key, modality=modality,
                      title=f"{model.title}, {SENSOR_TITLES[modality]}", store_model_id=model.store_model_id,
                      tile_size_px=int(model.tile_size_px), scale_m=float(model.scale_m),
                      fetch_workers=int(model.fetch_workers))
        for key, model in models.items()
        for modality in MODALITIES if modality in model.modalities  # S2 first
    ]
    return PipelinePlan(specs=tuple(specs))
