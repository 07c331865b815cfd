"""The adapters' shared skeleton: raw provider arrays in, pooled / grid embeddings and metadata out.

Every family's adapter (``terrafm/adapter.py`` ``TerraFMAdapter``, ``thor/adapter.py``
``ThorAdapter``, ...) subclasses ``_Adapter``, which does option validation, weights (local file, HF
cache first, or explicitly opted-in random init), device / precision / batching, and ``embed()``.
What the family's registry entry says (``registry.ModelFamily``: input bands per modality, default
batch sizes, its own option names, the checkpoint variable) the skeleton reads from there
(``self.spec``). The model-specific parts are the hooks below: ``_configure`` (options -> ``cfg``),
``_build``, ``_hf_source``, ``_prepare`` (numpy), ``_forward`` (torch), ``grid_shape``,
``_settings`` and ``output_kinds``.

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

import importlib
import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import device_prepare as D
from . import preprocessing as P
from . import runtime
from .errors import ModelInputError
from .layers import EncoderConfig
from .registry import COMMON_OPTIONS, PRECISIONS, ModelFamily, get_family
from .weights import expected_nbytes, file_sha256, load_strict, read_checkpoint, resolve_weights, unwrap_state_dict

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


@dataclass
class EmbeddingOutput:
    """``pooled [B, D]``, ``grid [B, D', h, w]``, ``tokens [B, N, D]`` (None when not asked) and
    ``meta``: every setting that shaped the numbers (JSON-serialisable)."""

    pooled: np.ndarray | None
    grid: np.ndarray | None
    meta: dict = field(default_factory=dict)
    tokens: np.ndarray | None = None
    nonfinite: np.ndarray | None = None  # per image: non-finite values among the outputs, as returned


@dataclass
class PreparedBatch:
    """``prepare()``'s result: the normalised batch (numpy on the host; ``prepare_encoded``: a
    tensor on the model's device) and what ``run()`` needs to embed it (``forward_args``: what
    ``_prepare`` hands on to ``_forward``, e.g. THOR's token grid and side)."""

    x: np.ndarray | torch.Tensor
    modality: str
    forward_args: Any
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


#: The types ``run`` returns an output in (``out_dtypes``): the embedding stores' grid_dtype choices.
_OUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_out_dtype(output: str, dtype: str) -> str:
    if dtype not in _OUT_DTYPES:
        raise ModelInputError(f"Unknown type {dtype!r} for output {output!r}; valid: {', '.join(_OUT_DTYPES)}")
    return dtype


def nonfinite_per_row(o: torch.Tensor) -> torch.Tensor:
    """How many values of each row (tile) of ``o`` are NaN or infinite (int64, on ``o``'s device).

    A row's values times 0, summed in float32, are exactly 0 when every value is finite (a finite
    value times 0 is 0: no overflow, whatever the type) and NaN when one is not (NaN and inf times 0
    are NaN), so only such rows are counted value by value: about 0.07 ms of CPU per TerraFM-B tile
    where counting every value took 0.85 ms (#21; on a GPU both are the device's work). The check
    of whether any row needs counting waits for the device, as the copy to the host after it does."""
    flat = o.reshape(o.shape[0], -1)
    bad = ~torch.isfinite((flat * 0).sum(dim=1, dtype=torch.float32))
    n = torch.zeros(o.shape[0], dtype=torch.int64, device=o.device)
    if bool(bad.any()):
        n[bad] = (~torch.isfinite(flat[bad])).sum(dim=1)
    return n


def parse_output(output: str) -> tuple[str, ...]:
    key = str(output).strip().lower()
    if key not in OUTPUTS:
        raise ModelInputError(f"Unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
    return OUTPUTS[key]


class _Adapter:
    model_id: str = ""
    family: str = ""            # the registered family's name (registry.get_family)
    pretrained: bool = True  # THOR's option; False with no checkpoint = random init, no hub lookup
    cfg: EncoderConfig          # set by _configure (each adapter's own config class)
    weights: dict[str, Any]     # set by _load_model: where the weights came from (metadata)

    def __init__(self, *, checkpoint=None, arch=None, device="auto", **options: Any) -> None:
        self.spec: ModelFamily = get_family(self.family)
        if not self.model_id:
            self.model_id = self.spec.model_id()
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
            bs = self.spec.default_batch_size(self.device.type)
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

    @property
    def MODEL_OPTIONS(self) -> tuple[str, ...]:  # noqa: N802 - the name it always had
        """The family's own options (its registry entry's ``options``)."""
        return self.spec.options

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the family embeds (its registry entry's ``input_bands`` keys)."""
        return self.spec.modalities

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
            found = resolve_weights(self.checkpoint, repo, fname, self.cache_dir, checkpoint_env=self.spec.checkpoint_env)
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
    def image_size(self) -> int:
        """The side the model runs at (default: the family's native tile size)."""
        return self.spec.tile_size_px

    def input_bands(self, modality: str) -> tuple[str, ...]:
        """Provider bands ``embed`` takes for ``modality``, in order (the registry entry's)."""
        return self.spec.bands(self._modality(modality))

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
        def takes(m: str) -> str:
            bands = self.input_bands(m)
            listed = f"bands {list(bands)}" if m == "s2" else ", ".join(bands)
            return f"C={len(bands)} for {m.upper()} ({listed})"

        hint = f"{self.model_id} takes " + " or ".join(takes(m) for m in self.modalities)
        return hint + ("; pass modality='s1' for Sentinel-1" if "s1" in self.modalities else "")

    def embed(self, raw, modality: str = "s2", output: str = "pooled",
              out_dtypes: Mapping[str, str] | None = None) -> EmbeddingOutput:
        """Embed a batch ``raw`` (``[B, C, H, W]`` provider units, bands ``input_bands(modality)``)."""
        return self.run(self.prepare(raw, modality), output, out_dtypes)

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
        prepared, forward_args, meta = self._prepare(x, modality)
        return PreparedBatch(np.ascontiguousarray(prepared, dtype=np.float32), modality, forward_args, meta,
                             tuple(x.shape))

    @property
    def prepares_on_device(self) -> bool:
        """Whether ``prepare_encoded`` works: the family's ``_prepare`` takes ``ops`` (a family
        written for numpy only keeps the host path)."""
        return "ops" in inspect.signature(self._prepare).parameters

    def prepare_encoded(self, codes: np.ndarray, modality: str = "s2", *, scale_factor: float = 1.0,
                        add_offset: float = 0.0, channels: list[int] | None = None,
                        filter: str | None = None) -> PreparedBatch:
        """``prepare`` on the model's device: ``codes`` as a patch store holds them (``raw = codes *
        scale_factor + add_offset``; uint16 or float32), ``channels`` of them in ``input_bands``
        order, uploaded (pinned memory on CUDA), decoded, checked and normalised there with torch
        ops equal to ``prepare``'s numpy ones (``device_prepare``). ``filter``: ``codes`` are the
        store's filtered values (``TileStore.read_filtered``; ``delta_y``: row differences of
        uint16 codes), undone on the device before decoding. A batch that fails a check is checked
        again on the host, for the reference's message."""
        if not self.prepares_on_device:
            raise ModelInputError(f"{self.model_id} prepares on the host only (its _prepare takes no ops); "
                                  "use prepare()")
        if filter is not None and (filter not in D.FILTERS or codes.dtype != np.uint16):
            raise ValueError(f"filter {filter!r} is not a filter of uint16 codes this code undoes "
                             f"(valid: {', '.join(D.FILTERS)} on uint16, or None), got codes of {codes.dtype}")
        modality = self._modality(modality)
        bands = self.input_bands(modality)
        what = f"{self.model_id} {modality.upper()}"
        shape = (codes.shape[0], len(channels), *codes.shape[2:]) if channels is not None else tuple(codes.shape)
        D.check_shape(tuple(shape), bands, what, hint=self.channel_hint())
        t = D.undo_filter(D.upload(codes, self.device, channels), filter)
        x = D.decode(t, scale_factor, add_offset, unsigned16=codes.dtype == np.uint16)
        if D.input_flags(x, modality):
            host = x.cpu().numpy()
            P.check_has_finite(host, what)
            P.check_modality_units(host, modality, what)
        prepared, forward_args, meta = self._prepare(x, modality, ops=D.TORCH_OPS)
        return PreparedBatch(prepared, modality, forward_args, {**meta, "prepared_on": str(self.device)},
                             tuple(shape))

    def run(self, prepared: PreparedBatch, output: str = "pooled",
            out_dtypes: Mapping[str, str] | None = None) -> EmbeddingOutput:
        """The forward pass over a prepared batch, in chunks of ``batch_size``. ``out_dtypes``: an
        output's type (float32 default, float16, bfloat16), cast on the device before the copy to
        the host (half the bytes); bfloat16 comes back as its uint16 bit patterns (numpy has no
        bfloat16; ``stores.grid_dtype.to_float32`` widens them)."""
        wanted = parse_output(output)
        casts = {k: _OUT_DTYPES[_check_out_dtype(k, v)] for k, v in (out_dtypes or {}).items() if k in wanted}
        modality, forward_args = prepared.modality, prepared.forward_args
        bands = self.input_bands(modality)
        meta = dict(prepared.meta)
        chunks: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
        nonfinite: list[np.ndarray] = []
        extra: dict = {}
        n = len(prepared)
        chunks_of_x = (prepared.x[s : s + self.batch_size] for s in range(0, n, self.batch_size))
        # prepare_encoded's batches are on the device already
        on_device = isinstance(prepared.x, torch.Tensor)
        with runtime.exact_float32():  # whatever the process's float32 precision (terratorch sets "medium")
            for batch in (chunks_of_x if on_device else self._feeder.feed(chunks_of_x)):
                with torch.inference_mode(), self._autocast():
                    outs, extra = self._forward(batch, modality, wanted, forward_args)
                bad = None
                for k in wanted:
                    o = outs[k].to(casts.get(k, torch.float32))
                    # counted on the device in the stored type (a float16 overflow is an inf stored)
                    n = nonfinite_per_row(o)
                    bad = n if bad is None else bad + n
                    chunks[k].append((o.view(torch.int16) if o.dtype == torch.bfloat16 else o).cpu().numpy())
                nonfinite.append(bad.cpu().numpy() if bad is not None else np.zeros(0, np.int64))
        result = {k: np.ascontiguousarray(np.concatenate(v, axis=0)) for k, v in chunks.items()}
        result = {k: v.view(np.uint16) if v.dtype == np.int16 else v for k, v in result.items()}
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
        full_meta["output_dtypes"] = {k: str(out_dtypes.get(k, "float32")) if out_dtypes else "float32" for k in wanted}
        return EmbeddingOutput(
            pooled=result.get("pooled"), grid=result.get("grid"), tokens=result.get("tokens"), meta=full_meta,
            nonfinite=np.concatenate(nonfinite) if nonfinite else np.zeros(0, np.int64),
        )

    def _prepare(self, x, modality: str, ops=D.NUMPY_OPS):  # pragma: no cover - abstract
        """Normalise ``x`` (numpy with ``ops=NUMPY_OPS``, a device tensor with ``TORCH_OPS``):
        ``(prepared, forward_args, meta)``."""
        raise NotImplementedError

    def _forward(self, batch: torch.Tensor, modality: str, wanted, forward_args):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={str(self.device)!r}, weights={self.weights['weights_source']!r})"


# The family adapters moved to their packages; these names still resolve from here.
_MOVED = {"TerraFMAdapter": "terrafm.adapter", "ThorAdapter": "thor.adapter"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(f"rs_embed_pipeline.models.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
