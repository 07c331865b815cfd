"""Fixtures for pipeline tests: a tiny region, a synthetic catalog and the reduced fixture models."""

import json
import os
from pathlib import Path

import pytest

# The Earth Engine REST stand-in fixtures (test_gee_pipeline.py), defined once for both folders.
from rs_embed_pipeline_tests.providers.conftest import gee_env, standin  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
TINY_BBOX = (6.600, 46.500, 6.612, 46.510)  # about 0.9 x 1.1 km: 1-4 tiles per tile size
WINDOW = "2024-01-01"


def reference_dir() -> Path:
    path = Path(os.environ.get("RS_EMBED_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
    if not path.is_dir():
        pytest.fail(f"Reference fixtures not found at {path}; set RS_EMBED_REFERENCE_DIR")
    return path


@pytest.fixture(scope="session")
def worker_python() -> str:
    path = os.environ.get("RS_EMBED_WORKER_PYTHON", str(REPO / ".venv-worker" / "bin" / "python"))
    if not Path(path).exists():
        pytest.fail(f"Worker environment not found at {path}; run `make setup` first")
    return path


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    out = tmp_path_factory.mktemp("catalog")
    return generate_synthetic_catalog(out, TINY_BBOX, "2024-01-01", "2024-04-01", seed=0, pad_m=3000.0)


def write_config(path: Path, regions: list[dict], cadence: str = "quarterly") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"time_windows": {"cadence": cadence, "start": "2024-01-01"},
                                    "regions": regions}))
    return path


def reduced_model_resources(worker_python: str) -> dict:
    """TerraFM-B and THOR adapters at the fixtures' reduced size, with the fixtures' weights."""
    from rs_embed_pipeline.orchestration.resources import TerraFMResource, ThorResource

    ref = reference_dir()
    terrafm_case = json.loads((ref / "terrafm_s2_l2a" / "case.json").read_text())
    thor_case = json.loads((ref / "thor_s2_p16" / "case.json").read_text())
    return {
        "terrafm": TerraFMResource(worker_python=worker_python, device="cpu", batch_size=4,
                                  arch_json=json.dumps(terrafm_case["arch"]),
                                  checkpoint=str(ref / "terrafm_s2_l2a" / "weights.pth")),
        "thor": ThorResource(worker_python=worker_python, device="cpu", batch_size=4,
                            arch_json=json.dumps(thor_case["arch"]),
                            checkpoint=str(ref / "thor_s2_p16" / "weights.pt")),
    }


def build_test_definitions(tmp: Path, catalog: Path, worker_python: str, regions: list[dict] | None = None,
                           imagery=None):
    """Definitions over a tiny region: a local store, the synthetic catalog, reduced models."""
    import dagster as dg

    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.resources import LocalStacImagery, PipelineStore
    from rs_embed_pipeline.orchestration.settings import Settings

    config = write_config(tmp / "pipeline.yaml", regions or [{"name": "tiny", "bbox": list(TINY_BBOX)}])
    store_root = tmp / "store"
    settings = Settings.from_env({"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": str(store_root)})
    resources = {
        "store": PipelineStore(root=str(store_root)),
        "imagery": imagery or LocalStacImagery(catalog_path=str(catalog)),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        **reduced_model_resources(worker_python),
    }
    return build_definitions(settings, resources=resources), store_root
