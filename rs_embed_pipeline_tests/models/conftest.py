"""Shared fixtures for the model tests.

The reference fixtures live in ``$RS_EMBED_REFERENCE_DIR`` (default ``<repo root>/../shared/reference``).
A missing or incomplete reference directory FAILS the tests that need it (never a skip).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_ENV = "RS_EMBED_REFERENCE_DIR"
CASES = (
    "terrafm_s1",
    "terrafm_s2_l1c",
    "terrafm_s2_l2a",
    "thor_s1_p16",
    "thor_s2_p16",
    "thor_s2_p8",
    "thor_s2_unit_scale_p16",
)
TERRAFM_CASES = tuple(c for c in CASES if c.startswith("terrafm"))
THOR_CASES = tuple(c for c in CASES if c.startswith("thor"))

# Tiny random models for option / input-validation tests (no reference needed).
TERRAFM_TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "attn_dim": 48}
THOR_TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "band_embed_dim": 8}


@pytest.fixture(autouse=True)
def _seed():
    """Random-weight models are reproducible from test to test."""
    import torch

    torch.manual_seed(0)


def reference_dir() -> Path:
    env = os.environ.get(REFERENCE_ENV)
    path = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "reference"
    # Resolved, as the weight loader reports resolved paths (../shared may be a symlink).
    return path.resolve()


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if not path.is_dir():
        pytest.fail(
            f"Reference fixtures not found at {path}. Set {REFERENCE_ENV} to the folder holding "
            f"{', '.join(CASES)} and the state-dict manifests (default: <repo root>/../shared/reference).",
            pytrace=False,
        )
    missing = [c for c in CASES if not (path / c / "case.json").is_file()]
    missing += [m for m in ("terrafm_b_state_dict.json", "thor_v1_base_state_dict.json") if not (path / m).is_file()]
    if missing:
        pytest.fail(f"Reference directory {path} is incomplete: missing {missing}", pytrace=False)
    return path


class Case:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.spec = json.loads((self.dir / "case.json").read_text())
        self.model = self.spec["model"]
        self.arch = self.spec["arch"]
        self.modality = self.spec["modality"]
        self.options = self.spec["options"]
        self.weights = self.dir / self.spec["weights"]["file"]
        self.atol = float(self.spec["tolerance"]["atol"])
        self.rtol = float(self.spec["tolerance"]["rtol"])

    def input(self) -> np.ndarray:
        return np.load(self.dir / self.spec["input"]["file"])

    def expected(self, filename: str) -> np.ndarray:
        return np.load(self.dir / filename)

    def adapter_options(self, **overrides) -> dict:
        """The case's options mapped to load_adapter options (the case's own keys checked in meta)."""
        o = self.options
        if self.model == "terrafm_b":
            opts = {"image_size": o["image_size"]}
            if "s2_branch" in o:
                opts["s2_branch"] = o["s2_branch"]
        else:
            opts = {
                "normalization": o["normalization"],
                "patch_size": o["patch_size"],
                "image_size": o["image_size"],
                "scale_m": o["scale_m"],
                # the fixtures' inputs are already at a valid native size, so both modes agree
                "resize_mode": "native_snap" if o.get("resize_mode") == "native_snap" else "fixed",
                "shape_adjust": o.get("shape_adjust", "crop"),
                "fill_value": o.get("fill_value", 0.0),
            }
        opts.update(overrides)
        return opts

    def load(self, **overrides):
        from rs_embed_pipeline.models import load_adapter

        return load_adapter(
            self.model, checkpoint=str(self.weights), arch=self.arch, device="cpu", **self.adapter_options(**overrides)
        )


@pytest.fixture(scope="session")
def cases(reference: Path) -> dict[str, Case]:
    return {name: Case(reference, name) for name in CASES}


def assert_close(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = atol + rtol * np.abs(expected.astype(np.float64))
    worst = float((diff - bound).max())
    assert np.allclose(actual, expected, atol=atol, rtol=rtol), (
        f"{what}: max |diff| {diff.max():.3g} exceeds atol {atol} + rtol {rtol}*|expected| by {worst:.3g}"
    )
