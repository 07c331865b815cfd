"""One declaration per knob: a resource or run-config field that says everything about itself.

```python
batch_size: int | None = knob("TerraFM batch size", env="RS_EMBED_TERRAFM_BATCH_SIZE",
                              why="8 on CPU, 64 on CUDA", help="Tiles per forward pass; ...",
                              changes="`adapter_settings.batch_size`; speed only")
```

:func:`knob` returns a pydantic ``Field``: its default (from the models-side variable's knob when
``env`` names one of :mod:`rs_embed_pipeline.models.knobs`, so that default exists once, where the
worker reads it too), its description (``help``: the UI launchpad and the resource docs) and the
row of ``docs/knobs.md`` in ``json_schema_extra["knob"]``, which :func:`knob_info` reads back and
:mod:`rs_embed_pipeline.orchestration.knobs_doc` turns into the page. Fields of one row (the same
``title``) may be declared on several classes; one of them gives ``changes``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from rs_embed_pipeline.models.knobs import HF_CACHE_ENV, knobs_by_env


class _Required:
    """The default of a field that has none (the deployment must set it)."""

    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()
_FROM_ENV: Any = object()  # no default given: the env knob's (or REQUIRED when there is none)
#: Pipeline setting variables (orchestration/settings.py) that set a field; a test checks that
#: settings reads each of them.
SETTING_VARIABLES: tuple[str, ...] = (
    "RS_EMBED_DEVICE", "RS_EMBED_ALLOW_RANDOM_WEIGHTS", "RS_EMBED_WORKER_PYTHON", "RS_EMBED_LEASE_WAIT_S",
    "RS_EMBED_LEASE_TTL_S",
)


@dataclasses.dataclass(frozen=True)
class KnobInfo:
    """The docs row part of one knob field: ``title`` (the row), ``env`` (variables of
    models/knobs.py or the Hugging Face cache variables), ``setting`` (a pipeline setting
    variable), ``why`` (the default explained), ``changes`` (what it changes in the run metadata;
    empty on the fields that join a row another field describes)."""

    title: str
    env: tuple[str, ...] = ()
    setting: str | None = None
    why: str = ""
    changes: str = ""


def knob(title: str, *, help: str, default: Any = _FROM_ENV, env: str | tuple[str, ...] = (),  # noqa: A002
         setting: str | None = None, why: str = "", changes: str = "") -> Any:
    """A pydantic ``Field`` declaring one knob (see the module docstring). A variable unknown to
    models/knobs.py, a default given beside a models-side variable (it has its own) or a setting
    variable that settings.py does not read are errors, raised when the class is defined."""
    envs = (env,) if isinstance(env, str) else tuple(env)
    known = knobs_by_env()
    unknown = [e for e in envs if e not in known and e not in HF_CACHE_ENV]
    if unknown or (setting is not None and setting not in SETTING_VARIABLES):
        raise ValueError(f"knob {title!r}: unknown variable(s) {unknown or [setting]}; valid: "
                         f"{', '.join([*known, *HF_CACHE_ENV, *SETTING_VARIABLES])}")
    env_defaults = [known[e].default for e in envs if e in known]
    if env_defaults and default is not _FROM_ENV:
        raise ValueError(f"knob {title!r}: its default comes from models.knobs ({', '.join(envs)}), not here")
    if default is _FROM_ENV:
        default = env_defaults[0] if env_defaults else REQUIRED
    # JSON in json_schema_extra: it also lands in the classes' JSON schema.
    extra: JsonDict = {"knob": {"title": title, "env": list(envs), "setting": setting, "why": why, "changes": changes}}
    if default is REQUIRED:
        return Field(description=help, json_schema_extra=extra)
    return Field(default=default, description=help, json_schema_extra=extra)


def knob_info(field: FieldInfo) -> KnobInfo | None:
    """The knob row of a field declared with :func:`knob`; None for a field that is no knob."""
    extra = field.json_schema_extra
    row = extra.get("knob") if isinstance(extra, dict) else None
    if not isinstance(row, dict):
        return None
    env, setting = row["env"], row["setting"]
    return KnobInfo(str(row["title"]), tuple(str(e) for e in env) if isinstance(env, list) else (),
                    None if setting is None else str(setting), str(row["why"]), str(row["changes"]))


def field_default(field: FieldInfo) -> Any:
    """A field's default, :data:`REQUIRED` when it has none."""
    return REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
