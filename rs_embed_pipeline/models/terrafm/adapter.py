"""The TerraFM-B adapter: TerraFM's preprocessing and forward pass on the shared skeleton
(``models/adapters.py``); its ids, bands, options and knobs are in ``spec.py``.
"""

from __future__ import annotations

import torch

from .. import device_prepare as D
from .. import preprocessing as P
from ..adapters import _Adapter
from ..errors import ModelInputError
from .model import TerraFM, TerraFMConfig
from .spec import FAMILY, HF_FILE, HF_REPO, canonical_s2_branch


class TerraFMAdapter(_Adapter):
    """TerraFM-B (``MBZUAI/TerraFM`` / ``TerraFM-B.pth``).

    Options: ``s2_branch`` ``"l2a"`` (default) or ``"l1c"``; ``image_size`` (only the native 224).

    * S2 (12 bands B1..B12 without B10): NaN/inf -> 0, / 10000, clip [0, 1].
    * S1 (VV, VH linear power): the shared log1p / joint-p99 normaliser.
    * Then a bilinear resize to 224 (align_corners False, no antialias), recorded in the metadata.
    * ``s2_branch``: the providers deliver surface reflectance, so the default runs TerraFM's own L2A
      patch embedding (``conv2d_s2_l2a`` + ``s2_l2a_embed``). rs-embed 0.3.1 never sets the model's L2A
      flag and so runs every S2 input through the L1C branch; ``s2_branch="l1c"`` reproduces it.
    * pooled = CLS token after the final norm; grid = final-normed last-block patch tokens
      ``[768, 14, 14]``, both from the same forward pass. ``output="tokens"`` gives all normed tokens
      ``[B, 197, D]`` (CLS first).
    """

    family = FAMILY.name
    cfg: TerraFMConfig

    def _configure(self, arch, options: dict) -> None:
        self.cfg = TerraFMConfig.from_arch(arch)
        self.s2_branch = canonical_s2_branch(options.pop("s2_branch", "l2a"))
        size = options.pop("image_size", self.cfg.img_size)
        if size != self.cfg.img_size:
            raise ModelInputError(
                f"TerraFM runs at its native {self.cfg.img_size} px (learned positional embedding); "
                f"image_size={size!r} is not supported - inputs of any size are resized to {self.cfg.img_size}"
            )

    def _build(self) -> torch.nn.Module:
        return TerraFM(self.cfg)

    def _hf_source(self) -> tuple[str, str]:
        return HF_REPO, HF_FILE

    @property
    def image_size(self) -> int:
        return self.cfg.img_size

    def grid_shape(self, modality: str) -> tuple[int, int, int]:
        self._modality(modality)
        g = self.cfg.grid_size
        return (self.cfg.embed_dim, g, g)

    def _settings(self) -> dict:
        return {"s2_branch": self.s2_branch, "patch_size": self.cfg.patch_size}

    def output_kinds(self) -> dict:
        return {
            "model_key": self.model_id,
            "grid_type": "feature_map",
            "grid_kind": "final_normed_last_block_patch_tokens",
            "pooling": "cls_token",  # the normed CLS token; rs-embed's mean/max only apply to ROI crops
            "cls_removed": True,  # the grid is the patch tokens without the CLS token
            "pretrained": True,
        }

    def model_branch(self, modality: str) -> str:
        return "s1" if self._modality(modality) == "s1" else f"s2_{self.s2_branch}"

    def _prepare(self, x, modality: str, ops=D.NUMPY_OPS):
        b, _, h, w = x.shape
        p = self.cfg.patch_size
        if h < p or w < p:
            raise ModelInputError(
                f"{self.model_id} {modality.upper()}: images of {h}x{w} px are smaller than one "
                f"{p}x{p} patch; TerraFM expects ~{self.cfg.img_size} px tiles"
            )
        meta: dict = {}
        if modality == "s2":
            prepared = ops.s2_unit_scale(x)
            meta["normalization"] = "s2_dn_div10000_clip01"
            meta["s2_branch"] = self.s2_branch
        else:
            prepared, p99 = ops.s1_log1p_p99(x, f"{self.model_id} S1")
            meta["normalization"] = "s1_log1p_p99_joint"
            meta["s1_p99_log1p"] = [float(v) for v in p99]
            meta["s2_branch"] = None
        size = self.cfg.img_size
        meta.update(
            model_branch=self.model_branch(modality),
            image_size=size,
            patch_size=p,
            ground_cover_m=None,  # the input's own extent (TerraFM resizes any tile to 224 px)
            resize={
                "applied": (h, w) != (size, size),
                "from_hw": [h, w],
                "to_hw": [size, size],
                "mode": "bilinear",
                "align_corners": False,
                "antialias": False,
                "after_normalization": True,
                "aspect_changed": h != w,
            },
            pooled_kind="cls_token_after_final_norm",
            grid_kind="final_normed_last_block_patch_tokens",
        )
        return prepared, None, meta

    def _forward(self, batch, modality, wanted, forward_args):
        batch = P.resize_bilinear(batch, self.cfg.img_size)
        tokens = self.model.forward_features(batch, self.model_branch(modality))
        g = self.cfg.grid_size
        outs = {}
        if "pooled" in wanted:
            outs["pooled"] = tokens[:, 0]
        if "grid" in wanted:
            outs["grid"] = TerraFM.tokens_to_grid(tokens, g, g)
        if "tokens" in wanted:
            outs["tokens"] = tokens
        return outs, {"tokens_per_item": int(tokens.shape[1])}


