"""Model adapters for TerraFM-B and THOR 1.0 (worker environment: torch, no Dagster).

```python
from rs_embed_pipeline.models import load_adapter, build_model
adapter = load_adapter("terrafm_b", checkpoint=None, device="auto", s2_branch="l2a")
out = adapter.embed(raw, modality="s2", output="both")   # out.pooled [B, D], out.grid [B, D', h, w]
model = build_model("thor_1_0_base")                      # random init, no download

from rs_embed_pipeline.models import embed_arrays          # the "tensor backend": arrays you already have
out = embed_arrays("thor", chw_or_bchw, modality="s2", output="grid", checkpoint="thor_v1_vit_base.pt")
```

Tuning knobs honour rs-embed's environment variables as defaults (``RS_EMBED_TERRAFM_BATCH_SIZE``,
``RS_EMBED_THOR_MODEL_KEY``, ``RS_EMBED_THOR_CKPT``, ...; see ``knobs.py`` and ``docs/knobs.md``);
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

Importing this package is cheap: torch and the model code load on first use (``load_adapter``,
``build_model`` or attribute access such as ``rs_embed_pipeline.models.ThorAdapter``); terratorch is
only imported by ``register_terratorch_backbones()``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import MissingDependencyError, ModelError, ModelInputError, WeightsError, WeightsNotFoundError, require

# Model id -> (family, THOR variant). Aliases resolve case-insensitively after stripping.
MODEL_IDS: dict[str, tuple[str, str | None]] = {
    "terrafm_b": ("terrafm", None),
    "terrafm": ("terrafm", None),
    "thor_1_0_base": ("thor", "base"),
    "thor": ("thor", "base"),
    "thor_v1_base": ("thor", "base"),
    "thor_1_0_tiny": ("thor", "tiny"),
    "thor_v1_tiny": ("thor", "tiny"),
    "thor_1_0_small": ("thor", "small"),
    "thor_v1_small": ("thor", "small"),
    "thor_1_0_large": ("thor", "large"),
    "thor_v1_large": ("thor", "large"),
}

_LAZY = {
    "EmbeddingOutput": "adapters",
    "TerraFMAdapter": "adapters",
    "ThorAdapter": "adapters",
    "TerraFM": "terrafm",
    "TerraFMConfig": "terrafm",
    "ThorEncoder": "thor",
    "ThorConfig": "thor",
    "register_terratorch_backbones": "terratorch_ext",
    "embed_arrays": "tensor",
}
# Model ids whose THOR size comes from RS_EMBED_THOR_MODEL_KEY when no variant is given (rs-embed's
# "thor" / "thor_1_0_base"); the other THOR ids name their size explicitly.
_GENERIC_THOR_IDS = ("thor", "thor_1_0_base")

__all__ = [
    "MODEL_IDS",
    "MissingDependencyError",
    "ModelError",
    "ModelInputError",
    "WeightsError",
    "WeightsNotFoundError",
    "build_model",
    "load_adapter",
    "resolve_model_id",
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
    if name in _LAZY:
        if _LAZY[name] != "tensor":
            require("torch", f"rs_embed_pipeline.models.{name}")
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_model_id(name: str) -> tuple[str, str | None]:
    key = str(name).strip().lower()
    if key not in MODEL_IDS:
        raise ModelInputError(f"Unknown model {name!r}; valid: {', '.join(MODEL_IDS)}")
    return MODEL_IDS[key]


def load_adapter(
    name: str, checkpoint=None, arch: dict | None = None, device: str = "auto", *, use_env: bool = True,
    **options: Any,
):
    """Build an adapter with loaded weights.

    ``checkpoint``: a local weights file, or None for the Hugging Face hub (cache first).
    ``arch``: a reference fixture's ``case.json`` "arch" object (reduced test models), else None.
    ``options``: TerraFM ``s2_branch``; THOR ``normalization``, ``patch_size``, ``image_size``,
    ``group_merge``, ``scale_m``, ``resize_mode``, ``variant``, ``pretrained``...; both ``batch_size``,
    ``precision`` ("fp32"|"bf16": autocast on CUDA and on CPUs with native bf16), ``compile`` (bool:
    ``torch.compile`` the transformer blocks), ``allow_random_weights`` (with ``checkpoint=None``: random init,
    no download, loudly labelled), ``cache_dir``. Unknown options raise ``ModelInputError``.

    ``use_env`` (default True): options left unset (or None) take their value from rs-embed's
    environment variables when set (``knobs.py``: ``RS_EMBED_TERRAFM_BATCH_SIZE``,
    ``RS_EMBED_THOR_MODEL_KEY`` for ``"thor"`` / ``"thor_1_0_base"``, ``RS_EMBED_THOR_CKPT``,
    ``RS_EMBED_THOR_PRETRAINED``, ``RS_EMBED_THOR_IMG``, ...); an invalid value raises naming the
    variable. Explicit options always win.
    """
    family, variant = resolve_model_id(name)
    key = str(name).strip().lower()
    if use_env:
        from .knobs import env_options

        env = env_options(family)
        if family == "thor" and key not in _GENERIC_THOR_IDS:
            env.pop("variant", None)  # an explicit size in the model id wins over the environment
        if checkpoint is None and "checkpoint" in env:
            checkpoint = env["checkpoint"]
        env.pop("checkpoint", None)
        for k, v in env.items():
            if options.get(k) is None:
                options[k] = v
    require("torch", f"the {family} model ({name!r})")
    from . import adapters

    if family == "terrafm":
        return adapters.TerraFMAdapter(checkpoint=checkpoint, arch=arch, device=device, **options)
    if "variant" in options and options["variant"] is not None:
        from .knobs import canonical_thor_variant

        if key not in _GENERIC_THOR_IDS and canonical_thor_variant(options["variant"]) != variant:
            raise ModelInputError(f"Model {name!r} conflicts with variant={options['variant']!r}")
    else:
        options["variant"] = variant
    return adapters.ThorAdapter(checkpoint=checkpoint, arch=arch, device=device, **options)


def build_model(name: str, arch: dict | None = None):
    """The bare backbone (``torch.nn.Module``), random init, no download.

    Its ``state_dict()`` keys and shapes equal the released checkpoint's (THOR: without the
    ``encoder.`` prefix). Under ``with torch.device("meta"):`` nothing is allocated."""
    family, variant = resolve_model_id(name)
    require("torch", f"building the {family} model ({name!r})")
    if family == "terrafm":
        from .terrafm import TerraFM, TerraFMConfig

        return TerraFM(TerraFMConfig.from_arch(arch))
    from .thor import ThorConfig, ThorEncoder

    return ThorEncoder(ThorConfig.from_arch(arch, variant or "base"))
