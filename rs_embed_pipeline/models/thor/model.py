"""THOR 1.0 encoder (FM4CS/THOR-1.0-*), written from the published architecture.

Modules (attribute names = checkpoint key names without the ``encoder.`` prefix):

* ``encoder_slopes``: ALiBi slopes, a persistent buffer, one per head;
* ``ind_patch_embed.patch_embed``: an ``nn.ModuleDict`` of 46 single-band 16x16 stride-16 convs keyed
  by kernel name (``"S2:Red"``, ..., ``"S1:VV"``, ``"S3:Oa01_reflectance"``, ...);
* ``band_embed.group0..9``: fixed (``requires_grad=False``) 1-D sin/cos embeddings of the group index;
* ``blocks``: timm-style pre-norm ViT blocks (LayerNorm eps 1e-6);
* ``norm``: loaded with the checkpoint but **not applied** to the output tokens (rs-embed and the
  fixtures take the raw last-block output).

Forward (eval), for a normalised ``[B, C, H, W]`` batch whose channel ``i`` is THOR band ``bands[i]``:

1. every band is resized (bilinear, align_corners False, no antialias) to ``ground_cover / GSD`` px
   (10 m bands stay, 20 m bands halve at a 10 m input);
2. FlexiViT: the stored 16x16 kernels are resized to ``patch_size`` by the pseudo-inverse of the
   bicubic-antialias resize matrix; the pinv is computed once per patch size and cached;
3. each group's bands are convolved (stride ``patch_size``) and averaged ("subsetmean"); the average
   is folded into one multi-channel convolution per group (same numbers, one conv call);
4. every token of a group gets ``[sincos(patch_size*GSD / (ref_patch 4 * 10 m)) | band_embed[group]]``;
5. tokens are concatenated in model group order (no CLS) and run through the blocks with a 2-D ALiBi
   bias ``-slope_h * dist`` between patch centres (metres / max(patch_size*GSD)), passed to
   ``F.scaled_dot_product_attention`` as ``attn_mask``; the distance matrix is cached per geometry.

Batches of same-size images run in one forward pass.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass, fields
from fractions import Fraction
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelInputError
from ..layers import Block, EncoderConfig, check_arch_keys, resolved
from .spec import (  # noqa: F401 - re-exported: the THOR vocabulary lives in the torch-free spec module
    GROUP_MERGE_ALIASES,
    GROUP_MERGES,
    THOR_VARIANT_ALIASES,
    THOR_VARIANTS,
    canonical_group_merge,
    canonical_thor_variant,
)

# --------------------------------------------------------------------------------------------
# Band table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThorBand:
    name: str  # THOR band name, e.g. "S2:Red", "S1:IW-VV"
    kernel: str  # patch-embed key it uses, e.g. "S2:Red", "S1:VV"
    gsd: float  # metres
    group: int


def _make_band_table() -> tuple[ThorBand, ...]:
    bands: list[ThorBand] = []
    for name in ("Red", "Green", "Blue", "NIR"):
        bands.append(ThorBand(f"S2:{name}", f"S2:{name}", 10.0, 0))
    for name in ("RE1", "RE2", "RE3", "RE4", "SWIR1", "SWIR2"):
        bands.append(ThorBand(f"S2:{name}", f"S2:{name}", 20.0, 1))
    for name in ("CoastAerosal", "WaterVapor"):  # sic: the checkpoint's spelling
        bands.append(ThorBand(f"S2:{name}", f"S2:{name}", 60.0, 2))
    for group, pols in ((3, ("VH", "VV")), (4, ("HV", "HH"))):
        for mode in ("IW", "EW"):
            for pol in pols:
                bands.append(ThorBand(f"S1:{mode}-{pol}", f"S1:{pol}", 10.0, group))
    for i in range(1, 22):
        bands.append(ThorBand(f"S3:Oa{i:02d}_reflectance", f"S3:Oa{i:02d}_reflectance", 240.0, 5 + (i - 1) // 7))
    for i in range(1, 7):
        bands.append(ThorBand(f"S3:S{i}_reflectance_an", f"S3:S{i}_reflectance_an", 480.0, 8))
    for i in range(7, 10):
        bands.append(ThorBand(f"S3:S{i}_BT_in", f"S3:S{i}_BT_in", 960.0, 9))
    return tuple(bands)


BAND_TABLE: tuple[ThorBand, ...] = _make_band_table()
BANDS: dict[str, ThorBand] = {b.name: b for b in BAND_TABLE}
NUM_GROUPS = 10
GROUP_MEMBERS: tuple[tuple[str, ...], ...] = tuple(
    tuple(b.name for b in BAND_TABLE if b.group == g) for g in range(NUM_GROUPS)
)
# Checkpoint order of the 46 kernels (S1 kernels are shared by IW and EW: VV, VH, HV, HH).
PATCH_EMBED_NAMES: tuple[str, ...] = (
    tuple(b.kernel for b in BAND_TABLE if b.name.startswith("S2:"))
    + ("S1:VV", "S1:VH", "S1:HV", "S1:HH")
    + tuple(b.kernel for b in BAND_TABLE if b.name.startswith("S3:"))
)
MIN_GSD_M = 10.0  # denominator of the patch-size embedding value (the finest THOR GSD)

# --------------------------------------------------------------------------------------------
# Config and variants
# --------------------------------------------------------------------------------------------

VARIANTS: dict[str, dict] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, band_embed_dim=32),
    "small": dict(embed_dim=384, depth=12, num_heads=6, band_embed_dim=64),
    "base": dict(embed_dim=768, depth=12, num_heads=12, band_embed_dim=128),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, band_embed_dim=256),
}
assert tuple(VARIANTS) == THOR_VARIANTS
VARIANT_ALIASES = THOR_VARIANT_ALIASES


def canonical_variant(variant: str) -> str:
    """``tiny|small|base|large`` (see :func:`rs_embed_pipeline.models.thor.spec.canonical_thor_variant`)."""
    return canonical_thor_variant(variant)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes: ``2^(-8(i+1)/n)`` for a power of two ``n``; otherwise the slopes of the
    largest power of two below ``n`` followed by every second slope of twice that."""

    def pow2(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return pow2(num_heads)
    base = 2 ** int(math.floor(math.log2(num_heads)))
    return pow2(base) + pow2(2 * base)[0::2][: num_heads - base]


def sincos_1d(values: np.ndarray, dim: int) -> np.ndarray:
    """MAE-style 1-D sin/cos embedding of scalars: ``[sin(v*omega), cos(v*omega)]``,
    ``omega_k = 1 / 10000^(k / (dim/2))``. float64 in, float64 out ``[len(values), dim]``."""
    if dim % 2:
        raise ValueError(f"sin/cos embedding dimension must be even, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.asarray(values, dtype=np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@dataclass(frozen=True)
class ThorConfig(EncoderConfig):
    band_embed_dim: int = 128
    prod_embed_dim: int = 0
    patch_size_embed_dim: int | None = None  # default: embed_dim - band_embed_dim - prod_embed_dim
    layer_norm_eps: float = 1e-6
    patch_embed_kernel: int = 16
    flexivit_ref_patch_size: int = 4
    variant: str | None = "base"

    def __post_init__(self) -> None:
        pse_dim = self.patch_size_embed_dim
        if pse_dim is None:
            pse_dim = self.embed_dim - self.band_embed_dim - self.prod_embed_dim
            object.__setattr__(self, "patch_size_embed_dim", pse_dim)
        if self.prod_embed_dim != 0:
            raise ModelInputError("THOR prod_embed_dim must be 0 (the released models have embed_prod=False)")
        if pse_dim + self.band_embed_dim != self.embed_dim:
            raise ModelInputError(
                f"THOR patch_size_embed_dim ({self.patch_size_embed_dim}) + band_embed_dim "
                f"({self.band_embed_dim}) must equal embed_dim ({self.embed_dim})"
            )

    @property
    def slopes(self) -> list[float]:
        return alibi_slopes(self.num_heads)

    @classmethod
    def for_variant(cls, variant: str = "base") -> ThorConfig:
        v = canonical_variant(variant)
        return cls(**VARIANTS[v], variant=v)

    @classmethod
    def from_arch(cls, arch: dict | None, variant: str = "base") -> ThorConfig:
        """Build from a fixture ``case.json`` "arch" object; ``None`` gives the released ``variant``.

        Fixed facts of the released models given in ``arch`` (46 kernels, 10 groups, no CLS, the
        ALiBi slopes) are checked rather than configurable."""
        if arch is None:
            return cls.for_variant(variant)
        if not isinstance(arch, dict):
            raise ModelInputError(f"arch must be a dict or None, got {type(arch).__name__}")
        names = {f.name for f in fields(cls)} - {"variant"}
        checked = {"num_patch_embeds", "num_groups", "cls_token", "encoder_slopes"}
        ignored = {"full_size_reference", "encoder_slopes_rule", "band_embed_rule", "patch_size_embed_rule"}
        check_arch_keys(arch, names | checked | ignored, "THOR")
        cfg = cls(**{k: v for k, v in arch.items() if k in names}, variant=None)
        if arch.get("num_patch_embeds", len(PATCH_EMBED_NAMES)) != len(PATCH_EMBED_NAMES):
            raise ModelInputError(f"THOR has {len(PATCH_EMBED_NAMES)} patch embeddings, arch says {arch['num_patch_embeds']}")
        if arch.get("num_groups", NUM_GROUPS) != NUM_GROUPS:
            raise ModelInputError(f"THOR has {NUM_GROUPS} band groups, arch says {arch['num_groups']}")
        if arch.get("cls_token", False):
            raise ModelInputError("THOR v1 has no CLS token (cls_token_type='pooled')")
        if "encoder_slopes" in arch and not np.allclose(arch["encoder_slopes"], cfg.slopes, rtol=1e-6, atol=0):
            raise ModelInputError(f"arch encoder_slopes {arch['encoder_slopes']} differ from the ALiBi rule {cfg.slopes}")
        return cfg


# --------------------------------------------------------------------------------------------
# Token grid (pure geometry, cached)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupTokens:
    """One band group's tokens: its bands, resampled side and ``num_patch x num_patch`` token grid."""

    index: int
    members: tuple[str, ...]  # THOR band names present, in model group order
    kernels: tuple[str, ...]
    gsd: float
    side_px: int  # per-band resampled side: ground_cover / gsd
    patch_size: int
    num_patch: int  # tokens per side

    @property
    def name(self) -> str:
        return f"group{self.index}"

    @property
    def n_tokens(self) -> int:
        return self.num_patch**2

    @property
    def patch_size_embed_value(self) -> float:
        return self.patch_size * self.gsd


@dataclass(frozen=True)
class TokenGrid:
    """The token geometry of one input: its band groups, in model order, at one ground cover and
    patch size (``describe()``: the keys the embedding metadata stores)."""

    groups: tuple[GroupTokens, ...]
    ground_cover_m: float
    patch_size: int

    @property
    def n_tokens(self) -> int:
        return sum(g.n_tokens for g in self.groups)

    @property
    def grid_side(self) -> int:
        return max(g.num_patch for g in self.groups)

    @property
    def group_patch_sizes(self) -> tuple[int, ...]:
        return tuple(g.num_patch for g in self.groups)

    @property
    def groups_used(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def describe(self) -> dict:
        return {
            "ground_cover_m": self.ground_cover_m,
            "patch_size": self.patch_size,
            "groups_used": list(self.groups_used),
            "group_patch_sizes": list(self.group_patch_sizes),
            "group_members": {g.name: list(g.members) for g in self.groups},
            "group_gsd_m": {g.name: g.gsd for g in self.groups},
            "tokens_per_item": self.n_tokens,
        }


def _as_fraction(value: float) -> Fraction:
    return Fraction(value).limit_denominator(10**6)


@functools.lru_cache(maxsize=64)
def token_grid_for(bands: tuple[str, ...], ground_cover_m: float, patch_size: int) -> TokenGrid:
    """Groups, per-band sizes and token grids for ``bands`` at ``ground_cover_m`` and ``patch_size``.

    Raises ``ModelInputError`` when a group cannot be tiled exactly: the ground cover must be a
    positive multiple of ``patch_size * GSD`` for every group (rs-embed asserts the same)."""
    unknown = [b for b in bands if b not in BANDS]
    if unknown:
        raise ModelInputError(f"Bands not implemented in THOR: {unknown}; known: {sorted(BANDS)}")
    if len(set(bands)) != len(bands):
        raise ModelInputError(f"Duplicate THOR bands in {list(bands)}")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ModelInputError(f"THOR patch_size must be a positive integer, got {patch_size!r}")
    if not ground_cover_m > 0:
        raise ModelInputError(f"THOR ground cover must be positive, got {ground_cover_m!r}")
    gc = _as_fraction(ground_cover_m)
    present = set(bands)
    groups = []
    for g, members in enumerate(GROUP_MEMBERS):
        used = tuple(m for m in members if m in present)
        if not used:
            continue
        gsd = BANDS[used[0]].gsd
        side = gc / _as_fraction(gsd)
        cell = _as_fraction(patch_size * gsd)
        n = gc / cell
        if side.denominator != 1 or n.denominator != 1 or n < 1:
            raise ModelInputError(
                f"THOR cannot tile a {float(gc):g} m ground cover with patch_size={patch_size} for "
                f"group{g} ({gsd:g} m bands {list(used)}): the ground cover (scale_m * image side) must "
                f"be a positive multiple of patch_size * GSD = {float(cell):g} m, so the THOR token "
                "grid (grid and pooled output) is unavailable for this configuration. Use the default "
                "model/input settings (image_size 288, patch_size 16, scale_m 10), a larger image, a "
                "smaller patch_size, or an image side that is a multiple of patch_size * GSD / scale_m."
            )
        groups.append(
            GroupTokens(
                index=g,
                members=used,
                kernels=tuple(BANDS[m].kernel for m in used),
                gsd=gsd,
                side_px=int(side),
                patch_size=patch_size,
                num_patch=int(n),
            )
        )
    if not groups:
        raise ModelInputError("No THOR bands given")
    return TokenGrid(groups=tuple(groups), ground_cover_m=float(gc), patch_size=patch_size)


# --------------------------------------------------------------------------------------------
# FlexiViT pseudo-inverse kernel resize
# --------------------------------------------------------------------------------------------


def pi_resize_matrix(old: int, new: int) -> torch.Tensor:
    """``[old*old, new*new]`` float64: row j is the one-hot 16x16 basis image j resized to
    ``new x new`` with bicubic interpolation and antialiasing (CPU)."""
    basis = torch.eye(old * old, dtype=torch.float64, device="cpu").reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bicubic", align_corners=False, antialias=True)
    return resized.reshape(old * old, new * new)


def pi_resize_pinv(old: int, new: int) -> torch.Tensor:
    """``pinv(M)``, ``[new*new, old*old]`` float64, so that ``w_new = pinv(M) @ w_old``."""
    return torch.linalg.pinv(pi_resize_matrix(old, new))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class IndPatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, kernel: int) -> None:
        super().__init__()
        self.patch_embed = nn.ModuleDict(
            {name: nn.Conv2d(1, embed_dim, kernel_size=kernel, stride=kernel) for name in PATCH_EMBED_NAMES}
        )


class ThorEncoder(nn.Module):
    """THOR v1 encoder; ``state_dict()`` equals the checkpoint's ``encoder.*`` entries (prefix
    stripped, decoder keys excluded), in the same key order."""

    _CACHE_SIZE = 8
    _BIAS_CACHE_SIZE = 4

    def __init__(self, cfg: ThorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ThorConfig()
        self.cfg = cfg
        d = cfg.embed_dim
        self.register_buffer("encoder_slopes", torch.tensor(cfg.slopes, dtype=torch.float32), persistent=True)
        self.ind_patch_embed = IndPatchEmbed(d, cfg.patch_embed_kernel)
        self.band_embed = nn.ParameterDict(
            {f"group{i}": nn.Parameter(torch.zeros(cfg.band_embed_dim), requires_grad=False) for i in range(NUM_GROUPS)}
        )
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)  # loaded, never applied (see module doc)
        self._pinv_cache: dict[tuple[int, str], torch.Tensor] = {}
        self._dist_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bias_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def reset_parameters(self) -> None:
        """Random init as in the reference; the fixed band embeddings get their sin/cos values."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        table = sincos_1d(np.arange(NUM_GROUPS), self.cfg.band_embed_dim).astype(np.float32)
        with torch.no_grad():
            for i in range(NUM_GROUPS):
                p = self.band_embed[f"group{i}"]
                if not p.is_meta:
                    p.copy_(torch.from_numpy(table[i]))

    # -- cached helpers ------------------------------------------------------------------------

    def _pinv(self, patch_size: int, device: torch.device) -> torch.Tensor:
        key = (patch_size, str(device))
        pinv = self._pinv_cache.get(key)
        if pinv is None:
            with torch.inference_mode(False), torch.no_grad():
                pinv = pi_resize_pinv(self.cfg.patch_embed_kernel, patch_size).to(device=device, dtype=torch.float32)
            self._pinv_cache[key] = pinv
        return pinv

    def _distances(self, token_grid: TokenGrid, device: torch.device) -> torch.Tensor:
        key = (tuple((g.num_patch, g.patch_size, g.gsd) for g in token_grid.groups), str(device))
        dist = self._dist_cache.get(key)
        if dist is None:
            with torch.inference_mode(False), torch.no_grad():
                pts = []
                for g in token_grid.groups:
                    line = (torch.arange(g.num_patch, dtype=torch.float64) * g.patch_size + g.patch_size / 2) * g.gsd
                    pts.append(torch.cartesian_prod(line, line).reshape(-1, 2))
                points = torch.cat(pts) / max(g.patch_size * g.gsd for g in token_grid.groups)
                dist = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
                dist = dist.to(device=device, dtype=torch.float32)
            self._dist_cache[key] = dist
            while len(self._dist_cache) > self._CACHE_SIZE:
                self._dist_cache.popitem(last=False)
        return dist

    def alibi_bias(self, token_grid: TokenGrid, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[1, heads, N, N]`` additive attention bias ``-slope_h * distance``, computed in float32
        and cached per geometry and ``dtype`` (the attention's: bf16 under autocast, so that the
        12 blocks do not each cast a 12 x 1620 x 1620 matrix at patch 8)."""
        key = (tuple((g.num_patch, g.patch_size, g.gsd) for g in token_grid.groups), str(device), dtype,
               self.encoder_slopes._version)  # a reloaded slopes buffer invalidates the entry
        bias = self._bias_cache.get(key)
        if bias is None:
            dist = self._distances(token_grid, device)
            with torch.inference_mode(False), torch.no_grad():
                slopes = self.encoder_slopes.detach().to(device=device, dtype=torch.float32)
                bias = (-slopes[:, None, None] * dist).unsqueeze(0).to(dtype)
            self._bias_cache[key] = bias
            while len(self._bias_cache) > self._BIAS_CACHE_SIZE:
                self._bias_cache.popitem(last=False)
        return bias

    def group_kernel(self, group: GroupTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``[D, k, p, p]`` kernel and ``[D]`` bias computing the mean of the group's ``k``
        per-band convolutions (PI-resized to the group's patch size)."""
        convs = [self.ind_patch_embed.patch_embed[name] for name in group.kernels]
        k = len(convs)
        weight = torch.cat([c.weight for c in convs], dim=1)  # [D, k, K, K]
        bias = torch.stack([c.bias for c in convs]).mean(0)
        p, kern = group.patch_size, self.cfg.patch_embed_kernel
        if p != kern:
            pinv = self._pinv(p, weight.device).to(weight.dtype)
            d = weight.shape[0]
            # float32 even under bf16 autocast: the pinv resize amplifies rounding errors
            with torch.autocast(device_type=weight.device.type, enabled=False):
                weight = (weight.reshape(d * k, kern * kern) @ pinv.T).reshape(d, k, p, p)
        return weight / k, bias

    # -- forward -------------------------------------------------------------------------------

    def embed_tokens(self, x: torch.Tensor, bands: Sequence[str], token_grid: TokenGrid) -> torch.Tensor:
        index = {b: i for i, b in enumerate(bands)}
        d = self.cfg.embed_dim
        pse_dim = resolved(self.cfg.patch_size_embed_dim, "patch_size_embed_dim")
        parts = []
        for g in token_grid.groups:
            xg = x[:, [index[m] for m in g.members]]
            if xg.shape[-1] != g.side_px or xg.shape[-2] != g.side_px:
                xg = F.interpolate(xg, size=(g.side_px, g.side_px), mode="bilinear", align_corners=False, antialias=False)
            weight, bias = self.group_kernel(g)
            # float32 even under bf16 autocast: bf16 convolution kernels differ between CPUs (on an AMX
            # Xeon the patch-16 kernels gave pooled cosine 0.92 to fp32; float32 here: 0.99999) and
            # GPUs have their own; the patch embedding is ~1 % of the model's multiply-adds.
            with torch.autocast(device_type=xg.device.type, enabled=False):
                tok = F.conv2d(xg.float(), weight.float(), bias.float(), stride=g.patch_size)
            tok = tok.flatten(2).transpose(1, 2)  # [B, n*n, D]
            value = g.patch_size_embed_value / (self.cfg.flexivit_ref_patch_size * MIN_GSD_M)
            pse = torch.from_numpy(sincos_1d(np.array([value]), pse_dim)[0].astype(np.float32))
            aux = torch.cat([pse.to(tok.device), self.band_embed[g.name].to(torch.float32)])
            assert aux.shape[0] == d
            parts.append(tok.float() + aux)  # the residual stream stays float32 under autocast
        return torch.cat(parts, dim=1)

    def forward_tokens(
        self,
        x: torch.Tensor,
        bands: Sequence[str],
        ground_cover_m: float,
        patch_size: int = 16,
        out_indices: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor | list[torch.Tensor], TokenGrid]:
        """Last-block tokens ``[B, N, D]`` (no final norm; group order, row-major) and their :class:`TokenGrid`.

        With ``out_indices`` a list of the selected blocks' outputs is returned instead."""
        if x.ndim != 4:
            raise ModelInputError(f"THOR expects [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != len(bands):
            raise ModelInputError(f"THOR got {x.shape[1]} channels for {len(bands)} bands {list(bands)}")
        if x.shape[-1] != x.shape[-2]:
            raise ModelInputError(f"THOR expects square images, got {x.shape[-2]}x{x.shape[-1]}")
        token_grid = token_grid_for(tuple(bands), float(ground_cover_m), int(patch_size))
        h = self.embed_tokens(x, bands, token_grid)
        dev = h.device.type
        attn_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        bias = self.alibi_bias(token_grid, h.device, attn_dtype)
        wanted = None
        if out_indices is not None:
            wanted = {i % len(self.blocks) for i in out_indices}
        outs = []
        for i, blk in enumerate(self.blocks):
            h = blk(h, bias)
            if wanted is not None and i in wanted:
                outs.append(h)
        return (outs if wanted is not None else h), token_grid

    def forward(self, x: torch.Tensor, bands: Sequence[str], ground_cover_m: float, patch_size: int = 16) -> torch.Tensor:
        return self.forward_tokens(x, bands, ground_cover_m, patch_size)[0]


def build_encoder(arch: dict | None = None, variant: str | None = None) -> ThorEncoder:
    """The registry's model builder: a random-init encoder of ``variant`` (default base), or of a
    reduced ``arch`` (a fixture's case.json "arch"). State-dict keys: the checkpoint's ``encoder.*``."""
    return ThorEncoder(ThorConfig.from_arch(arch, variant or "base"))


# --------------------------------------------------------------------------------------------
# Outputs from tokens
# --------------------------------------------------------------------------------------------

def pool_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Pooled THOR embedding: the mean over all tokens of all groups (not over the merged grid)."""
    return tokens.mean(dim=1)


def group_grid(tokens: torch.Tensor, token_grid: TokenGrid, merge: str = "mean") -> torch.Tensor:
    """Group-aware grid ``[B, D (or D*groups for concat), S, S]``; coarser groups are bilinearly
    upsampled (align_corners False) to the finest group's ``S x S``."""
    merge = canonical_group_merge(merge)
    b, n, d = tokens.shape
    if n != token_grid.n_tokens:
        raise ModelInputError(f"THOR token count {n} does not match the token grid ({token_grid.n_tokens})")
    side = token_grid.grid_side
    grids, start = [], 0
    for g in token_grid.groups:
        t = tokens[:, start : start + g.n_tokens]
        start += g.n_tokens
        grid = t.reshape(b, g.num_patch, g.num_patch, d).permute(0, 3, 1, 2)
        if g.num_patch != side:
            grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
        grids.append(grid)
    if merge == "concat":
        return torch.cat(grids, dim=1)
    stacked = torch.stack(grids, dim=0)
    return stacked.sum(0) if merge == "sum" else stacked.mean(0)


def square_token_grid(tokens: torch.Tensor) -> torch.Tensor:
    """Fallback grid when no :class:`TokenGrid` is known: a square token count reshaped row-major (a
    leading CLS token is dropped when ``N - 1`` is square)."""
    b, n, d = tokens.shape
    for skip in (0, 1):
        side = math.isqrt(n - skip)
        if n - skip > 0 and side * side == n - skip:
            return tokens[:, skip:].reshape(b, side, side, d).permute(0, 3, 1, 2)
    raise ModelInputError(
        f"THOR grid output is unavailable for {n} tokens without a token grid (not a square); "
        "use output='pooled' instead."
    )
