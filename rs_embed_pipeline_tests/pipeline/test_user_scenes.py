"""Your own GeoTIFF scenes -> static STAC catalog -> LocalStacProvider -> patch stores (end to end up to
the patches, through Dagster), sensor options, and the input_inspection check (warn / fail)."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
from rs_embed_pipeline.providers import ProviderError
from rs_embed_pipeline.providers.local_catalogs.synthetic import _utm_extent
from rs_embed_pipeline.providers.local_catalogs.user_scenes import build_user_catalog, catalog_collections, main, parse_scene_name
from rs_embed_pipeline.orchestration.resources import EarthEngineImagery, LocalStacImagery, PipelineStore
from rs_embed_pipeline.stores import TileStore
from rs_embed_pipeline_tests.pipeline.conftest import TINY_BBOX, WINDOW, reduced_model_resources, write_config

EPSG = 32632
PATCH_CHAIN = ["tile_grid", "s2_patches", "s1_patches"]


def _grid():
    x0, y0, x1, y1 = _utm_extent(TINY_BBOX, EPSG, 3000.0)
    w, h = int((x1 - x0) / 10), int((y1 - y0) / 10)
    return Affine(10.0, 0.0, x0, 0.0, -10.0, y1), w, h


def _write(path, data, *, nodata=0, descriptions=None):
    tf, w, h = _grid()
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=data.shape[0], dtype=data.dtype,
                       crs=f"EPSG:{EPSG}", transform=tf, nodata=nodata, tiled=True) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions or []):
            ds.set_band_description(i + 1, d)


@pytest.fixture(scope="module")
def rasters():
    _, w, h = _grid()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    s2 = np.stack([(800 * (i + 1) + 300 * np.sin(xx / 37.0 + i) * np.cos(yy / 23.0)) for i in range(12)])
    s1 = rng.gamma(2.0, 0.03, (2, h, w)).astype(np.float32)
    return {"s2": s2.astype(np.uint16), "s1": s1}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, rasters):
    d = tmp_path_factory.mktemp("scenes")
    _write(d / "S2_20240115_lausanne.tif", rasters["s2"])
    _write(d / "S1_20240117T053000_ASC_lausanne.tif", rasters["s1"], descriptions=["VV", "VH"])
    (d / "notes.txt").write_text("ignored")
    _write(d / "unrelated.tif", rasters["s1"][:1])  # not following the convention: ignored
    return d


@pytest.fixture(scope="module")
def catalog(scenes):
    return build_user_catalog(scenes, scenes / "stac")


def _tiles():
    return build_tile_grid(bbox_aoi(*TINY_BBOX), 224, 10.0)


def _window_of(tile, arr):
    tf, _, _ = _grid()
    col, row = int(round((tile["x0"] - tf.c) / 10)), int(round((tf.f - tile["y0"]) / 10))
    return arr[..., row:row + 224, col:col + 224]


def test_scene_name_convention():
    info = parse_scene_name("S1_20240117T053000_DESC_x.tiff")
    assert info["modality"] == "s1" and info["orbit"] == "descending"
    assert info["datetime"].isoformat() == "2024-01-17T05:30:00+00:00"
    assert parse_scene_name("s2-20240115.TIF")["modality"] == "s2"
    assert parse_scene_name("landsat_20240115.tif") is None
    with pytest.raises(ProviderError, match="not a valid date"):
        parse_scene_name("S2_20241399_x.tif")


def test_catalog_records_its_collections_and_the_provider_reads_exact_pixels(catalog, rasters):
    found = catalog_collections(catalog)
    assert found == {"s2_collection": "user-s2", "s1_collection": "user-s1", "mask_asset": None}
    root = json.loads(catalog.read_text())
    assert root["rs_embed:collections"]["s1_units"] == "linear"
    provider = LocalStacImagery(catalog_path=str(catalog)).build(fetch_workers=2)
    assert provider.stats()["config"]["max_workers"] == 2
    tiles = _tiles()
    tile = tiles.iloc[0]
    (p,) = provider.fetch_patches(tiles.iloc[:1], "2024-01-01", "2024-04-01", "s2", bands=["B2", "B4", "B8"])
    assert p.status == "ok" and p.meta["collection"] == "user-s2" and p.valid.all()
    src = _window_of(tile, rasters["s2"][[1, 3, 7]]).astype(np.float32)  # 10 m bands: nearest, exact
    np.testing.assert_array_equal(p.data, src)
    (q,) = provider.fetch_patches(tiles.iloc[:1], "2024-01-01", "2024-04-01", "s1", orbit="ASCENDING")
    np.testing.assert_allclose(q.data, _window_of(tile, rasters["s1"]), rtol=1e-6)
    assert q.meta["use_float_linear"] is True and q.meta["orbit"] == "ASCENDING"
    (none,) = provider.fetch_patches(tiles.iloc[:1], "2024-01-01", "2024-04-01", "s1", orbit="DESCENDING")
    assert none.status == "no_data"


def test_fill_value_and_db_source(tmp_path, rasters):
    d = tmp_path / "scenes"
    d.mkdir()
    s2 = rasters["s2"].copy()
    tiles = _tiles()
    tile = tiles.iloc[0]
    tf, _, _ = _grid()
    col, row = int(round((tile["x0"] - tf.c) / 10)), int(round((tf.f - tile["y0"]) / 10))
    s2[:, row:row + 10, col:col + 224] = 0  # nodata strip at the tile's top
    _write(d / "S2_20240115_a.tif", s2)
    db = (10 * np.log10(rasters["s1"])).astype(np.float32)
    _write(d / "S1_20240117_a.tif", db, nodata=np.nan)
    with pytest.raises(ProviderError, match=r"S1_20240117_a.tif: S1 values look dB-scaled .* --s1-units dB .* "
                                            r"use_float_linear: false"):
        build_user_catalog(d)
    cat = build_user_catalog(d, s1_units="dB")
    provider = LocalStacImagery(catalog_path=str(cat)).build()
    (p,) = provider.fetch_patches(tiles.iloc[:1], "2024-01-01", "2024-04-01", "s2", bands=["B2"], fill_value=-1.0)
    assert (~p.valid[:10]).all() and p.valid[10:].all()
    assert (p.data[0, :10] == -1.0).all() and p.meta["fill_value"] == -1.0
    (q,) = provider.fetch_patches(tiles.iloc[:1], "2024-01-01", "2024-04-01", "s1", use_float_linear=False)
    np.testing.assert_allclose(q.data, _window_of(tile, rasters["s1"]), rtol=1e-4)  # dB -> linear power
    assert q.meta["s1_source_units"] == "dB (converted to linear)"
    with pytest.raises(ProviderError, match="use_float_linear must be true or false"):
        provider.fetch_patches(tiles.iloc[:1], "2024-01-01", "2024-04-01", "s1", use_float_linear="no")


@pytest.mark.parametrize("files, match", [
    ({"S1_20240117_x.tif": 12}, r"a S1 scene with 12 band\(s\).*expected 2 bands \(VV, VH\)"),
    ({"S2_20240117_x.tif": 2}, r"a S2 scene with 2 band\(s\).*expected 12 bands"),
    ({"readme.tif": 2}, r"no scene .* follows the naming convention <S2\|S1>_<YYYYMMDD>"),
])
def test_builder_errors_name_the_file_and_the_fix(tmp_path, rasters, files, match):
    for name, n in files.items():
        data = np.repeat(rasters["s1"][:1], n, axis=0)
        _write(tmp_path / name, data)
    with pytest.raises(ProviderError, match=match):
        build_user_catalog(tmp_path)


def test_builder_refuses_unit_scaled_s2(tmp_path, rasters):
    _write(tmp_path / "S2_20240115_refl.tif", (rasters["s2"] / 10000.0).astype(np.float32))
    with pytest.raises(ProviderError, match=r"reflectance 0\.\.1 \(use --s2-scale 1\)"):
        build_user_catalog(tmp_path)
    assert build_user_catalog(tmp_path, s2_scale=1.0).is_file()


def test_cli(tmp_path, scenes, capsys):
    assert main(["--scenes", str(scenes), "--out", str(tmp_path / "cat")]) == 0
    out = capsys.readouterr().out
    assert "catalog.json" in out and "RS_EMBED_LOCAL_CATALOG=" in out
    with pytest.raises(SystemExit):
        main(["--scenes", str(tmp_path / "missing")])


def test_cli_names_the_skipped_files_and_counts_the_scenes(tmp_path, scenes, capsys):
    """Issue 24: a badly named file is named, not skipped silently, and the scene count is printed."""
    assert main(["--scenes", str(scenes), "--out", str(tmp_path / "cat")]) == 0
    out, err = capsys.readouterr()
    assert err == ("skipped notes.txt: not a .tif / .tiff file\n"
                   "skipped unrelated.tif: name does not follow <S2|S1>_<YYYYMMDD>[THHMMSS][_<anything>].tif\n")
    assert out.splitlines()[:2] == [str(tmp_path / "cat" / "catalog.json"),
                                    f"2 scenes (1 S2, 1 S1) from {scenes}; 2 file(s) skipped (listed above)"]


def test_sensor_option_errors_use_the_pages_messages():
    with pytest.raises(ValueError, match=r"Unknown S1 orbit='north'\. Use 'ASCENDING' or 'DESCENDING'\."):
        LocalStacImagery(catalog_path="x", s1_orbit="north").sensor_options("s1")
    with pytest.raises(ValueError, match=r"Unknown composite='max'\. Use 'median' or 'mosaic'\."):
        LocalStacImagery(catalog_path="x", composite="max").sensor_options("s2")
    s1 = EarthEngineImagery(s1_orbit="descending", use_float_linear=False,
                            s1_require_iw=False).sensor_options("s1").as_dict()
    assert s1 == {"composite": "median", "fill_value": 0.0, "orbit": "DESCENDING", "use_float_linear": False,
                  "require_iw": False, "relax_iw_on_empty": True}
    assert LocalStacImagery(catalog_path="x", fill_value=-9).sensor_options("s2").as_dict() == {
        "composite": "median", "fill_value": -9.0, "cloudy_pct": 30, "cloud_mask": "scl"}


def _defs(tmp_path, catalog, worker_python, **imagery):
    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.settings import Settings

    config = write_config(tmp_path / "pipeline.yaml", [{"name": "tiny", "bbox": list(TINY_BBOX)}])
    store_root = tmp_path / "store"
    settings = Settings.from_env({"RS_EMBED_CONFIG": str(config), "RS_EMBED_STORE": str(store_root)})
    resources = {
        "store": PipelineStore(root=str(store_root)),
        "imagery": LocalStacImagery(catalog_path=str(catalog), **imagery),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        **reduced_model_resources(worker_python),
    }
    defs = build_definitions(settings, resources=resources)
    job = dg.define_asset_job("patches_only", selection=PATCH_CHAIN)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("patches_only"), store_root


def _checks(result) -> dict:
    return {(e.asset_check_evaluation_data.asset_key.to_user_string(), e.asset_check_evaluation_data.asset_check_key.name):
            e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_pipeline_from_user_scenes_up_to_patches(tmp_path, catalog, rasters, worker_python):
    job, store_root = _defs(tmp_path, catalog, worker_python, fill_value=0.0)
    key = dg.MultiPartitionKey({"region": "tiny", "window": WINDOW})
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(partition_key=key, instance=instance)
        assert result.success
        checks = _checks(result)
        for asset in ("s2_patches", "s1_patches"):
            chk = checks[(asset, "input_inspection")]
            assert chk.passed and chk.metadata["inspected"].value >= 1 and chk.metadata["flagged"].value == 0
        md = instance.get_latest_materialization_event(dg.AssetKey("s1_patches")).asset_materialization.metadata
        assert md["sensor_options"].value == {"composite": "median", "fill_value": 0.0, "use_float_linear": True}
        assert md["provider_stats"].value["config"]["max_workers"] == 8
    s2 = TileStore.open(str(store_root / f"patches/s2/tiny/{WINDOW}/p224.zarr"), "patches")
    assert s2.status_counts()["ok"] == len(s2.tile_ids) >= 1
    assert s2.settings["provider"]["collections"]["s2"]["collection"] == "user-s2"
    meta = s2.tile_meta(0)
    assert meta["input_check"]["ok"] is True and meta["input_check"]["channels"] == 12
    grid = _tiles().set_index("tile_id")
    tile = grid.loc[s2.tile_ids[0]]
    np.testing.assert_array_equal(s2.read("data", [0])[0][1], _window_of(tile, rasters["s2"][1]).astype(np.float32))
    assert TileStore.open(str(store_root / f"patches/s1/tiny/{WINDOW}/p224.zarr"), "patches").status_counts()["ok"] >= 1


def test_db_scenes_in_a_linear_catalog_fail_the_inspection_check(tmp_path, rasters, worker_python):
    d = tmp_path / "scenes"
    d.mkdir()
    _write(d / "S1_20240117_db.tif", (10 * np.log10(rasters["s1"])).astype(np.float32), nodata=np.nan)
    cat = build_user_catalog(d, check_units=False)  # wrongly declared linear
    job, store_root = _defs(tmp_path, cat, worker_python, check_raise=True)
    key = dg.MultiPartitionKey({"region": "tiny", "window": WINDOW})
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False,
                                        asset_selection=[dg.AssetKey("tile_grid"), dg.AssetKey("s1_patches")])
    chk = _checks(result)[("s1_patches", "input_inspection")]
    assert chk.passed is False and chk.severity == dg.AssetCheckSeverity.ERROR
    assert chk.metadata["issue_counts"].value.get("units", 0) >= 1
    assert "looks dB-scaled" in chk.description
    store = TileStore.open(str(store_root / f"patches/s1/tiny/{WINDOW}/p224.zarr"), "patches")
    flags = store.tile_meta(0)["input_check"]
    assert flags["looks_db"] is True and flags["ok"] is False
