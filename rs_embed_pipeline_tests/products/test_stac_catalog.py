"""STAC documents built from plain inputs (no pipeline): version and extensions, temporal
resolution words, per-scene emb:source-data links, core validity (rustac, core schemas only: the
extension schemas cannot be fetched offline, so their constraints are checked by hand here, as the
Embedding extension v0.0.1 schema states them)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rs_embed_pipeline.products import stac_catalog
from rs_embed_pipeline_tests.products.conftest import WINDOW_STARTS, tiny_grid

STAC_API = {"provider": "stac", "collections": {"s2": {"collection": "sentinel-2-l2a"}}}
LOCAL = {"provider": "local_stac", "catalog_path": "/data/catalog"}
CHIP_LAYOUT_KEYS = {"layout_type", "chip_size", "stride", "grid_id", "grid_definition"}


def _item(provider, scenes=("S2B_32TLS_20240105_0_L2A", "S2A_32TLS_20240102_0_L2A", "S2B_32TLS_20240105_0_L2A")):
    collection = "sentinel-2-l2a"
    return stac_catalog.build_item(
        item_id="tiny_2024-01-01", collection_id="terrafm_b_s2", region="tiny", window_start=WINDOW_STARTS[0],
        window_end=WINDOW_STARTS[1], footprints=list(tiny_grid().geometry), item_dir="/store/products/x/stac/items",
        embeddings_href="/store/cubes/terrafm_b_s2/tiny.zarr/EPSG32632/grid", zones=["EPSG32632"],
        model_href="https://huggingface.co/MBZUAI/TerraFM",
        source_href=stac_catalog.source_data_href(provider, collection),
        runtime_parameters={"normalization": "dataset", "image_size": 224}, scene_ids=list(scenes),
        scene_hrefs=stac_catalog.source_scene_hrefs(provider, collection, list(scenes)),
        processing_datetime="2026-01-01T00:00:00Z")


def _collection(items):
    return stac_catalog.build_collection(
        collection_id="terrafm_b_s2", title="t", description="d", items=items, dimensions=768, chip_px=16,
        gsd=10.0, data_type="float32", grid_id="g", model_href="https://huggingface.co/MBZUAI/TerraFM",
        source_hrefs=["https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a"])


def _rustac_core(doc: dict, tmp: Path) -> None:
    core = copy.deepcopy(doc)
    core["stac_extensions"] = []  # extension schemas are not reachable offline
    path = tmp / f"{doc['type']}.json"
    path.write_text(json.dumps(core))
    rustac = Path(sys.executable).parent / "rustac"
    run = subprocess.run([str(rustac), "validate", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, f"rustac validate {doc['type']}: {run.stdout}{run.stderr}"


def test_temporal_resolution_uses_the_extensions_words():
    assert stac_catalog.temporal_resolution("2024-01-01", "2024-04-01") == "quarterly"
    assert stac_catalog.temporal_resolution("2024-03-01", "2024-04-01") == "monthly"
    assert stac_catalog.temporal_resolution("2024-01-01", "2025-01-01") == "annual"
    assert stac_catalog.temporal_resolution("2024-01-01", "2024-07-01") == "P6M"
    assert stac_catalog.temporal_resolution("2024-01-01", "2024-01-11") == "P10D"


def test_scene_links_for_a_stac_api_provider():
    item = _item(STAC_API)
    scenes = [link for link in item["links"] if link["rel"] == "emb:source-data" and link["title"] == "Source scene"]
    base = "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a"
    assert [link["href"] for link in scenes] == [f"{base}/items/S2A_32TLS_20240102_0_L2A",
                                                 f"{base}/items/S2B_32TLS_20240105_0_L2A"]  # sorted, once each
    assert all(link["type"] == "application/geo+json" for link in scenes)
    collection_links = [link for link in item["links"] if link.get("title") == stac_catalog.SOURCE_COLLECTION_TITLE]
    assert [link["href"] for link in collection_links] == [base]
    assert item["properties"]["rs_embed:source_scene_ids"] == ["S2A_32TLS_20240102_0_L2A", "S2B_32TLS_20240105_0_L2A"]


def test_no_scene_links_where_scenes_have_no_url():
    item = _item(LOCAL)
    sources = [link for link in item["links"] if link["rel"] == "emb:source-data"]
    assert sources == [{"rel": "emb:source-data", "href": "file:///data/catalog",
                        "title": stac_catalog.SOURCE_COLLECTION_TITLE}]
    assert stac_catalog.source_scene_hrefs({"provider": "gee"}, "COPERNICUS/S2_SR_HARMONIZED", ["a"]) == []


def test_documents_follow_core_and_the_extensions_schema_rules(tmp_path):
    item = _item(STAC_API)
    collection = _collection({"./items/tiny_2024-01-01.json": item})
    catalog = stac_catalog.build_catalog("terrafm_b_s2", "t")
    for doc in (item, collection, catalog):
        assert doc["stac_version"] == "1.0.0"  # what the extension schema's v1.0.0 core refs accept
        _rustac_core(doc, tmp_path)
    # Item: the extension listed, the required `embeddings` asset, only the schema's emb: properties,
    # no emb: field on any asset.
    assert stac_catalog.EMB_EXTENSION in item["stac_extensions"]
    assert "embeddings" in item["assets"] and item["assets"]["embeddings"]["href"] == \
        "../../../../cubes/terrafm_b_s2/tiny.zarr/EPSG32632/grid"
    assert {k for k in item["properties"] if k.startswith("emb:")} == {"emb:runtime_parameters"}
    assert isinstance(item["properties"]["emb:runtime_parameters"], dict)
    assert not any(k.startswith("emb:") for a in item["assets"].values() for k in a)
    assert item["properties"]["datetime"] is None and item["properties"]["end_datetime"] == "2024-03-31T23:59:59Z"
    # Collection: required emb:type (pixel|chip), emb:dimensions (integer >= 1), data_type, the
    # emb:model and emb:source-data links; chip_layout with only the schema's keys.
    assert collection["emb:type"] in ("pixel", "chip") and collection["emb:dimensions"] == 768
    assert collection["data_type"] == "float32" and collection["gsd"] == 10.0
    assert {"emb:model", "emb:source-data"} <= {link["rel"] for link in collection["links"]}
    layout = collection["emb:chip_layout"]
    assert layout["layout_type"] in ("regular_grid", "variable_grid", "named_grid") and set(layout) <= CHIP_LAYOUT_KEYS
    assert layout["chip_size"] == [16, 16] and layout["stride"] == [16, 16]
    assert set(collection["stac_extensions"]) == {stac_catalog.EMB_EXTENSION, stac_catalog.ITEM_ASSETS_EXTENSION}
    assert collection["extent"]["temporal"]["interval"] == [["2024-01-01T00:00:00Z", "2024-03-31T23:59:59Z"]]
    assert collection["extent"]["spatial"]["bbox"] == [item["bbox"]]
    assert collection["emb:temporal_resolution"] == "quarterly"


def test_a_broken_document_fails_core_validation(tmp_path):
    """The validator is not a rubber stamp: a Collection without a license fails."""
    doc = _collection({})
    del doc["license"]
    with pytest.raises(AssertionError, match="rustac validate Collection"):
        _rustac_core(doc, tmp_path)
