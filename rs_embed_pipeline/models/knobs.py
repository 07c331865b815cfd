"""Tuning knobs of the registered model families, with rs-embed 0.3.1's environment variable names.

Every family's registry entry carries its knob rows (``ModelFamily.knobs``: TerraFM's in
``terrafm/spec.py``, THOR's in ``thor/spec.py``); :func:`all_knobs` (also ``KNOBS``) is theirs, in
registration order, plus the input-inspection knobs of every model (:data:`INPUT_KNOBS`). A row says
for a knob: the model family, the name of the ``load_adapter`` / ``embed_arrays`` option (or of the
pipeline resource field), the environment variable, the default, and how a value is validated
(:class:`~rs_embed_pipeline.models.options.Knob`). Environment variables are *defaults*: an
explicit option or resource config always wins, and an invalid value is an error naming the
variable and the valid values.

Who reads the environment:

* the orchestrator reads it once, in :mod:`rs_embed_pipeline.orchestration.settings` (``Settings.from_env`` calls
  :func:`env_values` with its own mapping); ``definitions.py`` passes the values to the resources;
* direct library use (``load_adapter``, ``embed_arrays``) calls :func:`env_values` with
  ``os.environ`` - the one function in ``rs_embed_pipeline.models`` that reads it (besides the
  Hugging Face cache lookup, :func:`hf_cache_dir_from_env`, ``HF_HUB_OFFLINE`` and the
  random-weights opt-in, :func:`allow_random_weights_from_env`);
* the pipeline worker passes every value explicitly (``use_env=False``), so only the resource config
  decides what a pipeline run does.

Pure Python (no torch): importable in both environments. ``docs/knobs.md`` documents every
knob: it is generated from the orchestrator's knob fields (:mod:`rs_embed_pipeline.orchestration.knob_fields`),
which take the defaults of the knobs here (this module stays the variables' table; a library-only
knob carries its own docs row, ``Knob.title`` / ``Knob.changes``).

``KNOBS``, ``KNOBS_BY_ENV`` and ``ENV_VARS`` are computed from the registry when read, so a family
registered later has its knobs there too. THOR's vocabulary (``canonical_thor_variant``,
``canonical_group_merge``, ...) lives in ``thor/spec.py``; its names still resolve here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from .options import (  # noqa: F401 - re-exported: the names this module has always offered
    HF_CACHE_ENV,
    Knob,
    hf_cache_dir_from_env,
    parse_bool,
    parse_int,
)
from .registry import families, get_family

#: Optional input inspection (both models' pages): ``embed_arrays`` options and the imagery resource.
INPUT_KNOBS: tuple[Knob, ...] = (
    Knob("RS_EMBED_CHECK_INPUT", "input", "check_input", "check_input", "imagery", True,
         "1/0, true/false, yes/no, on/off", lambda v: parse_bool(v, "RS_EMBED_CHECK_INPUT")),
    Knob("RS_EMBED_CHECK_RAISE", "input", "check_raise", "check_raise", "imagery", False,
         "1/0, true/false, yes/no, on/off", lambda v: parse_bool(v, "RS_EMBED_CHECK_RAISE")),
)

# THOR's vocabulary, which lived here before the THOR package had a spec module of its own.
_MOVED = dict.fromkeys((
    "THOR_VARIANTS", "THOR_VARIANT_ALIASES", "GROUP_MERGES", "GROUP_MERGE_ALIASES", "THOR_RESIZE_MODES",
    "THOR_SHAPE_ADJUST", "canonical_thor_variant", "thor_model_key", "thor_hf_source", "canonical_group_merge",
    "canonical_thor_normalization",
), "thor.spec")


def all_knobs() -> tuple[Knob, ...]:
    """Every registered family's knob rows (registration order), then :data:`INPUT_KNOBS`."""
    return tuple(k for family in families() for k in family.knobs) + INPUT_KNOBS


def knobs_by_env() -> dict[str, Knob]:
    return {k.env: k for k in all_knobs()}


def env_vars() -> tuple[str, ...]:
    """Every knob variable, then the Hugging Face cache variables."""
    return tuple(k.env for k in all_knobs()) + HF_CACHE_ENV


def __getattr__(name: str) -> Any:
    if name == "KNOBS":
        return all_knobs()
    if name == "KNOBS_BY_ENV":
        return knobs_by_env()
    if name == "ENV_VARS":
        return env_vars()
    if name in _MOVED:
        return getattr(importlib.import_module(f"rs_embed_pipeline.models.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def knob(family: str, option: str) -> Knob:
    for k in all_knobs():
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
    for k in all_knobs():
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
    """Pipeline resource fields set in the environment: ``{<family name>|"imagery": {field: value}}``
    (``terrafm``, ``thor``, ... - every registered family - and ``imagery``; only what is set: the
    resources keep their own defaults otherwise), plus the Hugging Face cache directory as every
    family's ``cache_dir``."""
    out: dict[str, dict[str, Any]] = {**{f.name: {} for f in families()}, "imagery": {}}
    for v in env_values(environ).values():
        k = v["knob"]
        if k.field and k.resource:
            out.setdefault(k.resource, {})[k.field] = v["value"]
    cache = hf_cache_dir_from_env(environ)
    if cache:
        for f in families():
            out[f.name]["cache_dir"] = cache
    return out


#: The random-weights opt-in of library use (``load_adapter`` / ``embed_arrays`` with ``use_env``), the
#: variable the orchestrator's settings read for the model resources' ``allow_random_weights``.
ALLOW_RANDOM_WEIGHTS_ENV = "RS_EMBED_ALLOW_RANDOM_WEIGHTS"


def allow_random_weights_from_env(environ: Mapping[str, str] | None = None) -> bool | None:
    """:data:`ALLOW_RANDOM_WEIGHTS_ENV` parsed (1/0, true/false, ...); None when unset or empty. An
    invalid value raises naming the variable and the valid values."""
    env = os.environ if environ is None else environ
    raw = env.get(ALLOW_RANDOM_WEIGHTS_ENV)
    if raw is None or not str(raw).strip():
        return None
    return parse_bool(raw, ALLOW_RANDOM_WEIGHTS_ENV)


def default_batch_size(family: str, device_type: str) -> int:
    """Batch size when none is given: the family's registry entry (``batch_sizes``: TerraFM 64 on
    CUDA as rs-embed, THOR 32 on CUDA; 8 on CPU)."""
    return get_family(family).default_batch_size(device_type)


#: The embed worker's read / decode / write threads (each pool; ``worker/embed.py``). 6 + 6 threads
#: leave a 16-core GPU box cores for the main loop, zarr's and Blosc's own threads. The pipeline
#: passes the model resource's ``io_threads`` in the worker request; the variable serves a worker
#: started without one (direct use).
IO_THREADS_ENV = "RS_EMBED_IO_THREADS"
IO_THREADS_DEFAULT = 6


def io_threads(environ: Mapping[str, str] | None = None) -> int:
    """The worker's I/O threads per pool from :data:`IO_THREADS_ENV` (default
    :data:`IO_THREADS_DEFAULT`); an invalid value is an error naming the variable."""
    env = os.environ if environ is None else environ
    value = env.get(IO_THREADS_ENV, "").strip()
    return parse_int(value, 1, IO_THREADS_ENV) if value else IO_THREADS_DEFAULT
