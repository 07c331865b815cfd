"""The THOR 1.0 adapter: THOR's preprocessing and forward pass on the shared skeleton
(``models/adapters.py``); its ids, bands, option vocabularies and knobs are in ``spec.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import device_prepare as D
from .. import preprocessing as P
from ..adapters import _Adapter
from ..errors import ModelInputError
from ..weights import unwrap_state_dict
from .checkpoint import thor_encoder_state
from .model import (
    ThorConfig,
    ThorEncoder,
    TokenGrid,
    canonical_group_merge,
    canonical_variant,
    group_grid,
    pool_tokens,
    square_token_grid,
    token_grid_for,
)
from .preprocessing import THOR_S2_MEAN, THOR_S2_STD, thor_native_snap_decision
from .spec import (
    FAMILY,
    THOR_BAND_NAMES,
    THOR_RESIZE_MODES,
    THOR_SHAPE_ADJUST,
    canonical_thor_normalization,
    thor_hf_source,
    thor_model_key,
    thor_normalization,
)


class ThorAdapter(_Adapter):
    """THOR 1.0 (``FM4CS/THOR-1.0-{variant}`` / ``thor_v1_vit_{variant}.pt``; default base).

    Options (defaults): ``normalization`` ``"thor_stats"`` (S2 z-score with THOR statistics; for S1 the
    shared log1p / joint-p99 normaliser), ``"unit_scale"`` (S2 only) or ``"none"``, with rs-embed's
    aliases; ``patch_size`` 16 (any size: FlexiViT PI-resize of the 16x16 kernels; rs-embed uses 8);
    ``image_size`` 288; ``scale_m`` 10; ``group_merge`` ``"mean"`` / ``"sum"`` / ``"concat"``;
    ``resize_mode`` ``"fixed"`` / ``"native_snap"``; ``shape_adjust``, ``fill_value``, ``shape_tol_px``,
    ``max_native_side``, ``max_native_tokens`` (native_snap only); ``variant`` tiny/small/base/large.

    Geometry. ``resize_mode="fixed"`` (default): after normalisation an input whose side is not
    ``image_size`` is resized bilinearly to ``image_size`` (recorded in ``meta["preprocess"]``), and the
    ground cover is ``scale_m * image_size``; every tile then has the same grid shape, which the
    embedding store needs. ``resize_mode="native_snap"`` reproduces rs-embed: raw values are
    centre-cropped/padded to a side the patch grid tiles exactly, the ground cover follows the input,
    and the grid shape varies with the input size.

    Outputs: ``tokens`` = last-block tokens without the final norm ``[B, N, D]`` (group0 first, each
    group row-major); ``pooled`` = mean over all tokens of all groups; ``grid`` = group-aware grid with
    coarser groups bilinearly upsampled to the finest group's grid, merged by ``group_merge``.
    """

    family = FAMILY.name
    RESIZE_MODES = THOR_RESIZE_MODES
    SHAPE_ADJUST = THOR_SHAPE_ADJUST
    S2_GSDS = (10.0, 20.0)
    S1_GSDS = (10.0,)
    cfg: ThorConfig

    def __init__(self, *, checkpoint=None, arch=None, device="auto", **options: Any) -> None:
        self.variant = canonical_variant(options.pop("variant", None) or "base")
        self.model_id = FAMILY.model_id(self.variant)
        super().__init__(checkpoint=checkpoint, arch=arch, device=device, **options)

    @staticmethod
    def _positive_int(name: str, value, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ModelInputError(f"THOR {name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def _configure(self, arch, options: dict) -> None:
        self.cfg = ThorConfig.from_arch(arch, self.variant)
        d = FAMILY.default  # defaults live in the knob table (spec.KNOBS)
        self.normalization = canonical_thor_normalization(options.pop("normalization", d("normalization")))
        pretrained = options.pop("pretrained", True)
        if not isinstance(pretrained, (bool, np.bool_)):
            raise ModelInputError(f"THOR pretrained must be a bool, got {pretrained!r}")
        self.pretrained = bool(pretrained)
        self.patch_size = self._positive_int("patch_size", options.pop("patch_size", d("patch_size")))
        self.image_size_ = self._positive_int("image_size", options.pop("image_size", d("image_size")))
        scale = options.pop("scale_m", 10.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or not scale > 0:
            raise ModelInputError(f"THOR scale_m must be a positive number of metres, got {scale!r}")
        self.scale_m = float(scale)
        self.group_merge = canonical_group_merge(options.pop("group_merge", d("group_merge")))
        mode = str(options.pop("resize_mode", d("resize_mode"))).strip().lower()
        if mode not in self.RESIZE_MODES:
            raise ModelInputError(f"Unknown THOR resize_mode {mode!r}; valid: {', '.join(self.RESIZE_MODES)}")
        self.resize_mode = mode
        adjust = str(options.pop("shape_adjust", d("shape_adjust"))).strip().lower()
        if adjust not in self.SHAPE_ADJUST:
            raise ModelInputError(f"Unknown THOR shape_adjust {adjust!r}; valid: crop, pad")
        self.shape_adjust = adjust
        self.fill_value = float(options.pop("fill_value", 0.0))
        self.shape_tol_px = self._positive_int("shape_tol_px", options.pop("shape_tol_px", d("shape_tol_px")), 0)
        self.max_native_side = self._positive_int("max_native_side", options.pop("max_native_side", d("max_native_side")))
        self.max_native_tokens = self._positive_int(
            "max_native_tokens", options.pop("max_native_tokens", d("max_native_tokens")))
        # Fail early when the fixed geometry works for no modality at all.
        errors = []
        for m in self.modalities:
            try:
                self._token_grid(m, self.ground_cover_m)
            except ModelInputError as exc:
                errors.append(exc)
        if len(errors) == len(self.modalities):
            raise ModelInputError(
                f"THOR image_size={self.image_size_}, scale_m={self.scale_m:g}, patch_size={self.patch_size}: "
                f"{errors[0]}"
            )

    def _build(self) -> torch.nn.Module:
        return ThorEncoder(self.cfg)

    def _hf_source(self) -> tuple[str, str]:
        return thor_hf_source(self.variant)

    def output_kinds(self) -> dict:
        return {
            "model_key": thor_model_key(self.variant),
            "grid_type": "feature_map",
            "grid_kind": "thor_group_grid",
            "pooling": "mean",  # over all tokens of all groups (not over the merged grid)
            "cls_removed": False,  # THOR v1 has no CLS token
            "pretrained": self.pretrained,
        }

    def _extract_state(self, obj, path: str) -> tuple[dict, dict]:
        return thor_encoder_state(unwrap_state_dict(obj, path), path)

    @property
    def image_size(self) -> int:
        return self.image_size_

    @property
    def ground_cover_m(self) -> float:
        """Ground cover of a ``fixed``-mode tile: ``scale_m * image_size``."""
        return self.scale_m * self.image_size_

    def model_bands(self, modality: str) -> tuple[str, ...]:
        return tuple(THOR_BAND_NAMES[b] for b in self.input_bands(modality))

    def _token_grid(self, modality: str, ground_cover_m: float) -> TokenGrid:
        return token_grid_for(self.model_bands(modality), float(ground_cover_m), self.patch_size)

    def grid_shape(self, modality: str) -> tuple[int, int, int]:
        token_grid = self._token_grid(self._modality(modality), self.ground_cover_m)
        d = self.cfg.embed_dim * (len(token_grid.groups) if self.group_merge == "concat" else 1)
        return (d, token_grid.grid_side, token_grid.grid_side)

    def _settings(self) -> dict:
        return {
            "variant": self.variant,
            "normalization": self.normalization,
            "patch_size": self.patch_size,
            "scale_m": self.scale_m,
            "ground_cover_m": self.ground_cover_m,
            "group_merge": self.group_merge,
            "resize_mode": self.resize_mode,
            **(
                {
                    "shape_adjust": self.shape_adjust,
                    "fill_value": self.fill_value,
                    "shape_tol_px": self.shape_tol_px,
                    "max_native_side": self.max_native_side,
                    "max_native_tokens": self.max_native_tokens,
                }
                if self.resize_mode == "native_snap"
                else {}
            ),
            # Under bf16 the patch convolutions run in float32 (model.py embed_tokens): other numbers than
            # the bf16 convolutions of earlier versions, so bf16 stores of those are not resumed.
            **({"bf16_patch_embed": "float32"} if self.autocast else {}),
        }

    @property
    def prepares_on_device(self) -> bool:
        """``native_snap`` crops and pads raw values in numpy: only ``fixed`` prepares on the device."""
        return self.resize_mode == "fixed"

    def _normalize(self, x, modality: str, ops=D.NUMPY_OPS) -> tuple[Any, dict]:
        mode = thor_normalization(self.normalization, modality)
        meta: dict[str, Any] = {"normalization": mode, "normalization_requested": self.normalization}
        if modality == "s2":
            if mode == "thor_stats":
                out = ops.s2_zscore(x, THOR_S2_MEAN, THOR_S2_STD)
                meta["normalization_detail"] = "(clip(DN,0,10000)/10000 - thor_mean) / thor_std"
            elif mode == "unit_scale":
                out = ops.s2_unit_scale(x)
                meta["normalization_detail"] = "clip(DN/10000, 0, 1)"
            else:
                out = ops.s2_clean_dn(x)
                meta["normalization_detail"] = "clip(DN, 0, 10000), no scaling"
        else:
            if mode == "thor_stats":
                out, p99 = ops.s1_log1p_p99(x, f"{self.model_id} S1")
                meta["normalization_detail"] = "s1_log1p_p99_joint (rs-embed's shared S1 normaliser, not THOR dB stats)"
                meta["s1_p99_log1p"] = [float(v) for v in p99]
            else:
                out = ops.clean_nonfinite(x)
                meta["normalization_detail"] = "raw linear sigma0, NaN/inf -> 0"
        return out, meta

    def _prepare(self, x, modality: str, ops=D.NUMPY_OPS):
        b, c, h, w = x.shape
        if min(h, w) < self.patch_size:
            raise ModelInputError(
                f"{self.model_id} {modality.upper()}: images of {h}x{w} px are smaller than one "
                f"{self.patch_size}x{self.patch_size} patch (patch_size={self.patch_size}); THOR expects "
                f"~{self.image_size_} px tiles"
            )
        gsds = self.S2_GSDS if modality == "s2" else self.S1_GSDS
        if modality == "s2":
            x = ops.s2_clean_dn(x)  # NaN/inf -> 0 and clip [0, 10000] before any crop/pad
        else:
            x = ops.clean_nonfinite(x)  # NaN/inf -> 0 (the dB check ignores zeros and non-finite alike)
        if self.resize_mode == "native_snap":
            preprocess = thor_native_snap_decision(
                h, w, patch_size=self.patch_size, scale_m=self.scale_m, gsds=gsds, image_size=self.image_size_,
                shape_adjust=self.shape_adjust, shape_tol_px=self.shape_tol_px,
                max_native_side=self.max_native_side, max_native_tokens=self.max_native_tokens,
            )
        else:
            preprocess = {"strategy": "fixed_resize", "reason": "fixed_mode", "raw_input_hw": [h, w],
                          "requested_image_size": self.image_size_, "side": self.image_size_,
                          "ground_cover_m": self.ground_cover_m}
        if preprocess["strategy"] == "native_snap":
            if ops is not D.NUMPY_OPS:  # crops / pads raw values in numpy: prepare() on the host
                raise ModelInputError("THOR resize_mode='native_snap' prepares on the host: use prepare(), "
                                      "not prepare_encoded()")
            side = preprocess["side"]
            if self.shape_adjust == "crop":
                x = P.center_crop_or_pad(x, min(h, w), self.fill_value)
            else:
                x = P.center_crop_or_pad(x, max(h, w), self.fill_value)
            x = P.center_crop_or_pad(x, side, self.fill_value)
        token_grid = self._token_grid(modality, preprocess["ground_cover_m"])  # validates the geometry
        side = preprocess["side"]
        prepared, norm_meta = self._normalize(x, modality, ops)
        ph, pw = prepared.shape[-2:]
        preprocess.update(
            resize_applied=(ph, pw) != (side, side),
            resized_from_hw=[int(ph), int(pw)],
            final_hw=[side, side],
            resize={"mode": "bilinear", "align_corners": False, "antialias": False, "after_normalization": True},
        )
        meta = {
            **norm_meta,
            "variant": self.variant,
            "model_bands": list(self.model_bands(modality)),
            "image_size": side,
            "requested_image_size": self.image_size_,
            "scale_m": self.scale_m,
            "ground_cover_m": float(preprocess["ground_cover_m"]),
            "patch_size": self.patch_size,
            "kernel_resize": "none (native 16x16)" if self.patch_size == self.cfg.patch_embed_kernel
            else "flexivit_pinv_bicubic_antialias",
            "resize_mode": self.resize_mode,
            "preprocess": preprocess,
            "group_merge": self.group_merge,
            "grid_kind": "thor_group_grid",
            "pooling": "mean",
            "pooled_kind": "mean_over_all_tokens",
            "final_norm_applied": False,
            "cls_token": False,
            **token_grid.describe(),
        }
        return prepared, (token_grid, side), meta

    def _forward(self, batch, modality, wanted, forward_args):
        token_grid, side = forward_args
        batch = P.resize_bilinear(batch, side)
        tokens, token_grid = self.model.forward_tokens(
            batch, self.model_bands(modality), token_grid.ground_cover_m, self.patch_size
        )
        outs = {}
        if "pooled" in wanted:
            outs["pooled"] = pool_tokens(tokens.float())  # fp32 mean, also under bf16 autocast
        if "grid" in wanted:
            outs["grid"] = self.tokens_to_grid(tokens, token_grid)
        if "tokens" in wanted:
            outs["tokens"] = tokens
        return outs, {"tokens_shape": [int(tokens.shape[1]), int(tokens.shape[2])]}

    def tokens_to_grid(self, tokens: torch.Tensor, layout=None) -> torch.Tensor:
        """Group-aware grid; ``layout``: the tokens' :class:`TokenGrid` (the keyword keeps its name for
        callers); without it, a square token reshape; else a clear error."""
        if layout is not None:
            return group_grid(tokens, layout, self.group_merge)
        return square_token_grid(tokens)
