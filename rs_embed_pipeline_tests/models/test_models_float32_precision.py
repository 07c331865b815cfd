"""float32 stays float32: terratorch's import sets ``torch.set_float32_matmul_precision("medium")`` for
the whole process (after which oneDNN runs float32 matmuls in bf16 on AMX CPUs, and CUDA uses TF32).

Every check runs in a fresh interpreter, so it holds whatever ran before it in this process and on
any CPU: the settings are compared, not the numbers they would change on an AMX CPU. The numbers are
checked too: the full-size models and every reference fixture, embedded after ``import terratorch``
in the same process, against the same process's results before it.
"""

from __future__ import annotations

import pytest

from .conftest import CASES, REPO_ROOT, THOR_TINY, reference_dir
from .test_models_terratorch import _last_json, _run

# Read with torch's own API (not the project's), so that these checks mean the same on any code.
STATE = """
import json, torch, warnings
from rs_embed_pipeline.models import runtime
def warning_filters():
    return [[a, getattr(m, "pattern", m), c.__name__, getattr(mod, "pattern", mod), n] for a, m, c, mod, n in warnings.filters]
def state():
    b = torch.backends
    knobs = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # torch refuses after a mix of per-backend settings (a test below makes one)
        legacy = "mixed"
    return {"legacy": legacy, "backends": b.fp32_precision,
            **{k: getattr(getattr(b, k.split(".")[0]), k.split(".")[1]).fp32_precision for k in knobs}}
"""

# Every way the project imports terratorch (or resolves a name that does), in the caller's process.
ENTRY_POINTS = {
    "terratorch_ext import": "import rs_embed_pipeline.models.terratorch_ext",
    "register_terratorch_backbones()": (
        "from rs_embed_pipeline.models import register_terratorch_backbones\n"
        "assert register_terratorch_backbones() is True"),
    "every lazy name of rs_embed_pipeline.models": (
        "import rs_embed_pipeline.models as m\n"
        "[getattr(m, n) for n in m.__all__]"),
    "the TerraTorch CLI's custom_modules": (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'docs' / 'terratorch')!r})\n"
        "import custom_modules"),
    "import_terratorch('terratorch.tasks')": (
        "runtime.import_terratorch('terratorch.tasks').SemanticSegmentationTask"),
    "the worker module and a THOR embed": (
        "import numpy as np\n"
        "import rs_embed_pipeline.worker.embed\n"
        "from rs_embed_pipeline.models import load_adapter\n"
        f"a = load_adapter('thor_1_0_base', arch={THOR_TINY!r}, device='cpu', allow_random_weights=True,\n"
        "                  image_size=64, patch_size=16)\n"
        "a.embed(np.full((1, 10, 64, 64), 1500.0, np.float32), 's2', 'both')"),
}


@pytest.mark.parametrize("before", ["highest", "high"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_points_leave_the_float32_matmul_precision_as_they_found_it(entry, before):
    proc = _run(STATE + f"""
torch.set_float32_matmul_precision({before!r})
start, filters = state(), warning_filters()
{ENTRY_POINTS[entry]}
print(json.dumps({{"start": start, "end": state(), "filters": [filters, warning_filters()],
                  "terratorch_imported": "terratorch" in __import__("sys").modules}}))
""")
    out = _last_json(proc)
    assert out["start"]["legacy"] == before
    assert out["end"] == out["start"], f"{entry} changed torch's float32 precision: {out['start']} -> {out['end']}"
    if entry == "the worker module and a THOR embed":  # the adapters never import terratorch (zarr's
        return                                          # numcodecs adds its own warning filter at import)
    assert out["terratorch_imported"] is True, f"{entry} did not import terratorch: the check is void"
    before_filters, after_filters = out["filters"]
    assert after_filters == before_filters, f"{entry} changed the warning filters: {after_filters[:2]}"


def test_import_terratorch_undoes_terratorchs_global_settings():
    """The guard is what keeps them: terratorch's plain import still changes the precision, and
    ``terratorch.tasks`` puts a "once" filter for every UserWarning in front of the process's own."""
    out = _last_json(_run(STATE + """
start = state()
import terratorch.tasks
print(json.dumps({"start": start, "after_plain_import": state(), "first_filter": warning_filters()[0]}))
"""))
    assert out["start"]["legacy"] == "highest"
    assert out["after_plain_import"]["legacy"] == "medium"
    assert out["first_filter"] == ["once", None, "UserWarning", None, 0]


def test_adapters_run_exact_float32_whatever_the_caller_set():
    """A caller at "medium" (e.g. a notebook that imported terratorch): the forward pass runs at
    "highest" (seen by a hook inside it), the metadata says so, and the caller's "medium" is back
    afterwards - on both models and on an error inside the forward pass."""
    out = _last_json(_run(STATE + f"""
import numpy as np
from rs_embed_pipeline.models import load_adapter
torch.set_float32_matmul_precision("medium")
caller = state()
seen, meta = {{}}, {{}}
for model, arch, size, bands in (("terrafm_b", {{"embed_dim": 32, "depth": 1, "num_heads": 2, "attn_dim": 48}}, 224, 12),
                                 ("thor_1_0_base", {THOR_TINY!r}, 64, 10)):
    opts = {{"image_size": size, "patch_size": 16}} if model.startswith("thor") else {{}}
    a = load_adapter(model, arch=arch, device="cpu", allow_random_weights=True, **opts)
    # the first block: both families run it in every forward pass (THOR's encoder is not called as a module)
    a.model.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__(model, torch.get_float32_matmul_precision()))
    meta[model] = a.embed(np.full((1, bands, size, size), 1500.0, np.float32), "s2", "pooled").meta["float32_matmul_precision"]
def boom(m, args):
    raise RuntimeError("inside the forward pass")
a.model.blocks[0].register_forward_pre_hook(boom)
error = None
try:
    a.embed(np.full((1, 10, 64, 64), 1500.0, np.float32), "s2", "pooled")
except RuntimeError as exc:
    error = str(exc)
print(json.dumps({{"caller": caller, "seen": seen, "meta": meta, "after": state(), "error": error}}))
"""))
    assert out["caller"]["legacy"] == "medium"
    assert out["seen"] == {"terrafm_b": "highest", "thor_1_0_base": "highest"}
    assert out["meta"] == {"terrafm_b": "highest", "thor_1_0_base": "highest"}
    assert out["error"] == "inside the forward pass"
    assert out["after"] == out["caller"]


def test_exact_float32_switches_tf32_and_bf16_off_and_restores_the_callers_settings():
    """The per-backend settings (torch >= 2.9) inside and after ``exact_float32()``: a caller that
    asked for TF32 (CUDA matmul and cuDNN) and bf16 (oneDNN matmul and convolutions) gets IEEE
    float32 inside, and its own settings back afterwards."""
    out = _last_json(_run(STATE + """
b = torch.backends
b.cuda.matmul.fp32_precision = "tf32"
b.cudnn.conv.fp32_precision = "tf32"
b.mkldnn.matmul.fp32_precision = "bf16"
b.mkldnn.conv.fp32_precision = "bf16"
caller = state()
with runtime.exact_float32():
    inside = {**state(), "cuda_matmul_allow_tf32": b.cuda.matmul.allow_tf32}
print(json.dumps({"caller": caller, "inside": inside, "after": state()}))
"""))
    assert out["caller"]["mkldnn.matmul"] == "bf16" and out["caller"]["cuda.matmul"] == "tf32"
    knobs = [k for k in out["inside"] if "." in k]
    assert sorted(knobs) == ["cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.conv", "mkldnn.matmul", "mkldnn.rnn"]
    assert {out["inside"][k] for k in knobs} == {"ieee"}
    assert out["inside"]["legacy"] == "highest" and out["inside"]["cuda_matmul_allow_tf32"] is False
    assert out["after"] == out["caller"]


def test_full_size_fp32_after_import_terratorch_equals_fp32_before_it():
    """Full-size TerraFM-B (S2 224 px) and THOR 1.0 base (S2 288 px, patch 16), seeded random
    weights, realistic DN: embedded, then ``import terratorch`` (plain: the user's notebook), then
    embedded again by the same adapters in the same process; and every reference fixture's
    conformance case after that import. On a CPU with AMX, terratorch's "medium" moved these by
    about 1e-2 (max |diff| 0.0151 on terrafm_s2_l2a pooled) before the adapters held float32 exact."""
    out = _last_json(_run(f"""
import json, sys
import numpy as np, torch
sys.path.insert(0, {str(REPO_ROOT)!r})
from rs_embed_pipeline.models import load_adapter
from rs_embed_pipeline_tests.models.conftest import Case, assert_close
from pathlib import Path

rng = np.random.default_rng(0)
inputs = {{"terrafm_b": rng.uniform(0, 9000, (2, 12, 224, 224)).astype(np.float32),
          "thor_1_0_base": rng.uniform(0, 9000, (2, 10, 288, 288)).astype(np.float32)}}
adapters, before = {{}}, {{}}
for name in inputs:
    torch.manual_seed(0)
    adapters[name] = load_adapter(name, device="cpu", allow_random_weights=True, pretrained=False) \\
        if name.startswith("thor") else load_adapter(name, device="cpu", allow_random_weights=True)
    out = adapters[name].embed(inputs[name], "s2", "both")
    before[name] = (out.pooled, out.grid)
import terratorch
precision_after_import = torch.get_float32_matmul_precision()
diffs, metas = {{}}, {{}}
for name, adapter in adapters.items():
    out = adapter.embed(inputs[name], "s2", "both")
    diffs[name] = [float(np.abs(out.pooled - before[name][0]).max()), float(np.abs(out.grid - before[name][1]).max())]
    metas[name] = [out.meta["float32_matmul_precision"], int(adapter.embed_dim), list(out.grid.shape)]
checked = []
for case_name in {list(CASES)!r}:
    case = Case(Path({str(reference_dir())!r}), case_name)
    out = case.load().embed(case.input(), case.modality, "pooled")
    assert_close(out.pooled, case.expected(case.spec["expected"]["pooled"]), case.atol, case.rtol, case_name)
    checked.append(case_name)
print(json.dumps({{"precision_after_import": precision_after_import, "diffs": diffs, "metas": metas,
                   "checked": checked}}))
""", timeout=600))
    assert out["precision_after_import"] == "medium", "the test must run the models at terratorch's setting"
    assert out["metas"] == {"terrafm_b": ["highest", 768, [2, 768, 14, 14]],
                            "thor_1_0_base": ["highest", 768, [2, 768, 18, 18]]}
    for name, (pooled, grid) in out["diffs"].items():
        assert pooled <= 5e-5 and grid <= 5e-5, f"{name}: max |diff| pooled {pooled:.3g}, grid {grid:.3g}"
    assert out["checked"] == list(CASES)

