"""TerraTorch registration and import hygiene (each check in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO_ROOT, THOR_TINY, assert_close, reference_dir

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
    for path in MODELS_DIR.rglob("*.py"):  # the family packages too
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
    with torch.device("meta"):  # full size by name, nothing allocated
        full = registry.build("terratorch_thor_v1_base")
    keys = list(full.state_dict())
    return {{"out_channels": m.out_channels, "shapes": [list(o.shape) for o in outs],
             "n_keys": len(keys), "first": keys[0], "embed_dim": full.encoder.embed_dim}}
"""
EXPECTED_BUILD = {"out_channels": [32], "shapes": [[2, 64, 32]], "n_keys": 249,
                  "first": "encoder.encoder_slopes", "embed_dim": 768}


def test_registration_with_installed_terratorch():
    """The real terratorch (it must import in the worker environment: CUDA torch + the matching
    torchvision, which run on CPU too): after registration, BACKBONE_REGISTRY builds thor_v1_base by
    name. Never skipped: a failing import fails here with terratorch's error."""
    proc = _run(
        BUILD_CHECK
        + """
import terratorch
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


# ------------------------------------------------------------------------------------------------
# In this process: the real terratorch registry, THOR by name, and fine-tuning through TerraTorch
# ------------------------------------------------------------------------------------------------

# Parameter counts of the released encoders: the base one is the checkpoint's (reference manifest);
# the others follow the same layout (46 patch-embed convs, pre-norm blocks, final norm, band embeds).
VARIANT_PARAMS = {"tiny": (192, 12, 32), "small": (384, 12, 64), "base": (768, 12, 128), "large": (1024, 24, 256)}
BASE_PARAMS = 94_136_576
# A reduced THOR for the training tests (same builder, same code path as the full model; the full
# base size is covered by the by-name tests above and below, and one full-size training step on
# 2 CPU cores takes ~30 s - see README "THOR in TerraTorch").
TRAIN_ARCH = {"embed_dim": 64, "depth": 2, "num_heads": 4, "band_embed_dim": 16}


@pytest.fixture(scope="module")
def registry():
    from rs_embed_pipeline.models import register_terratorch_backbones
    from rs_embed_pipeline.models.runtime import import_terratorch

    # Must import (CUDA torch + matching torchvision run on CPU); through import_terratorch, so that
    # terratorch's global "medium" float32 matmul precision does not leak into the other tests.
    registry = import_terratorch("terratorch.registry").BACKBONE_REGISTRY
    assert register_terratorch_backbones() is True
    return registry


@pytest.mark.parametrize("variant", list(VARIANT_PARAMS))
def test_by_name_builds_every_thor_size_with_the_checkpoint_parameter_count(registry, variant):
    import torch

    d, depth, band = VARIANT_PARAMS[variant]
    with torch.device("meta"):  # nothing allocated
        backbone = registry.build(f"thor_v1_{variant}")
    n = sum(p.numel() for p in backbone.parameters())
    assert n == 46 * (256 * d + d) + depth * (12 * d * d + 13 * d) + 2 * d + 10 * band
    assert backbone.out_channels == [d] and backbone.patch_size == 16
    if variant == "base":
        assert n == BASE_PARAMS
        manifest = json.loads((reference_dir() / "thor_v1_base_state_dict.json").read_text())
        state = {k.removeprefix("encoder."): list(v.shape) for k, v in backbone.state_dict().items()}
        assert all(k.startswith("encoder.") for k in backbone.state_dict())
        assert state == {k: list(v) for k, v in manifest.items()}


def test_by_name_base_equals_the_projects_thor_module_full_size(registry):
    """thor_v1_base from the registry and build_model("thor_1_0_base") with the same (random)
    weights give the same tokens on a full-size 288 px S2 input."""
    import torch

    from rs_embed_pipeline.models import build_model
    from rs_embed_pipeline.models.preprocessing import THOR_BAND_NAMES, THOR_S2_BANDS

    torch.manual_seed(0)
    backbone = registry.build("thor_v1_base").eval()
    own = build_model("thor_1_0_base").eval()
    own.load_state_dict({k.removeprefix("encoder."): v for k, v in backbone.state_dict().items()}, strict=True)
    x = torch.randn(1, 10, 288, 288, generator=torch.Generator().manual_seed(1))
    bands = [THOR_BAND_NAMES[b] for b in THOR_S2_BANDS]
    with torch.inference_mode():
        (tokens,) = backbone(x)
        expected, token_grid = own.forward_tokens(x, bands, 2880.0, 16)
    assert tokens.shape == (1, 18 * 18 + 9 * 9, 768)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    assert token_grid.group_patch_sizes == (18, 9)


@pytest.mark.parametrize("name", ["thor_s2_p16", "thor_s2_p8"])
def test_by_name_with_a_checkpoint_reproduces_the_reference(registry, cases, name):
    """``ckpt_path`` loads a THOR checkpoint (``encoder.`` keys) strictly; the backbone's tokens on
    THOR-normalised input equal the reference implementation's, as the project's adapter does."""
    import torch

    from rs_embed_pipeline.models import preprocessing as P

    case = cases[name]
    p = case.options["patch_size"]
    backbone = registry.build("thor_v1_base", arch=case.arch, ckpt_path=str(case.weights), patch_size=p).eval()
    x = torch.from_numpy(P.s2_thor_stats(case.input()))
    with torch.inference_mode():
        (tokens,) = backbone(x)
    assert_close(tokens.numpy(), case.expected("tokens.npy"), case.atol, case.rtol, f"{name} tokens by name")
    adapter = case.load()
    np.testing.assert_array_equal(tokens.numpy(), adapter.embed(case.input(), "s2", "tokens").tokens)
    grid_bb = registry.build("thor_v1_base", arch=case.arch, ckpt_path=str(case.weights), patch_size=p,
                             output_format="grid", group_merge="concat").eval()
    with torch.inference_mode():
        (grid,) = grid_bb(x)
    assert grid_bb.out_channels == [2 * case.arch["embed_dim"]]
    assert_close(grid.numpy(), case.expected("grid_concat.npy"), case.atol, case.rtol, f"{name} grid by name")


def test_backbone_arguments_are_checked(registry):
    from rs_embed_pipeline.models import ModelInputError

    with pytest.raises(ModelInputError, match=r"Unknown THOR backbone output_format 'image'; valid: tokens, grid"):
        registry.build("thor_v1_base", arch=TRAIN_ARCH, output_format="image")
    with pytest.raises(ModelInputError, match=r"Unknown THOR backbone argument\(s\) \['colour'\]; valid: pretrained"):
        registry.build("thor_v1_base", arch=TRAIN_ARCH, colour=1)
    with pytest.raises(ModelInputError, match=r"got both model_bands=\['B2'\] and bands=\['B3'\]; give one"):
        registry.build("thor_v1_base", arch=TRAIN_ARCH, model_bands=["B2"], bands=["B3"])


# Lightning's own pytree helper calls an API torch deprecated; nothing this test can change.
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:Warning:lightning")
# terratorch's metric collection puts a ClasswiseWrapper in a torchmetrics compute group: the group's
# first metric gets the updates and the wrapper's own MulticlassAccuracy is computed "before update"
# at every epoch end (its values come from the group). Shown or not depending on which tests ran
# before in the process (found by running the worker suite in random order).
@pytest.mark.filterwarnings(r"ignore:The ``compute`` method of metric MulticlassAccuracy was called before the "
                            r"``update`` method:UserWarning:torchmetrics")
def test_thor_fine_tunes_through_terratorchs_segmentation_task(registry):
    """TerraTorch's SemanticSegmentationTask + EncoderDecoderFactory with backbone thor_v1_base
    (random init, reduced width: see TRAIN_ARCH) and TerraTorch's FCNDecoder, trained by a
    Lightning Trainer on random 10-band 288 px chips: the loss is finite and falls, the backbone
    gets non-zero gradients at every step and its weights move."""
    import lightning.pytorch as pl
    import torch

    from rs_embed_pipeline.models.runtime import import_terratorch
    from rs_embed_pipeline.models.terratorch_ext import ThorBackbone

    SemanticSegmentationTask = import_terratorch("terratorch.tasks").SemanticSegmentationTask

    torch.manual_seed(0)
    task = SemanticSegmentationTask(
        model_factory="EncoderDecoderFactory",
        model_args=dict(backbone="thor_v1_base", backbone_arch=TRAIN_ARCH, backbone_pretrained=False,
                        backbone_output_format="grid", decoder="FCNDecoder", decoder_channels=32, num_classes=3),
        loss="ce", ignore_index=-1, lr=1e-3, optimizer="AdamW", plot_on_val=False,
    )
    encoder = task.model.encoder
    assert isinstance(encoder, ThorBackbone) and encoder.output_format == "grid"
    before = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 10, 288, 288, generator=g)
    masks = torch.randint(0, 3, (4, 288, 288), generator=g)
    data = [{"image": images[i], "mask": masks[i]} for i in range(4)]
    losses: list[float] = []
    grad_sums: list[float] = []

    class Record(pl.Callback):
        def on_after_backward(self, trainer, module):
            grad_sums.append(sum(float(p.grad.abs().sum()) for p in module.model.encoder.parameters()
                                 if p.grad is not None))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[Record()])
    # A validation batch too: the task defines validation_step and its metrics (without one, Lightning
    # warns and torchmetrics computes metrics that were never updated).
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2),
                val_dataloaders=torch.utils.data.DataLoader(data[:2], batch_size=2))
    assert len(losses) == 6 and np.isfinite(losses).all(), losses
    assert losses[-1] < losses[0], f"loss did not fall: {losses}"
    assert len(grad_sums) == 6 and min(grad_sums) > 0, grad_sums
    moved = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.blocks.0.attn.qkv") for k in moved)
    assert any(k.startswith("encoder.ind_patch_embed.patch_embed.S2:Red") for k in moved)
    task.eval()
    with torch.inference_mode():
        out = task.model(images[:1]).output
    assert out.shape == (1, 3, 288, 288)


def test_example_terratorch_fit_config_trains(tmp_path):
    """docs/terratorch/thor_v1_base_segmentation.yaml through the real ``terratorch fit`` CLI, on
    random GeoTIFF chips; overridden only: data paths, batch size / workers, 2 steps, no hub
    download (``backbone_pretrained: false``) and the reduced width."""
    import rasterio
    import yaml
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for i in range(n):
            img = rng.integers(0, 6000, (10, 288, 288)).astype("uint16")
            mask = rng.integers(0, 3, (1, 288, 288)).astype("uint8")
            for arr, kind, suffix in ((img, "images", "img"), (mask, "labels", "mask")):
                (tmp_path / split / kind).mkdir(parents=True, exist_ok=True)
                with rasterio.open(tmp_path / split / kind / f"chip{i}_{suffix}.tif", "w", driver="GTiff",
                                   width=288, height=288, count=arr.shape[0], dtype=arr.dtype, crs="EPSG:32632",
                                   transform=from_origin(300000, 5000000, 10, 10)) as f:
                    f.write(arr)
    shipped = REPO_ROOT / "docs" / "terratorch" / "thor_v1_base_segmentation.yaml"
    cfg = yaml.safe_load(shipped.read_text())
    assert cfg["model"]["init_args"]["model_args"]["backbone"] == "thor_v1_base"
    assert cfg["model"]["init_args"]["model_args"]["backbone_pretrained"] is True
    data = cfg["data"]["init_args"]
    for split in ("train", "val", "test"):
        data[f"{split}_data_root"] = str(tmp_path / split / "images")
        data[f"{split}_label_data_root"] = str(tmp_path / split / "labels")
    data.update(batch_size=2, num_workers=0)
    cfg["trainer"].update(max_steps=2, default_root_dir=str(tmp_path / "out"), enable_checkpointing=False,
                          enable_progress_bar=False)
    cfg["model"]["init_args"]["model_args"].update(backbone_pretrained=False, backbone_arch=TRAIN_ARCH,
                                                   backbone_out_indices=[1], decoder_channels=32)
    cfg["custom_modules_path"] = str(REPO_ROOT / cfg["custom_modules_path"])
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    cli = Path(sys.executable).parent / "terratorch"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([str(cli), "fit", "--config", str(tmp_path / "fit.yaml")], capture_output=True, text=True,
                          timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in proc.stderr
    assert "PixelWiseModel" in proc.stdout + proc.stderr
