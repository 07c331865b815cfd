"""The tile grid of cells of a split region, materialized through Dagster (issue 19 point 1)."""

import dagster as dg
import geopandas as gpd
import yaml

from rs_embed_pipeline.core.grid import build_tile_grid, cell_ids_of_tiles
from rs_embed_pipeline.core.regions import load_pipeline_config
from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.orchestration.settings import Settings

DEMO_BBOX = [6.600, 46.500, 6.640, 46.528]  # the packaged demo AOI, about 3 x 3 km
WINDOW = "2024-01-01"


def test_two_cells_of_a_split_demo_aoi_materialize_their_own_tiles(tmp_path):
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump({"time_windows": {"cadence": "yearly", "start": WINDOW},
                                           "regions": [{"name": "demo", "bbox": DEMO_BBOX, "split_km": 3}]}))
    store_root = tmp_path / "store"
    # the store resource's leases resolve the runs' split keys (regions file set by definitions.py)
    defs = build_definitions(Settings.from_env({"RS_EMBED_CONFIG": str(config_path), "RS_EMBED_STORE": str(store_root)}))
    job = dg.define_asset_job("grid_only", selection=["tile_grid"])
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    parts = load_pipeline_config(config_path).partitions([(224, 10.0), (288, 10.0)])
    keys = [p.key for p in parts]
    assert len(keys) >= 2 and all(k.startswith("demo-32N-E03") for k in keys)

    grids = {}
    with dg.instance_for_test() as instance:
        for part in parts[:2]:
            key = dg.MultiPartitionKey({"region": part.key, "window": WINDOW})
            result = defs.resolve_job_def("grid_only").execute_in_process(partition_key=key, instance=instance)
            assert result.success
            grids[part.key] = gpd.read_parquet(store_root / "tile_grid" / part.key / f"{WINDOW}.parquet")
            (mat,) = result.get_asset_materialization_events()
            assert mat.materialization.metadata["tiles"].value == len(grids[part.key])

    aoi = load_pipeline_config(config_path).region("demo").aoi
    for part in parts[:2]:
        grid = grids[part.key]
        assert set(cell_ids_of_tiles(grid, 3)) == {part.cell.cell_id}  # each tile centred in its cell
        for size_px in (224, 288):
            whole = build_tile_grid(aoi, size_px, 10.0)
            centred = whole[cell_ids_of_tiles(whole, 3) == part.cell.cell_id]
            assert sorted(grid.loc[grid["size_px"] == size_px, "tile_id"]) == sorted(centred["tile_id"])
    assert not set(grids[keys[0]]["tile_id"]) & set(grids[keys[1]]["tile_id"])
