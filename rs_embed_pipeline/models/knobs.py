"""Tuning knobs of the TerraFM-B and THOR adapters, with rs-embed 0.3.1's environment variable names.

One table, :data:`KNOBS`, says for every knob: the model family, the name of the ``load_adapter`` /
``embed_arrays`` option (or of the pipeline resource field), the environment variable, the default,
and how a value is validated. Environment variables are *defaults*: an explicit option or resource
config always wins, and an invalid value is an error naming the variable and the valid values.

Who reads the environment:

* the orchestrator reads it once, in :mod:`rs_embed_pipeline.orchestration.settings` (``Settings.from_env`` calls
  :func:`env_values` with its own mapping); ``definitions.py`` passes the values to the resources;
* direct library use (``load_adapter``, ``embed_arrays``) calls :func:`env_values` with
  ``os.environ`` - the one function in ``rs_embed_pipeline.models`` that reads it (besides the
  Hugging Face cache lookup, :func:`hf_cache_dir_from_env`, and ``HF_HUB_OFFLINE``);
* the pipeline worker passes every value explicitly (``use_env=False``), so only the resource config
  decides what a pipeline run does.

Pure Python + numpy (no torch): importable in both environments. ``docs/knobs.md`` documents every
knob: it is generated from :mod:`rs_embed_pipeline.orchestration.knob_table`, whose rows take the defaults of the
knobs here (the orchestrator's table of every resource field; this one stays the variables' table).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from .errors import ModelInputError

# ------------------------------------------------------------------------------------------------
# Shared vocabularies (the THOR model code imports these; keep them torch-free)
# ------------------------------------------------------------------------------------------------

THOR_VARIANTS: tuple[str, ...] = ("tiny", "small", "base", "large")
THOR_VARIANT_ALIASES = {"t": "tiny", "s": "small", "b": "base", "l": "large"}
# Prefixes accepted in front of a size: rs-embed model keys, our model ids, the HF repo name.
_THOR_KEY_PREFIXES = ("thor_v1_", "thor_1_0_", "thor-1.0-", "fm4cs/thor-1.0-")
GROUP_MERGES: tuple[str, ...] = ("mean", "sum", "concat")
GROUP_MERGE_ALIASES = {"avg": "mean", "average": "mean"}
THOR_RESIZE_MODES: tuple[str, ...] = ("fixed", "native_snap")
THOR_SHAPE_ADJUST: tuple[str, ...] = ("crop", "pad")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def canonical_thor_variant(value: Any) -> str:
    """``tiny|small|base|large`` from a size, an alias (``t|s|b|l``), ``thor_v1_<size>``,
    ``thor_1_0_<size>``, ``FM4CS/THOR-1.0-<size>`` or an upstream THOR ``MODELS`` key
    (``thor_vit_<size>_encoder_alibi_patch_size_embed_v1``)."""
    v = str(value).strip().lower()
    for prefix in _THOR_KEY_PREFIXES:
        if v.startswith(prefix):
            v = v[len(prefix):]
    if v.startswith("thor_vit_") and v.endswith("_encoder_alibi_patch_size_embed_v1"):
        v = v[len("thor_vit_"):].split("_", 1)[0]
    v = THOR_VARIANT_ALIASES.get(v, v)
    if v not in THOR_VARIANTS:
        raise ModelInputError(
            f"Unknown THOR variant={value!r} (expected one of: {', '.join(THOR_VARIANTS)}; model keys "
            f"{', '.join(thor_model_key(s) for s in THOR_VARIANTS)} and thor_1_0_<size> are accepted too)"
        )
    return v


def thor_model_key(variant: str) -> str:
    """rs-embed's THOR model key, e.g. ``thor_v1_base``."""
    return f"thor_v1_{variant}"


def thor_hf_source(variant: str) -> tuple[str, str]:
    """Hugging Face (repo, file) of a THOR variant's released weights."""
    return f"FM4CS/THOR-1.0-{variant}", f"thor_v1_vit_{variant}.pt"


def canonical_group_merge(value: Any) -> str:
    v = str(value).strip().lower()
    v = GROUP_MERGE_ALIASES.get(v, v)
    if v not in GROUP_MERGES:
        raise ModelInputError(
            f"Unknown THOR group_merge {value!r}; valid: {', '.join(GROUP_MERGES)} (aliases: avg, average)"
        )
    return v


def canonical_thor_normalization(value: Any) -> str:
    """A THOR normalisation name valid for at least one modality (S2: thor_stats, unit_scale, none;
    S1: thor_stats, none - plus rs-embed's aliases); returned lower-cased, aliases kept."""
    from .preprocessing import THOR_S1_NORMALIZATIONS, THOR_S2_NORMALIZATIONS

    v = str(value).strip().lower()
    if v not in THOR_S2_NORMALIZATIONS and v not in THOR_S1_NORMALIZATIONS:
        raise ModelInputError(
            f"Unknown THOR normalization mode {value!r}. Use one of: thor_stats, unit_scale, none "
            f"(S2 aliases: {sorted(THOR_S2_NORMALIZATIONS)}; S1 aliases: {sorted(THOR_S1_NORMALIZATIONS)})"
        )
    return v


def _choice(valid: tuple[str, ...], what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        v = str(value).strip().lower()
        if v not in valid:
            raise ModelInputError(f"Unknown THOR {what} {value!r}; valid: {', '.join(valid)}")
        return v

    return parse


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


def _path(value: Any) -> str:
    v = str(value).strip()
    if not v:
        raise ModelInputError("expected a file path, got an empty string")
    return str(Path(v).expanduser())


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Knob:
    """One tuning knob.

    ``family``: ``terrafm`` | ``thor`` | ``input`` (input inspection, both models).
    ``option``: the ``load_adapter`` option (``checkpoint`` is the ``load_adapter`` argument;
    ``check_input`` / ``check_raise`` are ``embed_arrays`` options; ``None`` for a pipeline-only knob).
    ``field``: the pipeline resource field (``None``: library only, no resource field).
    ``resource``: which resource holds ``field``: ``terrafm``, ``thor`` or ``imagery``.
    ``parse``: validates a value (from the environment or explicit) and returns it canonical.
    """

    env: str
    family: str
    option: str | None
    field: str | None
    resource: str | None
    default: Any
    valid: str
    parse: Callable[[Any], Any]

    def parse_env(self, raw: str) -> Any:
        try:
            return self.parse(raw)
        except (ModelInputError, ValueError) as exc:
            raise ModelInputError(
                f"Environment variable {self.env}={raw!r} is invalid; valid values: {self.valid} ({exc})"
            ) from None


def _pos(what: str, minimum: int = 1) -> Callable[[Any], int]:
    return lambda v: parse_int(v, minimum, what)


KNOBS: tuple[Knob, ...] = (
    # TerraFM-B page (MODEL_SPEC 1.4)
    Knob("RS_EMBED_TERRAFM_BATCH_SIZE", "terrafm", "batch_size", "batch_size", "terrafm", None,
         "an integer >= 1 (unset: 8 on CPU, 64 on CUDA)", _pos("RS_EMBED_TERRAFM_BATCH_SIZE")),
    Knob("RS_EMBED_TERRAFM_FETCH_WORKERS", "terrafm", None, "fetch_workers", "terrafm", 8,
         "an integer >= 1", _pos("RS_EMBED_TERRAFM_FETCH_WORKERS")),
    # THOR page (MODEL_SPEC 2.1, 2.4)
    Knob("RS_EMBED_THOR_MODEL_KEY", "thor", "variant", "model_key", "thor", "thor_v1_base",
         "thor_v1_tiny, thor_v1_small, thor_v1_base, thor_v1_large (or thor_1_0_<size>, a bare size)",
         lambda v: thor_model_key(canonical_thor_variant(v))),
    Knob("RS_EMBED_THOR_CKPT", "thor", "checkpoint", "checkpoint", "thor", None,
         "a path to a THOR checkpoint file (thor_v1_vit_<size>.pt)", _path),
    Knob("RS_EMBED_THOR_PRETRAINED", "thor", "pretrained", "pretrained", "thor", True,
         "1/0, true/false, yes/no, on/off", lambda v: parse_bool(v, "RS_EMBED_THOR_PRETRAINED")),
    Knob("RS_EMBED_THOR_IMG", "thor", "image_size", "image_size", "thor", 288,
         "an integer >= 1 (pixels; ground cover = scale_m x image_size)", _pos("RS_EMBED_THOR_IMG")),
    Knob("RS_EMBED_THOR_NORMALIZE", "thor", "normalization", "normalization", "thor", "thor_stats",
         "thor_stats, unit_scale, none (and rs-embed's aliases)", canonical_thor_normalization),
    Knob("RS_EMBED_THOR_GROUP_MERGE", "thor", "group_merge", "group_merge", "thor", "mean",
         "mean, sum, concat (aliases avg, average)", canonical_group_merge),
    Knob("RS_EMBED_THOR_PATCH_SIZE", "thor", "patch_size", "patch_size", "thor", 16,
         "an integer >= 1 (16 native; 8 is rs-embed's)", _pos("RS_EMBED_THOR_PATCH_SIZE")),
    Knob("RS_EMBED_THOR_FETCH_WORKERS", "thor", None, "fetch_workers", "thor", 8,
         "an integer >= 1", _pos("RS_EMBED_THOR_FETCH_WORKERS")),
    Knob("RS_EMBED_THOR_RESIZE_MODE", "thor", "resize_mode", None, None, "fixed",
         "fixed, native_snap", _choice(THOR_RESIZE_MODES, "resize_mode")),
    Knob("RS_EMBED_THOR_SHAPE_ADJUST", "thor", "shape_adjust", None, None, "crop",
         "crop, pad", _choice(THOR_SHAPE_ADJUST, "shape_adjust")),
    Knob("RS_EMBED_THOR_SHAPE_TOL_PX", "thor", "shape_tol_px", None, None, 8,
         "an integer >= 0", _pos("RS_EMBED_THOR_SHAPE_TOL_PX", 0)),
    Knob("RS_EMBED_THOR_MAX_NATIVE_SIDE", "thor", "max_native_side", None, None, 384,
         "an integer >= 1", _pos("RS_EMBED_THOR_MAX_NATIVE_SIDE")),
    Knob("RS_EMBED_THOR_MAX_NATIVE_TOKENS", "thor", "max_native_tokens", None, None, 3000,
         "an integer >= 1", _pos("RS_EMBED_THOR_MAX_NATIVE_TOKENS")),
    # Optional input inspection (both pages)
    Knob("RS_EMBED_CHECK_INPUT", "input", "check_input", "check_input", "imagery", True,
         "1/0, true/false, yes/no, on/off", lambda v: parse_bool(v, "RS_EMBED_CHECK_INPUT")),
    Knob("RS_EMBED_CHECK_RAISE", "input", "check_raise", "check_raise", "imagery", False,
         "1/0, true/false, yes/no, on/off", lambda v: parse_bool(v, "RS_EMBED_CHECK_RAISE")),
)
KNOBS_BY_ENV: dict[str, Knob] = {k.env: k for k in KNOBS}
# Hugging Face cache variables, first set wins (huggingface_hub's own precedence; HF_HOME means
# $HF_HOME/hub - rs-embed passes $HF_HOME itself as the cache dir, a quirk we do not copy).
HF_CACHE_ENV: tuple[str, ...] = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME")
ENV_VARS: tuple[str, ...] = tuple(k.env for k in KNOBS) + HF_CACHE_ENV


def knob(family: str, option: str) -> Knob:
    for k in KNOBS:
        if k.family == family and (k.option == option or k.field == option):
            return k
    raise KeyError(f"no knob {family}.{option}")


def default(family: str, option: str) -> Any:
    return knob(family, option).default


def env_values(environ: Mapping[str, str] | None = None, family: str | None = None) -> dict[str, dict[str, Any]]:
    """The knobs *set* in ``environ`` (default ``os.environ``), validated:
    ``{env var: {"knob": Knob, "value": parsed}}``; unset or empty variables are absent.
    Raises :class:`ModelInputError` naming the variable and its valid values."""
    env = os.environ if environ is None else environ
    out = {}
    for k in KNOBS:
        if family is not None and k.family != family:
            continue
        raw = env.get(k.env)
        if raw is None or str(raw).strip() == "":
            continue
        out[k.env] = {"knob": k, "value": k.parse_env(raw)}
    return out


def env_options(family: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``load_adapter`` options (and ``checkpoint``) of ``family`` set in the environment."""
    return {v["knob"].option: v["value"] for v in env_values(environ, family).values() if v["knob"].option}


def resource_values(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Pipeline resource fields set in the environment: ``{"terrafm"|"thor"|"imagery": {field: value}}``
    (only what is set; the resources keep their own defaults otherwise), plus the Hugging Face cache
    directory as both adapters' ``cache_dir``."""
    out: dict[str, dict[str, Any]] = {"terrafm": {}, "thor": {}, "imagery": {}}
    for v in env_values(environ).values():
        k = v["knob"]
        if k.field and k.resource:
            out[k.resource][k.field] = v["value"]
    cache = hf_cache_dir_from_env(environ)
    if cache:
        out["terrafm"]["cache_dir"] = cache
        out["thor"]["cache_dir"] = cache
    return out


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


def default_batch_size(family: str, device_type: str) -> int:
    """Batch size when none is given: TerraFM 64 on CUDA (rs-embed), THOR 32 on CUDA; 8 on CPU."""
    if device_type == "cuda":
        return 64 if family == "terrafm" else 32
    return 8
