"""THOR 1.0 without torch: its registry entry (:data:`FAMILY`), model ids and sizes, input bands,
option vocabularies (sizes, group merges, normalisations, resize modes) and knob rows.

Pure Python, importable in both environments: the orchestrator validates THOR settings with these
functions, and the THOR model code (``model.py``, ``adapter.py``) imports its vocabulary from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rs_embed_pipeline.core.vocabulary import S1_BANDS

from ..errors import ModelInputError
from ..options import Knob, choice, file_path, parse_bool, positive_int
from ..registry import ModelFamily

# ------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------

THOR_VARIANTS: tuple[str, ...] = ("tiny", "small", "base", "large")
THOR_VARIANT_ALIASES = {"t": "tiny", "s": "small", "b": "base", "l": "large"}
# Prefixes accepted in front of a size: rs-embed model keys, our model ids, the HF repo name.
_THOR_KEY_PREFIXES = ("thor_v1_", "thor_1_0_", "thor-1.0-", "fm4cs/thor-1.0-")


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


# ------------------------------------------------------------------------------------------------
# Bands
# ------------------------------------------------------------------------------------------------

# Provider band names, in the order THOR's embed() takes them (no B1, B9).
THOR_S2_BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")

# Provider band -> THOR band name (B8A is THOR's "RE4", a 20 m band).
THOR_BAND_NAMES: dict[str, str] = {
    "B2": "S2:Blue",
    "B3": "S2:Green",
    "B4": "S2:Red",
    "B5": "S2:RE1",
    "B6": "S2:RE2",
    "B7": "S2:RE3",
    "B8": "S2:NIR",
    "B8A": "S2:RE4",
    "B11": "S2:SWIR1",
    "B12": "S2:SWIR2",
    "VV": "S1:IW-VV",
    "VH": "S1:IW-VH",
}

# ------------------------------------------------------------------------------------------------
# Option vocabularies
# ------------------------------------------------------------------------------------------------

GROUP_MERGES: tuple[str, ...] = ("mean", "sum", "concat")
GROUP_MERGE_ALIASES = {"avg": "mean", "average": "mean"}
THOR_RESIZE_MODES: tuple[str, ...] = ("fixed", "native_snap")
THOR_SHAPE_ADJUST: tuple[str, ...] = ("crop", "pad")

# THOR normalisation modes per modality: alias -> canonical name.
THOR_S2_NORMALIZATIONS = {
    "thor_stats": "thor_stats",
    "zscore": "thor_stats",
    "thor_zscore": "thor_stats",
    "unit_scale": "unit_scale",
    "unit": "unit_scale",
    "reflectance": "unit_scale",
    "none": "none",
    "raw": "none",
    "off": "none",
}
THOR_S1_NORMALIZATIONS = {
    "thor_stats": "thor_stats",  # = the shared log1p / joint-p99 normaliser (rs-embed behaviour)
    "default": "thor_stats",
    "auto": "thor_stats",
    "s1_log_normalize": "thor_stats",
    "log_normalize": "thor_stats",
    "log1p": "thor_stats",
    "log1p_p99": "thor_stats",
    "none": "none",
    "raw": "none",
    "off": "none",
}


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
    v = str(value).strip().lower()
    if v not in THOR_S2_NORMALIZATIONS and v not in THOR_S1_NORMALIZATIONS:
        raise ModelInputError(
            f"Unknown THOR normalization mode {value!r}. Use one of: thor_stats, unit_scale, none "
            f"(S2 aliases: {sorted(THOR_S2_NORMALIZATIONS)}; S1 aliases: {sorted(THOR_S1_NORMALIZATIONS)})"
        )
    return v


def thor_normalization(mode: str, modality: str) -> str:
    """Canonical THOR normalisation name for ``modality``; a clear error for unknown values."""
    m = str(mode).strip().lower()
    if modality == "s2":
        if m not in THOR_S2_NORMALIZATIONS:
            raise ModelInputError(
                f"Unknown THOR normalization mode {mode!r} for S2. Use one of: thor_stats, unit_scale, none "
                f"(aliases: {sorted(THOR_S2_NORMALIZATIONS)})"
            )
        return THOR_S2_NORMALIZATIONS[m]
    if m not in THOR_S1_NORMALIZATIONS:
        raise ModelInputError(
            f"Unknown THOR S1 normalization mode {mode!r}. Use one of: thor_stats (= log1p / joint "
            f"99th percentile), none (aliases: {sorted(THOR_S1_NORMALIZATIONS)}); unit_scale is S2-only"
        )
    return THOR_S1_NORMALIZATIONS[m]


# ------------------------------------------------------------------------------------------------
# Knobs (rs-embed 0.3.1's THOR page, MODEL_SPEC 2.1 and 2.4)
# ------------------------------------------------------------------------------------------------

BATCH_SIZES = {"cpu": 8, "cuda": 32}
IMAGE_SIZE = 288  # pixels at scale_m 10: the native tile side (the image_size knob's default)

KNOBS: tuple[Knob, ...] = (
    Knob("RS_EMBED_THOR_MODEL_KEY", "thor", "variant", "model_key", "thor", "thor_v1_base",
         "thor_v1_tiny, thor_v1_small, thor_v1_base, thor_v1_large (or thor_1_0_<size>, a bare size)",
         lambda v: thor_model_key(canonical_thor_variant(v))),
    Knob("RS_EMBED_THOR_CKPT", "thor", "checkpoint", "checkpoint", "thor", None,
         "a path to a THOR checkpoint file (thor_v1_vit_<size>.pt)", file_path),
    Knob("RS_EMBED_THOR_PRETRAINED", "thor", "pretrained", "pretrained", "thor", True,
         "1/0, true/false, yes/no, on/off", lambda v: parse_bool(v, "RS_EMBED_THOR_PRETRAINED")),
    Knob("RS_EMBED_THOR_IMG", "thor", "image_size", "image_size", "thor", IMAGE_SIZE,
         "an integer >= 1 (pixels; ground cover = scale_m x image_size)", positive_int("RS_EMBED_THOR_IMG")),
    Knob("RS_EMBED_THOR_NORMALIZE", "thor", "normalization", "normalization", "thor", "thor_stats",
         "thor_stats, unit_scale, none (and rs-embed's aliases)", canonical_thor_normalization),
    Knob("RS_EMBED_THOR_GROUP_MERGE", "thor", "group_merge", "group_merge", "thor", "mean",
         "mean, sum, concat (aliases avg, average)", canonical_group_merge),
    Knob("RS_EMBED_THOR_PATCH_SIZE", "thor", "patch_size", "patch_size", "thor", 16,
         "an integer >= 1 (16 native; 8 is rs-embed's)", positive_int("RS_EMBED_THOR_PATCH_SIZE")),
    Knob("RS_EMBED_THOR_FETCH_WORKERS", "thor", None, "fetch_workers", "thor", 8,
         "an integer >= 1", positive_int("RS_EMBED_THOR_FETCH_WORKERS")),
    Knob("RS_EMBED_THOR_RESIZE_MODE", "thor", "resize_mode", None, None, "fixed",
         "fixed, native_snap", choice(THOR_RESIZE_MODES, "THOR resize_mode"), title="THOR resize mode",
         changes="library `meta.resize_mode`, `meta.preprocess` (`native_snap` = rs-embed's default)"),
    Knob("RS_EMBED_THOR_SHAPE_ADJUST", "thor", "shape_adjust", None, None, "crop",
         "crop, pad", choice(THOR_SHAPE_ADJUST, "THOR shape_adjust"), title="THOR shape adjust",
         changes="library `meta.shape_adjust` (native_snap only)"),
    Knob("RS_EMBED_THOR_SHAPE_TOL_PX", "thor", "shape_tol_px", None, None, 8,
         "an integer >= 0", positive_int("RS_EMBED_THOR_SHAPE_TOL_PX", 0), title="THOR shape tolerance",
         changes="library `meta.shape_tol_px` (native_snap only)"),
    Knob("RS_EMBED_THOR_MAX_NATIVE_SIDE", "thor", "max_native_side", None, None, 384,
         "an integer >= 1", positive_int("RS_EMBED_THOR_MAX_NATIVE_SIDE"), title="THOR max native side",
         changes="library `meta.max_native_side` (native_snap only)"),
    Knob("RS_EMBED_THOR_MAX_NATIVE_TOKENS", "thor", "max_native_tokens", None, None, 3000,
         "an integer >= 1", positive_int("RS_EMBED_THOR_MAX_NATIVE_TOKENS"), title="THOR max native tokens",
         changes="library `meta.max_native_tokens` (native_snap only)"),
)

OPTIONS: tuple[str, ...] = (
    "normalization",
    "patch_size",
    "image_size",
    "group_merge",
    "scale_m",
    "variant",
    "resize_mode",
    "shape_adjust",
    "fill_value",
    "shape_tol_px",
    "max_native_side",
    "max_native_tokens",
    "pretrained",
)


def check_options(options: Mapping[str, Any], modalities: tuple[str, ...]) -> None:
    """THOR option values, checked without torch (the adapter checks them again, with the geometry)."""
    if "variant" in options:
        canonical_thor_variant(options["variant"])
    if "group_merge" in options:
        canonical_group_merge(options["group_merge"])
    if "normalization" in options:
        canonical_thor_normalization(options["normalization"])
        for m in modalities:  # e.g. unit_scale is S2-only
            thor_normalization(options["normalization"], m)
    for name in ("patch_size", "image_size"):
        if name in options:
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelInputError(f"THOR {name} must be an integer >= 1, got {value!r}")
    if "scale_m" in options:
        scale = options["scale_m"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ModelInputError(f"THOR scale_m must be a positive number of metres, got {scale!r}")
    if "resize_mode" in options:
        choice(THOR_RESIZE_MODES, "THOR resize_mode")(options["resize_mode"])
    if "shape_adjust" in options:
        choice(THOR_SHAPE_ADJUST, "THOR shape_adjust")(options["shape_adjust"])


FAMILY = ModelFamily(
    name="thor",
    title="THOR 1.0",
    # Per size the first id is the canonical one (store paths): thor_1_0_<size>.
    ids={
        "thor_1_0_base": "base",
        "thor": "base",
        "thor_v1_base": "base",
        "thor_1_0_tiny": "tiny",
        "thor_v1_tiny": "tiny",
        "thor_1_0_small": "small",
        "thor_v1_small": "small",
        "thor_1_0_large": "large",
        "thor_v1_large": "large",
    },
    input_bands={"s2": THOR_S2_BANDS, "s1": S1_BANDS},
    tile_size_px=IMAGE_SIZE,
    tile_size_option="image_size",
    scale_m=10.0,
    adapter=f"{__package__}.adapter:ThorAdapter",
    model=f"{__package__}.model:build_encoder",
    options=OPTIONS,
    batch_sizes=BATCH_SIZES,
    knobs=KNOBS,
    variant_option="variant",
    parse_variant=canonical_thor_variant,
    # rs-embed's generic ids: RS_EMBED_THOR_MODEL_KEY picks their size; the other ids name theirs.
    env_variant_ids=("thor", "thor_1_0_base"),
    check_options=check_options,
)
