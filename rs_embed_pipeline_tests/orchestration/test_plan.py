"""The pipeline plan (plan.py): what build_definitions decides once from the model resources."""

from __future__ import annotations

import pytest

from rs_embed_pipeline.orchestration.plan import PlanMismatch, plan_pipeline
from rs_embed_pipeline.orchestration.resources import TerraFMResource, ThorResource


def _models(terrafm: dict | None = None, thor: dict | None = None) -> dict:
    return {"terrafm": TerraFMResource(worker_python="python", **(terrafm or {})),
            "thor": ThorResource(worker_python="python", **(thor or {}))}


def test_default_plan_specs_sizes_and_threads():
    plan = plan_pipeline(_models())
    assert [(s.name, s.modality, s.store_model_id, s.tile_size_px, s.scale_m) for s in plan.specs] == [
        ("terrafm_s2", "s2", "terrafm_b", 224, 10.0),
        ("terrafm_s1", "s1", "terrafm_b", 224, 10.0),
        ("thor_s2", "s2", "thor_1_0_base", 288, 10.0),
    ]
    assert [s.title for s in plan.specs] == [
        "TerraFM-B, Sentinel-2", "TerraFM-B, Sentinel-1", "THOR 1.0 base, Sentinel-2"]
    assert plan.modalities == ["s2", "s1"]
    assert plan.tile_sizes() == [(224, 10.0), (288, 10.0)]
    assert plan.patch_sizes("s2") == [224, 288] and plan.patch_sizes("s1") == [224]
    assert plan.fetch_workers("s2") == 8 and plan.fetch_workers("s1") == 8


def test_plan_follows_each_models_settings():
    plan = plan_pipeline(_models(terrafm={"modalities": ["s2"], "fetch_workers": 3},
                                 thor={"modalities": ["s2", "s1"], "model_key": "thor_v1_large",
                                       "image_size": 256, "fetch_workers": 12}))
    assert [s.name for s in plan.specs] == ["terrafm_s2", "thor_s2", "thor_s1"]
    thor_s1 = plan.specs[2]
    assert (thor_s1.store_model_id, thor_s1.tile_size_px, thor_s1.title) == (
        "thor_1_0_large", 256, "THOR 1.0 large, Sentinel-1")
    assert plan.patch_sizes("s1") == [256] and plan.patch_sizes("s2") == [224, 256]
    # The largest fetch_workers of the models embedding a modality; S1 only THOR's.
    assert plan.fetch_workers("s2") == 12 and plan.fetch_workers("s1") == 12
    assert plan_pipeline(_models(thor={"fetch_workers": 2})).fetch_workers("s1") == 8


def test_plan_needs_both_model_resources():
    with pytest.raises(ValueError, match=r"need the model resources \['thor'\]; got \['terrafm'\]"):
        plan_pipeline({"terrafm": TerraFMResource(worker_python="python")})


@pytest.mark.parametrize(("override", "message"), [
    ({"image_size": 224}, r"thor_s2: this run's thor resource has tile size 224, the code location was loaded "
                          r"with 288 .* reload the code location"),
    ({"model_key": "thor_v1_small"}, r"has store model id 'thor_1_0_small', the code location was loaded with "
                                     r"'thor_1_0_base'"),
    ({"scale_m": 20.0}, r"has scale_m 20.0, the code location was loaded with 10.0"),
    ({"modalities": ["s1"]}, r"thor_s2: the thor resource embeds modalities \['s1'\], not 's2'"),
])
def test_a_run_resource_that_disagrees_with_the_plan_is_refused_by_name(override, message):
    spec = plan_pipeline(_models()).specs[2]
    spec.check_resource(ThorResource(worker_python="python"))  # as planned: accepted
    with pytest.raises(PlanMismatch, match=message):
        spec.check_resource(ThorResource(worker_python="python", **override))


def test_fetch_threads_changed_in_a_run_are_reported_not_dropped():
    spec = plan_pipeline(_models()).specs[0]
    assert spec.ignored_overrides(TerraFMResource(worker_python="python")) == []
    notes = spec.ignored_overrides(TerraFMResource(worker_python="python", fetch_workers=2))
    assert notes == ["terrafm.fetch_workers 2 in this run's config was not used: fetch threads are read when the "
                     "code location loads (8); for one run, set the imagery resource's max_workers"]


def test_model_resources_follow_the_model_registry():
    """The model resource keys are the registry's families (models/registry.py), each with its
    Dagster resource class; a family registered without one fails the load naming it and where to
    add it, and is gone again after unregistering."""
    from rs_embed_pipeline.models.registry import ModelFamily, families, register_family, unregister_family
    from rs_embed_pipeline.orchestration.plan import MODEL_RESOURCE_KEYS
    from rs_embed_pipeline.orchestration.resources import ThorResource, TerraFMResource, model_resource_classes

    assert MODEL_RESOURCE_KEYS == tuple(f.name for f in families()) == ("terrafm", "thor")
    assert model_resource_classes() == {"terrafm": TerraFMResource, "thor": ThorResource}
    register_family(ModelFamily(name="toyfm", title="Toy FM", ids={"toyfm_s": None}, input_bands={"s2": ("B4",)},
                                tile_size_px=64, adapter="not.imported:Adapter", model="not.imported:build"))
    try:
        with pytest.raises(ValueError, match=r"^Model family \['toyfm'\] registered in rs_embed_pipeline\.models\."
                                             r"registry without a Dagster resource class: add one to "
                                             r"rs_embed_pipeline\.orchestration\.resources\.MODEL_RESOURCE_CLASSES$"):
            model_resource_classes()
    finally:
        unregister_family("toyfm")
    assert list(model_resource_classes()) == ["terrafm", "thor"]
