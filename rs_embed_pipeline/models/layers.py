"""Transformer building blocks shared by TerraFM-B and THOR.

Attribute names are the checkpoint key names (timm ``vision_transformer.Block`` structure):
``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``.

Attention always goes through ``F.scaled_dot_product_attention`` (fused kernels on CPU and CUDA).
An additive float bias (THOR's ALiBi matrix) is passed as ``attn_mask``; it is cast to the query
dtype so that bf16 autocast works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelInputError


@dataclass(frozen=True)
class EncoderConfig:
    """The ViT encoder's size (released base models), the first fields of TerraFMConfig and ThorConfig."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def resolved(value: int | None, name: str) -> int:
    """A config field whose ``None`` default its ``__post_init__`` replaced (typed as an int)."""
    if value is None:
        raise ModelInputError(f"config field {name} has no value (its default is set in __post_init__)")
    return value


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if attn_bias is not None and attn_bias.dtype != q.dtype:
            attn_bias = attn_bias.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as in both reference models
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_bias)
        return x + self.mlp(self.norm2(x))


def check_arch_keys(arch: dict, allowed: set[str], model: str) -> None:
    unknown = sorted(set(arch) - allowed)
    if unknown:
        raise ModelInputError(
            f"Unknown {model} arch key(s) {unknown}; valid keys: {sorted(allowed)}"
        )
