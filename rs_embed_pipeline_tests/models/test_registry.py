"""The model registry (rs_embed_pipeline.models.registry): a new model family is one entry.

A toy family - a tiny torch module and an adapter subclass, defined in this file and nowhere
else - is registered, loaded through ``load_adapter`` and run through the worker: its store loop
(``worker.embed.embed_store``) and the Pipes entry point (``worker.embed.main``) with an
``EmbedRequest`` naming it. Its outputs are checked against numpy. Then the registry's errors.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rs_embed_pipeline.models as models
from rs_embed_pipeline.core.vocabulary import S2_BANDS
from rs_embed_pipeline.models import (
    ModelError,
    ModelFamily,
    ModelInputError,
    build_model,
    families,
    get_family,
    load_adapter,
    register_family,
    unregister_family,
)
from rs_embed_pipeline.models import knobs as K
from rs_embed_pipeline.models import preprocessing as P
from rs_embed_pipeline.models.adapters import _Adapter
from rs_embed_pipeline.models.layers import EncoderConfig
from rs_embed_pipeline.models.options import Knob
from rs_embed_pipeline.stores import ArraySpec, TileStore
from rs_embed_pipeline.worker.embed import embed_store
from rs_embed_pipeline.worker.protocol import EmbedRequest, PartitionJob, read_messages

from .conftest import REPO_ROOT

# ------------------------------------------------------------------------------------------------
# The toy family: everything a new model needs, in this file only
# ------------------------------------------------------------------------------------------------

TOY_BANDS = ("B4", "B3", "B2")  # RGB: not the patch store's order, so the worker has to pick them
TOY_TILE = 16
TOY_PATCH = 4
TOY_DIM = 6


class ToyEncoder(nn.Module):
    """A 4x4 stride-4 patch convolution whose output channel ``d`` is the patch mean of input
    channel ``d % 3`` plus ``d / 10`` (fixed weights: the outputs can be checked with numpy)."""

    def __init__(self, dim: int = TOY_DIM, in_chans: int = len(TOY_BANDS), patch: int = TOY_PATCH) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        with torch.no_grad():
            weight = torch.zeros(dim, in_chans, patch, patch)
            for d in range(dim):
                weight[d, d % in_chans] = 1.0 / patch**2
            self.patch_embed.weight.copy_(weight)
            self.patch_embed.bias.copy_(torch.arange(dim, dtype=torch.float32) / 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x)


def build_toy(arch: dict | None = None, variant: str | None = None) -> ToyEncoder:
    return ToyEncoder(dim=(arch or {}).get("embed_dim", TOY_DIM))


class ToyAdapter(_Adapter):
    """Its preprocessing (``x / scale``) and forward pass; the skeleton does the rest."""

    family = "toy"

    def _configure(self, arch, options: dict) -> None:
        self.cfg = EncoderConfig(embed_dim=(arch or {}).get("embed_dim", TOY_DIM), depth=1, num_heads=1)
        self.scale = float(options.pop("scale", self.spec.default("scale")))

    def _build(self) -> torch.nn.Module:
        return build_toy(self.arch)

    def _hf_source(self) -> tuple[str, str]:
        return "example/toy", "toy.pt"

    def grid_shape(self, modality: str) -> tuple[int, int, int]:
        self._modality(modality)
        side = self.image_size // TOY_PATCH
        return (self.cfg.embed_dim, side, side)

    def _settings(self) -> dict:
        return {"scale": self.scale}

    def output_kinds(self) -> dict:
        return {"model_key": self.model_id, "grid_type": "feature_map", "grid_kind": "toy_patch_means",
                "pooling": "mean", "cls_removed": False, "pretrained": False}

    def _prepare(self, x: np.ndarray, modality: str):
        return x / np.float32(self.scale), None, {"normalization": f"x / {self.scale:g}"}

    def _forward(self, batch, modality, wanted, forward_args):
        grid = self.model(P.resize_bilinear(batch, self.image_size))
        outs = {"pooled": grid.mean(dim=(2, 3)), "grid": grid, "tokens": grid.flatten(2).transpose(1, 2)}
        return {k: outs[k] for k in wanted}, {}


def check_toy_options(options, modalities) -> None:
    if "scale" in options and not float(options["scale"]) > 0:
        raise ModelInputError(f"toy scale must be positive, got {options['scale']!r}")


TOY = ModelFamily(
    name="toy",
    title="Toy",
    ids={"toy_v1": None, "toy": None},
    input_bands={"s2": TOY_BANDS},
    tile_size_px=TOY_TILE,
    adapter=ToyAdapter,
    model=build_toy,
    options=("scale",),
    batch_sizes={"cpu": 3, "cuda": 16},
    knobs=(Knob("RS_EMBED_TOY_SCALE", "toy", "scale", None, None, 10000.0, "a positive number",
                lambda v: float(str(v).strip())),),
    check_options=check_toy_options,
)


@pytest.fixture
def toy():
    register_family(TOY)
    try:
        yield TOY
    finally:
        unregister_family("toy")


def expected_toy(raw: np.ndarray, scale: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """The toy's pooled and grid outputs, in numpy, for ``raw`` in TOY_BANDS order."""
    b, c, h, w = raw.shape
    means = (raw.astype(np.float64) / scale).reshape(b, c, h // TOY_PATCH, TOY_PATCH, w // TOY_PATCH, TOY_PATCH)
    means = means.mean(axis=(3, 5))
    grid = np.stack([means[:, d % c] + d / 10 for d in range(TOY_DIM)], axis=1)
    return grid.mean(axis=(2, 3)), grid


def make_patch_store(uri: str, n: int, nan: tuple[int, ...] = (), no_data: tuple[int, ...] = ()) -> np.ndarray:
    """A patch store of ``n`` S2 tiles of every provider band (``S2_BANDS`` order), DN values;
    ``nan`` tiles are all-NaN (the input check refuses them), ``no_data`` tiles carry that status."""
    data = np.random.default_rng(0).uniform(200, 6000, (n, len(S2_BANDS), TOY_TILE, TOY_TILE)).astype(np.float32)
    data[list(nan)] = np.nan
    store = TileStore.create_or_open(
        uri, "patches", tile_ids=[f"t{i:03d}" for i in range(n)],
        arrays=[ArraySpec("data", (len(S2_BANDS), TOY_TILE, TOY_TILE), ("band", "y", "x")),
                ArraySpec("valid", (TOY_TILE, TOY_TILE), ("y", "x"), dtype="bool", fill_value=False)],
        fingerprint="toy-patches",
        attrs={"modality": "s2", "bands": list(S2_BANDS), "size_px": TOY_TILE, "scale_m": 10.0},
    )
    ok = [i for i in range(n) if i not in no_data]
    store.write_tiles(ok, ["ok"] * len(ok), [{}] * len(ok), data=data[ok],
                      valid=np.ones((len(ok), TOY_TILE, TOY_TILE), bool))
    for i in no_data:
        store.write_tile(i, "no_data", {"reason": "no scene"})
    return data


def toy_bands(data: np.ndarray) -> np.ndarray:
    return data[:, [S2_BANDS.index(b) for b in TOY_BANDS]]


# ------------------------------------------------------------------------------------------------
# The toy family end to end
# ------------------------------------------------------------------------------------------------


def test_the_toy_family_needs_no_file_outside_this_test(toy):
    """Everything the toy family is comes from this file: its adapter, its model, its entry; the
    package never names it, and nothing else had to change for it to load and run."""
    here = Path(__file__).resolve()
    for obj in (ToyAdapter, ToyEncoder, build_toy, check_toy_options):
        assert Path(inspect.getsourcefile(obj)).resolve() == here
    package = REPO_ROOT / "rs_embed_pipeline"
    naming = [p for p in package.rglob("*.py") if re.search(r"\btoy\b", p.read_text(), re.I)]
    assert naming == []
    assert get_family("toy") is toy and get_family("TOY_V1 ") is toy
    assert [f.name for f in families()] == ["terrafm", "thor", "toy"]
    assert models.MODEL_IDS["toy_v1"] == ("toy", None) and models.resolve_model_id("toy") == ("toy", None)
    # the knob table iterates the registry: the toy's variable is a knob like THOR's
    assert K.KNOBS_BY_ENV["RS_EMBED_TOY_SCALE"].family == "toy" and "RS_EMBED_TOY_SCALE" in K.ENV_VARS
    assert K.default("toy", "scale") == 10000.0 and K.default_batch_size("toy", "cuda") == 16
    assert "toy" in K.resource_values({})


def test_the_toy_family_through_load_adapter_and_build_model(toy):
    a = load_adapter("toy_v1", device="cpu", allow_random_weights=True, use_env=False)
    assert isinstance(a, ToyAdapter) and a.model_id == "toy_v1" and a.family == "toy"
    assert a.batch_size == 3  # the entry's CPU batch size
    assert a.modalities == ("s2",) and a.input_bands("s2") == TOY_BANDS and a.image_size == TOY_TILE
    d = a.describe()
    assert d["input_bands"] == {"s2": list(TOY_BANDS)} and d["grid_shape"] == {"s2": [TOY_DIM, 4, 4]}
    assert d["random_weights"] is True and d["scale"] == 10000.0
    raw = np.random.default_rng(1).uniform(100, 9000, (5, 3, TOY_TILE, TOY_TILE)).astype(np.float32)
    out = a.embed(raw, "s2", "both")  # 5 images in batches of 3
    pooled, grid = expected_toy(raw)
    assert out.pooled.shape == (5, TOY_DIM) and out.grid.shape == (5, TOY_DIM, 4, 4)
    np.testing.assert_allclose(out.grid, grid, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.pooled, pooled, rtol=1e-5, atol=1e-6)
    assert out.meta["model_id"] == "toy_v1" and out.meta["grid_kind"] == "toy_patch_means"
    assert out.meta["normalization"] == "x / 10000" and out.meta["input_bands"] == list(TOY_BANDS)
    # the skeleton's checks, with the entry's bands in the messages
    with pytest.raises(ModelInputError, match=r"toy_v1 supports modalities \('s2',\), got 's1'"):
        a.embed(raw[:, :2], "s1")
    with pytest.raises(ModelInputError, match=r"expects C=3 channels in band order \['B4', 'B3', 'B2'\].*"
                                              r"toy_v1 takes C=3 for S2 \(bands \['B4', 'B3', 'B2'\]\)$"):
        a.embed(raw[:, :2], "s2")
    with pytest.raises(ModelInputError, match=r"Unknown option\(s\) \['variant'\] for toy_v1; valid options: "
                                              r"\['allow_random_weights', 'batch_size', .*'scale'\]"):
        load_adapter("toy", device="cpu", allow_random_weights=True, variant="base")
    model = build_model("toy")
    assert isinstance(model, ToyEncoder) and list(model.state_dict()) == ["patch_embed.weight", "patch_embed.bias"]


def test_the_toy_familys_knob_is_read_from_the_environment(toy, monkeypatch):
    monkeypatch.setenv("RS_EMBED_TOY_SCALE", "5000")
    a = load_adapter("toy", device="cpu", allow_random_weights=True)
    assert a.scale == 5000.0
    raw = np.full((1, 3, TOY_TILE, TOY_TILE), 2500.0, np.float32)
    np.testing.assert_allclose(a.embed(raw, "s2").pooled, expected_toy(raw, 5000.0)[0], rtol=1e-6)
    assert load_adapter("toy", device="cpu", allow_random_weights=True, scale=100.0).scale == 100.0  # explicit wins
    assert load_adapter("toy", device="cpu", allow_random_weights=True, use_env=False).scale == 10000.0
    monkeypatch.setenv("RS_EMBED_TOY_SCALE", "lots")
    with pytest.raises(ModelInputError, match=r"Environment variable RS_EMBED_TOY_SCALE='lots' is invalid; "
                                              r"valid values: a positive number"):
        load_adapter("toy", device="cpu", allow_random_weights=True)


def test_the_toy_family_through_the_workers_store_loop(toy, tmp_path):
    patches, embeddings = str(tmp_path / "p.zarr"), str(tmp_path / "e.zarr")
    data = make_patch_store(patches, 7, nan=(2,), no_data=(5,))
    a = load_adapter("toy", device="cpu", allow_random_weights=True, use_env=False)
    result = embed_store(a, "s2", patches, embeddings, batch_size=a.batch_size, code_version="test")
    assert result.counts == {"pending": 0, "ok": 5, "no_data": 1, "failed": 1}
    emb = TileStore.open(embeddings, "embeddings")
    assert emb.settings["model"] == "toy_v1" and emb.settings["bands"] == list(TOY_BANDS)
    assert "no finite value" in emb.tile_meta(2)["reason"]
    ok = [0, 1, 3, 4, 6]
    pooled, grid = expected_toy(toy_bands(data[ok]))
    assert emb.read("pooled", ok).shape == (5, TOY_DIM) and emb.read("grid", ok).shape == (5, TOY_DIM, 4, 4)
    np.testing.assert_allclose(emb.read("grid", ok), grid, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.read("pooled", ok), pooled, rtol=1e-5, atol=1e-6)
    assert np.isnan(emb.read("pooled", [2, 5])).all()
    # resumed: nothing left to do, same fingerprint
    again = embed_store(a, "s2", patches, embeddings, batch_size=a.batch_size, code_version="test")
    assert again.tiles_embedded_now == 0 and again.fingerprint == result.fingerprint


def test_the_toy_family_through_the_pipes_worker(toy, tmp_path, monkeypatch):
    """``python -m rs_embed_pipeline.worker.embed``'s ``main`` in this process (the toy family is
    registered here only): an EmbedRequest naming the toy model in, a PartitionResult out."""
    from dagster_pipes import encode_param

    from rs_embed_pipeline.worker import embed as worker

    patches, embeddings = str(tmp_path / "p.zarr"), str(tmp_path / "e.zarr")
    data = make_patch_store(patches, 4)
    request = EmbedRequest(model="toy_v1", modality="s2", code_version="t",
                           adapter_options={"device": "cpu", "allow_random_weights": True, "use_env": False},
                           partitions=(PartitionJob("demo|2024-01-01", patches, embeddings),))
    context = {
        "asset_keys": ["toy_s2_embeddings"], "code_version_by_asset_key": None, "provenance_by_asset_key": None,
        "partition_key": None, "partition_key_range": None, "partition_time_window": None,
        "run_id": "test-run", "job_name": "test", "retry_number": 0, "extras": request.to_extras(),
    }
    (tmp_path / "context.json").write_text(json.dumps(context))
    messages = tmp_path / "messages.jsonl"
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", encode_param({"path": str(tmp_path / "context.json")}))
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", encode_param({"path": str(messages)}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no toy weights anywhere: the opted-in random fallback
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    worker.main()
    lines = [json.loads(line) for line in messages.read_text().splitlines()]
    report = read_messages([m["params"]["payload"] for m in lines if m["method"] == "report_custom_message"])
    assert report.failures == () and len(report.results) == 1
    result = report.results[0]
    assert result.partition == "demo|2024-01-01" and result.adapter["model_id"] == "toy_v1"
    assert result.adapter["random_weights"] is True and result.adapter["batch_size"] == 3
    assert result.store.counts == {"pending": 0, "ok": 4, "no_data": 0, "failed": 0}
    pooled, grid = expected_toy(toy_bands(data))
    emb = TileStore.open(embeddings, "embeddings")
    np.testing.assert_allclose(emb.read("pooled", [0, 1, 2, 3]), pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.read("grid", [0, 1, 2, 3]), grid, rtol=1e-5, atol=1e-6)
    logs = [m["params"]["message"] for m in lines if m["method"] == "log"]
    assert any("falling back to RANDOM WEIGHTS" in msg for msg in logs)


# ------------------------------------------------------------------------------------------------
# The built-in families
# ------------------------------------------------------------------------------------------------


def test_the_built_in_families_are_registered_with_their_facts():
    assert [f.name for f in families()] == ["terrafm", "thor"]
    terrafm, thor = get_family("terrafm_b"), get_family("thor_v1_large")
    assert (terrafm.tile_size_px, thor.tile_size_px, thor.tile_size_option) == (224, 288, "image_size")
    assert terrafm.input_bands["s2"] == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
    assert thor.input_bands == {"s2": ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"),
                                "s1": ("VV", "VH")}
    assert [thor.model_id(v) for v in ("tiny", "small", "base", "large")] == [
        "thor_1_0_tiny", "thor_1_0_small", "thor_1_0_base", "thor_1_0_large"]
    assert terrafm.model_id() == "terrafm_b" and thor.model_id() == "thor_1_0_base"
    assert (terrafm.default_batch_size("cuda"), thor.default_batch_size("cuda"), thor.default_batch_size("cpu")) == (
        64, 32, 8)
    assert thor.checkpoint_env == "RS_EMBED_THOR_CKPT" and terrafm.checkpoint_env is None
    assert K.all_knobs() == terrafm.knobs + thor.knobs + K.INPUT_KNOBS
    # the adapters read their bands from the entries (and the old module paths still resolve)
    assert P.THOR_S2_BANDS == thor.input_bands["s2"] and P.TERRAFM_S2_BANDS == terrafm.input_bands["s2"]


@pytest.mark.parametrize("package", ["terrafm", "thor"])
def test_each_family_packages_lazy_names_resolve(package):
    import importlib

    module = importlib.import_module(f"rs_embed_pipeline.models.{package}")
    for name in module._LAZY:
        assert getattr(module, name) is not None, name


def test_the_orchestrator_validates_options_through_the_registry():
    thor = get_family("thor_1_0_base")
    thor.validate_options({"normalization": "unit_scale", "group_merge": "avg", "patch_size": 8}, ["s2"])
    # what a model resource's adapter_options() holds (load_adapter's arguments too)
    thor.validate_options({"use_env": False, "checkpoint": None, "device": "cuda:1", "precision": "bf16",
                           "allow_random_weights": True, "batch_size": None, "variant": "thor_v1_large",
                           "pretrained": True, "scale_m": 10.0, "arch": {"embed_dim": 32}}, ["s2", "s1"])
    with pytest.raises(ModelInputError, match=r"Unknown precision 'fp16'; valid: fp32, bf16"):
        thor.validate_options({"precision": "fp16"})
    with pytest.raises(ModelInputError, match=r"Unknown device 'tpu'; valid: 'auto', 'cpu', 'cuda', 'cuda:N'"):
        thor.validate_options({"device": "tpu"})
    with pytest.raises(ModelInputError, match=r"batch_size must be a positive integer, got 0"):
        thor.validate_options({"batch_size": 0})
    with pytest.raises(ModelInputError, match=r"Unknown THOR S1 normalization mode 'unit_scale'.*S2-only"):
        thor.validate_options({"normalization": "unit_scale"}, ["s2", "s1"])
    with pytest.raises(ModelInputError, match=r"Unknown THOR group_merge 'max'; valid: mean, sum, concat"):
        thor.validate_options({"group_merge": "max"})
    with pytest.raises(ModelInputError, match=r"Unknown THOR variant='huge'"):
        thor.validate_options({"variant": "huge"})
    with pytest.raises(ModelInputError, match=r"Unknown option\(s\) \['colour'\] for thor_1_0_base"):
        thor.validate_options({"colour": 1})
    with pytest.raises(ModelInputError, match=r"Unknown TerraFM s2_branch 'l3'; valid: 'l2a' \(default\), 'l1c'"):
        get_family("terrafm").validate_options({"s2_branch": "l3"})
    with pytest.raises(ModelInputError, match=r"TerraFM-B supports modalities \('s2', 's1'\), got 's3'"):
        get_family("terrafm").validate_options({}, ["s3"])


# ------------------------------------------------------------------------------------------------
# The registry's errors
# ------------------------------------------------------------------------------------------------


def test_unknown_model_ids_name_every_registered_one(toy):
    ids = r"terrafm_b, terrafm, thor_1_0_base, thor, thor_v1_base, .*thor_v1_large, toy_v1, toy$"
    with pytest.raises(ModelInputError, match=rf"^Unknown model 'dofa'; valid: {ids}"):
        get_family("dofa")
    with pytest.raises(ModelInputError, match=rf"^Unknown model 'dofa'; valid: {ids}"):
        load_adapter("dofa")
    with pytest.raises(ModelInputError, match=rf"^Unknown model 'dofa'; valid: {ids}"):
        build_model("dofa")


def test_unregistered_families_are_gone(toy):
    unregister_family("toy")
    with pytest.raises(ModelInputError, match=r"Unknown model 'toy_v1'; valid: terrafm_b, .*thor_v1_large$"):
        load_adapter("toy_v1")
    with pytest.raises(ModelInputError, match=r"Unknown model family 'toy'; registered: terrafm, thor"):
        unregister_family("toy")
    register_family(TOY)  # for the fixture's unregister


def test_a_family_registers_once_and_its_ids_are_its_own(toy):
    with pytest.raises(ModelError, match=r"Model family 'toy' is already registered; pass replace=True"):
        register_family(TOY)
    assert register_family(TOY, replace=True) is TOY
    thief = ModelFamily(name="thief", title="Thief", ids={"thief": None, "thor_v1_base": None, "TOY": None},
                        input_bands={"s2": ("B2",)}, tile_size_px=8, adapter=ToyAdapter, model=build_toy)
    with pytest.raises(ModelError, match=r"ids \['thor_v1_base', 'toy'\] are already registered by \['thor', 'toy'\]"):
        register_family(thief)
    named_like_an_id = ModelFamily(name="terrafm_b", title="X", ids={"x1": None}, input_bands={"s2": ("B2",)},
                                   tile_size_px=8, adapter=ToyAdapter, model=build_toy)
    with pytest.raises(ModelError, match=r"\['terrafm_b'\] would name two families"):
        register_family(named_like_an_id)
    with pytest.raises(TypeError, match="register_family takes a ModelFamily, got dict"):
        register_family({"name": "x"})  # type: ignore[arg-type]
    assert [f.name for f in families()] == ["terrafm", "thor", "toy"]


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Toy"}, r"name must be a non-empty lower-case string"),
    ({"ids": {}}, r"ids must name at least one model id"),
    ({"input_bands": {"s3": ("B1",)}}, r"input_bands has modalities \['s3'\]; valid: \['s2', 's1'\]"),
    ({"input_bands": {"s2": ()}}, r"input_bands of \['s2'\] are empty"),
    ({"tile_size_px": 0}, r"tile_size_px must be a positive integer, got 0"),
    ({"adapter": ""}, r"adapter must be a 'module:attribute' string or a callable"),
    ({"options": ("scale", "batch_size")}, r"options \['batch_size'\] are common to every adapter"),
    ({"batch_sizes": {"cpu": 0}}, r"batch_sizes must be positive integers"),
    ({"knobs": K.INPUT_KNOBS}, r"knobs \['RS_EMBED_CHECK_INPUT', 'RS_EMBED_CHECK_RAISE'\] belong to another family"),
    ({"ids": {"toy_v1": "big"}}, r"ids name sizes but there is no variant_option"),
    ({"variant_option": "scale"}, r"variant_option and parse_variant go together"),
    ({"env_variant_ids": ("toy_v2",)}, r"env_variant_ids \['toy_v2'\] are not among the ids"),
    ({"tile_size_option": "image_size"}, r"tile_size_option 'image_size' is not among the options"),
])
def test_invalid_entries_are_refused_naming_the_field(change, message):
    fields = {f: getattr(TOY, f) for f in ("name", "title", "ids", "input_bands", "tile_size_px", "adapter", "model",
                                           "options", "batch_sizes", "knobs", "check_options")}
    with pytest.raises(ModelError, match=rf"Invalid model family '.*': .*{message}"):
        ModelFamily(**{**fields, **change})


def test_references_that_do_not_resolve_name_the_family():
    base = {"title": "Lost", "input_bands": {"s2": ("B2",)}, "tile_size_px": 8, "model": build_toy}
    lost = ModelFamily(name="lost", ids={"lost": None}, adapter="rs_embed_pipeline.models.nowhere:Adapter", **base)
    with pytest.raises(ModelError, match=r"Model family 'lost': its adapter 'rs_embed_pipeline.models.nowhere:"
                                         r"Adapter' cannot be imported"):
        lost.adapter_factory()
    typo = ModelFamily(name="typo", ids={"typo": None}, adapter="rs_embed_pipeline.models.adapters.TypoAdapter", **base)
    with pytest.raises(ModelError, match=r"Model family 'typo': its adapter '.*TypoAdapter' does not exist"):
        typo.adapter_factory()
    assert get_family("thor").adapter_factory().__name__ == "ThorAdapter"  # "module:attribute", imported on use
