"""Search, change and int8 cubes through the pipeline, against patterns planted in the synthetic
imagery (planted.py): twins found, the new field found where planted and nowhere else."""

import json
import subprocess
import sys

import dagster as dg
import numpy as np
import xarray as xr

from rs_embed_pipeline.products import open_cube
from rs_embed_pipeline.products.similarity import load_index, search
from rs_embed_pipeline_tests.products.answers import planted as P
from rs_embed_pipeline_tests.products.answers.conftest import CHANGE_THRESHOLD

CUBE = "cubes/terrafm_b_s2/twins.zarr"


def _metadata(run, asset, window):
    mats = [e.materialization for e in run["results"][window].get_asset_materialization_events()
            if e.materialization.asset_key == dg.AssetKey(asset)]
    assert mats, f"{asset} was not materialized for {window}"
    return mats[0].metadata


def _checks(run, window):
    return {e.asset_check_evaluation_data.asset_check_key.name: e.asset_check_evaluation_data
            for e in run["results"][window].all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_both_windows_succeed(planted_run):
    for window, result in planted_run["results"].items():
        assert result.success, (window, [e.message for e in result.all_events if e.is_failure])


def test_cube_is_int8_and_reads_as_float32(planted_run):
    uri = str(planted_run["store_root"] / CUBE)
    raw = xr.open_zarr(uri, group="EPSG32632/grid", consolidated=False)
    assert raw["embedding"].dtype == np.int8 and raw["embedding_scale"].dims == ("time", "y", "x")
    assert raw.attrs["quantization"]["scheme"] == "int8_per_cell"
    assert raw.attrs["geoemb:quantization"] == {"method": "per_cell_scale_feature_offset", "original_dtype": "float32",
                                                "quantized_dtype": "int8",
                                                "scale": {"type": "array", "array_name": "embedding_scale"}}
    assert raw.attrs["geoemb:data_type"] == "int8"
    ds = open_cube(uri)
    assert ds["embedding"].dtype == np.float32 and "embedding_scale" not in ds
    assert ds.sizes["time"] == 2 and np.isfinite(ds["embedding"].values).all()
    md = _metadata(planted_run, "terrafm_s2_cube", P.WINDOW_1)
    assert md["quantization"].value == "int8_per_cell"
    assert 0.999 <= md["quantization_min_cosine"].value <= 1.0


def test_cube_preview_shows_input_imagery_next_to_pca(planted_run):
    preview = _metadata(planted_run, "terrafm_s2_cube", P.WINDOW_1)["preview"].value
    assert preview.startswith("![First three principal components")
    assert preview.count("data:image/png;base64,") == 2 and "Input imagery (true colour B4/B3/B2)" in preview


def test_search_finds_the_planted_twins(planted_run):
    root = planted_run["store_root"]
    grid = load_index(str(root / "search/terrafm_b_s2/twins" / P.WINDOW_1 / "grid"))
    assert len(grid) == 6 * 14 * 14 and grid.method == "exact"
    twins = {P.tid(*t) for t in P.TWIN_TILES}
    for tile in P.TWIN_TILES:
        lon, lat = P.cell_centre_lonlat(tile, 5, 6)
        hits = search(grid, lon=lon, lat=lat, k=5)
        assert hits["cell_id"].iat[0] == f"{P.tid(*tile)}/y5x6" and hits["score"].iat[0] == 1.0
        # The other twins' cells at the same position, ahead of every other cell of the region.
        assert set(hits["cell_id"][1:3]) == {f"{t}/y5x6" for t in twins - {P.tid(*tile)}}
        assert (hits["score"][1:3] > hits["score"].iat[3] + 0.01).all()
        assert hits.crs.to_epsg() == 4326 and hits.geometry.iloc[0].contains(
            __import__("shapely").geometry.Point(lon, lat))
    pooled = load_index(str(root / "search/terrafm_b_s2/twins" / P.WINDOW_1 / "pooled"))
    hits = search(pooled, tile_id=P.tid(*P.TWIN_TILES[0]), k=6)
    assert set(hits["tile_id"][:3]) == twins and list(hits["rank"]) == [1, 2, 3, 4, 5, 6]


def test_search_cli_prints_geojson(planted_run):
    tile = P.TWIN_TILES[1]
    lon, lat = P.cell_centre_lonlat(tile, 2, 2)
    out = subprocess.run(
        [sys.executable, "-m", "rs_embed_pipeline.cli.search", "--model", "terrafm_b", "--modality", "s2",
         "--region", "twins", "--window", P.WINDOW_1, "--lon", str(lon), "--lat", str(lat), "--k", "3",
         "--format", "geojson", "--store", str(planted_run["store_root"])],
        capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(out.stdout)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 3
    first = doc["features"][0]["properties"]
    assert first == {"rank": 1, "score": 1.0, "cell_id": f"{P.tid(*tile)}/y2x2", "tile_id": P.tid(*tile),
                     "window": P.WINDOW_1, "kind": "grid"}
    bad = subprocess.run(
        [sys.executable, "-m", "rs_embed_pipeline.cli.search", "--model", "terrafm_b", "--modality", "s2",
         "--region", "twins", "--window", "2023-01-01", "--tile-id", P.tid(*tile),
         "--store", str(planted_run["store_root"])], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "filled windows: 2024-01-01, 2024-04-01" in bad.stderr


def test_change_found_where_planted_and_nowhere_else(planted_run):
    uri = planted_run["store_root"] / "change/terrafm_b_s2/twins" / f"{P.WINDOW_2}.zarr"
    ds = xr.open_zarr(uri, group="EPSG32632/grid", consolidated=False)
    dist, changed = ds["cosine_distance"].values, ds["changed"].values
    assert ds.attrs["baseline_window"] == P.WINDOW_1 and ds["cosine_distance"].attrs["grid_mapping"] == "spatial_ref"
    # The change tile (141, 2300) is the lower-left tile of the 2 x 3 block: rows 14.., columns 0..
    r0, c0 = 14 + P.CHANGE_CELL[0], P.CHANGE_CELL[1]
    field = {(r0 + dr, c0 + dc) for dr, dc in [(a - P.CHANGE_CELL[0], b - P.CHANGE_CELL[1])
                                               for a, b in P.block(*P.CHANGE_CELL)]}
    near = {(r0 + dr, c0 + dc) for dr in range(-2, 3) for dc in range(-2, 3)}
    flagged = set(zip(*np.nonzero(changed == 1)))
    assert field <= flagged <= near, sorted(flagged - near)
    outside = dist.copy()
    for r, c in near:
        outside[r, c] = np.nan
    inside_min = min(dist[r, c] for r, c in field)
    assert np.nanmax(outside) < CHANGE_THRESHOLD < inside_min
    assert np.nanmax(outside) < 0.25 * inside_min, "the planted field stands well above the noise"
    md = _metadata(planted_run, "terrafm_s2_change", P.WINDOW_2)
    assert md["baseline_window"].value == P.WINDOW_1
    assert md["changed_cells"].value == len(flagged) and md["cells_compared"].value == 6 * 14 * 14
    assert abs(md["changed_share"].value - len(flagged) / (6 * 14 * 14)) < 1e-9
    assert sum(r.data["cells"] for r in md["histogram"].value.records) == 6 * 14 * 14
    assert md["change_map"].value.count("data:image/png;base64,") == 2
    check = _checks(planted_run, P.WINDOW_2)["changed_area_share"]
    assert check.passed and check.severity == dg.AssetCheckSeverity.WARN


def test_first_window_has_no_baseline_and_passes(planted_run):
    md = _metadata(planted_run, "terrafm_s2_change", P.WINDOW_1)
    assert md["baseline_window"].value == "none" and md["cells_compared"].value == 0
    check = _checks(planted_run, P.WINDOW_1)["changed_area_share"]
    assert check.passed and "first window" in check.description


def test_search_index_metadata_has_its_map(planted_run):
    md = _metadata(planted_run, "terrafm_s2_search_index", P.WINDOW_1)
    assert md["grid_cells"].value == 6 * 14 * 14 and md["pooled_cells"].value == 6
    assert md["grid_method"].value == "exact" and 0 < md["grid_query_ms"].value < 1000
    assert md["similarity_map"].value.startswith("![similarity map](data:image/png;base64,")
