"""The product assets in a real Dagster run (TerraFM-B S2 chain, reduced fixture model, tiny region
named "demo"): STAC validated by rustac, GeoParquet read by DuckDB and GeoPandas, COGs by rasterio,
each checked against the cube and the tile grid; then the README's snippets run against it."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr

from rs_embed_pipeline.products import open_cube
from rs_embed_pipeline.products.stac_catalog import (
    EMB_EXTENSION,
    ITEM_ASSETS_EXTENSION,
    SOURCE_COLLECTION_TITLE,
    STAC_VERSION,
)
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline_tests.pipeline.conftest import (
    REPO,
    TINY_BBOX,
    WINDOW,
    build_test_definitions,
)
from rs_embed_pipeline_tests.products.conftest import duckdb_spatial

PRODUCTS = ["terrafm_s2_geoparquet", "terrafm_s2_cog", "terrafm_s2_stac"]
CHAIN = ["tile_grid", "s2_patches", "terrafm_s2_embeddings", "terrafm_s2_cube", *PRODUCTS]
MODEL = "terrafm_b_s2"


@pytest.fixture(scope="module")
def built(tmp_path_factory, synthetic_catalog, worker_python):
    tmp = tmp_path_factory.mktemp("products")
    defs, store = build_test_definitions(tmp, synthetic_catalog, worker_python,
                                         regions=[{"name": "demo", "bbox": list(TINY_BBOX)}])
    job = dg.define_asset_job("products_under_test", selection=CHAIN)
    job_def = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("products_under_test")
    with dg.instance_for_test() as instance:
        result = job_def.execute_in_process(partition_key=dg.MultiPartitionKey({"region": "demo", "window": WINDOW}),
                                            instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        mats = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
                for e in result.get_asset_materialization_events()}
    grid = gpd.read_parquet(store / "tile_grid" / "demo" / f"{WINDOW}.parquet")
    return {"store": store, "tmp": tmp, "mats": mats, "tiles": grid[grid["size_px"] == 224],
            "cube": str(store / "cubes" / MODEL / "demo.zarr"), "products": store / "products" / MODEL}


def _rustac_validate(path: Path, tmp: Path) -> None:
    """rustac bundles the STAC core schemas; the extension schemas cannot be fetched here, so each
    file is validated against core with its extension list emptied (the extension's own required
    fields are checked by hand in the tests)."""
    doc = json.loads(path.read_text())
    core = copy.deepcopy(doc)
    core["stac_extensions"] = []
    target = tmp / f"core_{doc['type']}_{doc['id']}.json"
    target.write_text(json.dumps(core))
    rustac = Path(sys.executable).parent / "rustac"
    run = subprocess.run([str(rustac), "validate", str(target)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"rustac validate {path}: {run.stdout}{run.stderr}"


def test_materializations_carry_their_products(built):
    mats = built["mats"]
    assert set(PRODUCTS) <= set(mats)
    assert mats["terrafm_s2_geoparquet"]["geoparquet_version"].value == "1.1.0"
    assert mats["terrafm_s2_geoparquet"]["rows_total"].value == len(built["tiles"])
    assert mats["terrafm_s2_stac"]["stac_version"].value == STAC_VERSION
    assert mats["terrafm_s2_stac"]["items_total"].value == 1


def test_stac_files_validate_and_carry_the_embedding_extension(built):
    stac = built["products"] / "stac"
    files = [stac / "catalog.json", stac / "collection.json", *sorted((stac / "items").glob("*.json"))]
    assert len(files) == 3
    for path in files:
        _rustac_validate(path, built["tmp"])
    col = json.loads((stac / "collection.json").read_text())
    # The extension's v0.0.1 schema checks Collections and Items with allOf the v1.0.0 core schemas,
    # which pin stac_version to "1.0.0"; item_assets is then the Item Assets extension.
    assert col["stac_version"] == "1.0.0" and set(col["stac_extensions"]) == {EMB_EXTENSION, ITEM_ASSETS_EXTENSION}
    assert json.loads((stac / "catalog.json").read_text())["stac_version"] == "1.0.0"
    # The Embedding extension v0.0.1 schema's requirements for a Collection, checked by hand.
    assert col["emb:type"] == "chip" and col["emb:dimensions"] == 64 and col["data_type"] == "float32"
    assert col["gsd"] == 10.0 and col["emb:temporal_resolution"] == "quarterly" and col["license"] == "various"
    assert col["emb:chip_layout"] == {"layout_type": "regular_grid", "chip_size": [16, 16], "stride": [16, 16],
                                      "grid_id": "rs_embed_pipeline UTM lattice p224 s10 (tile ids: grid.py)"}
    rels = {link["rel"]: link for link in col["links"]}
    assert rels["emb:model"]["href"] == "https://huggingface.co/MBZUAI/TerraFM"
    sources = [link for link in col["links"] if link["rel"] == "emb:source-data"]
    assert len(sources) == 1 and sources[0]["title"] == SOURCE_COLLECTION_TITLE  # the collection, not scenes
    assert sources[0]["href"].startswith("file://")  # the local synthetic catalog of this run
    allowed = {"emb:type", "emb:dimensions", "emb:chip_layout", "emb:temporal_resolution", "emb:fit_for_use",
               "emb:uncertainty"}
    assert {k for k in col if k.startswith("emb:")} <= allowed
    assert col["item_assets"]["embeddings"]["roles"] == ["data"]
    for asset in col["item_assets"].values():  # the schema allows no emb: field on assets
        assert not any(k.startswith("emb:") for k in asset)


def test_item_geometry_assets_and_provenance(built):
    stac = built["products"] / "stac"
    item_path = stac / "items" / f"demo_{WINDOW}.json"
    item = json.loads(item_path.read_text())
    assert item["stac_version"] == "1.0.0" and EMB_EXTENSION in item["stac_extensions"]
    assert "embeddings" in item["assets"] and item["assets"]["embeddings"]["type"] == "application/vnd+zarr"
    assert not any(k.startswith("emb:") for asset in item["assets"].values() for k in asset)
    # Geometry: the union of the region's tile footprints (tile_grid, this model's tile size).
    geom = shapely.geometry.shape(item["geometry"])
    union = shapely.union_all(list(built["tiles"].geometry))
    assert geom.equals_exact(union, tolerance=1e-9) or geom.symmetric_difference(union).area < 1e-12
    assert item["bbox"] == pytest.approx(list(union.bounds))
    col = json.loads((stac / "collection.json").read_text())
    ext = col["extent"]["spatial"]["bbox"][0]
    assert ext[0] <= item["bbox"][0] and ext[2] >= item["bbox"][2]
    props = item["properties"]
    assert props["start_datetime"] == "2024-01-01T00:00:00Z" and props["end_datetime"] == "2024-03-31T23:59:59Z"
    assert {k for k in props if k.startswith("emb:")} <= {"emb:runtime_parameters", "emb:quantization",
                                                           "emb:energy", "emb:uncertainty", "emb:fit_for_use",
                                                           "emb:preprocessing", "emb:postprocessing",
                                                           "emb:spatial_coverage"}
    assert props["emb:runtime_parameters"]["s2_branch"] == "l2a" and props["processing:datetime"].endswith("Z")
    assert len(props["rs_embed:weights_sha256"]) == 64 and props["rs_embed:synthetic_imagery"] is True
    # Source scenes: every scene the patch store recorded for the region's tiles.
    patches = TileStore.open(str(built["store"] / "patches/s2/demo" / WINDOW / "p224.zarr"), "patches")
    scenes = {s for i in range(len(patches.tile_ids)) for s in patches.tile_meta(i).get("scene_ids", [])}
    assert scenes and set(props["rs_embed:source_scene_ids"]) == scenes
    assert {link["rel"] for link in item["links"]} >= {"root", "parent", "collection", "emb:model", "emb:source-data"}
    # Every asset href resolves next to the item: the cube group opens, the files exist.
    emb = (item_path.parent / item["assets"]["embeddings"]["href"]).resolve()
    assert emb == (Path(built["cube"]) / "EPSG32632" / "grid").resolve()
    assert xr.open_zarr(emb, consolidated=False)["embedding"].dims == ("time", "y", "x", "feature")
    for key, asset in item["assets"].items():
        assert (item_path.parent / asset["href"]).exists(), key


def test_geoparquet_matches_the_cube(built):
    path = built["products"] / "geoparquet" / "demo" / f"{WINDOW}.parquet"
    con = duckdb_spatial()
    rows = con.execute(f"SELECT tile_id, embedding, ST_AsWKB(geometry), model_id FROM read_parquet('{path}')").fetchall()
    assert len(rows) == len(built["tiles"])
    pooled = open_cube(built["cube"], kind="pooled")
    grid = built["tiles"].set_index("tile_id")
    for tid, emb, wkb, model in rows:
        t = grid.loc[tid]
        side = 224 * 10.0
        vec = pooled["embedding"].sel(x=t["x0"] + side / 2, y=t["y0"] - side / 2).isel(time=0).values
        np.testing.assert_array_equal(np.asarray(emb, np.float32), vec)
        assert shapely.from_wkb(bytes(wkb)).equals_exact(t["geometry"], tolerance=1e-12) and model == "terrafm_b"
    assert len(gpd.read_parquet(path)) == len(rows)


def test_cogs_match_the_cube(built):
    for kind in ("grid", "pooled"):
        path = built["products"] / "cog" / "demo" / WINDOW / f"EPSG32632_{kind}.tif"
        ds = open_cube(built["cube"], kind=kind)
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32632 and src.count == ds.sizes["feature"]
            cell = float(ds["x"][1] - ds["x"][0]) if ds.sizes["x"] > 1 else 2240.0
            assert src.transform.e == -cell and src.transform.c == float(ds["x"][0]) - cell / 2
            np.testing.assert_array_equal(src.read(), np.moveaxis(ds["embedding"].isel(time=0).values, -1, 0))


def readme_snippets() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Using the embeddings anywhere", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_snippets_run(built, tmp_path):
    snippets = readme_snippets()
    assert len(snippets) >= 3
    (tmp_path / "data").symlink_to(built["store"], target_is_directory=True)
    for code in snippets:
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert run.returncode == 0, f"README snippet failed:\n{code}\n{run.stdout}\n{run.stderr}"
    assert (tmp_path / "window_pca.png").exists()


def readme_command_lines() -> list[str]:
    """The README's command lines that read a built store offline: `rio info` of a COG, the search CLI."""
    text = (REPO / "README.md").read_text()
    lines = re.findall(r"`(\.venv/bin/rio info [^`]+)`", text)
    lines += [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
              for line in block.splitlines()
              if line.startswith(".venv/bin/python -m rs_embed_pipeline.cli.search") and " ... " not in line]
    return lines


def test_readme_command_lines_run(built, tmp_path):
    """Issue 24: those lines run exactly as printed, from a checkout whose .venv is this environment."""
    lines = readme_command_lines()
    assert [line.split()[0:2] for line in lines] == [[".venv/bin/rio", "info"], [".venv/bin/python", "-m"]]
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    (tmp_path / "data").symlink_to(built["store"], target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RS_EMBED_")}
    runs = [subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={**env, "PYTHONPATH": str(REPO)}) for line in lines]
    for line, run in zip(lines, runs, strict=True):
        assert run.returncode == 0, f"README line failed: {line}\n{run.stdout}\n{run.stderr}"
    info = json.loads(runs[0].stdout)
    assert info["crs"] == "EPSG:32632" and info["count"] == open_cube(built["cube"]).sizes["feature"]
    assert re.match(r"\d+ cells most similar to .* \(terrafm_b s2, demo 2024-01-01, grid", runs[1].stdout)
    assert re.search(r"^   1  1\.000000  32632_p224_", runs[1].stdout, flags=re.MULTILINE)
