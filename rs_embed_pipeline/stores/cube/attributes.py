"""What a cube says about itself: its schema, its storage identity, and the ``geoemb:`` attributes
(geo-embeddings Zarr convention v1) every zone group carries next to the CF ones."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from rs_embed_pipeline.stores.cube import codec as Q

CUBE_SCHEMA = "rs_embed_pipeline.cube"
CUBE_SCHEMA_VERSION = 2

# geoemb: Zarr convention v1 (github.com/geo-embeddings/embeddings-zarr-convention, tag v1), on
# every cube group next to the CF attributes. Groups are ``EPSG<code>/<kind>`` (one per UTM zone and
# hemisphere), not the convention's ``utm<NN>`` names: existing cubes and readers rely on them.
GEOEMB_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
MODEL_URLS = {"terrafm_b": "https://huggingface.co/MBZUAI/TerraFM"}
SOURCE_DATA_URLS = {
    "s2": "https://dataspace.copernicus.eu/explore-data/data-collections/sentinel-data/sentinel-2",
    "s1": "https://dataspace.copernicus.eu/explore-data/data-collections/sentinel-data/sentinel-1",
}


def geo_transform(x0: float, y0: float, cell_m: float) -> str:
    """GDAL's ``GeoTransform`` of a north-up grid whose upper-left corner is ``(x0, y0)``."""
    return f"{x0} {cell_m} 0.0 {y0} 0.0 {-cell_m}"


def storage_identity(quantization: str, fingerprint: str | None, attrs: Mapping[str, Any]
                     ) -> tuple[str | None, Mapping[str, Any]]:
    """The cube's fingerprint and attributes for its storage: int8 storage is part of the cube's
    identity (float32 cubes keep their fingerprint), and it is recorded for geoemb / STAC readers."""

    Q.check_scheme(quantization)
    if quantization == "none":
        return fingerprint, attrs
    if fingerprint is not None:
        fingerprint = hashlib.sha256(f"{fingerprint}|{quantization}".encode()).hexdigest()
    return fingerprint, {**attrs, "data_type": "int8", "quantization": Q.geoemb_quantization(quantization)}


def model_url(model_id: str) -> str:
    """The encoder's page (Hugging Face); a URN for a model this table does not know."""
    if model_id in MODEL_URLS:
        return MODEL_URLS[model_id]
    if model_id.startswith("thor_1_0_"):
        return f"https://huggingface.co/FM4CS/THOR-1.0-{model_id[len('thor_1_0_'):]}"
    return f"urn:rs-embed-pipeline:model:{model_id}"


def geoemb_attributes(attrs: Mapping[str, Any], *, n_feature: int, chip_px: int, gsd_m: float) -> dict[str, Any]:
    """The ``geoemb:`` attributes of one cube group. ``attrs`` (the cube's attributes) may carry
    ``source_data`` (URIs of the source collections), ``data_type`` and ``quantization`` (a
    geoemb quantization object, e.g. for int8 cubes); defaults: the modality's Copernicus
    collection, float32, none. The model reference carries the weights' sha256 as a fragment."""
    model = model_url(str(attrs.get("model_id", "unknown")))
    sha = str(attrs.get("weights_sha256") or "")
    out = {
        "zarr_conventions": [dict(GEOEMB_CONVENTION)],
        "geoemb:type": "chip",
        "geoemb:dimensions": int(n_feature),
        "geoemb:model": f"{model}#sha256={sha}" if len(sha) == 64 else model,
        "geoemb:source_data": list(attrs.get("source_data")
                                   or [SOURCE_DATA_URLS.get(str(attrs.get("modality")), "urn:rs-embed-pipeline:unknown")]),
        "geoemb:data_type": str(attrs.get("data_type") or "float32"),
        "geoemb:gsd": float(gsd_m),
        "geoemb:chip_layout": {"layout_type": "regular_grid", "chip_size": [int(chip_px), int(chip_px)],
                               "stride": [int(chip_px), int(chip_px)]},
        "geoemb:spatial_layout": "utm_zones",
        "geoemb:build_version": f"rs_embed_pipeline cube schema {CUBE_SCHEMA_VERSION}",
    }
    if attrs.get("quantization"):
        out["geoemb:quantization"] = _geoemb_quantization(attrs["quantization"])
    return out


def _geoemb_quantization(q: Mapping[str, Any]) -> dict[str, Any]:
    """The convention's quantization object (only its fields: method, original_dtype,
    quantized_dtype, scale, link) from the cube's own description, which stays whole in the group's
    ``quantization`` attribute."""
    out: dict[str, Any] = {"method": str(q.get("method") or q.get("scheme") or "unknown"),
                           "original_dtype": str(q.get("original_dtype") or q.get("original_data_type") or "float32")}
    quantized = q.get("quantized_dtype") or q.get("data_type")
    if quantized:
        out["quantized_dtype"] = str(quantized)
    if isinstance(q.get("scale"), Mapping):
        out["scale"] = dict(q["scale"])
    elif q.get("scale_variable") and {"y", "x"} <= set(q.get("scale_dimensions") or []):
        out["scale"] = {"type": "array", "array_name": str(q["scale_variable"])}  # one scale per cell
    if q.get("link"):
        out["link"] = str(q["link"])
    return out
