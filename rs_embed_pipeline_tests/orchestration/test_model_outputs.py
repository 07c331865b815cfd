"""The model resources' outputs, grid_dtype and io_threads fields (#21 points 3 and 4): checked
choices, carried to the worker in its request, and the cube refusing an embedding store without
both outputs before it writes anything."""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest

from rs_embed_pipeline.orchestration.assets.embeddings import check_cube_outputs
from rs_embed_pipeline.orchestration.resources import ResourceFieldError, ThorResource, TerraFMResource
from rs_embed_pipeline.stores import ArraySpec, TileStore
from rs_embed_pipeline.worker.protocol import EmbedRequest


def _request(model) -> EmbedRequest:
    calls = []

    class Pipes:
        def run(self, **kwargs):
            calls.append(kwargs)
            return SimpleNamespace(get_custom_messages=lambda: [])

    model.run_worker(None, Pipes(), modality="s2", partitions=[])  # type: ignore[arg-type]
    return EmbedRequest.from_extras(calls[0]["extras"])


def test_defaults_keep_both_outputs_in_float32():
    request = _request(TerraFMResource(worker_python="py"))
    assert (request.outputs, request.grid_dtype, request.io_threads) == ("both", "float32", 6)


def test_fields_reach_the_worker_request():
    model = ThorResource(worker_python="py", outputs="pooled", grid_dtype="bfloat16", io_threads=2)
    request = _request(model)
    assert (request.outputs, request.grid_dtype, request.io_threads) == ("pooled", "bfloat16", 2)


@pytest.mark.parametrize("field, value, choices", [("outputs", "tokens", "'pooled', 'grid' or 'both'"),
                                                   ("grid_dtype", "int8", "'float32', 'float16' or 'bfloat16'")])
def test_bad_choices_are_refused_naming_value_and_choices(field, value, choices):
    with pytest.raises(Exception, match=rf"(?s){field}.*Input should be {choices}.*input_value='{value}'"):
        TerraFMResource(worker_python="py", **{field: value})


def test_io_threads_below_one_is_refused():
    with pytest.raises(ResourceFieldError, match=r"io_threads must be an integer >= 1, got 0") as info:
        TerraFMResource(worker_python="py", io_threads=0).validate_settings()
    assert info.value.field == "io_threads"


@pytest.mark.parametrize("outputs", ["pooled", "grid"])
def test_cube_refuses_a_store_without_both_outputs(tmp_path, outputs):
    uri = str(tmp_path / "e.zarr")
    spec = ArraySpec(outputs, (4,) if outputs == "pooled" else (4, 2, 2),
                     ("feature",) if outputs == "pooled" else ("feature", "gy", "gx"), fill_value=np.nan)
    TileStore.create_or_open(uri, "embeddings", tile_ids=["a"], arrays=[spec], fingerprint="f",
                             attrs={"outputs": outputs, "grid_dtype": "float32"})
    with pytest.raises(dg.Failure, match=rf"holds outputs='{outputs}' .* the cube and the products need 'both' "
                                         r"\(choices: pooled, grid, both\)"):
        check_cube_outputs(TileStore.open(uri, "embeddings"))


def test_cube_accepts_stores_with_both_and_earlier_stores(tmp_path):
    uri = str(tmp_path / "e.zarr")
    TileStore.create_or_open(uri, "embeddings", tile_ids=["a"], arrays=[], fingerprint="f", attrs={})
    check_cube_outputs(TileStore.open(uri, "embeddings"))  # no outputs recorded: written before it, both
