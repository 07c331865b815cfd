"""The fetch run of the patches asset (patch_fetch.py), without Dagster: retry rounds, recovered and
unanswered tiles, resume of only the failed ones, and the run's tally (statuses per partition over
every tile size, the failure budget)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rs_embed_pipeline.orchestration.patch_fetch import UNANSWERED, PatchTally, fetch_into_stores
from rs_embed_pipeline.providers.base import Patch, PatchStatus
from rs_embed_pipeline.providers.sensor_options import SensorOptions
from rs_embed_pipeline.stores import ArraySpec, TileStore

BANDS = ("VV", "VH")
SIZES = {8: ["a", "b", "c"], 12: ["d", "e"]}


class ScriptedProvider:
    """Answers per tile id and attempt: ``script[tid]`` lists the statuses of successive attempts
    (the last repeats); a tile without a script is never answered."""

    name = "scripted"

    def __init__(self, script: dict[str, list[PatchStatus]]):
        self.script = script
        self.calls: list[list[str]] = []
        self.attempts: dict[str, int] = {}

    def fetch_patches(self, tiles: Any, start: str, end: str, modality: str, bands: Any = None,
                      **options: Any) -> Iterator[Patch]:
        self.calls.append(list(tiles["tile_id"]))
        for row in tiles.to_dict("records"):
            tid, size = row["tile_id"], int(row["size_px"])
            if tid not in self.script:
                continue
            n = self.attempts[tid] = self.attempts.get(tid, 0) + 1
            status = self.script[tid][min(n, len(self.script[tid])) - 1]
            if status == "ok":
                data = np.full((len(BANDS), size, size), 0.05 * n, dtype=np.float32)
                yield Patch(tid, data, np.ones((size, size), bool), "ok", {"scenes": ["s1a"]})
            else:
                yield Patch.empty(tid, len(BANDS), size, status, reason=f"{tid} attempt {n} {status}")

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name}

    def stats(self) -> dict[str, Any]:
        return {}


def _tiles() -> pd.DataFrame:
    return pd.DataFrame([{"tile_id": tid, "size_px": size, "scale_m": 10.0}
                         for size, ids in SIZES.items() for tid in ids])


def _stores(root) -> dict[int, TileStore]:
    return {size: TileStore.create_or_open(
        str(root / f"p{size}.zarr"), "patches", tile_ids=ids,
        arrays=[ArraySpec("data", (len(BANDS), size, size), ("band", "y", "x")),
                ArraySpec("valid", (size, size), ("y", "x"), dtype="bool", fill_value=False)],
        fingerprint="f", attrs={"size_px": size}) for size, ids in SIZES.items()}


def _fetch(provider, stores, waits: list[float], retries: int = 2):
    return fetch_into_stores(provider, stores, _tiles(), start="2024-01-01", end="2024-04-01", modality="s1",
                             bands=BANDS, sensor_options=SensorOptions.parse("s1", {"fill_value": 0.0}), inspect=True,
                             tile_retries=retries, retry_backoff_s=1.0, sleep=waits.append)


def test_retry_rounds_recover_record_and_resume_only_the_failed_tiles(tmp_path):
    provider = ScriptedProvider({"a": ["failed", "ok"], "b": ["failed"], "d": ["ok"], "e": ["no_data"]})
    stores, waits = _stores(tmp_path), []
    result = _fetch(provider, stores, waits)

    # One call for both tile sizes, then a round per retry with only the tiles still failing.
    assert provider.calls == [["a", "b", "c", "d", "e"], ["a", "b"], ["b"]]
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.5 and 1.0 <= waits[1] <= 3.0  # backoff x2, jitter
    assert (result.fetched, result.retries, result.recovered, result.synthetic) == (5, 3, 1, False)
    assert result.per_size[8].fetched == 3 and result.per_size[12].fetched == 2
    assert result.per_size[8].failed == [
        {"tile_id": "b", "reason": "b attempt 3 failed", "attempts": 3},
        {"tile_id": "c", "reason": UNANSWERED, "attempts": 0},
    ]
    assert result.per_size[12].failed == []
    assert result.per_size[8].inspection["inspected"] == 1 and result.per_size[12].inspection["inspected"] == 1

    small, large = stores[8], stores[12]
    assert small.status_counts() == {"pending": 0, "ok": 1, "no_data": 0, "failed": 2}
    assert large.status_counts() == {"pending": 0, "ok": 1, "no_data": 1, "failed": 0}
    recovered = small.tile_meta(0)
    assert (recovered["attempts"], recovered["earlier_failure"]) == (2, "a attempt 1 failed")
    assert recovered["valid_fraction"] == 1.0 and "input_check" in recovered
    np.testing.assert_allclose(small.read("data", [0])[0], 0.1)  # the second attempt's pixels
    assert small.tile_meta(2) == {"reason": UNANSWERED, "attempts": 0}

    # The next run asks only for the failed tiles (b and c); ok and no_data tiles are done.
    provider.script.update({"b": ["ok"], "c": ["ok"]})
    again = _fetch(provider, stores, [], retries=0)
    assert provider.calls[-1] == ["b", "c"]
    assert (again.fetched, again.retries, again.recovered) == (2, 0, 0)
    assert small.status_counts() == {"pending": 0, "ok": 3, "no_data": 0, "failed": 0}


def test_tally_counts_partitions_over_every_tile_size_and_holds_the_failure_budget(tmp_path):
    tally = PatchTally()
    parts = {"demo|2024-01-01": {"a": ["failed"], "b": ["ok"], "c": ["ok"], "d": ["ok"], "e": ["no_data"]},
             "demo|2024-04-01": {tid: ["ok"] for ids in SIZES.values() for tid in ids}}
    for key, script in parts.items():
        stores = _stores(tmp_path / key.replace("|", "_"))
        counted = tally.add(key, stores, _fetch(ScriptedProvider(script), stores, [], retries=1))
        assert [(c.label, c.counts["ok"]) for c in counted] == [(f"{key} p8", 2 if "01-01" in key else 3),
                                                                (f"{key} p12", 1 if "01-01" in key else 2)]
    assert tally.per_partition() == {
        "demo|2024-01-01": {"ok": 3, "no_data": 1, "failed": 1, "pending": 0},
        "demo|2024-04-01": {"ok": 5, "no_data": 0, "failed": 0, "pending": 0},
    }
    assert tally.totals() == {"ok": 8, "no_data": 1, "failed": 1, "pending": 0}
    assert (tally.fetched, tally.retries, tally.recovered) == (10, 1, 0)
    assert tally.failed_tiles == [{"partition": "demo|2024-01-01", "size_px": 8, "tile_id": "a",
                                   "reason": "a attempt 2 failed", "attempts": 2}]
    assert tally.first_uri("demo|2024-04-01").endswith("demo_2024-04-01/p8.zarr")
    # The budget holds per partition: 1 of 5 failed is 20% there, though 10% of the run.
    assert tally.over_budget(0.1) == {"demo|2024-01-01": (1, 5)}
    assert tally.budget_error(0.2, tile_retries=1) is None
    assert tally.budget_error(0.1, tile_retries=1) == (
        "demo|2024-01-01: 1 of 5 tiles failed (20.0%) > max_failure_fraction 10.0% after 1 retries per tile; "
        "they are recorded in the store with their reason and the next run retries only them. "
        "First failures: a: a attempt 2 failed")


def test_a_writer_error_closes_every_writer_and_is_raised(tmp_path):
    stores = _stores(tmp_path)

    def broken_write(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    stores[12].write_tiles = broken_write
    with pytest.raises(OSError, match="disk full"):
        _fetch(ScriptedProvider({t: ["ok"] for ids in SIZES.values() for t in ids}), stores, [])
    assert stores[8].status_counts()["ok"] == 3  # the other size's writer still finished its batch
