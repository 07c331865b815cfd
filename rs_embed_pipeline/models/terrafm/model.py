"""TerraFM-B backbone (MBZUAI/TerraFM, ``TerraFM-B.pth``), written from the published architecture.

ViT-B/16 (768 wide, 12 blocks, 12 heads, LayerNorm eps 1e-6) with a multi-modal patch embedding:

* three 16x16 stride-16 convolutions into a 3x-wide space (``attn_dim = 3 * embed_dim``):
  ``conv2d_s2_l2a`` (12 bands), ``conv2d_s2_l1c`` (12 bands), ``conv2d_s1`` (VV, VH);
* a learned additive vector per branch (``s2_l2a_embed``, ``s2_l1c_embed``, ``s1_embed``);
* ``TokenProjection``: ``proj1`` (no bias) -> ``norm_input`` (LayerNorm, **eps 1e-5**, unlike every
  other norm) -> ``proj2`` -> ``proj3`` down to ``embed_dim``; no activations in between;
* ``[CLS] + patch tokens`` plus a learned ``pos_embed`` (CLS included), the blocks, final ``norm``.

The branch is chosen explicitly (``"s2_l2a"``, ``"s2_l1c"``, ``"s1"``). rs-embed 0.3.1 never sets the
L2A flag and so runs every 12-band input through the L1C branch; the adapter defaults to ``s2_l2a``
because the providers deliver surface reflectance (L2A) - see ``TerraFMAdapter``.

``forward_features`` returns all tokens after the final norm, so the pooled CLS and the patch-token
grid come from one forward pass (rs-embed runs the model twice for the same numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelInputError
from ..layers import Block, EncoderConfig, check_arch_keys, resolved

BRANCHES = ("s2_l2a", "s2_l1c", "s1")


@dataclass(frozen=True)
class TerraFMConfig(EncoderConfig):
    patch_size: int = 16
    img_size: int = 224
    attn_dim: int | None = None  # default 3 * embed_dim ("Panopticon design")
    in_chans_s2: int = 12
    in_chans_s1: int = 2
    layer_norm_eps: float = 1e-6
    token_projection_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.attn_dim is None:
            object.__setattr__(self, "attn_dim", 3 * self.embed_dim)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @classmethod
    def from_arch(cls, arch: dict | None) -> TerraFMConfig:
        """Build from a fixture ``case.json`` "arch" object (or ``None`` for the released size)."""
        if arch is None:
            return cls()
        if not isinstance(arch, dict):
            raise ModelInputError(f"arch must be a dict or None, got {type(arch).__name__}")
        names = {f.name for f in fields(cls)}
        check_arch_keys(arch, names | {"full_size_reference"}, "TerraFM")
        kwargs = {k: v for k, v in arch.items() if k in names}
        return cls(**kwargs)


def patchify_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A stride = kernel patch convolution as one matmul: ``[B, C, H, W]`` -> ``[B, h*w, out]``
    (row-major). The same sums as ``conv(x).flatten(2).transpose(1, 2)`` (float32 noise apart),
    several times faster on CPU for TerraFM's 12 -> 2304 channel 16x16 kernel."""
    b, c, h, w = x.shape
    p = conv.kernel_size[0]
    gh, gw = h // p, w // p
    patches = x[:, :, : gh * p, : gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
    return F.linear(patches.reshape(b, gh * gw, c * p * p), conv.weight.reshape(conv.out_channels, -1), conv.bias)


class TokenProjection(nn.Module):
    def __init__(self, attn_dim: int, embed_dim: int, eps: float) -> None:
        super().__init__()
        self.proj1 = nn.Linear(attn_dim, attn_dim, bias=False)
        self.norm_input = nn.LayerNorm(attn_dim, eps=eps)
        self.proj2 = nn.Linear(attn_dim, attn_dim)
        self.proj3 = nn.Linear(attn_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj3(self.proj2(self.norm_input(self.proj1(x))))


class TerraFMPatchEmbed(nn.Module):
    def __init__(self, cfg: TerraFMConfig) -> None:
        super().__init__()
        a, p = resolved(cfg.attn_dim, "attn_dim"), cfg.patch_size
        # Parameter registration order = checkpoint key order.
        self.s2_l2a_embed = nn.Parameter(torch.zeros(1, a))
        self.s2_l1c_embed = nn.Parameter(torch.zeros(1, a))
        self.s1_embed = nn.Parameter(torch.zeros(1, a))
        self.conv2d_s2_l2a = nn.Conv2d(cfg.in_chans_s2, a, kernel_size=p, stride=p)
        self.conv2d_s2_l1c = nn.Conv2d(cfg.in_chans_s2, a, kernel_size=p, stride=p)
        self.conv2d_s1 = nn.Conv2d(cfg.in_chans_s1, a, kernel_size=p, stride=p)
        self.projection = TokenProjection(a, cfg.embed_dim, cfg.token_projection_norm_eps)

    def forward(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        if branch == "s2_l2a":
            conv, vec = self.conv2d_s2_l2a, self.s2_l2a_embed
        elif branch == "s2_l1c":
            conv, vec = self.conv2d_s2_l1c, self.s2_l1c_embed
        elif branch == "s1":
            conv, vec = self.conv2d_s1, self.s1_embed
        else:
            raise ModelInputError(f"Unknown TerraFM branch {branch!r}; valid: {BRANCHES}")
        if x.shape[1] != conv.in_channels:
            raise ModelInputError(
                f"TerraFM branch {branch!r} expects {conv.in_channels} channels, got {x.shape[1]}"
            )
        tokens = patchify_conv(x, conv)  # [B, h*w, attn_dim], row-major
        return self.projection(tokens + vec)


class TerraFM(nn.Module):
    """TerraFM backbone; ``state_dict()`` keys and shapes equal the released ``TerraFM-B.pth``."""

    def __init__(self, cfg: TerraFMConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TerraFMConfig()
        self.cfg = cfg
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid_size**2, d))
        self.patch_embed = TerraFMPatchEmbed(cfg)
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def reset_parameters(self) -> None:
        """Random init as in the reference (only matters for random-weight runs and tests)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, branch: str = "s2_l2a") -> torch.Tensor:
        """All tokens ``[B, 1 + h*w, D]`` (CLS first) after the final norm."""
        b, _, h, w = x.shape
        p = self.cfg.patch_size
        gh, gw = h // p, w // p
        if gh * gw + 1 != self.pos_embed.shape[1]:
            n = int(round(math.sqrt(self.pos_embed.shape[1] - 1)))
            raise ModelInputError(
                f"TerraFM expects {n * p}x{n * p} inputs (positional embedding for {n}x{n} patches), "
                f"got {h}x{w}; the adapter resizes inputs to {n * p} px"
            )
        x = self.patch_embed(x, branch)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor, branch: str = "s2_l2a") -> torch.Tensor:
        """Pooled embedding: the CLS token after the final norm, ``[B, D]``."""
        return self.forward_features(x, branch)[:, 0]

    @staticmethod
    def tokens_to_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Patch tokens (CLS dropped) to ``[B, D, h, w]``, row-major."""
        b, _, d = tokens.shape
        return tokens[:, 1:].reshape(b, h, w, d).permute(0, 3, 1, 2)


def build_terrafm(arch: dict | None = None, variant: str | None = None) -> TerraFM:
    """The registry's model builder: a random-init TerraFM-B, or a reduced ``arch`` (a fixture's
    case.json "arch"); TerraFM has one size, so ``variant`` is unused. State-dict keys: ``TerraFM-B.pth``'s."""
    return TerraFM(TerraFMConfig.from_arch(arch))
