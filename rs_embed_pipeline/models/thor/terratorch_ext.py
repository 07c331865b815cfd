"""TerraTorch integration: register THOR v1 builders in terratorch's backbone registry.

``register_terratorch_backbones()`` adds ``thor_v1_tiny``, ``thor_v1_small``, ``thor_v1_base`` and
``thor_v1_large`` to ``terratorch.registry.TERRATORCH_BACKBONE_REGISTRY`` (so
``BACKBONE_REGISTRY.build("thor_v1_base", ...)`` works) - but only when terratorch is importable and
the upstream ``thor_terratorch_ext`` plugin is not installed (the plugin registers the same names with
its own implementation, and wins). It is called lazily (never at package import: importing terratorch
takes seconds); calling it again is a no-op. terratorch is imported through
``runtime.import_terratorch``: its import sets torch's float32 matmul precision to "medium" for the
whole process, and this module puts back whatever was set before.

The registered builders return a ``ThorBackbone``: ``forward(x)`` takes a normalised
``[B, C, H, W]`` batch of ``model_bands`` (alias ``bands``; default the 10 S2 bands B2, B3, B4, B5,
B6, B7, B8, B8A, B11, B12) and returns one tensor per ``out_indices`` entry; ``out_channels`` lists
their widths, as terratorch expects. ``output_format="tokens"`` (default) gives the block's tokens
``[B, N, D]`` (no final norm; group0 first, each group row-major); ``output_format="grid"`` gives the
group-aware feature map ``[B, D, S, S]`` (coarser groups bilinearly upsampled, merged by
``group_merge``), which TerraTorch's decoders take directly - THOR's token count (18x18 + 9x9 for S2
at patch 16) is not a square, so ``ReshapeTokensToImage`` cannot fold the tokens. The ground cover
is ``scale_m * H`` of each input (a 288 px tile at 10 m covers 2880 m). Its state dict carries the
THOR checkpoint's ``encoder.`` prefix.

Pretrained weights: ``pretrained=True`` (Hugging Face ``FM4CS/THOR-1.0-{size}``, cache first) or
``ckpt_path="thor_v1_vit_base.pt"``; loaded strictly (every key and shape must match).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelInputError
from ..runtime import import_terratorch
from ..weights import expected_nbytes, load_strict, read_checkpoint, resolve_weights, unwrap_state_dict
from .checkpoint import thor_encoder_state
from .model import BANDS, VARIANTS, ThorConfig, ThorEncoder, canonical_group_merge, group_grid
from .spec import FAMILY, THOR_BAND_NAMES, THOR_S2_BANDS, thor_hf_source, thor_model_key

log = logging.getLogger("rs_embed_pipeline.models")

TERRATORCH_NAMES = tuple(thor_model_key(v) for v in VARIANTS)
OUTPUT_FORMATS = ("tokens", "grid")


class ThorBackbone(nn.Module):
    def __init__(
        self,
        encoder: ThorEncoder,
        model_bands: Sequence[str],
        patch_size: int = 16,
        scale_m: float = 10.0,
        out_indices: Sequence[int] | None = None,
        output_format: str = "tokens",
        group_merge: str = "mean",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        bands = tuple(THOR_BAND_NAMES.get(b, b) for b in model_bands)
        unknown = [b for b in bands if b not in BANDS]
        if unknown:
            raise ModelInputError(f"Unknown THOR bands {unknown}; use THOR names ({sorted(BANDS)}) or {list(THOR_BAND_NAMES)}")
        self.model_bands = bands
        self.patch_size = int(patch_size)
        self.scale_m = float(scale_m)
        self.out_indices = list(out_indices) if out_indices else [len(encoder.blocks) - 1]
        fmt = str(output_format).strip().lower()
        if fmt not in OUTPUT_FORMATS:
            raise ModelInputError(f"Unknown THOR backbone output_format {output_format!r}; valid: {', '.join(OUTPUT_FORMATS)}")
        self.output_format = fmt
        self.group_merge = canonical_group_merge(group_merge)
        width = encoder.embed_dim
        if fmt == "grid" and self.group_merge == "concat":
            width *= len({BANDS[b].group for b in bands})
        self.out_channels = [width] * len(self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, token_grid = self.encoder.forward_tokens(
            x, self.model_bands, self.scale_m * x.shape[-1], self.patch_size, out_indices=self.out_indices
        )
        if self.output_format == "grid":
            return [group_grid(t, token_grid, self.group_merge) for t in outs]
        return outs


def build_thor_backbone(
    variant: str,
    pretrained: bool = False,
    ckpt_path: str | None = None,
    model_bands: Sequence[str] | None = None,
    patch_size: int = 16,
    scale_m: float = 10.0,
    out_indices: Sequence[int] | None = None,
    arch: dict | None = None,
    cache_dir: str | None = None,
    output_format: str = "tokens",
    group_merge: str = "mean",
    **kwargs,
) -> ThorBackbone:
    """Build a THOR v1 backbone; weights from ``ckpt_path`` (or ``ckpt``) or, with ``pretrained``,
    from the Hugging Face hub (cache first). Otherwise random init. ``bands`` is an alias of
    ``model_bands`` (TerraTorch's ``backbone_bands``)."""
    ckpt_path = ckpt_path or kwargs.pop("ckpt", None)
    if "bands" in kwargs:
        bands = kwargs.pop("bands")
        if model_bands is not None and list(model_bands) != list(bands):
            raise ModelInputError(f"THOR backbone got both model_bands={model_bands} and bands={bands}; give one")
        model_bands = bands
    if kwargs:
        raise ModelInputError(
            f"Unknown THOR backbone argument(s) {sorted(kwargs)}; valid: pretrained, ckpt_path, model_bands "
            "(or bands), patch_size, scale_m, out_indices, arch, cache_dir, output_format, group_merge")
    cfg = ThorConfig.from_arch(arch, variant)
    if ckpt_path is None and not pretrained:
        encoder = ThorEncoder(cfg)
    else:
        found = resolve_weights(ckpt_path, *thor_hf_source(variant), cache_dir, checkpoint_env=FAMILY.checkpoint_env)
        with torch.device("meta"):
            encoder = ThorEncoder(cfg)
        obj = read_checkpoint(found["path"], expected_nbytes(encoder), thor_model_key(variant))
        state, _ = thor_encoder_state(unwrap_state_dict(obj, found["path"]), found["path"])
        load_strict(encoder, state, found["path"], thor_model_key(variant))
    return ThorBackbone(encoder, model_bands or [THOR_BAND_NAMES[b] for b in THOR_S2_BANDS], patch_size, scale_m,
                        out_indices, output_format, group_merge)


def _builder(variant: str):
    def build(**kwargs) -> ThorBackbone:
        return build_thor_backbone(variant, **kwargs)

    build.__name__ = build.__qualname__ = thor_model_key(variant)
    build.__doc__ = f"THOR v1 {variant} backbone (rs_embed_pipeline); see build_thor_backbone."
    return build


def register_terratorch_backbones() -> bool:
    """Register ``thor_v1_*`` builders; True when they are in terratorch's registry afterwards and
    are ours, False when skipped (terratorch not importable, or ``thor_terratorch_ext`` installed)."""
    if importlib.util.find_spec("thor_terratorch_ext") is not None:
        log.info("thor_terratorch_ext is installed; leaving thor_v1_* to it")
        return False
    try:
        registry = import_terratorch("terratorch.registry").TERRATORCH_BACKBONE_REGISTRY
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision build
        log.warning("terratorch is not importable (%s: %s); THOR not registered", type(exc).__name__, exc)
        return False
    for variant in VARIANTS:
        name = thor_model_key(variant)
        if name not in registry:
            registry.register(_builder(variant))
    return True


# Importing this module is the opt-in: register right away (idempotent; never at package import).
register_terratorch_backbones()
