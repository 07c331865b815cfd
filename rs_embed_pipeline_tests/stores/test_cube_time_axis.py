"""The cube's time axis on its own: how many slots a group gets, and the reconciliation every
writer ends with, which repairs a stale, smaller shape left by a slower writer (from the
window_filled markers) without deleting a chunk."""

from __future__ import annotations

import numpy as np
import pytest

from rs_embed_pipeline.stores.cube.reader import open_cube
from rs_embed_pipeline.stores.cube.root import CubeError, CubeKeys, consolidated_metadata
from rs_embed_pipeline.stores.cube.time_axis import TIME_ARRAYS, reconcile_time_axis, time_capacity
from rs_embed_pipeline_tests.stores.test_cube_writer import (
    GROUPS, LONG_STARTS, embedding_store, expected, raw, write_window,
)


@pytest.mark.parametrize(("need", "available", "length"), [
    (1, 100, 16),    # one window + the margin of 4: one block of 16
    (12, 100, 16),   # 12 + 4 = 16: still one block
    (13, 100, 32),   # 13 + 4 = 17: two blocks
    (5, 10, 10),     # never beyond the windows the partitions definition has
    (20, 10, 20),    # but at least what is needed
])
def test_time_capacity_is_the_need_plus_the_margin_in_blocks(need, available, length):
    assert time_capacity(need, available) == length


def time_lengths(uri: str, group: str) -> dict[str, int]:
    """The time-axis length of each time array of ``group``, from its own zarr.json."""
    keys = CubeKeys(uri, None)
    return {name: int(keys.read_json(group, name)["shape"][0]) for name in TIME_ARRAYS}


def test_a_stale_smaller_shape_is_grown_back_from_the_markers(tmp_path):
    """Windows 0 and 20 of 24 written (the axis grew to 24); a slower writer's stale document
    shrinks grid/embedding back to 16. Reconciling grows it to 24 again (window 20's marker asks for
    it), re-consolidates, and window 20's chunks are still there."""
    uri = str(tmp_path / "cube.zarr")
    write_window(uri, embedding_store(tmp_path, 0), 0, LONG_STARTS)
    write_window(uri, embedding_store(tmp_path, 20), 20, LONG_STARTS)
    grid = GROUPS["grid"]
    assert time_lengths(uri, grid) == dict.fromkeys(TIME_ARRAYS, 24)
    keys = CubeKeys(uri, None)
    stale = keys.read_json(grid, "embedding")
    stale["shape"] = [16, *stale["shape"][1:]]
    keys.write_json(stale, grid, "embedding")

    root = reconcile_time_axis(keys, list(GROUPS.values()), 1, LONG_STARTS)

    assert time_lengths(uri, grid) == dict.fromkeys(TIME_ARRAYS, 24)
    assert consolidated_metadata(root)[f"{grid}/embedding"]["shape"][0] == 24
    assert np.array_equal(raw(uri, "grid", "embedding")[20], expected(20)["grid"], equal_nan=True)
    ds = open_cube(uri)
    assert [str(t)[:10] for t in ds["time"].values] == [LONG_STARTS[0], LONG_STARTS[20]]


def test_a_group_without_a_time_array_names_it(tmp_path):
    uri = str(tmp_path / "cube.zarr")
    write_window(uri, embedding_store(tmp_path, 0), 0, LONG_STARTS)
    (tmp_path / "cube.zarr" / GROUPS["pooled"] / "window_provenance" / "zarr.json").unlink()
    with pytest.raises(CubeError, match=f"group {GROUPS['pooled']} lacks its window_provenance array; rebuild"):
        reconcile_time_axis(CubeKeys(uri, None), list(GROUPS.values()), 1, LONG_STARTS)
    assert time_lengths(uri, GROUPS["grid"]) == dict.fromkeys(TIME_ARRAYS, 16)  # left as it was
