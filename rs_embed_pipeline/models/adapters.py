"""Model adapters: raw provider arrays in, pooled / grid embeddings and metadata out.

``TerraFMAdapter`` and ``ThorAdapter`` share one skeleton (``_Adapter``): option validation, weights
(local file, HF cache first, or explicitly opted-in random init), device / precision / batching, and
``embed()``. The model-specific parts are the preprocessing and the forward pass.

Batching: ``embed()`` takes a whole ``[B, C, H, W]`` batch, normalises it image by image in numpy and
runs the model on chunks of ``batch_size`` images (true batched forwards for both models). Results
equal the one-image-at-a-time results within float32 noise.

Precision: ``fp32`` (default) or ``bf16``: autocast to bfloat16 on CUDA, and on CPUs with native bf16
(``avx512_bf16`` / AMX, see ``runtime.py``); on other CPUs the adapter warns and runs fp32.
``meta["precision"]`` and ``meta["autocast"]`` say what ran, and ``describe()["precision"]`` (so the
store fingerprint) follows what ran. The residual stream, layer norms, pooling, THOR's kernel
resize and THOR's patch convolutions stay float32 under autocast. float32 is IEEE float32 whatever the process's global setting: the
forward passes run inside ``runtime.exact_float32()`` (no bf16 inside float32 matmuls on AMX CPUs,
no TF32 on CUDA; the caller's setting is back afterwards), recorded as
``meta["float32_matmul_precision"] = "highest"``.

Two steps: ``prepare(raw, modality)`` (validation and numpy preprocessing, thread-safe, no model)
and ``run(prepared, output)`` (the forward pass); ``embed()`` is both. The worker prepares the next
batch on a reader thread while the model runs. On CUDA, batches reach the device through pinned
memory on a side stream, one chunk ahead (``runtime.DeviceFeeder``). ``compile=True`` compiles the
transformer blocks with ``torch.compile`` (first batches slower; recorded in the metadata).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import knobs
from . import preprocessing as P
from . import runtime
from .errors import ModelInputError
from .layers import EncoderConfig
from .terrafm import TerraFM, TerraFMConfig
from .thor import (
    ThorConfig,
    ThorEncoder,
    canonical_group_merge,
    canonical_variant,
    group_grid,
    plan_layout,
    pool_tokens,
    square_token_grid,
)
from .weights import (
    expected_nbytes,
    file_sha256,
    load_strict,
    read_checkpoint,
    resolve_weights,
    thor_encoder_state,
    unwrap_state_dict,
)

log = logging.getLogger("rs_embed_pipeline.models")

RANDOM_WEIGHTS_LABEL = "RANDOM (allow_random_weights=True) - NOT PRETRAINED"
NOT_PRETRAINED_LABEL = "RANDOM (pretrained=False) - NOT PRETRAINED"
MODEL_SOURCE = "rs_embed_pipeline native PyTorch re-implementation (conformance-tested against rs-embed 0.3.1)"
OUTPUTS = {
    "pooled": ("pooled",),
    "grid": ("grid",),
    "both": ("pooled", "grid"),
    "tokens": ("tokens",),
    "all": ("pooled", "grid", "tokens"),
}
COMMON_OPTIONS = ("batch_size", "precision", "allow_random_weights", "cache_dir", "compile")
PRECISIONS = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}


@dataclass
class EmbeddingOutput:
    """``pooled [B, D]``, ``grid [B, D', h, w]``, ``tokens [B, N, D]`` (None when not asked) and
    ``meta``: every setting that shaped the numbers (JSON-serialisable)."""

    pooled: np.ndarray | None
    grid: np.ndarray | None
    meta: dict = field(default_factory=dict)
    tokens: np.ndarray | None = None


@dataclass
class PreparedBatch:
    """``prepare()``'s result: the normalised numpy batch and what ``run()`` needs to embed it."""

    x: np.ndarray
    modality: str
    plan: Any
    meta: dict
    raw_shape: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def resolve_device(device: str | torch.device | None) -> torch.device:
    d = "auto" if device is None else str(device).strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelInputError(f"device={device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device(d)
    raise ModelInputError(f"Unknown device {device!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")


def parse_output(output: str) -> tuple[str, ...]:
    key = str(output).strip().lower()
    if key not in OUTPUTS:
        raise ModelInputError(f"Unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
    return OUTPUTS[key]


class _Adapter:
    model_id: str = ""
    family: str = ""
    modalities: tuple[str, ...] = ("s2", "s1")
    MODEL_OPTIONS: tuple[str, ...] = ()
    pretrained: bool = True  # THOR's option; False with no checkpoint = random init, no hub lookup
    cfg: EncoderConfig          # set by _configure (each adapter's own config class)
    weights: dict[str, Any]     # set by _load_model: where the weights came from (metadata)

    def __init__(self, *, checkpoint=None, arch=None, device="auto", **options: Any) -> None:
        unknown = sorted(set(options) - set(self.MODEL_OPTIONS) - set(COMMON_OPTIONS))
        if unknown:
            raise ModelInputError(
                f"Unknown option(s) {unknown} for {self.model_id}; valid options: "
                f"{sorted(set(self.MODEL_OPTIONS) | set(COMMON_OPTIONS))} plus checkpoint, arch, device"
            )
        options = {k: v for k, v in options.items() if v is not None}  # None = the default
        self.device = resolve_device(device)
        prec = str(options.pop("precision", "fp32")).strip().lower()
        if prec not in PRECISIONS:
            raise ModelInputError(f"Unknown precision {prec!r}; valid: fp32, bf16")
        self.precision_requested = PRECISIONS[prec]
        self.precision, self.autocast, self.precision_fallback = runtime.resolve_precision(
            self.precision_requested, self.device, self.model_id)
        compile_ = options.pop("compile", False)
        if not isinstance(compile_, (bool, np.bool_)):
            raise ModelInputError(f"compile must be a bool, got {compile_!r}")
        self.compile = bool(compile_)
        bs = options.pop("batch_size", None)
        if bs is None:
            bs = knobs.default_batch_size(self.family, self.device.type)
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            raise ModelInputError(f"batch_size must be a positive integer, got {bs!r}")
        self.batch_size = int(bs)
        allow_random = options.pop("allow_random_weights", False)
        if not isinstance(allow_random, (bool, np.bool_)):
            raise ModelInputError(f"allow_random_weights must be a bool, got {allow_random!r}")
        self.allow_random_weights = bool(allow_random)
        self.cache_dir = options.pop("cache_dir", None)
        self.checkpoint = checkpoint
        self.arch = arch
        self._configure(arch, options)  # model-specific options; builds self.cfg
        self.model = self._load_model()
        self.bf16_linear_layers = runtime.cast_linear_weights(self.model, self.autocast)
        if self.compile:
            runtime.compile_blocks(self.model)
        self._feeder = runtime.DeviceFeeder(self.device)

    # -- model-specific hooks ------------------------------------------------------------------

    def _configure(self, arch, options: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _hf_source(self) -> tuple[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _extract_state(self, obj, path: str) -> tuple[dict, dict]:
        return unwrap_state_dict(obj, path), {}

    # -- weights -------------------------------------------------------------------------------

    def _load_model(self) -> torch.nn.Module:
        repo, fname = self._hf_source()
        what = f"{self.model_id} ({self._arch_label()})"
        if self.checkpoint is None and (self.allow_random_weights or not self.pretrained):
            model = self._build()
            why = "allow_random_weights=True" if self.allow_random_weights else "pretrained=False"
            self.weights = {
                "weights_source": RANDOM_WEIGHTS_LABEL if self.allow_random_weights else NOT_PRETRAINED_LABEL,
                "random_weights": True,
                "weights_path": None,
                "weights_sha256": None,
                "weights_size_bytes": None,
                "hf_repo": repo,
                "hf_file": fname,
                "hf_cache_dir": None,
                "model_source": MODEL_SOURCE,
            }
            log.warning(
                "%s: RANDOM WEIGHTS (%s) - embeddings are NOT from the pretrained model %s/%s",
                self.model_id, why, repo, fname,
            )
        else:
            found = resolve_weights(self.checkpoint, repo, fname, self.cache_dir)
            with torch.device("meta"):
                model = self._build()
            obj = read_checkpoint(found["path"], expected_nbytes(model), what)
            state, info = self._extract_state(obj, found["path"])
            load_strict(model, state, found["path"], what)
            self.weights = {
                "weights_source": found["source"],
                "random_weights": False,
                "weights_path": found["path"],
                "weights_sha256": file_sha256(found["path"]),
                "weights_size_bytes": int(os.path.getsize(found["path"])),
                "hf_repo": found["hf_repo"] or repo,
                "hf_file": found["hf_file"] or fname,
                "hf_cache_dir": found["hf_cache_dir"],
                "model_source": MODEL_SOURCE,
                **info,
            }
        model.requires_grad_(False)
        return model.to(self.device).eval()

    @property
    def weights_sha256(self) -> str | None:
        return self.weights["weights_sha256"]

    @property
    def random_weights(self) -> bool:
        return bool(self.weights["random_weights"])

    def _arch_label(self) -> str:
        c = self.cfg
        return f"embed_dim={c.embed_dim}, depth={c.depth}, heads={c.num_heads}"

    # -- public API ----------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def image_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_bands(self, modality: str) -> tuple[str, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def grid_shape(self, modality: str) -> tuple[int, int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _modality(self, modality: str) -> str:
        m = P.canonical_modality(modality)
        if m not in self.modalities:
            raise ModelInputError(f"{self.model_id} supports modalities {self.modalities}, got {modality!r}")
        return m

    def _autocast(self):
        return runtime.autocast(self.autocast)

    def _runtime_meta(self) -> dict:
        meta = {
            "device": str(self.device),
            "precision": self.precision,
            "precision_requested": self.precision_requested,
            "autocast": self.autocast,
            "compile": self.compile,
            "batch_size": self.batch_size,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            # run() holds runtime.exact_float32() around the forward passes
            "float32_matmul_precision": runtime.EXACT_FLOAT32,
        }
        if self.precision_fallback:
            meta["precision_fallback"] = self.precision_fallback
        if self.bf16_linear_layers:
            meta["bf16_weights"] = f"{self.bf16_linear_layers} linear layers stored in bf16 (the values autocast uses)"
        if self.device.type == "cpu":
            support = runtime.cpu_bf16_support()
            meta["cpu_capability"] = support["cpu_capability"]
            meta["cpu_bf16_native"] = support["supported"]
        if self.device.type == "cuda":  # exact_float32() switches TF32 off for the forward passes
            meta["cuda_tf32_matmul"] = False
            meta["cudnn_tf32"] = False
        return meta

    def describe(self) -> dict:
        """JSON-serialisable settings and weights information (stable: used in fingerprints)."""
        return {
            "model_id": self.model_id,
            "model_family": self.family,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "modalities": list(self.modalities),
            "input_bands": {m: list(self.input_bands(m)) for m in self.modalities},
            "grid_shape": {m: self._safe_grid_shape(m) for m in self.modalities},
            **self.output_kinds(),
            **self._settings(),
            "device": str(self.device),
            "precision": self.precision,
            "batch_size": self.batch_size,
            "arch": self.cfg.as_dict(),
            **self.weights,
        }

    def _safe_grid_shape(self, modality: str):
        try:
            return list(self.grid_shape(modality))
        except ModelInputError as exc:
            return f"unavailable: {exc}"

    def _settings(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_kinds(self) -> dict:  # pragma: no cover - abstract
        """rs-embed's metadata vocabulary for what the outputs are: ``model_key``, ``grid_type``,
        ``grid_kind``, ``pooling``, ``cls_removed``, ``pretrained``."""
        raise NotImplementedError

    def channel_hint(self) -> str:
        return (
            f"{self.model_id} takes C={len(self.input_bands('s2'))} for S2 (bands {list(self.input_bands('s2'))}) "
            f"or C={len(self.input_bands('s1'))} for S1 (VV, VH); pass modality='s1' for Sentinel-1"
        )

    def embed(self, raw, modality: str = "s2", output: str = "pooled") -> EmbeddingOutput:
        """Embed a batch ``raw`` (``[B, C, H, W]`` provider units, bands ``input_bands(modality)``)."""
        return self.run(self.prepare(raw, modality), output)

    def prepare(self, raw, modality: str = "s2") -> PreparedBatch:
        """Validate and normalise ``raw`` (numpy only, no model: safe on another thread)."""
        modality = self._modality(modality)
        bands = self.input_bands(modality)
        what = f"{self.model_id} {modality.upper()}"
        x = P.as_bchw(raw, bands, what, hint=self.channel_hint())
        if x.shape[0] == 0:
            raise ModelInputError(f"{what}: empty batch (B=0)")
        P.check_has_finite(x, what)
        P.check_modality_units(x, modality, what)
        prepared, plan, meta = self._prepare(x, modality)
        return PreparedBatch(np.ascontiguousarray(prepared, dtype=np.float32), modality, plan, meta, tuple(x.shape))

    def run(self, prepared: PreparedBatch, output: str = "pooled") -> EmbeddingOutput:
        """The forward pass over a prepared batch, in chunks of ``batch_size``."""
        wanted = parse_output(output)
        modality, plan = prepared.modality, prepared.plan
        bands = self.input_bands(modality)
        meta = dict(prepared.meta)
        chunks: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
        extra: dict = {}
        n = len(prepared)
        host_chunks = (prepared.x[s : s + self.batch_size] for s in range(0, n, self.batch_size))
        with runtime.exact_float32():  # whatever the process's float32 precision (terratorch sets "medium")
            for batch in self._feeder.feed(host_chunks):
                with torch.inference_mode(), self._autocast():
                    outs, extra = self._forward(batch, modality, wanted, plan)
                for k in wanted:
                    chunks[k].append(outs[k].float().cpu().numpy())
        result = {k: np.ascontiguousarray(np.concatenate(v, axis=0), dtype=np.float32) for k, v in chunks.items()}
        meta.update(extra)
        full_meta = {
            "model_id": self.model_id,
            "model_family": self.family,
            "modality": modality,
            "input_bands": list(bands),
            "raw_input_shape": list(prepared.raw_shape),
            "output": list(wanted),
            "embed_dim": self.embed_dim,
            "source": None,  # the collection for provider data (the pipeline's run metadata); None for arrays
            **self.output_kinds(),
            **meta,
            **self._runtime_meta(),
            "arch": self.cfg.as_dict(),
            **self.weights,
            "weight_file": self.weights["weights_path"],
            "weight_file_size": self.weights["weights_size_bytes"],
        }
        full_meta["output_shapes"] = {k: list(result[k].shape) for k in wanted}
        return EmbeddingOutput(
            pooled=result.get("pooled"), grid=result.get("grid"), tokens=result.get("tokens"), meta=full_meta
        )

    def _prepare(self, x: np.ndarray, modality: str):  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, batch: torch.Tensor, modality: str, wanted, plan):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={str(self.device)!r}, weights={self.weights['weights_source']!r})"


# ================================================================================================
# TerraFM-B
# ================================================================================================


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

    model_id = "terrafm_b"
    family = "terrafm"
    modalities = ("s2", "s1")
    MODEL_OPTIONS = ("s2_branch", "image_size")
    HF_REPO = "MBZUAI/TerraFM"
    HF_FILE = "TerraFM-B.pth"
    S2_BRANCHES = ("l2a", "l1c")
    cfg: TerraFMConfig

    def _configure(self, arch, options: dict) -> None:
        self.cfg = TerraFMConfig.from_arch(arch)
        branch = str(options.pop("s2_branch", "l2a")).strip().lower()
        branch = branch[3:] if branch.startswith("s2_") else branch
        if branch not in self.S2_BRANCHES:
            raise ModelInputError(f"Unknown TerraFM s2_branch {branch!r}; valid: 'l2a' (default), 'l1c'")
        self.s2_branch = branch
        size = options.pop("image_size", self.cfg.img_size)
        if size != self.cfg.img_size:
            raise ModelInputError(
                f"TerraFM runs at its native {self.cfg.img_size} px (learned positional embedding); "
                f"image_size={size!r} is not supported - inputs of any size are resized to {self.cfg.img_size}"
            )

    def _build(self) -> torch.nn.Module:
        return TerraFM(self.cfg)

    def _hf_source(self) -> tuple[str, str]:
        return self.HF_REPO, self.HF_FILE

    @property
    def image_size(self) -> int:
        return self.cfg.img_size

    def input_bands(self, modality: str) -> tuple[str, ...]:
        return P.TERRAFM_S2_BANDS if self._modality(modality) == "s2" else P.S1_BANDS

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

    def _prepare(self, x: np.ndarray, modality: str):
        b, _, h, w = x.shape
        p = self.cfg.patch_size
        if h < p or w < p:
            raise ModelInputError(
                f"{self.model_id} {modality.upper()}: images of {h}x{w} px are smaller than one "
                f"{p}x{p} patch; TerraFM expects ~{self.cfg.img_size} px tiles"
            )
        meta: dict = {}
        if modality == "s2":
            prepared = P.s2_unit_scale(x)
            meta["normalization"] = "s2_dn_div10000_clip01"
            meta["s2_branch"] = self.s2_branch
        else:
            prepared, p99 = P.s1_log1p_p99(x, f"{self.model_id} S1")
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

    def _forward(self, batch, modality, wanted, plan):
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


# ================================================================================================
# THOR 1.0
# ================================================================================================


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

    family = "thor"
    modalities = ("s2", "s1")
    MODEL_OPTIONS = (
        "normalization",
        "patch_size",
        "image_size",
        "group_merge",
        "scale_m",
        "variant",
        "resize_mode",
        "shape_adjust",
        "fill_value",
        "shape_tol_px",
        "max_native_side",
        "max_native_tokens",
        "pretrained",
    )
    RESIZE_MODES = knobs.THOR_RESIZE_MODES
    SHAPE_ADJUST = knobs.THOR_SHAPE_ADJUST
    S2_GSDS = (10.0, 20.0)
    S1_GSDS = (10.0,)
    cfg: ThorConfig

    def __init__(self, *, checkpoint=None, arch=None, device="auto", **options: Any) -> None:
        self.variant = canonical_variant(options.pop("variant", None) or "base")
        self.model_id = f"thor_1_0_{self.variant}"
        super().__init__(checkpoint=checkpoint, arch=arch, device=device, **options)

    @staticmethod
    def _positive_int(name: str, value, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ModelInputError(f"THOR {name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def _configure(self, arch, options: dict) -> None:
        self.cfg = ThorConfig.from_arch(arch, self.variant)
        d = lambda name: knobs.default("thor", name)  # noqa: E731 - defaults live in the knob table
        self.normalization = knobs.canonical_thor_normalization(options.pop("normalization", d("normalization")))
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
                self._layout(m, self.ground_cover_m)
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
        return knobs.thor_hf_source(self.variant)

    def output_kinds(self) -> dict:
        return {
            "model_key": knobs.thor_model_key(self.variant),
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

    def input_bands(self, modality: str) -> tuple[str, ...]:
        return P.THOR_S2_BANDS if self._modality(modality) == "s2" else P.S1_BANDS

    def model_bands(self, modality: str) -> tuple[str, ...]:
        return tuple(P.THOR_BAND_NAMES[b] for b in self.input_bands(modality))

    def _layout(self, modality: str, ground_cover_m: float):
        return plan_layout(self.model_bands(modality), float(ground_cover_m), self.patch_size)

    def grid_shape(self, modality: str) -> tuple[int, int, int]:
        layout = self._layout(self._modality(modality), self.ground_cover_m)
        d = self.cfg.embed_dim * (len(layout.groups) if self.group_merge == "concat" else 1)
        return (d, layout.grid_side, layout.grid_side)

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
            # Under bf16 the patch convolutions run in float32 (thor.py embed_tokens): other numbers than
            # the bf16 convolutions of earlier versions, so bf16 stores of those are not resumed.
            **({"bf16_patch_embed": "float32"} if self.autocast else {}),
        }

    def _normalize(self, x: np.ndarray, modality: str) -> tuple[np.ndarray, dict]:
        mode = P.thor_normalization(self.normalization, modality)
        meta: dict[str, Any] = {"normalization": mode, "normalization_requested": self.normalization}
        if modality == "s2":
            if mode == "thor_stats":
                out = P.s2_thor_stats(x)
                meta["normalization_detail"] = "(clip(DN,0,10000)/10000 - thor_mean) / thor_std"
            elif mode == "unit_scale":
                out = P.s2_unit_scale(x)
                meta["normalization_detail"] = "clip(DN/10000, 0, 1)"
            else:
                out = P.s2_clean_dn(x)
                meta["normalization_detail"] = "clip(DN, 0, 10000), no scaling"
        else:
            if mode == "thor_stats":
                out, p99 = P.s1_log1p_p99(x, f"{self.model_id} S1")
                meta["normalization_detail"] = "s1_log1p_p99_joint (rs-embed's shared S1 normaliser, not THOR dB stats)"
                meta["s1_p99_log1p"] = [float(v) for v in p99]
            else:
                out = P.clean_nonfinite(x)
                meta["normalization_detail"] = "raw linear sigma0, NaN/inf -> 0"
        return out, meta

    def _prepare(self, x: np.ndarray, modality: str):
        b, c, h, w = x.shape
        if min(h, w) < self.patch_size:
            raise ModelInputError(
                f"{self.model_id} {modality.upper()}: images of {h}x{w} px are smaller than one "
                f"{self.patch_size}x{self.patch_size} patch (patch_size={self.patch_size}); THOR expects "
                f"~{self.image_size_} px tiles"
            )
        gsds = self.S2_GSDS if modality == "s2" else self.S1_GSDS
        if modality == "s2":
            x = P.s2_clean_dn(x)  # NaN/inf -> 0 and clip [0, 10000] before any crop/pad
        else:
            x = P.clean_nonfinite(x)  # NaN/inf -> 0 (the dB check ignores zeros and non-finite alike)
        if self.resize_mode == "native_snap":
            plan = P.thor_native_snap_plan(
                h, w, patch_size=self.patch_size, scale_m=self.scale_m, gsds=gsds, image_size=self.image_size_,
                shape_adjust=self.shape_adjust, shape_tol_px=self.shape_tol_px,
                max_native_side=self.max_native_side, max_native_tokens=self.max_native_tokens,
            )
        else:
            plan = {"strategy": "fixed_resize", "reason": "fixed_mode", "raw_input_hw": [h, w],
                    "requested_image_size": self.image_size_, "side": self.image_size_,
                    "ground_cover_m": self.ground_cover_m}
        if plan["strategy"] == "native_snap":
            side = plan["side"]
            if self.shape_adjust == "crop":
                x = P.center_crop_or_pad(x, min(h, w), self.fill_value)
            else:
                x = P.center_crop_or_pad(x, max(h, w), self.fill_value)
            x = P.center_crop_or_pad(x, side, self.fill_value)
        layout = self._layout(modality, plan["ground_cover_m"])  # validates the geometry
        side = plan["side"]
        prepared, norm_meta = self._normalize(x, modality)
        ph, pw = prepared.shape[-2:]
        plan.update(
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
            "ground_cover_m": float(plan["ground_cover_m"]),
            "patch_size": self.patch_size,
            "kernel_resize": "none (native 16x16)" if self.patch_size == self.cfg.patch_embed_kernel
            else "flexivit_pinv_bicubic_antialias",
            "resize_mode": self.resize_mode,
            "preprocess": plan,
            "group_merge": self.group_merge,
            "grid_kind": "thor_group_grid",
            "pooling": "mean",
            "pooled_kind": "mean_over_all_tokens",
            "final_norm_applied": False,
            "cls_token": False,
            **layout.describe(),
        }
        return prepared, (layout, side), meta

    def _forward(self, batch, modality, wanted, plan):
        layout, side = plan
        batch = P.resize_bilinear(batch, side)
        tokens, layout2 = self.model.forward_tokens(
            batch, self.model_bands(modality), layout.ground_cover_m, self.patch_size
        )
        outs = {}
        if "pooled" in wanted:
            outs["pooled"] = pool_tokens(tokens.float())  # fp32 mean, also under bf16 autocast
        if "grid" in wanted:
            outs["grid"] = self.tokens_to_grid(tokens, layout2)
        if "tokens" in wanted:
            outs["tokens"] = tokens
        return outs, {"tokens_shape": [int(tokens.shape[1]), int(tokens.shape[2])]}

    def tokens_to_grid(self, tokens: torch.Tensor, layout=None) -> torch.Tensor:
        """Group-aware grid; without a layout, a square token reshape; else a clear error."""
        if layout is not None:
            return group_grid(tokens, layout, self.group_merge)
        return square_token_grid(tokens)
