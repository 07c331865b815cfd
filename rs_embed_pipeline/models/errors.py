"""Exceptions raised by the model adapters (no heavy imports: safe to import anywhere).

Every error that is the caller's fault (bad array, bad option value, dB-scaled S1, ...) is a
``ModelInputError``, which is a ``ValueError``: the worker catches ``ValueError`` around a batch and
retries tile by tile to name the culprit, so a bad tile never produces a wrong embedding and never
sinks its neighbours.
"""

from __future__ import annotations
import importlib


class ModelError(Exception):
    """Base class of every error raised by ``rs_embed_pipeline.models``."""


class ModelInputError(ModelError, ValueError):
    """Invalid input array, modality, output kind or option value."""


class WeightsError(ModelError, RuntimeError):
    """A weights file that cannot be used: unreadable, truncated, wrong keys or shapes."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights could be found (local path missing, not in the HF cache, download impossible)."""


class MissingDependencyError(ModelError, ImportError):
    """An optional dependency (torch, huggingface_hub, terratorch, ...) cannot be imported."""


def require(module: str, purpose: str, install: str = "pip install -e '.[worker]'"):
    """Import ``module`` or raise :class:`MissingDependencyError` saying what needs it and how to
    install it (the model code runs in the worker environment, ``.venv-worker``)."""

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"Missing dependency: {module!r} is needed for {purpose} but cannot be imported "
            f"({type(exc).__name__}: {exc}). Install it with `{install}`, or run this in the model "
            "worker environment (.venv-worker, built by `make setup`)."
        ) from exc
