"""Model adapters for TerraFM-B and THOR 1.0 (worker environment: torch, no Dagster), found through
a model registry (``registry.py``).

```python
from rs_embed_pipeline.models import load_adapter, build_model
adapter = load_adapter("terrafm_b", checkpoint=None, device="auto", s2_branch="l2a")
out = adapter.embed(raw, modality="s2", output="both")   # out.pooled [B, D], out.grid [B, D', h, w]
model = build_model("thor_1_0_base")                      # random init, no download

from rs_embed_pipeline.models import embed_arrays          # the "tensor backend": arrays you already have
out = embed_arrays("thor", chw_or_bchw, modality="s2", output="grid", checkpoint="thor_v1_vit_base.pt")
```

Each model family is one package and one registry entry (``registry.ModelFamily``: ids and
aliases, input bands per modality, native tile size, adapter, random-init builder, batch sizes,
knobs): ``terrafm/`` and ``thor/``. ``load_adapter``, ``build_model``, the knob table and the
orchestrator's per-model settings all look models up there; a new family registers one entry
(``register_family``) and touches nothing else:

```python
from rs_embed_pipeline.models import families, get_family
[f.name for f in families()]              # ["terrafm", "thor"]
get_family("thor_1_0_large").input_bands  # {"s2": ("B2", ...), "s1": ("VV", "VH")}
```

Tuning knobs honour rs-embed's environment variables as defaults (``RS_EMBED_TERRAFM_BATCH_SIZE``,
``RS_EMBED_THOR_MODEL_KEY``, ``RS_EMBED_THOR_CKPT``, ...; each family's ``spec.py``, ``knobs.py`` and ``docs/knobs.md``);
explicit options win, ``use_env=False`` ignores the environment (the pipeline worker does).

Decisions worth knowing (details in the adapter docstrings):

* TerraFM S2 runs TerraFM's own L2A branch by default (``s2_branch="l2a"``, the providers deliver
  surface reflectance); rs-embed 0.3.1 always runs the L1C branch - ``s2_branch="l1c"`` reproduces it.
* THOR defaults to ``patch_size=16`` (the checkpoint's native kernels; rs-embed uses 8, which works
  through the FlexiViT PI-resize) and ``resize_mode="fixed"`` (inputs resized to ``image_size`` after
  normalisation, so every tile has the same grid shape); ``resize_mode="native_snap"`` is rs-embed's.
* ``allow_random_weights=True`` with ``checkpoint=None`` means random init without touching the hub
  (benchmarks, tests); it is labelled in ``describe()``/``meta`` and logged as a warning. With a
  checkpoint the flag has no effect. Without the flag, missing weights are an error.
* Weights load strictly (every key and shape must match), with ``torch.load(weights_only=True)``.

Importing this package is cheap (it registers the built-in families from their torch-free
``spec.py``): torch and the model code load on first use (``load_adapter``, ``build_model`` or
attribute access such as ``rs_embed_pipeline.models.ThorAdapter``); terratorch is only imported by
``register_terratorch_backbones()``.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from . import registry
from .errors import MissingDependencyError, ModelError, ModelInputError, WeightsError, WeightsNotFoundError, require
from .registry import ModelFamily, families, get_family, register_family, unregister_family

# The built-in families register themselves on import, TerraFM first (the order of families() and
# of the model ids in messages).
from . import terrafm, thor  # noqa: E402, F401, I001 - after the registry, in this order
from .knobs import allow_random_weights_from_env, env_options

log = logging.getLogger(__name__)

_LAZY = {
    "EmbeddingOutput": "adapters",
    "TerraFMAdapter": "terrafm.adapter",
    "ThorAdapter": "thor.adapter",
    "TerraFM": "terrafm.model",
    "TerraFMConfig": "terrafm.model",
    "ThorEncoder": "thor.model",
    "ThorConfig": "thor.model",
    "register_terratorch_backbones": "thor.terratorch_ext",
    "embed_arrays": "tensor",
}

__all__ = [
    "MODEL_IDS",
    "MissingDependencyError",
    "ModelError",
    "ModelFamily",
    "ModelInputError",
    "WeightsError",
    "WeightsNotFoundError",
    "build_model",
    "families",
    "get_family",
    "load_adapter",
    "register_family",
    "require",
    "resolve_model_id",
    "unregister_family",
    # the lazily imported names of _LAZY, spelled out so that linters and readers see them
    "EmbeddingOutput",
    "TerraFM",
    "TerraFMAdapter",
    "TerraFMConfig",
    "ThorAdapter",
    "ThorConfig",
    "ThorEncoder",
    "embed_arrays",
    "register_terratorch_backbones",
]


def __getattr__(name: str) -> Any:
    if name == "MODEL_IDS":  # model id -> (family, size), of every registered family (registry.model_ids)
        return registry.model_ids()
    if name in _LAZY:
        if _LAZY[name] != "tensor":
            require("torch", f"rs_embed_pipeline.models.{name}")
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_model_id(name: str) -> tuple[str, str | None]:
    """``(family name, size)`` of a registered model id or alias (``ModelInputError`` listing the
    valid ids otherwise)."""
    family, _, variant = registry.resolve(name)
    return family.name, variant


def load_adapter(
    name: str, checkpoint=None, arch: dict | None = None, device: str = "auto", *, use_env: bool = True,
    **options: Any,
):
    """Build an adapter with loaded weights.

    ``name``: a registered model id or alias (``registry.model_ids()``: ``"terrafm_b"``,
    ``"thor_1_0_base"``, ``"thor"``, ...).
    ``checkpoint``: a local weights file, or None for the Hugging Face hub (cache first).
    ``arch``: a reference fixture's ``case.json`` "arch" object (reduced test models), else None.
    ``options``: the family's own (``get_family(name).options``; TerraFM ``s2_branch``; THOR
    ``normalization``, ``patch_size``, ``image_size``, ``group_merge``, ``scale_m``, ``resize_mode``,
    ``variant``, ``pretrained``...) and every adapter's ``batch_size``,
    ``precision`` ("fp32"|"bf16": autocast on CUDA and on CPUs with native bf16), ``compile`` (bool:
    ``torch.compile`` the transformer blocks), ``allow_random_weights`` (with ``checkpoint=None``: random init,
    no download, loudly labelled), ``cache_dir``. Unknown options raise ``ModelInputError``.

    ``use_env`` (default True): options left unset (or None) take their value from the family's
    knob variables when set (``knobs.py``: ``RS_EMBED_TERRAFM_BATCH_SIZE``,
    ``RS_EMBED_THOR_MODEL_KEY`` for ``"thor"`` / ``"thor_1_0_base"``, ``RS_EMBED_THOR_CKPT``,
    ``RS_EMBED_THOR_PRETRAINED``, ``RS_EMBED_THOR_IMG``, ...); ``RS_EMBED_ALLOW_RANDOM_WEIGHTS=1``
    without an explicit ``allow_random_weights``: pretrained weights when found, else random ones
    (as the pipeline; labelled random in every output's metadata). An invalid value raises naming
    the variable. Explicit options always win.
    """
    family, key, variant = registry.resolve(name)
    if use_env:
        env = env_options(family.name)
        if options.get("allow_random_weights") is None and allow_random_weights_from_env():
            # As in the pipeline: pretrained weights when found, random ones only as the fallback.
            named = checkpoint if checkpoint is not None else env.get("checkpoint")
            return _pretrained_or_random(name, checkpoint, named, arch, device, options)
        if family.variant_option is not None and key not in family.env_variant_ids:
            env.pop(family.variant_option, None)  # an explicit size in the model id wins over the environment
        if checkpoint is None and "checkpoint" in env:
            checkpoint = env["checkpoint"]
        env.pop("checkpoint", None)
        for k, v in env.items():
            if options.get(k) is None:
                options[k] = v
    require("torch", f"the {family.name} model ({name!r})")
    if family.variant_option is not None and family.parse_variant is not None:
        given = options.get(family.variant_option)
        if given is None:
            options[family.variant_option] = variant
        elif key not in family.env_variant_ids and family.parse_variant(given) != variant:
            raise ModelInputError(f"Model {name!r} conflicts with {family.variant_option}={given!r}")
    return family.adapter_factory()(checkpoint=checkpoint, arch=arch, device=device, **options)


def _pretrained_or_random(name: str, checkpoint: Any, named: Any, arch: dict | None, device: str,
                          options: dict[str, Any]):
    """``RS_EMBED_ALLOW_RANDOM_WEIGHTS=1`` in library use: pretrained weights when they are found,
    else random ones (labelled ``random_weights`` / ``weights_source: RANDOM ...`` in every output)."""
    try:
        return load_adapter(name, checkpoint, arch, device, **{**options, "allow_random_weights": False})
    except WeightsNotFoundError as exc:
        if named is not None:
            raise  # a named file (argument or variable) that is missing is an error, not a reason for random weights
        log.warning("%s: no pretrained weights found (%s); RS_EMBED_ALLOW_RANDOM_WEIGHTS=1: RANDOM WEIGHTS", name, exc)
        return load_adapter(name, checkpoint, arch, device, **{**options, "allow_random_weights": True})


def build_model(name: str, arch: dict | None = None):
    """The bare backbone (``torch.nn.Module``), random init, no download (the family's registered
    ``model`` builder).

    Its ``state_dict()`` keys and shapes equal the released checkpoint's (THOR: without the
    ``encoder.`` prefix). Under ``with torch.device("meta"):`` nothing is allocated."""
    family, _, variant = registry.resolve(name)
    require("torch", f"building the {family.name} model ({name!r})")
    return family.build_model(arch, variant)
