"""THOR 1.0 (FM4CS/THOR-1.0-{tiny,small,base,large}): the whole family in one package.

* ``spec.py``: the registry entry (:data:`FAMILY`: ids, bands, tile size, options, knobs), the
  option vocabularies and their validation - no torch, importable in both environments;
* ``model.py``: the encoder (torch), ``build_encoder`` (the registry's random-init builder);
* ``preprocessing.py``: THOR's statistics and ``native_snap`` geometry (numpy);
* ``adapter.py``: ``ThorAdapter`` (``load_adapter("thor_1_0_base")`` builds one);
* ``terratorch_ext.py``: ``thor_v1_*`` builders for terratorch's backbone registry (opt-in import).

Importing this package registers the family and imports no torch; the names of ``model.py``,
``preprocessing.py`` and ``adapter.py`` resolve here on first use (``rs_embed_pipeline.models.thor.
ThorEncoder``), as they did when THOR was one module.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import require
from ..registry import register_family
from .spec import FAMILY

register_family(FAMILY)

_LAZY: dict[str, str] = {
    **dict.fromkeys((
        "ThorEncoder", "ThorConfig", "ThorBand", "TokenGrid", "GroupTokens", "IndPatchEmbed", "BAND_TABLE", "BANDS",
        "NUM_GROUPS", "GROUP_MEMBERS", "PATCH_EMBED_NAMES", "MIN_GSD_M", "VARIANTS", "VARIANT_ALIASES",
        "canonical_variant", "alibi_slopes", "sincos_1d", "token_grid_for", "pi_resize_matrix", "pi_resize_pinv",
        "pool_tokens", "group_grid", "square_token_grid", "build_encoder",
        # the vocabulary model.py has always re-exported
        "GROUP_MERGES", "GROUP_MERGE_ALIASES", "THOR_VARIANTS", "THOR_VARIANT_ALIASES", "canonical_group_merge",
        "canonical_thor_variant",
    ), "model"),
    **dict.fromkeys(("THOR_S2_MEAN", "THOR_S2_STD", "s2_thor_stats", "thor_side_unit", "snap_side",
                     "thor_native_snap_decision"), "preprocessing"),
    "ThorAdapter": "adapter",
}
_NEEDS_TORCH = ("model", "adapter")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if _LAZY[name] in _NEEDS_TORCH:
            require("torch", f"{__name__}.{name}")
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
