"""The model registry: one :class:`ModelFamily` entry per model family, in the style of timm's
model registry. Everything that used to ask "which model is this?" asks the registry instead:
``load_adapter`` and ``build_model`` (``models/__init__.py``), the adapters' input bands and default
batch sizes (``adapters.py``), the knob table (``knobs.py``: every family's knob rows) and the
orchestrator's per-model settings (see :meth:`ModelFamily.validate_options`).

An entry is plain data plus *references* to the torch code (``"module:attribute"`` strings, or
callables), so registering a family and looking it up never imports torch: ``import
rs_embed_pipeline.models`` stays light in both environments, and the adapter class and the model
builder are imported on first use.

```python
from rs_embed_pipeline.models.registry import ModelFamily, register_family, get_family, families

register_family(ModelFamily(
    name="mymodel", title="My model",
    ids={"mymodel_b": "base", "mymodel": "base"},           # model ids and aliases -> size (None: one size)
    input_bands={"s2": ("B2", "B3", "B4", "B8")},          # provider bands per modality, in embed() order
    tile_size_px=224,
    adapter="my_package.adapter:MyAdapter",                 # called as (checkpoint=, arch=, device=, **options)
    model="my_package.model:build",                         # called as (arch, variant): random-init nn.Module
    batch_sizes={"cpu": 8, "cuda": 64},
))
get_family("mymodel_b").model_id()       # "mymodel_b"
```

The built-in families register themselves when their package is imported
(``models/terrafm/__init__.py``, ``models/thor/__init__.py``); ``rs_embed_pipeline.models`` imports
both, so they are registered before anything can look them up.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rs_embed_pipeline.core.vocabulary import MODALITIES

from .errors import ModelError, ModelInputError
from .options import Knob

#: Options every adapter takes besides its family's own (``ModelFamily.options``) and the
#: ``checkpoint``, ``arch`` and ``device`` arguments.
COMMON_OPTIONS: tuple[str, ...] = ("batch_size", "precision", "allow_random_weights", "cache_dir", "compile")
#: The ``load_adapter`` arguments that are not options.
ADAPTER_ARGUMENTS: tuple[str, ...] = ("checkpoint", "arch", "device", "use_env")
#: ``precision`` values and their canonical names.
PRECISIONS = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
#: The batch size on a device type that a family's ``batch_sizes`` does not name.
DEFAULT_BATCH_SIZE = 8

Reference = str | Callable[..., Any]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(mapping))


@dataclasses.dataclass(frozen=True, eq=False)  # entries compare (and hash) by identity
class ModelFamily:
    """Everything the pipeline knows about a model family, without importing its torch code.

    ``name``: the family's name; also the orchestrator's resource key and asset-name prefix and the
    ``family`` of its knob rows (``"thor"``).
    ``title``: human name (asset descriptions, STAC titles).
    ``ids``: model ids and aliases (matched case-insensitively after stripping) -> the size
    (variant) each one means, ``None`` for a family with one size. Per size, the first id is the
    canonical one (store paths, ``adapter.model_id``).
    ``input_bands``: modality -> the provider bands ``embed`` takes, in order; its keys are the
    modalities the family embeds.
    ``tile_size_px``: the native tile side; ``tile_size_option`` names the option that changes it
    (THOR's ``image_size``), None when it is fixed. ``scale_m``: the tiles' ground sampling.
    ``adapter``: ``"module:attribute"`` (or a callable) building the adapter:
    ``adapter(checkpoint=..., arch=..., device=..., **options)``, usually the adapter class.
    ``model``: ``"module:attribute"`` (or a callable) building the bare backbone with random
    weights: ``model(arch, variant)``; its ``state_dict()`` keys are the released checkpoint's.
    ``options``: the family's own ``load_adapter`` options (:data:`COMMON_OPTIONS` come on top).
    ``batch_sizes``: device type (``"cpu"``, ``"cuda"``) -> batch size when none is given.
    ``knobs``: the family's knob rows (environment variables, resource fields, defaults).
    ``variant_option``: the option that picks the size (THOR: ``"variant"``), with ``parse_variant``
    turning any spelling of a size into the canonical one; ``env_variant_ids``: the ids whose size
    the environment may choose (rs-embed's generic ``"thor"``); every other id fixes its size.
    ``check_options``: torch-free validation of the family's option values:
    ``check_options(options, modalities)`` raises ``ModelInputError`` naming the option and the
    valid values (the orchestrator calls it before a worker starts).
    """

    name: str
    title: str
    ids: Mapping[str, str | None]
    input_bands: Mapping[str, tuple[str, ...]]
    tile_size_px: int
    adapter: Reference
    model: Reference
    scale_m: float = 10.0
    tile_size_option: str | None = None
    options: tuple[str, ...] = ()
    batch_sizes: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"cpu": DEFAULT_BATCH_SIZE})
    knobs: tuple[Knob, ...] = ()
    variant_option: str | None = None
    parse_variant: Callable[[Any], str] | None = None
    env_variant_ids: tuple[str, ...] = ()
    check_options: Callable[[Mapping[str, Any], tuple[str, ...]], None] | None = None

    def __post_init__(self) -> None:
        ids = {str(k).strip().lower(): v for k, v in self.ids.items()}
        object.__setattr__(self, "ids", _frozen(ids))
        object.__setattr__(self, "input_bands", _frozen({m: tuple(b) for m, b in self.input_bands.items()}))
        object.__setattr__(self, "batch_sizes", _frozen(self.batch_sizes))
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "knobs", tuple(self.knobs))
        object.__setattr__(self, "env_variant_ids", tuple(str(k).strip().lower() for k in self.env_variant_ids))
        problems = self._problems()
        if problems:
            raise ModelError(f"Invalid model family {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out = []
        if not self.name or self.name != self.name.strip().lower():
            out.append("name must be a non-empty lower-case string")
        if not self.ids:
            out.append("ids must name at least one model id")
        if not self.input_bands:
            out.append("input_bands must name at least one modality")
        bad = [m for m in self.input_bands if m not in MODALITIES]
        if bad:
            out.append(f"input_bands has modalities {bad}; valid: {list(MODALITIES)}")
        empty = [m for m, bands in self.input_bands.items() if not bands]
        if empty:
            out.append(f"input_bands of {empty} are empty")
        if isinstance(self.tile_size_px, bool) or not isinstance(self.tile_size_px, int) or self.tile_size_px < 1:
            out.append(f"tile_size_px must be a positive integer, got {self.tile_size_px!r}")
        if not self.scale_m > 0:
            out.append(f"scale_m must be positive, got {self.scale_m!r}")
        for what, ref in (("adapter", self.adapter), ("model", self.model)):
            if not (callable(ref) or (isinstance(ref, str) and ref.strip())):
                out.append(f"{what} must be a 'module:attribute' string or a callable, got {ref!r}")
        clash = sorted(set(self.options) & set(COMMON_OPTIONS))
        if clash:
            out.append(f"options {clash} are common to every adapter; list only the family's own")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in self.batch_sizes.values()):
            out.append(f"batch_sizes must be positive integers, got {dict(self.batch_sizes)}")
        foreign = [k.env for k in self.knobs if k.family != self.name]
        if foreign:
            out.append(f"knobs {foreign} belong to another family (Knob.family must be {self.name!r})")
        if (self.variant_option is None) != (self.parse_variant is None):
            out.append("variant_option and parse_variant go together")
        if self.variant_option is None and any(v is not None for v in self.ids.values()):
            out.append("ids name sizes but there is no variant_option")
        unknown = [k for k in self.env_variant_ids if k not in self.ids]
        if unknown:
            out.append(f"env_variant_ids {unknown} are not among the ids")
        if self.variant_option is not None and self.variant_option not in self.options:
            out.append(f"variant_option {self.variant_option!r} is not among the options")
        if self.tile_size_option is not None and self.tile_size_option not in self.options:
            out.append(f"tile_size_option {self.tile_size_option!r} is not among the options")
        return out

    # -- what the family offers ----------------------------------------------------------------

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.input_bands)

    @property
    def variants(self) -> tuple[str | None, ...]:
        """The sizes, in the order of their first id."""
        return tuple(dict.fromkeys(self.ids.values()))

    def model_id(self, variant: str | None = None) -> str:
        """The canonical model id of a size (the first id naming it); the default size's without one."""
        if variant is None:
            return next(iter(self.ids))
        for key, v in self.ids.items():
            if v == variant:
                return key
        raise ModelInputError(f"{self.title} has no size {variant!r}; sizes: {[v for v in self.variants if v]}")

    def bands(self, modality: str) -> tuple[str, ...]:
        """Provider bands of ``modality`` in the order the adapter takes them."""
        if modality not in self.input_bands:
            raise ModelInputError(f"{self.title} supports modalities {self.modalities}, got {modality!r}")
        return self.input_bands[modality]

    def default_batch_size(self, device_type: str) -> int:
        return int(self.batch_sizes.get(device_type, self.batch_sizes.get("cpu", DEFAULT_BATCH_SIZE)))

    def knob(self, option: str) -> Knob:
        """The family's knob row for a ``load_adapter`` option or resource field."""
        for k in self.knobs:
            if option in (k.option, k.field):
                return k
        raise KeyError(f"no knob {self.name}.{option}")

    def default(self, option: str) -> Any:
        """The default of a knob (the knob table is where defaults live)."""
        return self.knob(option).default

    @property
    def checkpoint_env(self) -> str | None:
        """The environment variable naming a local checkpoint file, when the family has one."""
        return next((k.env for k in self.knobs if k.option == "checkpoint"), None)

    def adapter_factory(self) -> Callable[..., Any]:
        """The adapter class (or factory); imports the family's torch code."""
        return _resolve(self.adapter, self.name, "adapter")

    def build_model(self, arch: dict | None = None, variant: str | None = None) -> Any:
        """The bare backbone with random weights (``arch``: a reduced test model's sizes)."""
        return _resolve(self.model, self.name, "model")(arch, variant)

    def validate_options(self, options: Mapping[str, Any], modalities: Sequence[str] | None = None) -> None:
        """Check ``load_adapter`` options (and its ``checkpoint``, ``arch``, ``device``, ``use_env``
        arguments) without torch, as the orchestrator does before a worker starts: unknown options,
        unsupported modalities, ``precision``, ``batch_size``, ``device`` and the family's own checks
        (``check_options``). Raises ``ModelInputError`` naming the option and the valid values; None
        means the default."""
        unknown = sorted(set(options) - set(self.options) - set(COMMON_OPTIONS) - set(ADAPTER_ARGUMENTS))
        if unknown:
            raise ModelInputError(
                f"Unknown option(s) {unknown} for {self.model_id()}; valid options: "
                f"{sorted(set(self.options) | set(COMMON_OPTIONS))} plus checkpoint, arch, device")
        mods = tuple(modalities) if modalities is not None else self.modalities
        for m in mods:
            self.bands(m)
        given = {k: v for k, v in options.items() if v is not None}
        if "precision" in given and str(given["precision"]).strip().lower() not in PRECISIONS:
            raise ModelInputError(f"Unknown precision {given['precision']!r}; valid: fp32, bf16")
        bs = given.get("batch_size", 1)
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ModelInputError(f"batch_size must be a positive integer, got {bs!r}")
        device = str(given.get("device", "auto")).strip().lower()
        if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
            raise ModelInputError(f"Unknown device {given['device']!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")
        if self.check_options is not None:
            self.check_options({k: v for k, v in given.items() if k in self.options}, mods)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary (documentation, the orchestrator's plan)."""
        return {
            "name": self.name,
            "title": self.title,
            "ids": dict(self.ids),
            "modalities": list(self.modalities),
            "input_bands": {m: list(b) for m, b in self.input_bands.items()},
            "tile_size_px": self.tile_size_px,
            "tile_size_option": self.tile_size_option,
            "scale_m": self.scale_m,
            "options": list(self.options),
            "batch_sizes": dict(self.batch_sizes),
            "knobs": [k.env for k in self.knobs],
        }


def _resolve(ref: Reference, family: str, what: str) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    if not attr:
        module, _, attr = ref.rpartition(".")
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):  # the path is wrong
            raise ModelError(f"Model family {family!r}: its {what} {ref!r} cannot be imported ({exc})") from exc
        raise  # a dependency of the module is missing: its own error says which
    try:
        return getattr(imported, attr)
    except AttributeError as exc:
        raise ModelError(f"Model family {family!r}: its {what} {ref!r} does not exist ({exc})") from exc


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

_lock = threading.Lock()
_families: dict[str, ModelFamily] = {}
_ids: dict[str, str] = {}  # model id or alias -> family name


def _key(name: Any) -> str:
    return str(name).strip().lower()


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Add a family (``replace=True``: replace the family of that name). Refuses a name or a model
    id that another family has already. Returns the entry."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family takes a ModelFamily, got {type(family).__name__}")
    with _lock:
        if family.name in _families and not replace:
            raise ModelError(f"Model family {family.name!r} is already registered; pass replace=True to replace it")
        others = {k: f for k, f in _ids.items() if f != family.name}  # other families' ids -> family
        taken = sorted(k for k in family.ids if k in others)
        if taken:
            raise ModelError(
                f"Model family {family.name!r}: ids {taken} are already registered by "
                f"{sorted({others[k] for k in taken})}")
        # get_family takes ids and family names: neither may mean two families
        clash = sorted({f for f in _families if f != family.name and f in family.ids}
                       | ({family.name} & set(others)))
        if clash:
            raise ModelError(f"Model family {family.name!r}: {clash} would name two families "
                             "(a family name is also looked up as a model id)")
        _unregister(family.name)
        _families[family.name] = family
        for k in family.ids:
            _ids[k] = family.name
    return family


def unregister_family(name: str) -> ModelFamily:
    """Remove a family (tests; plugins that replace one); returns its entry."""
    with _lock:
        family = _unregister(_key(name))
    if family is None:
        raise ModelInputError(f"Unknown model family {name!r}; registered: {', '.join(_families)}")
    return family


def _unregister(name: str) -> ModelFamily | None:
    family = _families.pop(name, None)
    if family is not None:
        for k in family.ids:
            _ids.pop(k, None)
    return family


def families() -> tuple[ModelFamily, ...]:
    """The registered families, in registration order."""
    with _lock:
        return tuple(_families.values())


def model_ids() -> dict[str, tuple[str, str | None]]:
    """Every registered model id and alias -> (family name, size)."""
    return {k: (f.name, v) for f in families() for k, v in f.ids.items()}


def resolve(name: str) -> tuple[ModelFamily, str, str | None]:
    """``(family, canonical spelling of the id, its size)`` of a model id or alias."""
    key = _key(name)
    with _lock:
        family = _families.get(_ids.get(key, ""))
    if family is None:
        raise ModelInputError(f"Unknown model {name!r}; valid: {', '.join(model_ids())}")
    return family, key, family.ids[key]


def get_family(name: str) -> ModelFamily:
    """The family of a model id or alias (``"thor_1_0_large"``), or of a family name (``"thor"``).
    Unknown names raise ``ModelInputError`` listing every registered model id."""
    key = _key(name)
    with _lock:
        family = _families.get(_ids.get(key, key))
    if family is None:
        raise ModelInputError(f"Unknown model {name!r}; valid: {', '.join(model_ids())}")
    return family
