"""One mapping of model names for every CLI (cli/names.py), and the search CLI's errors that list what
exists (issue 24 points 5 and 6)."""

import pytest

from rs_embed_pipeline.cli import search
from rs_embed_pipeline.cli.names import ModelName, UsageError, cubes_in_store, model_names
from rs_embed_pipeline.orchestration.settings import Settings

ENV = {"RS_EMBED_STORE": "/tmp/unused-store"}


@pytest.mark.parametrize(("name", "expected"), [
    ("terrafm", ModelName("terrafm", "terrafm_b")),
    ("terrafm_b", ModelName("terrafm", "terrafm_b")),
    (" TerraFM_B ", ModelName("terrafm", "terrafm_b")),
    ("thor", ModelName("thor", "thor_1_0_base")),
    ("thor_1_0_base", ModelName("thor", "thor_1_0_base")),
    ("thor_v1_base", ModelName("thor", "thor_1_0_base")),
    ("thor_v1_large", ModelName("thor", "thor_1_0_large")),
    ("thor_1_0_tiny", ModelName("thor", "thor_1_0_tiny")),
])
def test_every_spelling_maps_to_its_family_and_store_id(name, expected):
    assert model_names(name, Settings.from_env(ENV)) == expected


def test_the_family_name_follows_the_size_the_pipeline_builds():
    settings = Settings.from_env({**ENV, "RS_EMBED_THOR_MODEL_KEY": "thor_v1_small"})
    assert model_names("thor", settings) == ModelName("thor", "thor_1_0_small")
    assert model_names("thor_v1_large", settings) == ModelName("thor", "thor_1_0_large")  # a size named wins


def test_an_unknown_model_lists_every_valid_name():
    with pytest.raises(UsageError) as err:
        model_names("terafm", Settings.from_env(ENV))
    assert str(err.value) == (
        "unknown model 'terafm'; valid names: terrafm: terrafm, terrafm_b; thor: thor, thor_1_0_base, thor_v1_base, "
        "thor_1_0_tiny, thor_v1_tiny, thor_1_0_small, thor_v1_small, thor_1_0_large, thor_v1_large")


def _store(tmp_path):
    for name in ("terrafm_b_s2/demo.zarr", "terrafm_b_s2/alps.zarr", "thor_1_0_base_s2/demo.zarr"):
        (tmp_path / "cubes" / name).mkdir(parents=True)
    return tmp_path


def test_cubes_in_store_lists_models_and_regions(tmp_path):
    assert cubes_in_store(str(tmp_path)) == {}
    assert cubes_in_store(str(_store(tmp_path))) == {"terrafm_b_s2": ["alps", "demo"], "thor_1_0_base_s2": ["demo"]}


ARGS = ["--modality", "s2", "--window", "2024-01-01", "--lon", "6.6", "--lat", "46.5"]


def test_search_with_a_region_typo_lists_the_regions_with_a_cube(tmp_path, capsys):
    root = str(_store(tmp_path))
    assert search.main(["--model", "terrafm", "--region", "dmeo", "--store", root, *ARGS]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: no terrafm_b_s2 cube for region 'dmeo' in {root} (regions with a terrafm_b_s2 cube: "
                   "alps, demo); cubes in this store: terrafm_b_s2: alps, demo; thor_1_0_base_s2: demo\n")
    assert "indexing the cube window now" not in err


def test_search_with_a_model_typo_or_a_model_without_cube_says_so(tmp_path, capsys):
    root = str(_store(tmp_path))
    assert search.main(["--model", "thorr", "--region", "demo", "--store", root, *ARGS]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model 'thorr'; valid names: terrafm: terrafm, terrafm_b;")
    assert search.main(["--model", "thor_v1_large", "--region", "demo", "--store", root, *ARGS]) == 2
    assert "no thor_1_0_large_s2 cube at all" in capsys.readouterr().err


def test_search_in_an_empty_store_says_how_to_build_a_cube(tmp_path, capsys):
    assert search.main(["--model", "thor", "--region", "demo", "--store", str(tmp_path), *ARGS]) == 2
    assert capsys.readouterr().err == (
        f"error: no cube in the store {tmp_path} yet: build one first, e.g. python -m rs_embed_pipeline.cli.build "
        "--region demo --window <window> (README 'Build your own region')\n")
