"""The "tensor backend": embed arrays you already have, with the pipeline's preprocessing,
validation and metadata.

```python
import numpy as np
from rs_embed_pipeline.models import embed_arrays

chw = np.load("my_tile.npy")                  # [12, H, W] S2 DN (reflectance x 10000), bands B1..B12 w/o B10
out = embed_arrays("terrafm_b", chw, modality="s2", output="both", checkpoint="TerraFM-B.pth")
out.pooled.shape, out.grid.shape              # (768,), (768, 14, 14): a CHW input gives unbatched outputs
out.meta["backend"], out.meta["input_checks"][0]["ok"]    # "tensor", True

from rs_embed_pipeline.models import load_adapter

thor = load_adapter("thor", checkpoint="thor_v1_vit_base.pt")   # or pass a loaded adapter
bchw = np.stack([chw[[1, 2, 3, 4, 5, 6, 7, 8, 10, 11]]] * 2)  # THOR S2: 10 bands B2..B12 (no B1, B9)
out = embed_arrays(thor, bchw, modality="s2", output="grid", temporal=("2024-01-01", "2024-04-01"))
out.grid.shape                                # (2, 768, 18, 18): BCHW gives batched outputs
```

Inputs are in provider units (docs/architecture.md): S2 surface-reflectance DN in the adapter's band order
(``adapter.input_bands("s2")``), S1 linear sigma0 power ``VV, VH``. The arrays go through exactly
the adapter's ``embed`` (same normalisation, resize, checks and metadata) plus:

* the optional input inspection (:func:`rs_embed_pipeline.core.inspection.inspect_patch`, on by default;
  ``check_input=False`` or ``RS_EMBED_CHECK_INPUT=0`` turns it off): ``meta["input_checks"]`` (one dict
  per image) and ``meta["input_checks_config"]``; with ``check_raise=True`` (or
  ``RS_EMBED_CHECK_RAISE=1``) any issue raises ``ModelInputError("Input inspection failed: ...")``
  before the model runs;
* ``meta["backend"] = "tensor"``, ``meta["source"] = None`` and ``meta["temporal"]``: a time window given
  as ``temporal=("2024-01-01", "2024-04-01")`` (end exclusive), ``{"start": ..., "end": ...}`` or a year,
  recorded as ``{"mode": "range", "start", "end"}`` (``{"mode": None}`` without one).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from collections.abc import Mapping

import numpy as np

from rs_embed_pipeline.core.timeparse import parse_utc

from .errors import ModelInputError
from . import load_adapter
from . import preprocessing as P
from .knobs import env_values, knob, parse_bool
from rs_embed_pipeline.core.inspection import DEFAULT_THRESHOLDS, inspect_patch


def temporal_to_range(temporal: Any) -> dict[str, Any]:
    """A time window as ``{"mode": "range", "start": "YYYY-MM-DD...", "end": ...}`` (end exclusive);
    ``None`` gives ``{"mode": None}``. Accepts ``(start, end)``, ``{"start", "end"}``, a year (int or
    ``{"year": Y}``: ``[Y-01-01, Y+1-01-01)``). Anything that is not a range with start < end raises."""
    if temporal is None:
        return {"mode": None}
    how = (
        "a time window must be a range: (start, end) or {'start': ..., 'end': ...} with ISO dates and "
        "start < end (end exclusive), or a year (2024 or {'year': 2024})"
    )
    year = None
    if isinstance(temporal, (int, np.integer)) and not isinstance(temporal, bool):
        year = int(temporal)
    elif isinstance(temporal, Mapping) and set(temporal) == {"year"}:
        year = temporal["year"]
    if year is not None:
        if isinstance(year, bool) or not isinstance(year, (int, np.integer)) or not 1 <= int(year) <= 9998:
            raise ModelInputError(f"Invalid year {year!r}: {how}")
        return {"mode": "range", "start": f"{int(year):04d}-01-01", "end": f"{int(year) + 1:04d}-01-01"}
    if isinstance(temporal, Mapping):
        if set(temporal) != {"start", "end"}:
            raise ModelInputError(f"Time window {dict(temporal)!r} is not a range: {how}")
        start, end = temporal["start"], temporal["end"]
    elif isinstance(temporal, (tuple, list)) and len(temporal) == 2:
        start, end = temporal
    else:
        raise ModelInputError(f"Time window {temporal!r} is not a range: {how}")
    t0, t1 = _parse_time(start, how), _parse_time(end, how)
    if not t0 < t1:
        raise ModelInputError(f"Time window start {start!r} is not before end {end!r}: {how}")
    return {"mode": "range", "start": str(start), "end": str(end)}


def _parse_time(value: Any, how: str) -> dt.datetime:
    try:
        return parse_utc(value)
    except ValueError as exc:
        raise ModelInputError(f"Time {exc}: {how}") from None


def _as_array(arrays: Any) -> tuple[np.ndarray, bool]:
    """``(BCHW array, single)``; ``single`` when a CHW array was given."""
    if arrays is None or (isinstance(arrays, (list, tuple)) and len(arrays) == 0):
        raise ModelInputError(
            "embed_arrays (tensor backend) requires input arrays: pass a CHW [C, H, W] or BCHW "
            f"[B, C, H, W] array (or a list of same-shape CHW arrays) in provider units; got {arrays!r}"
        )
    if hasattr(arrays, "detach") and hasattr(arrays, "cpu"):
        arrays = arrays.detach().cpu().numpy()
    if isinstance(arrays, (list, tuple)):
        items = [a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a) for a in arrays]
        shapes = {a.shape for a in items}
        if len(shapes) != 1 or items[0].ndim != 3:
            raise ModelInputError(
                f"embed_arrays got a list of arrays with shapes {sorted(map(str, shapes))}; a list must hold "
                "CHW arrays of one shape (embed different sizes in separate calls)"
            )
        return np.stack(items), False
    if not isinstance(arrays, np.ndarray):
        raise ModelInputError(f"embed_arrays expects a numpy array or torch tensor, got {type(arrays).__name__}")
    if arrays.ndim == 3:
        return arrays[None], True
    if arrays.ndim == 4:
        return arrays, False
    raise ModelInputError(f"embed_arrays expects CHW [C, H, W] or BCHW [B, C, H, W], got shape {arrays.shape}")


def _env_flag(name: str, explicit: Any, use_env: bool) -> bool:

    k = knob("input", name)
    if explicit is not None:
        return parse_bool(explicit, name)
    if use_env:
        found = env_values(family="input").get(k.env)
        if found is not None:
            return bool(found["value"])
    return bool(k.default)


def embed_arrays(
    model: Any,
    arrays: Any,
    *,
    modality: str = "s2",
    output: str = "pooled",
    temporal: Any = None,
    check_input: bool | None = None,
    check_raise: bool | None = None,
    checkpoint: Any = None,
    device: str = "auto",
    arch: dict | None = None,
    use_env: bool = True,
    **options: Any,
):
    """Embed arrays a user already has (see the module docstring).

    ``model``: a model id (``"terrafm_b"``, ``"thor"``, ``"thor_1_0_large"``, ...; loaded with
    ``checkpoint``, ``device``, ``arch`` and ``options`` as in ``load_adapter``) or an adapter from
    ``load_adapter``. ``arrays``: CHW, BCHW, or a list of same-shape CHW arrays (numpy or torch).
    Returns an ``EmbeddingOutput``; a CHW input gives unbatched outputs (pooled ``[D]``, grid
    ``[D', h, w]``)."""

    x, single = _as_array(arrays)
    if isinstance(model, str):

        adapter = load_adapter(model, checkpoint=checkpoint, arch=arch, device=device, use_env=use_env, **options)
    elif hasattr(model, "embed") and hasattr(model, "input_bands"):
        if options or checkpoint is not None or arch is not None:
            raise ModelInputError(
                "embed_arrays: checkpoint / arch / model options apply when the model is given by name; "
                f"got an already loaded {type(model).__name__} and {sorted(options) or ['checkpoint/arch']}"
            )
        adapter = model
    else:
        raise ModelInputError(f"embed_arrays: model must be a model id or an adapter, got {type(model).__name__}")
    m = adapter._modality(modality)
    window = temporal_to_range(temporal)
    bands = adapter.input_bands(m)
    what = f"{adapter.model_id} {m.upper()}"
    x = P.as_bchw(x, bands, what, hint=adapter.channel_hint())
    do_check = _env_flag("check_input", check_input, use_env)
    do_raise = _env_flag("check_raise", check_raise, use_env)
    checks = []
    if do_check:

        checks = [inspect_patch(x[i], None, m, expected_channels=len(bands)) for i in range(x.shape[0])]
        bad = [(i, c["issues"]) for i, c in enumerate(checks) if not c["ok"]]
        if bad and do_raise:
            detail = "; ".join(f"index {i}: {', '.join(issues)}" for i, issues in bad[:5])
            raise ModelInputError(f"Input inspection failed for {what} input ({len(bad)} of {len(checks)} images): {detail}")
    out = adapter.embed(x, modality=m, output=output)
    out.meta.update(
        backend="tensor",
        type="tensor",
        source=None,
        temporal=window,
        input_layout="CHW" if single else "BCHW",
    )
    if do_check:
        out.meta["input_checks"] = checks
        out.meta["input_checks_config"] = {"check_input": True, "check_raise": do_raise, **DEFAULT_THRESHOLDS}
    else:
        out.meta["input_checks_config"] = {"check_input": False, "check_raise": do_raise}
    if single:
        out.pooled = None if out.pooled is None else out.pooled[0]
        out.grid = None if out.grid is None else out.grid[0]
        out.tokens = None if out.tokens is None else out.tokens[0]
    return out
