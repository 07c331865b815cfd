"""Option values: the :class:`Knob` record every model family's knob rows use, the parsers that
validate a value (from the environment or explicit), and the Hugging Face cache variables.

Pure Python (no torch, no numpy): the registry entries (``registry.ModelFamily``) carry their
knobs, so this module is imported with ``rs_embed_pipeline.models`` in both environments.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ModelInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Hugging Face cache variables, first set wins (huggingface_hub's own precedence; HF_HOME means
# $HF_HOME/hub - rs-embed passes $HF_HOME itself as the cache dir, a quirk we do not copy).
HF_CACHE_ENV: tuple[str, ...] = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME")


@dataclasses.dataclass(frozen=True)
class Knob:
    """One tuning knob.

    ``family``: a registered model family's name (``terrafm``, ``thor``, ...) or ``input`` (input
    inspection, every model).
    ``option``: the ``load_adapter`` option (``checkpoint`` is the ``load_adapter`` argument;
    ``check_input`` / ``check_raise`` are ``embed_arrays`` options; ``None`` for a pipeline-only knob).
    ``field``: the pipeline resource field (``None``: library only, no resource field).
    ``resource``: which resource holds ``field``: a family's name (its resource key) or ``imagery``.
    ``parse``: validates a value (from the environment or explicit) and returns it canonical.
    ``title``, ``changes``: the docs/knobs.md row of a library-only knob (no ``field``; a knob with a
    resource field is documented by that field's declaration, orchestration/knob_fields.py).
    """

    env: str
    family: str
    option: str | None
    field: str | None
    resource: str | None
    default: Any
    valid: str
    parse: Callable[[Any], Any]
    title: str = ""
    changes: str = ""

    def parse_env(self, raw: str) -> Any:
        try:
            return self.parse(raw)
        except (ModelInputError, ValueError) as exc:
            raise ModelInputError(
                f"Environment variable {self.env}={raw!r} is invalid; valid values: {self.valid} ({exc})"
            ) from None


def parse_int(value: Any, minimum: int = 1, what: str = "value") -> int:
    if isinstance(value, bool):
        raise ModelInputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ModelInputError(f"{what} must be an integer >= {minimum}, got {value!r}") from None
    if out < minimum:
        raise ModelInputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(out)


def parse_bool(value: Any, what: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ModelInputError(f"{what} must be a boolean (1/0, true/false, yes/no, on/off), got {value!r}")


def positive_int(what: str, minimum: int = 1) -> Callable[[Any], int]:
    """A parser of integers ``>= minimum`` whose errors name ``what``."""
    return lambda v: parse_int(v, minimum, what)


def choice(valid: tuple[str, ...], what: str) -> Callable[[Any], str]:
    """A parser of one of ``valid`` (lower-cased); ``what`` names the option in the error."""

    def parse(value: Any) -> str:
        v = str(value).strip().lower()
        if v not in valid:
            raise ModelInputError(f"Unknown {what} {value!r}; valid: {', '.join(valid)}")
        return v

    return parse


def file_path(value: Any) -> str:
    v = str(value).strip()
    if not v:
        raise ModelInputError("expected a file path, got an empty string")
    return str(Path(v).expanduser())


def hf_cache_dir_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The hub cache directory named by the environment (``HF_HUB_CACHE``, then
    ``HUGGINGFACE_HUB_CACHE``, then ``$HF_HOME/hub``), or None when none is set."""
    env = os.environ if environ is None else environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return str(Path(env[var]).expanduser())
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]).expanduser() / "hub")
    return None
