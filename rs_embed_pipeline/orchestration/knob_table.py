"""The knob table: every tuning knob of the pipeline in one place, and ``docs/knobs.md`` made from it.

The rows are data, ``config/knobs.yaml`` (its header names the keys), read once into
:data:`KNOB_ROWS` and checked as they load. Each :class:`KnobRow` says for one knob: the resource
field(s) that hold it, the environment variable(s) that set its default, the default and why, and
what it changes in the run metadata.
Two things are made from the rows and from nothing else:

* the resources' field declarations: ``batch_size: int | None = knob_field("ModelResource",
  "batch_size")`` is a pydantic ``Field`` with the row's default and description;
* ``docs/knobs.md``: ``python -m rs_embed_pipeline.orchestration.knob_table --write docs/knobs.md`` (``make
  knobs-doc``); a test regenerates it and fails when the file differs.

The rs-embed environment-variable knobs stay defined in :data:`rs_embed_pipeline.models.knobs.KNOBS`
(torch-free, read by the worker too): a row naming such a variable takes that knob's default, so
there is no second copy of it here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from rs_embed_pipeline.models.knobs import HF_CACHE_ENV, KNOBS_BY_ENV


class _Required:
    """The default of a field that has none (the deployment must set it)."""

    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()
_UNSET: Any = object()  # "no default of its own": the row's default applies

#: ``ModelResource`` fields are documented as fields of both model resources.
MODEL_CLASSES: tuple[str, ...] = ("TerraFMResource", "ThorResource")
_MODEL_LABELS = {"TerraFMResource": "TerraFM", "ThorResource": "THOR"}
#: Variables read by :mod:`rs_embed_pipeline.orchestration.settings` that set a resource field (a row's ``setting``).
SETTING_VARIABLES: tuple[str, ...] = ("RS_EMBED_DEVICE", "RS_EMBED_ALLOW_RANDOM_WEIGHTS", "RS_EMBED_WORKER_PYTHON")


@dataclasses.dataclass(frozen=True)
class KnobField:
    """A resource field of a row, where it needs more than the row gives: its own description or
    default (``ThorResource.modalities``), or a description in a row shared by several fields."""

    path: str                 # "Class.field"; the class that declares it (ModelResource: both models)
    help: str | None = None   # None: the row's
    default: Any = _UNSET     # _UNSET: the row's

    @property
    def owner(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.path.split(".", 1)[1]


@dataclasses.dataclass(frozen=True)
class KnobRow:
    """One knob (one row of docs/knobs.md).

    ``env``: variables of the models.knobs table (the row's default is that knob's) or the Hugging
    Face cache variables; ``setting``: a pipeline setting variable (settings.py) that sets the
    fields; ``default``: the default when no ``env`` knob gives it; ``why``: the default explained
    (in parentheses after it); ``help``: the fields' description; ``changes``: what it changes in
    the run metadata.
    """

    knob: str
    fields: tuple[str | KnobField, ...] = ()
    env: tuple[str, ...] = ()
    setting: str | None = None
    default: Any = _UNSET
    why: str = ""
    help: str | None = None
    changes: str = ""

    def __post_init__(self) -> None:
        knob_defaults = {KNOBS_BY_ENV[e].default for e in self.env if e in KNOBS_BY_ENV}
        unknown = [e for e in self.env if e not in KNOBS_BY_ENV and e not in HF_CACHE_ENV]
        if unknown or (self.setting is not None and self.setting not in SETTING_VARIABLES):
            raise ValueError(f"knob row {self.knob!r}: unknown variable(s) {unknown or [self.setting]}")
        if knob_defaults and self.default is not _UNSET:
            raise ValueError(f"knob row {self.knob!r}: its default comes from models.knobs ({self.env}), not here")
        if len(knob_defaults) > 1:
            raise ValueError(f"knob row {self.knob!r}: its variables disagree on the default {knob_defaults}")

    @property
    def entries(self) -> tuple[KnobField, ...]:
        return tuple(f if isinstance(f, KnobField) else KnobField(f) for f in self.fields)

    @property
    def row_default(self) -> Any:
        for env in self.env:
            if env in KNOBS_BY_ENV:
                return KNOBS_BY_ENV[env].default
        return self.default

    def field_default(self, entry: KnobField) -> Any:
        return self.row_default if entry.default is _UNSET else entry.default

    def documented_fields(self) -> list[tuple[str, Any]]:
        """``(Class.field, default)`` as documented: a ``ModelResource`` field under both models,
        except a model that the row lists with its own entry."""
        listed = {e.owner for e in self.entries}
        out = []
        for entry in self.entries:
            owners = [c for c in MODEL_CLASSES if c not in listed] if entry.owner == "ModelResource" else [entry.owner]
            out += [(f"{owner}.{entry.name}", self.field_default(entry)) for owner in owners]
        return out


TABLE_PATH = Path(__file__).resolve().parents[1] / "config" / "knobs.yaml"  # the rows, as data
_ROW_KEYS = {"knob", "fields", "env", "setting", "default", "required", "why", "help", "changes"}


def _row(entry: dict[str, Any]) -> KnobRow:
    """One entry of config/knobs.yaml as a row; an unknown key is an error naming the valid ones."""
    unknown, missing = set(entry) - _ROW_KEYS, {"knob", "changes"} - set(entry)
    if unknown or missing:
        raise ValueError(f"{TABLE_PATH.name}: entry {entry.get('knob')!r} has unknown keys {sorted(unknown)}, lacks "
                         f"{sorted(missing)}; valid keys: {', '.join(sorted(_ROW_KEYS))} (knob and changes required)")
    fields = tuple(f if isinstance(f, str) else KnobField(f["path"], f.get("help"), f.get("default", _UNSET))
                   for f in entry.get("fields", ()))
    default = REQUIRED if entry.get("required") else entry.get("default", _UNSET)
    return KnobRow(entry["knob"], fields, env=tuple(entry.get("env", ())), setting=entry.get("setting"),
                   default=default, why=entry.get("why", ""), help=entry.get("help"), changes=entry["changes"])


def load_rows(path: Path = TABLE_PATH) -> tuple[KnobRow, ...]:
    return tuple(_row(entry) for entry in yaml.safe_load(path.read_text(encoding="utf-8")))


KNOB_ROWS: tuple[KnobRow, ...] = load_rows()


# ------------------------------------------------------------------------------------ resource fields
def _declared(owner: str, name: str) -> Iterator[tuple[KnobRow, KnobField]]:
    """The table's entries of the field ``owner.name``; a ``ModelResource`` field may be listed per
    model (``TerraFMResource.batch_size`` and ``ThorResource.batch_size`` in their own rows)."""
    exact = [(r, e) for r in KNOB_ROWS for e in r.entries if e.path == f"{owner}.{name}"]
    if exact or owner != "ModelResource":
        yield from exact
        return
    yield from ((r, e) for r in KNOB_ROWS for e in r.entries if e.owner in MODEL_CLASSES and e.name == name)


def field_default(owner: str, name: str) -> Any:
    """The table's default of a resource field (:data:`REQUIRED` when it has none)."""
    found = list(_declared(owner, name))
    if not found:
        raise KeyError(f"{owner}.{name} is not in the knob table (rs_embed_pipeline/config/knobs.yaml)")
    defaults = [row.field_default(entry) for row, entry in found]
    if any(d != defaults[0] for d in defaults):
        raise ValueError(f"{owner}.{name}: the knob table's rows disagree on its default: {defaults}")
    return defaults[0]


def knob_field(owner: str, name: str) -> Any:
    """A pydantic ``Field`` for the resource field ``owner.name``, with the knob table's default and
    description (the first row that describes it)."""
    default = field_default(owner, name)
    description = next((h for row, entry in _declared(owner, name) if (h := entry.help or row.help)), None)
    if description is None:
        raise ValueError(f"{owner}.{name} has no description (help) in the knob table (config/knobs.yaml)")
    if default is REQUIRED:
        return Field(description=description)
    return Field(default=default, description=description)


# ------------------------------------------------------------------------------------ docs/knobs.md
def _literal(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    return f"`{value}`" if isinstance(value, str) else f"`{value!r}`"


def _cells(row: KnobRow) -> list[str]:
    documented = row.documented_fields()
    fields = ", ".join(f"`{path}`" for path, _ in documented) or "—"
    env = [f"`{e}`" for e in row.env] + ([f"`{row.setting}` (pipeline setting)"] if row.setting else [])
    defaults = [d for _, d in documented] or [row.row_default]
    if all(d == defaults[0] for d in defaults):
        default = _literal(defaults[0])
    else:
        default = ", ".join(f"{_literal(d)} ({_MODEL_LABELS.get(path.split('.')[0], path.split('.')[0])})" for path, d in documented)
    if row.why:
        default += f" ({row.why})"
    return [row.knob, fields, ", ".join(env) or "—", default, row.changes]


def table_markdown() -> str:
    lines = ["| Knob (page) | Resource field | Environment variable | Default | What it changes in metadata |",
             "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in KNOB_ROWS]
    return "\n".join(lines) + "\n"


GENERATE_COMMAND = "python -m rs_embed_pipeline.orchestration.knob_table --write docs/knobs.md"

_INTRO = f"""\
<!-- Generated by `make knobs-doc` ({GENERATE_COMMAND}) from the knob table, rs_embed_pipeline/config/knobs.yaml: edit it there. -->
## Knobs (rs-embed parity)

Every tuning knob of rs-embed 0.3.1's TerraFM-B and THOR adapter pages (and of their Earth Engine
sensor options), where it lives here, the environment variable that sets its default, and what it
changes in the metadata. Precedence: explicit resource config (UI launchpad, `definitions.py`,
run config) > environment variable > the default below. An invalid environment value stops the code
location from loading with an error that names the variable and its valid values.

- Read when the code location loads, not per run (`rs_embed_pipeline/orchestration/plan.py`): the model fields that
  lay out the tile grid and the stores (`image_size`, `model_key`, `scale_m`, `modalities`) and
  `fetch_workers`. A run config that changes the tile size, the THOR variant or the scale, or drops
  the step's modality, fails the embeddings step naming it (reload the code location instead); for
  one run's fetch threads set the imagery resource's `max_workers`.

- The orchestrator reads these variables in one place, `rs_embed_pipeline/orchestration/settings.py` (through the
  knob table in `rs_embed_pipeline/models/knobs.py`), and `definitions.py` passes them to the
  resources. The worker gets every value explicitly from the resource (it ignores the environment).
- Direct library use (`load_adapter`, `embed_arrays`) honours the same variables when an option is
  not given (`use_env=False` turns that off). Rows whose resource field is `—` are library-only:
  in the pipeline every tile already has the model's native size, so they change nothing there.
- Run metadata keys below are on every `*_embeddings` and `*_cube` materialization (the same keys
  for every model and modality; `n/a` where a setting does not apply). "adapter_settings" is the
  adapter's full `describe()` on the embeddings materialization; it also feeds the embedding store's
  fingerprint, so a changed setting that shapes the numbers refuses an old store instead of mixing.
- This page is generated from one table, `rs_embed_pipeline/config/knobs.yaml` (read by
  `rs_embed_pipeline/orchestration/knob_table.py`), which also gives the resources' fields their defaults and
  descriptions (`knob_field`); the variables' defaults come from `rs_embed_pipeline/models/knobs.py`.
  After changing a row run `make knobs-doc`.
  `rs_embed_pipeline_tests/orchestration/test_knobs_doc.py` regenerates this page and compares it with the file,
  and parses the table below to check it against the resources' fields and defaults, the knob table
  and the settings, so it cannot drift.

"""

_AFTER = """
Failure modes of the pages and their errors (each tested, message asserted):

| Failure | Where | Error says |
| --- | --- | --- |
| time window that is not a range | `embed_arrays(temporal=...)`, providers' `fetch_patches(start, end)` | `Time window ... is not a range` / `... is not before end` / `end ... must be after start` |
| tensor input without data | `embed_arrays(model, None)` | `embed_arrays (tensor backend) requires input arrays ...` |
| wrong channel count | `embed` / `embed_arrays` | `expects C=12 channels ... got C=10 ... terrafm_b takes C=12 for S2 ... or C=2 for S1` (THOR: 10 or 2) |
| data not in the modality's units | `embed` / `embed_arrays`; `input_inspection`; user-scene catalog builder | `looks dB-scaled` (S1 dB where linear power is expected), `every value within +-1.5` (unit-scaled S2), `above 100` (S2 DN given as S1) |
| weights not fetchable offline | `load_adapter` | names the repo, file and cache dir, and how to pass a local file (`checkpoint=`, `RS_EMBED_THOR_CKPT`) |
| missing optional dependency | `load_adapter` / `embed_arrays` without torch, hub download without huggingface_hub | `Missing dependency: 'torch' ...` with the install command / environment |
| invalid group_merge | `load_adapter`, resource, `RS_EMBED_THOR_GROUP_MERGE` | `Unknown THOR group_merge 'max'; valid: mean, sum, concat` (the variable named when it came from the environment) |
| grid unavailable for the configuration | `load_adapter` / `embed` (e.g. image_size 176 at patch 16) | `THOR cannot tile ... grid ... is unavailable for this configuration. Use the default model/input settings ...` |

### Tensor backend and your own scenes

- Arrays you already have: `rs_embed_pipeline.models.embed_arrays(model, arrays, modality="s2",
  output="pooled"|"grid"|"both", temporal=None, check_input=None, check_raise=None, checkpoint=None,
  **options)` takes CHW or BCHW arrays (numpy or torch) in provider units (S2 DN = reflectance x
  10000 in the adapter's band order, S1 linear sigma0 VV, VH) and runs the same preprocessing,
  validation, inspection and metadata as the pipeline (`meta["backend"] == "tensor"`). Runs in the
  worker environment (`.venv-worker`); see `rs_embed_pipeline/models/tensor.py`.
- A folder of your GeoTIFF / COG scenes: `python -m rs_embed_pipeline.providers.local_catalogs.user_scenes --scenes
  DIR --out DIR/stac` writes a static STAC catalog (no pixel copies: one VRT per band) from files
  named `<S2|S1>_<YYYYMMDD>[THHMMSS][_<anything>].tif` (S2: 12 bands B1..B12 without B10, or the 10
  THOR bands, or band descriptions naming them, DN by default; S1: VV, VH linear power, or dB with
  `--s1-units dB` and `use_float_linear: false`). Then `RS_EMBED_LOCAL_CATALOG=DIR/stac/catalog.json`
  (provider `local_stac`) feeds the whole pipeline from it; see
  `rs_embed_pipeline/providers/local_catalogs/user_scenes.py` for the full convention.
"""


def knobs_markdown() -> str:
    """The whole of ``docs/knobs.md``."""
    return _INTRO + table_markdown() + _AFTER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rs_embed_pipeline.orchestration.knob_table",
                                     description="Print or write docs/knobs.md from the knob table.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH", help="write the page to PATH (docs/knobs.md)")
    group.add_argument("--check", metavar="PATH", help="exit 1 when PATH differs from the generated page")
    args = parser.parse_args(argv)
    text = knobs_markdown()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
    elif args.check:
        path = Path(args.check)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is out of date with the knob table; run: {GENERATE_COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
