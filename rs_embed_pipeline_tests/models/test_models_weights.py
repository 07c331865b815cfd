"""Weights: strict loading errors, THOR checkpoint layouts, HF cache-first loading, random weights."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from rs_embed_pipeline.models import WeightsError, WeightsNotFoundError, load_adapter
from rs_embed_pipeline.models.weights import hf_cache_dir

from .conftest import TERRAFM_TINY, THOR_TINY, assert_close

RANDOM_LABEL = "RANDOM (allow_random_weights=True) - NOT PRETRAINED"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save(state, path: Path) -> Path:
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------------
# Strict loading
# ------------------------------------------------------------------------------------------------


def _load_error(case, path: Path, model_id: str) -> str:
    """The WeightsError message of loading ``model_id`` (the case's arch) from the file ``path``."""
    with pytest.raises(WeightsError) as err:
        load_adapter(model_id, checkpoint=path, arch=case.arch, device="cpu")
    return str(err.value)


def _refused(case, edit, path: Path, model_id: str) -> str:
    """:func:`_load_error` of the case's weights after ``edit(state)``, saved at ``path``."""
    state = torch.load(case.weights, weights_only=True)
    edit(state)
    return _load_error(case, _save(state, path), model_id)


def test_missing_key_is_named_with_the_file(cases, tmp_path):
    path = tmp_path / "missing.pth"
    msg = _refused(cases["terrafm_s2_l2a"], lambda state: state.pop("blocks.1.mlp.fc2.bias"), path, "terrafm_b")
    assert "missing keys [blocks.1.mlp.fc2.bias]" in msg
    assert str(path) in msg


def test_unexpected_key_is_named_with_the_file(cases, tmp_path):
    path = tmp_path / "unexpected.pth"
    msg = _refused(cases["terrafm_s1"], lambda state: state.update({"head.weight": torch.zeros(3, 3)}), path,
                   "terrafm_b")
    assert "unexpected keys [head.weight]" in msg
    assert str(path) in msg


def test_wrong_shape_is_named_with_the_file(cases, tmp_path):
    path = tmp_path / "shape.pt"
    msg = _refused(cases["thor_s2_p16"], lambda state: state.update({"encoder.blocks.0.attn.qkv.bias": torch.zeros(7)}),
                   path, "thor_1_0_base")
    assert "blocks.0.attn.qkv.bias: file (7,) vs model (192,)" in msg
    assert str(path) in msg


def test_thor_missing_encoder_key_is_named(cases, tmp_path):
    path = tmp_path / "thor_missing.pt"
    msg = _refused(cases["thor_s2_p16"], lambda state: state.pop("encoder.ind_patch_embed.patch_embed.S1:VH.weight"),
                   path, "thor_1_0_base")
    assert re.search(r"missing keys \[ind_patch_embed\.patch_embed\.S1:VH\.weight\]", msg)
    assert str(path) in msg


def test_full_size_model_rejects_reduced_file(cases):
    """Without the reduced arch, the fixture file is far too small for the real architecture."""
    case = cases["terrafm_s2_l2a"]
    with pytest.raises(WeightsError) as err:
        load_adapter("terrafm_b", checkpoint=case.weights, device="cpu")
    msg = str(err.value)
    assert str(case.weights) in msg and "only 5927199 bytes" in msg and "451805184" in msg


def test_tiny_truncated_file(cases, tmp_path):
    case = cases["terrafm_s2_l1c"]
    path = tmp_path / "pointer.pth"
    path.write_bytes(case.weights.read_bytes()[:1000])
    msg = _load_error(case, path, "terrafm_b")
    assert str(path) in msg and "only 1000 bytes" in msg and "truncated" in msg


def test_truncated_file_above_size_floor(cases, tmp_path):
    """Large enough to pass the size check, but cut: torch.load fails and the file is named."""
    case = cases["thor_s1_p16"]
    data = case.weights.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * 0.9)])
    msg = _load_error(case, path, "thor_1_0_base")
    assert str(path) in msg and "torch.load(weights_only=True)" in msg and "truncated" in msg


def test_non_finite_weights_rejected(cases, tmp_path):
    case = cases["terrafm_s1"]
    state = torch.load(case.weights, weights_only=True)
    state["norm.bias"][3] = float("nan")
    path = _save(state, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match=r"non-finite values in \[norm\.bias\]"):
        load_adapter("terrafm_b", checkpoint=path, arch=case.arch, device="cpu")


def test_missing_local_checkpoint(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match="does not exist") as err:
        load_adapter("terrafm_b", checkpoint=path, device="cpu")
    assert str(path) in str(err.value)


def test_sha256_and_source_in_meta(cases):
    case = cases["terrafm_s1"]
    adapter = case.load()
    digest = _sha256(case.weights)
    assert adapter.weights_sha256 == digest
    out = adapter.embed(case.input()[:1], "s1", "pooled")
    assert out.meta["weights_sha256"] == digest
    assert out.meta["weights_path"] == str(case.weights.resolve())
    assert out.meta["weights_source"] == "local_file"
    d = adapter.describe()
    assert d["weights_sha256"] == digest and d["random_weights"] is False
    assert d["hf_repo"] == "MBZUAI/TerraFM" and d["hf_file"] == "TerraFM-B.pth"


# ------------------------------------------------------------------------------------------------
# THOR checkpoint layouts
# ------------------------------------------------------------------------------------------------


def test_thor_wrapped_checkpoint_with_decoder_keys(cases, tmp_path):
    case = cases["thor_s1_p16"]
    state = torch.load(case.weights, weights_only=True)
    wrapped = dict(state)
    wrapped["encoder.pos_embed"] = torch.zeros(1, 5, 64)  # dropped by the THOR rules
    wrapped["encoder.decoder_embed.weight"] = torch.zeros(3, 3)
    wrapped["decoder.blocks.0.norm1.weight"] = torch.zeros(3)  # another sub-model: ignored
    path = _save({"state_dict": wrapped, "epoch": torch.tensor(3)}, tmp_path / "wrapped.pt")
    adapter = load_adapter("thor_1_0_base", checkpoint=path, arch=case.arch, device="cpu", **case.adapter_options())
    assert adapter.describe()["dropped_keys"] == 2
    assert adapter.describe()["ignored_non_encoder_keys"] == 1
    out = adapter.embed(case.input(), "s1", "pooled")
    assert_close(out.pooled, case.expected("pooled.npy"), case.atol, case.rtol, "wrapped checkpoint pooled")


def test_thor_flat_encoder_state_dict(cases, tmp_path):
    case = cases["thor_s1_p16"]
    state = torch.load(case.weights, weights_only=True)
    flat = {k[len("encoder."):]: v for k, v in state.items()}
    path = _save(flat, tmp_path / "flat.pt")
    adapter = load_adapter("thor_1_0_base", checkpoint=path, arch=case.arch, device="cpu", **case.adapter_options())
    assert adapter.describe()["key_prefix_stripped"] == ""
    out = adapter.embed(case.input(), "s1", "pooled")
    assert_close(out.pooled, case.expected("pooled.npy"), case.atol, case.rtol, "flat checkpoint pooled")


# ------------------------------------------------------------------------------------------------
# Hugging Face cache first
# ------------------------------------------------------------------------------------------------

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hf_cache(root: Path, repo_id: str, filename: str, source: Path) -> Path:
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(SNAPSHOT)
    shutil.copyfile(source, snap / filename)
    return snap / filename


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""
    attempts = []

    def forbidden(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is forbidden in this test")

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at its import: offline as a process started with the
    # variable set. Otherwise its first hf_hub_download, local_files_only included, fetches the Hub's
    # agent registry (huggingface_hub 2.3 utils/_detect_agent.py) - in whichever test comes first
    # (found by running the worker suite in random order).
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    return attempts


@pytest.mark.parametrize("how", ["cache_dir_option", "HUGGINGFACE_HUB_CACHE", "HF_HOME"])
def test_terrafm_from_fake_hf_cache_offline(cases, tmp_path, monkeypatch, no_network, how):
    case = cases["terrafm_s2_l2a"]
    hub = tmp_path / "hfhome" / "hub"
    cached = _fake_hf_cache(hub, "MBZUAI/TerraFM", "TerraFM-B.pth", case.weights)
    kwargs = {}
    if how == "cache_dir_option":
        kwargs["cache_dir"] = str(hub)
    elif how == "HUGGINGFACE_HUB_CACHE":
        monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(hub))
    else:
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))  # huggingface_hub semantics: $HF_HOME/hub
    assert hf_cache_dir(kwargs.get("cache_dir")) == str(hub)
    adapter = load_adapter("terrafm_b", checkpoint=None, arch=case.arch, device="cpu", s2_branch="l2a", **kwargs)
    d = adapter.describe()
    assert d["weights_source"] == "hf_cache"
    assert d["weights_path"] == str(cached.resolve())
    assert d["weights_sha256"] == _sha256(case.weights)
    assert d["hf_repo"] == "MBZUAI/TerraFM" and d["hf_file"] == "TerraFM-B.pth" and d["hf_cache_dir"] == str(hub)
    out = adapter.embed(case.input(), "s2", "pooled")
    assert_close(out.pooled, case.expected("pooled.npy"), case.atol, case.rtol, "hub-cache pooled")
    assert no_network == []


def test_thor_from_fake_hf_cache_offline(cases, tmp_path, no_network):
    case = cases["thor_s2_unit_scale_p16"]
    hub = tmp_path / "hub"
    _fake_hf_cache(hub, "FM4CS/THOR-1.0-base", "thor_v1_vit_base.pt", case.weights)
    adapter = load_adapter("thor_1_0_base", arch=case.arch, device="cpu", cache_dir=str(hub), **case.adapter_options())
    assert adapter.describe()["weights_source"] == "hf_cache"
    out = adapter.embed(case.input(), "s2", "pooled")
    assert_close(out.pooled, case.expected("pooled.npy"), case.atol, case.rtol, "THOR hub-cache pooled")
    assert no_network == []


def test_offline_cache_miss_names_repo_file_cache_and_remedy(tmp_path, no_network):
    hub = tmp_path / "empty-hub"
    with pytest.raises(WeightsNotFoundError) as err:
        load_adapter("terrafm_b", device="cpu", cache_dir=str(hub))
    msg = str(err.value)
    for needle in ("MBZUAI/TerraFM", "TerraFM-B.pth", str(hub), "HF_HUB_OFFLINE", "checkpoint='/path/to/TerraFM-B.pth'"):
        assert needle in msg, needle
    with pytest.raises(WeightsNotFoundError) as err:
        load_adapter("thor_1_0_base", device="cpu", cache_dir=str(hub))
    assert "FM4CS/THOR-1.0-base" in str(err.value) and "thor_v1_vit_base.pt" in str(err.value)
    assert no_network == []


def test_cache_miss_with_network_failure_names_everything(tmp_path, monkeypatch, no_network):
    """Not offline: the download is attempted, fails (no network), and the error says what/where."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, cache_dir=None, local_files_only=False, **kw):
        calls.append(local_files_only)
        if local_files_only:
            raise FileNotFoundError("not cached")
        raise OSError("network access is forbidden in this test")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(WeightsNotFoundError) as err:
        load_adapter("terrafm_b", device="cpu", cache_dir=str(tmp_path))
    assert calls == [True, False]  # cache first, then network
    msg = str(err.value)
    assert "Failed to download 'TerraFM-B.pth' from Hugging Face repo MBZUAI/TerraFM" in msg
    assert str(tmp_path) in msg and "checkpoint=" in msg


# ------------------------------------------------------------------------------------------------
# Random weights: explicit opt-in only, labelled loudly
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, arch", [("terrafm_b", TERRAFM_TINY), ("thor_1_0_base", THOR_TINY)])
def test_random_weights_are_labelled(name, arch, caplog, no_network):
    with caplog.at_level(logging.WARNING, logger="rs_embed_pipeline.models"):
        adapter = load_adapter(name, arch=arch, device="cpu", allow_random_weights=True)
    assert any("RANDOM WEIGHTS" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    d = adapter.describe()
    assert d["random_weights"] is True and d["weights_source"] == RANDOM_LABEL
    assert adapter.weights_sha256 is None
    x = np.full((1, len(adapter.input_bands("s2")), 64, 64), 1000.0, np.float32)
    out = adapter.embed(x, "s2", "pooled")
    assert out.meta["random_weights"] is True and out.meta["weights_source"] == RANDOM_LABEL
    assert np.isfinite(out.pooled).all()


def test_random_weights_flag_must_be_bool():
    with pytest.raises(ValueError, match="allow_random_weights must be a bool"):
        load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu", allow_random_weights="yes")


def test_checkpoint_wins_over_random_flag(cases):
    case = cases["terrafm_s1"]
    adapter = load_adapter("terrafm_b", checkpoint=case.weights, arch=case.arch, device="cpu", allow_random_weights=True)
    assert adapter.describe()["random_weights"] is False
