"""Weights: Hugging Face hub (cache first), strict loading, sha256.

* ``resolve_weights``: a local ``checkpoint`` path wins; otherwise ``hf_hub_download`` with
  ``local_files_only=True`` first, then the network unless ``HF_HUB_OFFLINE`` is set. Failures name the
  repo, file and cache directory and say how to supply a local file.
* Cache directory: the ``cache_dir`` option, else ``HF_HUB_CACHE`` / ``HUGGINGFACE_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` - huggingface_hub's own rules, resolved at call
  time (huggingface_hub reads them once at import). rs-embed passes ``$HF_HOME`` itself as the cache
  dir; we do not copy that quirk.
* ``read_checkpoint``: size sanity check relative to the architecture's parameter bytes (catches
  Git-LFS/Xet pointer files and truncated downloads), ``torch.load(weights_only=True)``.
* ``load_strict``: missing / unexpected keys and shape mismatches raise ``WeightsError`` naming the
  keys and the file (the reference loads with ``strict=False`` and checks only one tensor).
* ``file_sha256``: streaming, computed once per (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from .errors import WeightsError, WeightsNotFoundError
from .options import hf_cache_dir_from_env

# Below this fraction of the architecture's float32 parameter bytes a file cannot hold the weights
# (0.45 leaves room for a half-precision checkpoint; real pointer files are ~100 bytes).
MIN_SIZE_FRACTION = 0.45
_TRUTHY = {"1", "true", "yes", "on"}

_sha_lock = threading.Lock()
_sha_cache: dict[tuple[str, int, int], str] = {}


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """The hub cache directory that will be used (see module doc for the precedence)."""
    if cache_dir:
        return str(Path(cache_dir).expanduser())
    from_env = hf_cache_dir_from_env()
    if from_env:
        return from_env
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(xdg).expanduser() / "huggingface" / "hub")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def _how_to_supply(repo_id: str, filename: str, cache: str, checkpoint_env: str | None = None) -> str:
    env_hint = f" (or set {checkpoint_env}=/path/to/that file)" if checkpoint_env else ""
    return (
        f"To use a local copy pass checkpoint='/path/to/{filename}' to load_adapter{env_hint} or the "
        "adapter resource's `checkpoint` field, or place it in the "
        f"hub cache as {cache}/models--{repo_id.replace('/', '--')}/snapshots/<revision>/{filename} "
        "(with refs/main naming <revision>), e.g. by running `huggingface-cli download "
        f"{repo_id} {filename}` on a machine with network access; allow_random_weights=True runs "
        "with random (NOT pretrained) weights for tests only."
    )


def download_from_hub(repo_id: str, filename: str, cache_dir: str | None = None,
                      checkpoint_env: str | None = None) -> tuple[str, str]:
    """Return ``(local path, how)`` with ``how`` = ``"hf_cache"`` or ``"hf_download"``.
    ``checkpoint_env``: the variable naming a local file (the family's), said in the errors."""
    cache = hf_cache_dir(cache_dir)
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415 - huggingface_hub only for a hub download (worker env)
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"Missing dependency: huggingface_hub is not installed ({exc}), so '{filename}' cannot be "
            f"fetched from Hugging Face repo {repo_id} (cache dir {cache}). Install it with "
            "`pip install huggingface_hub` (it is part of the worker environment, .venv-worker / the "
            "'worker' extra). "
            + _how_to_supply(repo_id, filename, cache, checkpoint_env)
        ) from exc
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache, local_files_only=True), "hf_cache"
    except Exception as exc:  # noqa: BLE001 - any cache miss falls through to the network
        local_error = exc
    if hub_offline():
        raise WeightsNotFoundError(
            f"Weights '{filename}' from Hugging Face repo {repo_id} are not in the cache dir {cache} and "
            f"HF_HUB_OFFLINE is set, so they cannot be downloaded "
            f"({type(local_error).__name__}). " + _how_to_supply(repo_id, filename, cache, checkpoint_env)
        ) from local_error
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache), "hf_download"
    except Exception as exc:  # noqa: BLE001
        raise WeightsNotFoundError(
            f"Failed to download '{filename}' from Hugging Face repo {repo_id} into cache dir {cache}: "
            f"{type(exc).__name__}: {exc}. " + _how_to_supply(repo_id, filename, cache, checkpoint_env)
        ) from exc


def resolve_weights(
    checkpoint: str | os.PathLike | None, repo_id: str, filename: str, cache_dir: str | None = None,
    *, checkpoint_env: str | None = None,
) -> dict:
    """Locate the weights file: ``{"path", "source", "hf_repo", "hf_file", "hf_cache_dir"}``.
    ``checkpoint_env``: the family's variable naming a local file (``ModelFamily.checkpoint_env``),
    said in the errors."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"Checkpoint file {str(path)!r} does not exist (or is not a file). Pass the path of "
                f"{filename} (Hugging Face repo {repo_id}), or checkpoint=None to use the hub cache."
            )
        return {"path": str(path.resolve()), "source": "local_file", "hf_repo": None, "hf_file": None,
                "hf_cache_dir": None}
    downloaded, how = download_from_hub(repo_id, filename, cache_dir, checkpoint_env)
    return {"path": str(Path(downloaded).resolve()), "source": how, "hf_repo": repo_id, "hf_file": filename,
            "hf_cache_dir": hf_cache_dir(cache_dir)}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest, streamed in 1 MiB chunks and cached per (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _sha_lock:
        if key in _sha_cache:
            return _sha_cache[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _sha_lock:
        _sha_cache[key] = digest
    return digest


def expected_nbytes(model) -> int:
    """float32 bytes of every state-dict entry of ``model`` (works on the meta device)."""
    return sum(t.numel() * 4 for t in model.state_dict().values())


def read_checkpoint(path: str, expected_bytes: int, what: str) -> Mapping:
    """Size check, then ``torch.load(weights_only=True)`` on CPU; returns the loaded mapping."""
    import torch  # noqa: PLC0415 - torch: models/ imports torch-free (the orchestrator reads it)

    size = os.path.getsize(path)
    minimum = int(MIN_SIZE_FRACTION * expected_bytes)
    if size < minimum:
        raise WeightsError(
            f"Weights file {path} is only {size} bytes, but the {what} architecture holds "
            f"{expected_bytes} bytes of float32 parameters (at least {minimum} bytes expected even in "
            "half precision) - the file is truncated or not real weights (a Git-LFS/Xet pointer? "
            "`pip install -U hf_xet`, delete the file and download again). If this is a reduced test "
            "model, pass its arch."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(
            f"Could not read weights file {path} ({size} bytes) with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {exc}. The file is truncated, corrupt, not a torch checkpoint, or holds "
            "pickled objects that weights_only=True refuses; delete it and download again."
        ) from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"Weights file {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def unwrap_state_dict(obj: Mapping, path: str) -> dict:
    """Accept ``{"state_dict": {...}}`` as well as a flat state dict."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    import torch  # noqa: PLC0415 - torch: models/ imports torch-free

    non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise WeightsError(f"Weights file {path}: entries {non_tensors[:10]} are not tensors")
    return dict(obj)


def _fmt(keys: list, limit: int = 20) -> str:
    shown = ", ".join(str(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(model, state: Mapping, path: str, what: str) -> None:
    """Load ``state`` into ``model`` requiring identical keys and shapes; values become float32.

    ``model`` may live on the meta device (parameters are then assigned, not copied)."""
    import torch  # noqa: PLC0415 - torch: models/ imports torch-free

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys [{_fmt(missing)}]")
        if unexpected:
            parts.append(f"unexpected keys [{_fmt(unexpected)}]")
        if mismatched:
            parts.append(f"shape mismatches [{_fmt(mismatched)}]")
        raise WeightsError(
            f"Weights file {path} does not match the {what} architecture: " + "; ".join(parts)
            + ". Wrong model, wrong file, or (for a reduced test model) a missing arch=..."
        )
    converted = {}
    nonfinite = []
    for k, v in state.items():
        v = v.detach().to(torch.float32) if v.is_floating_point() else v.detach()
        if v.is_floating_point() and not torch.isfinite(v).all():
            nonfinite.append(k)
        converted[k] = v.contiguous()
    if nonfinite:
        raise WeightsError(f"Weights file {path} has non-finite values in [{_fmt(nonfinite)}]")
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict(converted, strict=True, assign=on_meta)
