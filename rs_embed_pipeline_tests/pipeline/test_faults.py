"""Quota storms and bad tiles: retried, counted, recorded; the failure budget; force; mismatched or
unfinished stores (clear errors, never overwritten). The provider is fakes.FaultyImagery: it wraps
the LocalStac provider of the session's synthetic catalog (transient failures), or, where the
pixels do not matter, the fast pixel synthesizer (no catalog reads: these tests stay quick)."""

import dagster as dg
import numpy as np
import pytest
import zarr

from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
from rs_embed_pipeline.stores import STATUS_CODES, ArraySpec, StoreError, TileStore
from rs_embed_pipeline_tests.pipeline.conftest import TINY_BBOX, build_test_definitions
from rs_embed_pipeline_tests.pipeline.fakes import FaultyImagery, FaultyProvider, SyntheticPixelsProvider

Q1 = dg.MultiPartitionKey({"region": "tiny", "window": "2024-01-01"})
FETCH = ["tile_grid", "s2_patches"]
FAST_RETRIES = {"ops": {"s2_patches": {"config": {"tile_retries": 3, "retry_backoff_s": 0.01}}}}
P224 = "patches/s2/tiny/2024-01-01/p224.zarr"
P288 = "patches/s2/tiny/2024-01-01/p288.zarr"
NO_CATALOG = "/nonexistent/catalog.json"  # FaultyImagery() synthesizes pixels instead


def _job(defs: dg.Definitions, selection: list[str]) -> dg.JobDefinition:
    job = dg.define_asset_job("under_test", selection=selection)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("under_test")


def _run(tmp_path, catalog, worker_python, imagery, selection=FETCH, run_config=None):
    defs, store = build_test_definitions(tmp_path, catalog, worker_python, imagery=imagery)
    if run_config is None:
        run_config = FAST_RETRIES if "s2_patches" in selection else {}
    with dg.instance_for_test() as instance:
        result = _job(defs, selection).execute_in_process(
            partition_key=Q1, instance=instance, raise_on_error=False, run_config=run_config)
    return result, store


def _metadata(result, asset="s2_patches"):
    mats = [e.materialization for e in result.get_asset_materialization_events()
            if e.materialization.asset_key == dg.AssetKey(asset)]
    return mats[0].metadata if mats else None


def _failure(result) -> str:
    return [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.message


def _tile_ids() -> list[str]:
    return sorted(set(build_tile_grid(bbox_aoi(*TINY_BBOX), 224, 10.0)["tile_id"])
                  | set(build_tile_grid(bbox_aoi(*TINY_BBOX), 288, 10.0)["tile_id"]))


def test_injected_failure_rate_is_close_to_the_asked_one():
    tiles = [{"tile_id": f"t{i}", "size_px": 8} for i in range(2000)]
    provider = FaultyProvider(SyntheticPixelsProvider(), 0.3, [], seed=1)
    patches = list(provider.fetch_patches(tiles, "2024-01-01", "2024-04-01", "s2"))
    failed = sum(p.status == "failed" for p in patches)
    assert len(patches) == 2000 and 0.27 < failed / 2000 < 0.33
    assert provider.stats()["transient_failures"] == failed


def test_transient_failures_are_retried_until_every_tile_is_done(tmp_path, synthetic_catalog, worker_python):
    imagery = FaultyImagery(catalog_path=str(synthetic_catalog), transient_failure_rate=0.3, seed=3)
    result, store = _run(tmp_path, synthetic_catalog, worker_python, imagery)
    assert result.success, _failure(result)
    md = _metadata(result)
    injected = md["provider_stats"].value["transient_failures"]
    assert injected >= 1, "seed 3 injects failures into the first attempts of these tiles"
    assert md["tile_retries"].value == injected  # every injected failure cost exactly one retry
    assert md["tiles_recovered_by_retry"].value >= 1
    assert md["tiles_failed"].value == 0 and md["failed_tiles"].value == []
    for path in (P224, P288):
        s = TileStore.open(str(store / path), "patches")
        assert (s.statuses() == STATUS_CODES["ok"]).all()
    recovered = [TileStore.open(str(store / p), "patches").tile_meta(i) for p in (P224, P288)
                 for i in range(len(TileStore.open(str(store / p), "patches").tile_ids))]
    assert any("earlier_failure" in m and "429" in m["earlier_failure"] for m in recovered)


def test_permanent_failures_are_recorded_and_only_they_are_retried(tmp_path, worker_python):
    bad = _tile_ids()[0]
    faulty = FaultyImagery(permanent_failures=[bad])
    # 1 tile of 3 fails: above the default failure budget (10%): the partition fails, clearly.
    result, store = _run(tmp_path, NO_CATALOG, worker_python, faulty)
    assert not result.success
    message = _failure(result)
    assert "tiny|2024-01-01: 1 of 3 tiles failed" in message and "max_failure_fraction 10.0%" in message
    assert bad in message and "HTTP 400" in message
    stores = {p: TileStore.open(str(store / p), "patches") for p in (P224, P288)}
    failed = [(p, i) for p, s in stores.items() for i in np.flatnonzero(s.statuses() == STATUS_CODES["failed"])]
    assert len(failed) == 1
    meta = stores[failed[0][0]].tile_meta(int(failed[0][1]))
    assert "HTTP 400" in meta["reason"] and meta["attempts"] == 4  # first try + 3 retries
    assert sum(s.status_counts()["ok"] for s in stores.values()) == 2

    # Within a larger budget the partition succeeds, and only the failed tile is requested again.
    tolerant = FaultyImagery(permanent_failures=[bad], max_failure_fraction=0.5)
    result, _ = _run(tmp_path, NO_CATALOG, worker_python, tolerant)
    assert result.success
    md = _metadata(result)
    assert md["tiles_fetched_now"].value == 1 and md["tiles_failed"].value == 1
    assert md["failed_tiles"].value[0]["tile_id"] == bad and md["failed_tiles"].value[0]["attempts"] == 4
    assert md["provider_stats"].value["requests"] == 4

    # The storm is over: the next run fetches that tile alone, and everything is done.
    result, _ = _run(tmp_path, NO_CATALOG, worker_python, FaultyImagery())
    assert result.success
    md = _metadata(result)
    assert md["tiles_fetched_now"].value == 1 and md["tiles_ok"].value == 3 and md["tiles_failed"].value == 0


def test_force_refetches_every_tile_and_rebuild_is_needed_for_other_settings(tmp_path, worker_python):
    imagery = FaultyImagery()
    result, store = _run(tmp_path, NO_CATALOG, worker_python, imagery)
    assert result.success and _metadata(result)["tiles_fetched_now"].value == 3
    before = TileStore.open(str(store / P224), "patches").read("data", [0])
    forced = {"ops": {"s2_patches": {"config": {"force": True}}}}
    result, _ = _run(tmp_path, NO_CATALOG, worker_python, imagery, run_config=forced)
    assert result.success and _metadata(result)["tiles_fetched_now"].value == 3
    assert np.array_equal(TileStore.open(str(store / P224), "patches").read("data", [0]), before)
    # Fetch concurrency is not a setting that shapes pixels: no refusal. A cloud filter is.
    result, _ = _run(tmp_path, NO_CATALOG, worker_python,
                     FaultyImagery(cloudy_pct=10))
    assert not result.success and "was built with other settings" in _failure(result)
    assert "cloudy_pct" in _failure(result)


def test_stores_of_another_kind_or_unfinished(tmp_path, worker_python):
    # A Zarr group with another schema where a patch store belongs: refused, untouched.
    path = tmp_path / "store" / P224
    foreign = zarr.open_group(str(path), mode="w", attributes={"schema": "someone.else", "answer": 42})
    foreign.create_array("x", shape=(3,), dtype="int8")[:] = [1, 2, 3]
    result, _ = _run(tmp_path, NO_CATALOG, worker_python, FaultyImagery())
    assert not result.success
    assert "is not a patches store (schema='someone.else')" in _failure(result) and "left untouched" in _failure(result)
    again = zarr.open_group(str(path), mode="r")
    assert again.attrs["answer"] == 42 and again["x"][:].tolist() == [1, 2, 3]

    # A store of ours killed while being created: recognised and recreated, not trusted.
    import shutil

    shutil.rmtree(path)
    zarr.open_group(str(path), mode="w", attributes={"schema": "rs_embed_pipeline.patches", "schema_version": 1,
                                                       "state": "creating"})
    with pytest.raises(StoreError, match="never finished"):
        TileStore.open(str(path), "patches")
    result, store = _run(tmp_path, NO_CATALOG, worker_python, FaultyImagery())
    assert result.success
    assert TileStore.open(str(store / P224), "patches").status_counts()["ok"] == 1


def test_embedding_and_cube_with_other_settings_are_refused_then_rebuilt(tmp_path, worker_python):
    chain = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube"]
    imagery = FaultyImagery()
    result, store = _run(tmp_path, NO_CATALOG, worker_python, imagery, selection=chain)
    assert result.success, _failure(result)
    emb_path = store / "embeddings/terrafm_b_s2/tiny/2024-01-01.zarr"
    cube_path = store / "cubes/terrafm_b_s2/tiny.zarr"
    zarr.open_group(str(emb_path), mode="r+").attrs["fingerprint"] = "e" * 64
    zarr.open_group(str(cube_path), mode="r+").attrs["fingerprint"] = "c" * 64

    result, _ = _run(tmp_path, NO_CATALOG, worker_python, imagery, selection=["terrafm_s2_embeddings"])
    assert not result.success
    assert "embeddings store" in _failure(result) and "was built with other settings" in _failure(result)
    assert zarr.open_group(str(emb_path), mode="r").attrs["fingerprint"] == "e" * 64
    result, _ = _run(tmp_path, NO_CATALOG, worker_python, imagery, selection=["terrafm_s2_cube"])
    assert not result.success
    assert "Cube" in _failure(result) and "was built with other settings" in _failure(result)
    assert zarr.open_group(str(cube_path), mode="r").attrs["fingerprint"] == "c" * 64

    rebuild = {"ops": {"terrafm_s2_embeddings": {"config": {"rebuild": True, "force": True}},
                       "terrafm_s2_cube": {"config": {"rebuild": True}}}}
    result, _ = _run(tmp_path, NO_CATALOG, worker_python, imagery,
                     selection=["terrafm_s2_embeddings", "terrafm_s2_cube"], run_config=rebuild)
    assert result.success, _failure(result)
    assert zarr.open_group(str(emb_path), mode="r").attrs["fingerprint"] != "e" * 64
    assert zarr.open_group(str(cube_path), mode="r").attrs["fingerprint"] != "c" * 64
    assert _metadata(result, "terrafm_s2_embeddings")["tiles_embedded_now"].value == 1


def test_tile_store_rebuild_force_and_layout(tmp_path):
    uri = str(tmp_path / "s.zarr")
    spec = [ArraySpec("data", (2, 2), ("y", "x"))]
    store = TileStore.create_or_open(uri, "patches", tile_ids=["a", "b"], arrays=spec, fingerprint="f1", attrs={"k": 1})
    store.write_tile(0, "ok", {"m": 1}, data=np.ones((2, 2)))
    again = TileStore.create_or_open(uri, "patches", tile_ids=["a", "b"], arrays=spec, fingerprint="f1", attrs={"k": 1})
    assert again.status_counts()["ok"] == 1
    with pytest.raises(StoreError, match=r"other settings .*k: 1 -> 2"):
        TileStore.create_or_open(uri, "patches", tile_ids=["a", "b"], arrays=spec, fingerprint="f2", attrs={"k": 2})
    with pytest.raises(StoreError, match="differ from the tile grid"):
        TileStore.create_or_open(uri, "patches", tile_ids=["a", "c"], arrays=spec, fingerprint="f1", attrs={"k": 1})
    assert TileStore.open(uri, "patches").status_counts()["ok"] == 1  # still untouched
    forced = TileStore.create_or_open(uri, "patches", tile_ids=["a", "b"], arrays=spec, fingerprint="f1",
                                      attrs={"k": 1}, force=True)
    assert forced.status_counts()["pending"] == 2
    rebuilt = TileStore.create_or_open(uri, "patches", tile_ids=["a", "c", "d"], arrays=spec, fingerprint="f3",
                                       attrs={"k": 3}, rebuild=True)
    assert rebuilt.tile_ids == ["a", "c", "d"] and rebuilt.fingerprint == "f3"
    zarr.open_group(uri, mode="r+").attrs["schema_version"] = 99
    with pytest.raises(StoreError, match="schema_version 99"):
        TileStore.open(uri, "patches")
