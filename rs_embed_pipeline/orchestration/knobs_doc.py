"""``docs/knobs.md``, generated from the knob fields (:func:`~rs_embed_pipeline.orchestration.knob_fields.knob`).

The page's table has one row per knob title, made by iterating, in this order:

1. the model resource classes (registry order, :func:`resources.model_resource_classes`): a field
   declared on ``ModelResource`` is listed under each of them;
2. the models' library-only knobs (``models.knobs.all_knobs()`` rows without a resource field);
3. the imagery resources, the store (:data:`RESOURCE_CLASSES`);
4. the assets' run-config classes (:data:`RUN_CONFIG_CLASSES`).

Within a class, fields come in declaration order; a field inherited from a class listed earlier is
documented there. ``python -m rs_embed_pipeline.orchestration.knobs_doc --write docs/knobs.md``
(``make knobs-doc``) writes the page; ``--check`` exits 1 when it is out of date, and a test
regenerates it and compares.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from rs_embed_pipeline.models.knobs import all_knobs
from rs_embed_pipeline.models.registry import get_family
from rs_embed_pipeline.orchestration.assets.answers import ChangeConfig, SearchIndexConfig
from rs_embed_pipeline.orchestration.assets.embeddings import CubeConfig, EmbeddingsConfig
from rs_embed_pipeline.orchestration.assets.patches import PatchesConfig
from rs_embed_pipeline.orchestration.knob_fields import REQUIRED, field_default, knob_info
from rs_embed_pipeline.orchestration.resources import (
    EarthEngineImagery, ImageryResource, LocalStacImagery, PipelineStore, StacImagery, model_resource_classes,
)

RESOURCE_CLASSES: tuple[type[dg.ConfigurableResource], ...] = (
    ImageryResource, EarthEngineImagery, LocalStacImagery, StacImagery, PipelineStore)
RUN_CONFIG_CLASSES: tuple[type[dg.Config], ...] = (
    PatchesConfig, EmbeddingsConfig, CubeConfig, SearchIndexConfig, ChangeConfig)


def documented_classes() -> tuple[type[Any], ...]:
    """Every class whose knob fields the page documents, in the page's order."""
    return (*model_resource_classes().values(), *RESOURCE_CLASSES, *RUN_CONFIG_CLASSES)


@dataclasses.dataclass
class Row:
    """One row of the table: a knob title and the fields that declare it."""

    title: str
    fields: list[tuple[str, Any, str]] = dataclasses.field(default_factory=list)  # (Class.field, default, label)
    env: list[str] = dataclasses.field(default_factory=list)
    setting: str | None = None
    why: str = ""
    changes: str = ""

    def join(self, path: str, default: Any, label: str, env: tuple[str, ...], setting: str | None, why: str,
             changes: str) -> None:
        """Add a field; its row texts must agree with the row's (one field gives ``changes``)."""
        for name, mine, given in (("changes", self.changes, changes), ("why", self.why, why),
                                  ("setting", self.setting, setting)):
            if mine and given and mine != given:
                raise ValueError(f"knob {self.title!r}: {path} gives another {name} ({given!r}) than the row ({mine!r})")
        self.fields.append((path, default, label))
        self.env += [e for e in env if e not in self.env]
        self.setting, self.why, self.changes = self.setting or setting, self.why or why, self.changes or changes


def _declaring_class(cls: type[Any], name: str) -> type[Any]:
    return next(k for k in cls.__mro__ if name in vars(k).get("__annotations__", {}))


def knob_rows() -> list[Row]:
    """The table's rows, in the page's order (module docstring)."""
    rows: dict[str, Row] = {}
    classes = documented_classes()
    models = {cls: get_family(name).title for name, cls in model_resource_classes().items()}

    def add(title: str) -> Row:
        return rows.setdefault(title, Row(title))

    def add_class(cls: type[Any]) -> None:
        for name, field in cls.model_fields.items():
            info = knob_info(field)
            declared = _declaring_class(cls, name)
            if info is None or (declared is not cls and declared in classes):
                continue  # no knob, or documented under the class that declares it
            label = models.get(cls, name)
            add(info.title).join(f"{cls.__name__}.{name}", field_default(field), label, info.env, info.setting,
                                 info.why, info.changes)

    for model in models:
        add_class(model)
    for k in all_knobs():
        if k.field is None:  # library only: load_adapter / embed_arrays options
            if not (k.title and k.changes):
                raise ValueError(f"library-only knob {k.env} needs a title and changes (models Knob)")
            add(k.title).join("", k.default, "", (k.env,), None, "", k.changes)
    for cls in (*RESOURCE_CLASSES, *RUN_CONFIG_CLASSES):
        add_class(cls)
    missing = [r.title for r in rows.values() if not r.changes]
    if missing:
        raise ValueError(f"knob(s) {missing}: no field of the row says what it changes (changes=)")
    return list(rows.values())


def _literal(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    return f"`{value}`" if isinstance(value, str) else f"`{value!r}`"


def _cells(row: Row) -> list[str]:
    fields = [(path, default, label) for path, default, label in row.fields if path]
    defaults = [d for _, d, _ in row.fields]
    env = [f"`{e}`" for e in row.env] + ([f"`{row.setting}` (pipeline setting)"] if row.setting else [])
    if all(d == defaults[0] for d in defaults):
        default = _literal(defaults[0])
    else:
        default = ", ".join(f"{_literal(d)} ({label})" for _, d, label in fields)
    if row.why:
        default += f" ({row.why})"
    return [row.title, ", ".join(f"`{path}`" for path, _, _ in fields) or "—", ", ".join(env) or "—", default,
            row.changes]


def table_markdown() -> str:
    lines = ["| Knob (page) | Resource / run-config field | Environment variable | Default | What it changes in metadata |",
             "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in knob_rows()]
    return "\n".join(lines) + "\n"


GENERATE_COMMAND = "python -m rs_embed_pipeline.orchestration.knobs_doc --write docs/knobs.md"

_INTRO = f"""\
<!-- Generated by `make knobs-doc` ({GENERATE_COMMAND}) from the knob fields of the resources and run configs: edit them there. -->
## Knobs (rs-embed parity)

Every tuning knob of rs-embed 0.3.1's TerraFM-B and THOR adapter pages (and of their Earth Engine
sensor options), and every knob of this pipeline's resources and run configs, where it lives here, the
environment variable that sets its default, and what it changes in the metadata. Precedence: explicit
resource config (UI launchpad, `definitions.py`, run config) > environment variable > the default
below. An invalid environment value stops the code location from loading with an error that names the
variable and its valid values.

- Read when the code location loads, not per run (`rs_embed_pipeline/orchestration/plan.py`): the model fields that
  lay out the tile grid and the stores (`image_size`, `model_key`, `scale_m`, `modalities`) and
  `fetch_workers`. A run config that changes the tile size, the THOR variant or the scale, or drops
  the step's modality, fails the embeddings step naming it (reload the code location instead); for
  one run's fetch threads set the imagery resource's `max_workers`.

- The orchestrator reads these variables in one place, `rs_embed_pipeline/orchestration/settings.py` (the model
  variables through `rs_embed_pipeline/models/knobs.py`), and `definitions.py` passes them to the
  resources. The worker gets every value explicitly from the resource (it ignores the environment).
- Direct library use (`load_adapter`, `embed_arrays`) honours the same variables when an option is
  not given (`use_env=False` turns that off). Rows whose field is `—` are library-only:
  in the pipeline every tile already has the model's native size, so they change nothing there.
- Run metadata keys below are on every `*_embeddings` and `*_cube` materialization (the same keys
  for every model and modality; `n/a` where a setting does not apply). "adapter_settings" is the
  adapter's full `describe()` on the embeddings materialization; it also feeds the embedding store's
  fingerprint, so a changed setting that shapes the numbers refuses an old store instead of mixing.
  Rows of run-config fields (`PatchesConfig`, `CubeConfig`, ...) name the asset whose metadata changes.
- Each knob is declared once, as its field: `knob(title, help=..., env=..., why=..., changes=...)`
  (`rs_embed_pipeline/orchestration/knob_fields.py`) gives the field its default (a variable's default
  comes from `rs_embed_pipeline/models/knobs.py`, where the worker reads it too) and its description, and
  carries this page's row; `rs_embed_pipeline/orchestration/knobs_doc.py` makes the page by iterating the
  model resources, the library-only knobs, the imagery and store resources and the run configs, in that
  order. After changing a field run `make knobs-doc`.
  `rs_embed_pipeline_tests/orchestration/test_knobs_doc.py` regenerates this page and compares it with the file,
  and parses the table below to check it against the fields and their defaults, the variables' table
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
    parser = argparse.ArgumentParser(prog="python -m rs_embed_pipeline.orchestration.knobs_doc",
                                     description="Print or write docs/knobs.md from the knob fields.")
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
            print(f"{path} is out of date with the knob fields; run: {GENERATE_COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
