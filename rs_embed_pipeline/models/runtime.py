"""Where and how the models run: precision (bf16 autocast on CUDA and on CPUs with native bf16),
host-to-device staging (pinned memory, copies on a side stream that overlap the forward pass) and
the optional ``torch.compile`` of the transformer blocks.

bf16 on CPU: autocast runs matmuls, convolutions and attention in bf16 only where the CPU has
native bf16 dot products (``avx512_bf16`` or AMX; oneDNN says so through
``torch.ops.mkldnn._is_mkldnn_bf16_supported``). Elsewhere bf16 would be emulated and slower than
fp32, so the adapter warns and runs fp32 - and says so in the metadata.

float32 means float32: torch's float32 precision is a process-wide setting that other libraries
change behind the caller's back (``import terratorch`` calls ``torch.set_float32_matmul_precision(
"medium")``, after which oneDNN runs float32 matmuls in bf16 on CPUs with AMX and CUDA uses TF32).
So the adapters run every forward pass inside ``exact_float32()`` (IEEE float32 matmuls and
convolutions on CPU and CUDA, whatever the caller set; the caller's setting is back afterwards), and
the project imports terratorch only through ``import_terratorch()``, which leaves the process's
setting as it found it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import shutil
import warnings
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import torch

log = logging.getLogger("rs_embed_pipeline.models")

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> dict:
    """``{"supported": bool, "cpu_capability": ..., "cpu_bf16_flags": [...], "onednn_bf16": bool}``.

    Supported = oneDNN has bf16 kernels for this CPU and the CPU has native bf16 instructions."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a torch build without oneDNN
        onednn = False
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001
        capability = "unknown"
    flags = sorted(f for f in BF16_CPU_FLAGS if f in cpu_flags())
    return {
        "supported": bool(onednn and flags),
        "cpu_capability": capability,
        "cpu_bf16_flags": flags,
        "onednn_bf16": onednn,
    }


# torch >= 2.9 keeps float32 precision per backend and operation (``torch.backends.<b>.<op>.fp32_precision``:
# "ieee", "tf32", "bf16" or "none" = inherit ``torch.backends.fp32_precision``); the legacy
# ``set_float32_matmul_precision`` writes these and keeps its own value too (what
# ``get_float32_matmul_precision`` returns), so both are saved and restored.
FP32_PRECISION_KNOBS = (("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"),
                        ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"))
# What the adapters run at, in the legacy API's words (the metadata's ``float32_matmul_precision``).
EXACT_FLOAT32 = "highest"


def _per_backend_api() -> bool:
    return hasattr(torch.backends, "fp32_precision")


def float32_precision_state() -> dict[str, Any]:
    """Every float32 precision setting of this process, to be put back by ``restore_float32_precision``."""
    b = torch.backends
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # torch refuses to answer after a mix of the legacy and per-backend settings
        legacy = None
    if _per_backend_api():
        state: dict[str, Any] = {"matmul": legacy, "backends": b.fp32_precision}
        for backend, op in FP32_PRECISION_KNOBS:
            state[f"{backend}.{op}"] = getattr(getattr(b, backend), op).fp32_precision
        return state
    return {"matmul": legacy,
            "cuda.matmul.allow_tf32": b.cuda.matmul.allow_tf32, "cudnn.allow_tf32": b.cudnn.allow_tf32}


def restore_float32_precision(state: dict[str, Any]) -> None:
    b = torch.backends
    if state["matmul"] is not None:  # first: it writes the per-backend settings restored below
        torch.set_float32_matmul_precision(state["matmul"])
    if "backends" in state:
        b.fp32_precision = state["backends"]  # the parent before its children: they keep their own
        for backend, op in FP32_PRECISION_KNOBS:
            getattr(getattr(b, backend), op).fp32_precision = state[f"{backend}.{op}"]
        return
    b.cuda.matmul.allow_tf32 = state["cuda.matmul.allow_tf32"]
    b.cudnn.allow_tf32 = state["cudnn.allow_tf32"]


@contextlib.contextmanager
def preserved_float32_precision() -> Iterator[None]:
    """Whatever the body does to torch's float32 precision settings is undone on exit."""
    state = float32_precision_state()
    try:
        yield
    finally:
        restore_float32_precision(state)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """IEEE float32 matmuls and convolutions inside (no bf16 on oneDNN / AMX, no TF32 on CUDA),
    whatever the caller set; the caller's settings are back on exit. Process-wide, like the setting
    itself: the adapters hold it only around their forward passes, which run on one thread."""
    with preserved_float32_precision():
        b = torch.backends
        torch.set_float32_matmul_precision(EXACT_FLOAT32)
        if _per_backend_api():
            for backend, op in FP32_PRECISION_KNOBS:
                getattr(getattr(b, backend), op).fp32_precision = "ieee"
        else:
            b.cuda.matmul.allow_tf32 = False
            b.cudnn.allow_tf32 = False
        yield


def import_terratorch(module: str = "terratorch") -> ModuleType:
    """``importlib.import_module(module)`` for terratorch and its submodules, with the process's global
    settings as they were before. terratorch's import changes two: it sets
    ``torch.set_float32_matmul_precision("medium")`` (terratorch/models/backbones/clay_v15/model.py),
    which would turn every later float32 matmul into bf16 on AMX CPUs and TF32 on CUDA, and
    ``terratorch.tasks`` calls ``warnings.simplefilter("once", UserWarning)``, which would hide every
    repeated UserWarning of the process and override its own filters. Raises what the import raises."""
    with preserved_float32_precision(), warnings.catch_warnings():  # catch_warnings restores the filters
        return importlib.import_module(module)


def resolve_precision(requested: str, device: torch.device, model_id: str) -> tuple[str, str | None, str | None]:
    """``(precision, autocast, reason)``: what runs for a requested precision on ``device``.

    ``autocast`` is ``"cuda:bfloat16"``, ``"cpu:bfloat16"`` or None (plain fp32); ``reason`` says why
    a bf16 request runs fp32 (None otherwise)."""
    if requested != "bf16":
        return "fp32", None, None
    if device.type == "cuda":
        return "bf16", "cuda:bfloat16", None
    if device.type == "cpu":
        support = cpu_bf16_support()
        if support["supported"]:
            return "bf16", "cpu:bfloat16", None
        reason = (
            f"precision='bf16' needs CUDA or a CPU with native bf16 ({' or '.join(BF16_CPU_FLAGS)} with "
            f"oneDNN bf16 kernels); this CPU has flags {support['cpu_bf16_flags']}, oneDNN bf16 "
            f"{support['onednn_bf16']}, so bf16 is CUDA-only here: running fp32 on {device}"
        )
    else:
        reason = f"precision='bf16' is not supported on {device}; running fp32"
    log.warning("%s: %s", model_id, reason)
    return "fp32", None, reason


def autocast(autocast_spec: str | None):
    """The autocast context for ``resolve_precision``'s ``autocast`` value."""
    if autocast_spec is None:
        return contextlib.nullcontext()
    device_type, dtype = autocast_spec.split(":")
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def no_autocast(device: torch.device):
    """Switch autocast off (for small fp32 computations inside an autocast region)."""
    return torch.autocast(device_type=device.type, enabled=False)


def cast_linear_weights(model: torch.nn.Module, autocast_spec: str | None) -> int:
    """Under bf16 autocast, store every ``nn.Linear``'s weight and bias in bf16 - the values autocast
    computes with anyway (same numbers) - instead of casting 85M+ parameters again on every forward
    (autocast caches casts only for tensors that require grad). Layer norms, embeddings and THOR's
    patch kernels stay float32. Returns the number of layers cast."""
    if autocast_spec is None:
        return 0
    dtype = getattr(torch, autocast_spec.split(":")[1])
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.to(dtype)
            n += 1
    return n


def compile_blocks(model: torch.nn.Module) -> int:
    """``torch.compile`` every transformer block in place (``Module.compile``: the state dict keys
    are unchanged). Returns the number of blocks compiled. Needs a C compiler on CPU (inductor)."""
    if not hasattr(model, "blocks"):
        raise ValueError(f"{type(model).__name__} has no transformer blocks to compile")
    if shutil.which("cc") is None and shutil.which("gcc") is None and next(model.parameters()).device.type == "cpu":
        raise RuntimeError("compile=True on CPU needs a C compiler (cc/gcc) for torch inductor")
    for blk in model.blocks:
        blk.compile()
    return len(model.blocks)


class DeviceFeeder:
    """Host batches to the device; on CUDA through pinned memory and a side stream, one batch
    ahead, so that the copy of batch ``i+1`` overlaps the forward pass of batch ``i``.

    ``for xb in DeviceFeeder(device).feed(arrays): ...`` yields device tensors in order. On CPU it
    only wraps the arrays (no copy)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.cuda else None

    def _stage(self, arr: np.ndarray):
        host = torch.from_numpy(np.ascontiguousarray(arr))
        if not self.cuda:
            return host, None
        host = host.pin_memory()
        with torch.cuda.stream(self._stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return dev, event

    def feed(self, arrays: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        it = iter(arrays)
        nxt = next(it, None)
        pending = self._stage(nxt) if nxt is not None else None
        while pending is not None:
            dev, event = pending
            nxt = next(it, None)
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                dev.record_stream(current)  # the side stream's allocation is used on this stream
            pending = self._stage(nxt) if nxt is not None else None  # copy ahead while we compute
            yield dev
