"""TerraTorch integration (the THOR family's: :mod:`rs_embed_pipeline.models.thor.terratorch_ext`).

Importing this module is the opt-in it always was: it registers ``thor_v1_tiny|small|base|large``
in terratorch's backbone registry (``docs/terratorch/custom_modules`` and README's ``import
rs_embed_pipeline.models.terratorch_ext`` rely on this path).
"""

from __future__ import annotations

from .thor.terratorch_ext import (  # noqa: F401 - registers on import; the public names of this path
    OUTPUT_FORMATS,
    TERRATORCH_NAMES,
    ThorBackbone,
    build_thor_backbone,
    register_terratorch_backbones,
)

__all__ = ["OUTPUT_FORMATS", "TERRATORCH_NAMES", "ThorBackbone", "build_thor_backbone", "register_terratorch_backbones"]
