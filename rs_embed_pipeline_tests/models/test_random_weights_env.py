"""``RS_EMBED_ALLOW_RANDOM_WEIGHTS=1`` in library use (``embed_arrays`` / ``load_adapter``, issue 24): as
documented and as the pipeline does, pretrained weights when found, else random ones labelled in the
output metadata; explicit options and named checkpoint files win."""

from __future__ import annotations

import numpy as np
import pytest

from rs_embed_pipeline.models import WeightsNotFoundError, embed_arrays, load_adapter
from rs_embed_pipeline.models.errors import ModelInputError

from .conftest import TERRAFM_TINY, THOR_TINY
from .test_models_weights import RANDOM_LABEL, no_network  # noqa: F401 - the fixture

ENV = "RS_EMBED_ALLOW_RANDOM_WEIGHTS"


def _s2(n_bands: int) -> np.ndarray:
    return np.full((n_bands, 64, 64), 1000.0, np.float32)


@pytest.mark.parametrize(("name", "arch", "bands"), [("terrafm", TERRAFM_TINY, 12), ("thor", THOR_TINY, 10)])
def test_embed_arrays_falls_back_to_labelled_random_weights(name, arch, bands, tmp_path, monkeypatch, no_network):  # noqa: F811
    hub = str(tmp_path / "empty-hub")
    with pytest.raises(WeightsNotFoundError):  # unset: no random weights
        embed_arrays(name, _s2(bands), arch=arch, device="cpu", cache_dir=hub)
    monkeypatch.setenv(ENV, "1")
    out = embed_arrays(name, _s2(bands), arch=arch, device="cpu", cache_dir=hub)
    assert out.meta["random_weights"] is True and out.meta["weights_source"] == RANDOM_LABEL
    assert out.pooled.shape == (arch["embed_dim"],) and np.isfinite(out.pooled).all()
    with pytest.raises(WeightsNotFoundError):  # an explicit option wins over the variable
        embed_arrays(name, _s2(bands), arch=arch, device="cpu", cache_dir=hub, allow_random_weights=False)
    assert no_network == []


def test_pretrained_weights_still_win_and_a_named_file_is_never_replaced(cases, tmp_path, monkeypatch, no_network):  # noqa: F811
    monkeypatch.setenv(ENV, "1")
    case = cases["terrafm_s2_l2a"]
    adapter = load_adapter("terrafm_b", checkpoint=case.weights, arch=case.arch, device="cpu",
                           **case.adapter_options())
    assert adapter.describe()["random_weights"] is False and adapter.describe()["weights_source"] == "local_file"
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_adapter("terrafm_b", checkpoint=tmp_path / "missing.pth", arch=TERRAFM_TINY, device="cpu")
    monkeypatch.setenv("RS_EMBED_THOR_CKPT", str(tmp_path / "missing.pt"))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_adapter("thor", arch=THOR_TINY, device="cpu")


def test_an_invalid_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV, "maybe")
    with pytest.raises(ModelInputError, match=r"RS_EMBED_ALLOW_RANDOM_WEIGHTS must be a boolean \(1/0, true/false"):
        load_adapter("terrafm_b", arch=TERRAFM_TINY, device="cpu")
