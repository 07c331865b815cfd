"""Full-size architectures against the released checkpoints' state-dict manifests (meta device)."""

from __future__ import annotations

import json

import pytest
import torch

from rs_embed_pipeline.models import ModelInputError, build_model
from rs_embed_pipeline.models.thor import PATCH_EMBED_NAMES, alibi_slopes


def _meta_build(name: str, arch=None):
    with torch.device("meta"):
        return build_model(name, arch=arch)


@pytest.mark.parametrize(
    "name, manifest, n_params",
    [
        ("terrafm_b", "terrafm_b_state_dict.json", 112_951_296),
        ("thor_1_0_base", "thor_v1_base_state_dict.json", 94_136_576),
    ],
)
def test_full_size_state_dict_equals_manifest(reference, name, manifest, n_params):
    expected = json.loads((reference / manifest).read_text())
    model = _meta_build(name)
    state = model.state_dict()
    assert list(state) == list(expected), "keys (and their order) differ from the released checkpoint"
    shapes = {k: list(v.shape) for k, v in state.items()}
    assert shapes == expected
    assert sum(p.numel() for p in model.parameters()) == n_params
    # nothing was allocated: every tensor lives on the meta device
    assert all(t.is_meta for t in state.values())
    assert all(p.is_meta for p in model.parameters())


def test_thor_manifest_details(reference):
    model = _meta_build("thor_1_0_base")
    assert tuple(model.ind_patch_embed.patch_embed.keys()) == PATCH_EMBED_NAMES
    assert len(PATCH_EMBED_NAMES) == 46
    assert model.band_embed["group0"].requires_grad is False
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 94_135_296
    assert "encoder_slopes" in dict(model.named_buffers())


@pytest.mark.parametrize(
    "name, dim, depth, heads, band",
    [
        ("thor_1_0_tiny", 192, 12, 3, 32),
        ("thor_1_0_small", 384, 12, 6, 64),
        ("thor_1_0_base", 768, 12, 12, 128),
        ("thor_1_0_large", 1024, 24, 16, 256),
    ],
)
def test_thor_variants_build(name, dim, depth, heads, band):
    model = _meta_build(name)
    assert model.cfg.embed_dim == dim and len(model.blocks) == depth
    assert model.blocks[0].attn.num_heads == heads
    assert model.band_embed["group3"].shape == (band,)
    assert model.encoder_slopes.shape == (heads,)
    assert model.ind_patch_embed.patch_embed["S1:VV"].weight.shape == (dim, 1, 16, 16)


def test_alibi_slopes_rule():
    assert alibi_slopes(12) == pytest.approx(
        [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
         0.70710677, 0.35355338, 0.17677669, 0.08838835], rel=1e-7)
    assert alibi_slopes(4) == [0.25, 0.0625, 0.015625, 0.00390625]
    assert alibi_slopes(3) == pytest.approx([2**-4, 2**-8, 2**-2])
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    assert len(alibi_slopes(16)) == 16 and alibi_slopes(16)[-1] == 2**-8


def test_random_init_values():
    """Random builds are usable: finite weights, fixed sin/cos band embeddings, slopes buffer."""
    model = build_model("thor_1_0_base", arch={"embed_dim": 32, "depth": 1, "num_heads": 2, "band_embed_dim": 8})
    assert all(torch.isfinite(p).all() for p in model.parameters())
    g0 = model.band_embed["group0"]
    assert torch.equal(g0, torch.tensor([0.0] * 4 + [1.0] * 4))  # sin(0)=0, cos(0)=1
    assert model.encoder_slopes.tolist() == [0.0625, 0.00390625]
    tfm = build_model("terrafm_b", arch={"embed_dim": 32, "depth": 1, "num_heads": 2})
    assert tfm.patch_embed.projection.norm_input.eps == 1e-5
    assert tfm.norm.eps == 1e-6 and tfm.blocks[0].norm1.eps == 1e-6
    assert tfm.patch_embed.projection.proj1.bias is None
    assert tfm.patch_embed.s1_embed.abs().sum() == 0  # modality vectors start at zero


def test_build_model_rejects_unknown_names_and_arch_keys():
    with pytest.raises(ModelInputError, match=r"Unknown model 'prithvi'.*terrafm_b.*thor_1_0_base"):
        build_model("prithvi")
    with pytest.raises(ModelInputError, match=r"Unknown TerraFM arch key\(s\) \['width'\]"):
        build_model("terrafm_b", arch={"width": 3})
    with pytest.raises(ModelInputError, match="encoder_slopes"):
        build_model("thor_1_0_base", arch={"embed_dim": 64, "depth": 1, "num_heads": 4, "band_embed_dim": 16,
                                          "encoder_slopes": [0.5, 0.25, 0.125, 0.0625]})
    with pytest.raises(ModelInputError, match="46 patch embeddings"):
        build_model("thor_1_0_base", arch={"num_patch_embeds": 12})


def test_fixture_arch_builds_and_fixed_tensors_match_weights(cases):
    """The reduced THOR's own encoder_slopes and band_embed values equal those in the weights file."""
    case = cases["thor_s2_p16"]
    model = build_model(case.model, arch=case.arch)
    state = torch.load(case.weights, weights_only=True)
    torch.testing.assert_close(model.encoder_slopes, state["encoder.encoder_slopes"], rtol=0, atol=0)
    for i in range(10):
        torch.testing.assert_close(model.band_embed[f"group{i}"].detach(), state[f"encoder.band_embed.group{i}"],
                                   rtol=0, atol=1e-7)


def test_every_lazy_name_is_exported_and_resolves():
    import rs_embed_pipeline.models as models

    assert set(models._LAZY) <= set(models.__all__)
    for name in models._LAZY:
        assert getattr(models, name) is not None, name
