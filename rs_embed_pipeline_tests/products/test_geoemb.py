"""geoemb: Zarr convention v1 attributes on every cube group, next to the CF ones.

The convention's JSON schema cannot be fetched here (no network), so its required fields and
types are checked by hand, as its schema states them."""

import re

import zarr

from rs_embed_pipeline.stores.cube import (
    GEOEMB_CONVENTION,
    geoemb_attributes,
    model_url,
)
from rs_embed_pipeline_tests.products.conftest import (
    CELLS,
    CUBE_ATTRS,
    D_GRID,
    D_POOLED,
    SCALE_M,
    SIZE_PX,
)

URI = re.compile(r"^[a-z][a-z0-9+.-]*:[^\s]+$")


def test_every_group_carries_the_required_fields(tiny_cube):
    root = zarr.open_group(tiny_cube, mode="r")
    for kind, dims, chip in (("grid", D_GRID, SIZE_PX // CELLS), ("pooled", D_POOLED, SIZE_PX)):
        attrs = dict(root[f"EPSG32632/{kind}"].attrs)
        assert attrs["Conventions"] == "CF-1.8"  # the CF attributes stay
        conventions = attrs["zarr_conventions"]
        assert conventions == [GEOEMB_CONVENTION] and conventions[0]["uuid"] == "61c12cc5-0e28-4056-999a-480cf3fb7e4c"
        # The convention schema's constants for its metadata object (additionalProperties: false).
        assert conventions[0] == {
            "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
            "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
            "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c", "name": "geoemb:",
            "description": "Geoembeddings convention for geospatial embedding arrays with model provenance"}
        for key in ("geoemb:type", "geoemb:dimensions", "geoemb:model", "geoemb:source_data", "geoemb:data_type"):
            assert key in attrs, key
        assert attrs["geoemb:type"] == "chip"  # so chip_layout is required as well
        assert attrs["geoemb:chip_layout"] == {"layout_type": "regular_grid", "chip_size": [chip, chip],
                                               "stride": [chip, chip]}
        assert attrs["geoemb:dimensions"] == dims
        assert attrs["geoemb:model"] == "https://huggingface.co/MBZUAI/TerraFM#sha256=" + "ab" * 32
        assert attrs["geoemb:source_data"] and all(URI.match(u) for u in attrs["geoemb:source_data"])
        assert URI.match(attrs["geoemb:model"])
        assert attrs["geoemb:data_type"] == "float32" and attrs["geoemb:gsd"] == SCALE_M
        assert attrs["geoemb:spatial_layout"] == "utm_zones"
        assert attrs["geoemb:build_version"].startswith("rs_embed_pipeline cube schema")
        assert "geoemb:quantization" not in attrs


def test_quantization_hook_and_model_urls():
    q = {"method": "linear", "original_dtype": "float32", "quantized_dtype": "int8",
         "scale": {"type": "scalar", "scale": 0.01}}
    attrs = geoemb_attributes({**CUBE_ATTRS, "data_type": "int8", "quantization": q,
                               "source_data": ["https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a"]},
                              n_feature=768, chip_px=16, gsd_m=10.0)
    assert attrs["geoemb:quantization"] == q and attrs["geoemb:data_type"] == "int8"
    assert attrs["geoemb:source_data"] == ["https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a"]
    assert model_url("thor_1_0_base") == "https://huggingface.co/FM4CS/THOR-1.0-base"
    assert model_url("someone_else") == "urn:rs-embed-pipeline:model:someone_else"
