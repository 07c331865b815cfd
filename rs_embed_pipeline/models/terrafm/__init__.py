"""TerraFM-B (MBZUAI/TerraFM): the whole family in one package.

* ``spec.py``: the registry entry (:data:`FAMILY`: ids, bands, tile size, options, knobs) - no
  torch, importable in both environments;
* ``model.py``: the backbone (torch), ``build_terrafm`` (the registry's random-init builder);
* ``adapter.py``: ``TerraFMAdapter`` (``load_adapter("terrafm_b")`` builds one).

Importing this package registers the family and imports no torch; the names of ``model.py`` and
``adapter.py`` resolve here on first use (``rs_embed_pipeline.models.terrafm.TerraFM``), as they
did when TerraFM was one module.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import require
from ..registry import register_family
from .spec import FAMILY

register_family(FAMILY)

_LAZY: dict[str, str] = {
    **dict.fromkeys(("TerraFM", "TerraFMConfig", "TerraFMPatchEmbed", "TokenProjection", "BRANCHES", "patchify_conv",
                     "build_terrafm"), "model"),
    "TerraFMAdapter": "adapter",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        require("torch", f"{__name__}.{name}")
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
