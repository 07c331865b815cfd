"""TerraTorch registration and import hygiene (each check in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO_ROOT, THOR_TINY

MODELS_DIR = REPO_ROOT / "rs_embed_pipeline" / "models"


def _run(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO_ROOT))


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_is_light_and_dagster_free():
    proc = _run(
        """
        import json, sys
        import rs_embed_pipeline.models as m
        heavy = [k for k in ("torch", "terratorch", "dagster", "dagster_pipes", "huggingface_hub") if k in sys.modules]
        print(json.dumps({"heavy": heavy, "has_load_adapter": callable(m.load_adapter)}))
        """
    )
    out = _last_json(proc)
    assert out == {"heavy": [], "has_load_adapter": True}
    for path in MODELS_DIR.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+dagster", path.read_text(), re.M), f"{path} imports dagster"


BUILD_CHECK = f"""
import json, torch
arch = {THOR_TINY!r}
def check(registry):
    assert "thor_v1_base" in registry and "terratorch_thor_v1_base" in registry
    assert all(f"thor_v1_{{v}}" in registry for v in ("tiny", "small", "large"))
    m = registry.build("thor_v1_base", arch=arch, model_bands=["B2", "B3", "B4", "B8"], patch_size=8)
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        outs = m(x)
    full = registry.build("terratorch_thor_v1_base")  # full size by name, random init
    keys = list(full.state_dict())
    return {{"out_channels": m.out_channels, "shapes": [list(o.shape) for o in outs],
             "n_keys": len(keys), "first": keys[0], "embed_dim": full.encoder.embed_dim}}
"""
EXPECTED_BUILD = {"out_channels": [32], "shapes": [[2, 64, 32]], "n_keys": 249,
                  "first": "encoder.encoder_slopes", "embed_dim": 768}


def test_registration_with_installed_terratorch():
    """The real terratorch: after registration, BACKBONE_REGISTRY builds thor_v1_base by name."""
    probe = _run("import terratorch")
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"terratorch cannot be imported in this environment ({reason}); "
                    "the registry logic is still checked by test_registration_against_terratorch_registry_code")
    proc = _run(
        BUILD_CHECK
        + """
from rs_embed_pipeline.models import register_terratorch_backbones
from terratorch.registry import BACKBONE_REGISTRY
assert register_terratorch_backbones() is True
print(json.dumps(check(BACKBONE_REGISTRY)))
"""
    )
    assert _last_json(proc) == EXPECTED_BUILD


def test_registration_against_terratorch_registry_code():
    """terratorch's own registry module (loaded without the terratorch package __init__, which pulls
    torchvision): our builders register under their names and build through BACKBONE_REGISTRY; nothing
    is registered while thor_terratorch_ext is installed."""
    proc = _run(
        BUILD_CHECK
        + """
import importlib.util, sys, types
spec = importlib.util.find_spec("terratorch")
assert spec is not None, "terratorch is not installed"
root = spec.submodule_search_locations[0]
pkg = types.ModuleType("terratorch"); pkg.__path__ = [root]; sys.modules["terratorch"] = pkg
reg = types.ModuleType("terratorch.registry"); reg.__path__ = [root + "/registry"]; sys.modules["terratorch.registry"] = reg
import terratorch.registry.registry as R
reg.BACKBONE_REGISTRY = R.BACKBONE_REGISTRY
reg.TERRATORCH_BACKBONE_REGISTRY = R.TERRATORCH_BACKBONE_REGISTRY

real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: object() if name == "thor_terratorch_ext" else real_find_spec(name, *a)
from rs_embed_pipeline.models.terratorch_ext import register_terratorch_backbones  # registers on import
skipped = "thor_v1_base" not in R.BACKBONE_REGISTRY and register_terratorch_backbones() is False
importlib.util.find_spec = real_find_spec
assert register_terratorch_backbones() is True
assert register_terratorch_backbones() is True  # idempotent
result = check(R.BACKBONE_REGISTRY)
result["skipped_with_plugin"] = skipped
print(json.dumps(result))
"""
    )
    assert _last_json(proc) == {**EXPECTED_BUILD, "skipped_with_plugin": True}
