"""TerraFM-B without torch: its registry entry (:data:`FAMILY`), input bands, options and knob rows.

Pure Python, importable in both environments (the orchestrator validates TerraFM settings with
:func:`check_options`; the adapter imports its vocabulary from here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rs_embed_pipeline.core.vocabulary import S1_BANDS

from ..errors import ModelInputError
from ..options import Knob, positive_int
from ..registry import ModelFamily

# Provider band names, in the order TerraFM's embed() takes them (B1..B12 without B10).
TERRAFM_S2_BANDS: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
HF_REPO = "MBZUAI/TerraFM"
HF_FILE = "TerraFM-B.pth"
IMAGE_SIZE = 224  # the native side (learned positional embedding for 14 x 14 patches of 16 px)
S2_BRANCHES: tuple[str, ...] = ("l2a", "l1c")
BATCH_SIZES = {"cpu": 8, "cuda": 64}  # 64 on CUDA: rs-embed's


def canonical_s2_branch(value: Any) -> str:
    """``l2a`` | ``l1c`` (``s2_l2a`` / ``s2_l1c`` accepted too)."""
    branch = str(value).strip().lower()
    branch = branch[3:] if branch.startswith("s2_") else branch
    if branch not in S2_BRANCHES:
        raise ModelInputError(f"Unknown TerraFM s2_branch {branch!r}; valid: 'l2a' (default), 'l1c'")
    return branch


def check_options(options: Mapping[str, Any], modalities: tuple[str, ...]) -> None:
    """TerraFM option values, checked without torch."""
    if "s2_branch" in options:
        canonical_s2_branch(options["s2_branch"])
    if "image_size" in options and options["image_size"] != IMAGE_SIZE:
        raise ModelInputError(
            f"TerraFM runs at its native {IMAGE_SIZE} px (learned positional embedding); image_size="
            f"{options['image_size']!r} is not supported - inputs of any size are resized to {IMAGE_SIZE}")


# rs-embed 0.3.1's TerraFM-B page (MODEL_SPEC 1.4)
KNOBS: tuple[Knob, ...] = (
    Knob("RS_EMBED_TERRAFM_BATCH_SIZE", "terrafm", "batch_size", "batch_size", "terrafm", None,
         f"an integer >= 1 (unset: {BATCH_SIZES['cpu']} on CPU, {BATCH_SIZES['cuda']} on CUDA)",
         positive_int("RS_EMBED_TERRAFM_BATCH_SIZE")),
    Knob("RS_EMBED_TERRAFM_FETCH_WORKERS", "terrafm", None, "fetch_workers", "terrafm", 8,
         "an integer >= 1", positive_int("RS_EMBED_TERRAFM_FETCH_WORKERS")),
)

FAMILY = ModelFamily(
    name="terrafm",
    title="TerraFM-B",
    ids={"terrafm_b": None, "terrafm": None},
    input_bands={"s2": TERRAFM_S2_BANDS, "s1": S1_BANDS},
    tile_size_px=IMAGE_SIZE,
    scale_m=10.0,
    adapter=f"{__package__}.adapter:TerraFMAdapter",
    model=f"{__package__}.model:build_terrafm",
    options=("s2_branch", "image_size"),
    batch_sizes=BATCH_SIZES,
    knobs=KNOBS,
    check_options=check_options,
)
