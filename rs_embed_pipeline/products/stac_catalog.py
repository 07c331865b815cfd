"""A static STAC catalog per model x modality: what was produced, from what, with which model.

Layout under ``<store>/products/<model>_<modality>/stac/`` (relative links only, so the folder can be
copied or served anywhere)::

    catalog.json                 Catalog -> child collection.json
    collection.json              Collection, STAC Embedding extension v0.0.1 fields
    items/<region>_<window>.json one Item per region x window
    items.parquet                the same Items as one stac-geoparquet file (a Collection asset)

Standards: STAC 1.0.0 core with the Item Assets extension v1.0.0; Embedding extension v0.0.1
(https://stac-extensions.github.io/embeddings/v0.0.1/schema.json): the Collection carries
``emb:type`` (``chip``: one vector per patch of the feature map), ``emb:dimensions``,
``emb:chip_layout`` (a regular grid of ``chip_size`` pixels on the global UTM tile lattice),
``emb:temporal_resolution`` (``monthly`` / ``quarterly`` / ``annual``), ``gsd``, ``data_type`` and
the required ``emb:model`` and ``emb:source-data`` links; each Item has the required ``embeddings``
asset (the cube group of its region), ``emb:runtime_parameters`` (every setting that shaped the
numbers), Processing extension v1.2.0 fields, the source scene ids and, where the provider is a
STAC API, one ``emb:source-data`` link per source scene. Fields outside these extensions use the
``rs_embed:`` prefix.

Why STAC 1.0.0 and not 1.1.0: the Embedding extension's v0.0.1 JSON schema validates Items and
Collections with ``allOf`` the *v1.0.0* core schemas, which pin ``stac_version`` to ``"1.0.0"``; a
1.1.0 document declaring the extension therefore fails every validator that fetches the extension
schema (stac-validator, pystac ``validate``). Its own examples are 1.0.0 documents.

Each partition writes its own Item, then rebuilds the Collection (extent, item links) and the
stac-geoparquet file from the Items present, so windows and regions can be added in any order.

The stac-geoparquet file (spec v1.0.0: one row per Item; ``type``, ``stac_version``,
``stac_extensions``, ``id``, WKB ``geometry``, ``bbox`` struct, ``links``, ``assets``,
``collection`` and each property as its own column, the datetimes as UTC timestamps; GeoParquet
1.1 ``geo`` metadata with ``bbox`` as the covering column; the Collection under the
``stac-geoparquet`` key) is what a client of a continental build reads instead of walking
thousands of Item files: rustac (``rustac search --bbox ... items.parquet``, ``rustac.read``),
DuckDB (``read_parquet``), pystac via ``rustac.read`` or stac-geoparquet. It is written here with
pyarrow rather than rustac's writer because that migrates every Item to STAC 1.1.0 (see above).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from shapely.geometry import mapping, shape

from rs_embed_pipeline.stores.files import write_bytes_atomic
from importlib.metadata import PackageNotFoundError, version

STAC_VERSION = "1.0.0"
EMB_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
# item_assets is core only from STAC 1.1.0; in 1.0.0 it is this extension.
ITEM_ASSETS_EXTENSION = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_GEOPARQUET_VERSION = "1.0.0"
ITEMS_GEOPARQUET = "items.parquet"
# Item properties held as UTC timestamps in stac-geoparquet (the spec's datetime fields).
_TIMESTAMP_PROPERTIES = ("datetime", "start_datetime", "end_datetime")
# Item columns that are not properties, in the spec's order.
_ITEM_COLUMNS = ("type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links", "assets",
                 "collection")


def relative_href(from_dir: str, target: str) -> str:
    """``target`` relative to the folder ``from_dir`` (both local paths or both URLs of one bucket)."""
    def split(uri: str) -> tuple[str, str]:
        return tuple(uri.split("://", 1)) if "://" in uri else ("", uri)  # type: ignore[return-value]

    (s1, p1), (s2, p2) = split(from_dir), split(target)
    if s1 != s2 or (s1 and p1.split("/", 1)[0] != p2.split("/", 1)[0]):
        return target
    return posixpath.relpath(p2, p1)


def _iso(date: str, end: bool = False) -> str:
    """A window bound as RFC 3339; the (exclusive) end becomes the last second inside the window."""
    t = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
    if end:
        t -= dt.timedelta(seconds=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


_WINDOW_NAMES = {1: "monthly", 3: "quarterly", 12: "annual"}


def temporal_resolution(start: str, end: str) -> str:
    """The compositing window in the Embedding extension's words (``monthly``, ``quarterly``,
    ``annual``); any other window as an ISO 8601 duration (``P6M``, ``P10D``)."""
    a, b = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    months = (b.year - a.year) * 12 + b.month - a.month
    if a.day == b.day == 1 and months:
        return _WINDOW_NAMES.get(months, f"P{months}M")
    return f"P{(b - a).days}D"


def source_data_href(provider: Mapping[str, Any], collection: str) -> str:
    """A URL for the imagery collection the patches came from."""
    name = str(provider.get("provider") or provider.get("name") or "")
    if name == "gee":
        return f"https://developers.google.com/earth-engine/datasets/catalog/{collection.replace('/', '_')}"
    if name == "stac":
        api = str(provider.get("api_url") or provider.get("url") or "https://earth-search.aws.element84.com/v1")
        return f"{api.rstrip('/')}/collections/{collection}"
    if provider.get("catalog_path"):
        return "file://" + str(provider["catalog_path"])
    return f"urn:rs-embed-pipeline:collection:{collection}"


SOURCE_COLLECTION_TITLE = "Source imagery collection"


def source_scene_hrefs(provider: Mapping[str, Any], collection: str, scene_ids: Sequence[str]) -> list[str]:
    """The STAC Item URL of each source scene, where the provider is a STAC API (scene ids are its
    Item ids); empty for other providers, whose scene ids stay in ``rs_embed:source_scene_ids``."""
    if str(provider.get("provider") or provider.get("name") or "") != "stac":
        return []
    base = source_data_href(provider, collection)
    return [f"{base}/items/{s}" for s in sorted(set(scene_ids))]


def build_item(
    *,
    item_id: str,
    collection_id: str,
    region: str,
    window_start: str,
    window_end: str,
    footprints: Sequence[Any],
    item_dir: str,
    embeddings_href: str,
    zones: Sequence[str],
    model_href: str,
    source_href: str,
    runtime_parameters: Mapping[str, Any],
    scene_ids: Sequence[str],
    properties: Mapping[str, Any] | None = None,
    extra_assets: Mapping[str, Mapping[str, Any]] | None = None,
    processing_datetime: str | None = None,
    scene_hrefs: Sequence[str] = (),
) -> dict[str, Any]:
    """One Item: the region's footprint (union of its tiles, EPSG:4326) for one window.
    ``scene_hrefs``: STAC Item URLs of the source scenes (one ``emb:source-data`` link each)."""
    geom = shapely.union_all(list(footprints))
    assets = {
        "embeddings": {
            "href": relative_href(item_dir, embeddings_href), "type": ZARR_MEDIA_TYPE, "roles": ["data"],
            "title": f"Embedding cube of region {region} (Zarr v3; groups {', '.join(zones)}; "
                     f"time {window_start} of the cube's time axis)",
        },
    }
    for key, asset in (extra_assets or {}).items():
        assets[key] = {**asset, "href": relative_href(item_dir, str(asset["href"]))}
    return _stac_object("Feature", [EMB_EXTENSION, PROCESSING_EXTENSION], item_id, {
        "collection": collection_id,
        "geometry": mapping(geom),
        "bbox": [float(v) for v in geom.bounds],
        "properties": {
            "datetime": None,
            "start_datetime": _iso(window_start),
            "end_datetime": _iso(window_end, end=True),
            "emb:runtime_parameters": json.loads(json.dumps(dict(runtime_parameters), default=str)),
            "processing:datetime": processing_datetime or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "processing:software": {"rs_embed_pipeline": _version()},
            "processing:lineage": "patches (provider units) -> model adapter (normalization, resize) -> pooled and "
                                  "grid embeddings -> cube mosaic per UTM zone",
            "rs_embed:region": region,
            "rs_embed:utm_zones": list(zones),
            "rs_embed:source_scene_ids": sorted(set(scene_ids)),
            **dict(properties or {}),
        },
        "links": [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "emb:model", "href": model_href, "title": "Encoder model"},
            {"rel": "emb:source-data", "href": source_href, "title": SOURCE_COLLECTION_TITLE},
            *({"rel": "emb:source-data", "href": h, "type": "application/geo+json", "title": "Source scene"}
              for h in scene_hrefs),
        ],
        "assets": assets,
    })


def _stac_object(stac_type: str, extensions: list[str], object_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A STAC Item or Collection: the fields every STAC object starts with, then ``fields``."""
    return {"type": stac_type, "stac_version": STAC_VERSION, "stac_extensions": extensions, "id": object_id,
            **fields}


def build_collection(
    *,
    collection_id: str,
    title: str,
    description: str,
    items: Mapping[str, Mapping[str, Any]],
    dimensions: int,
    chip_px: int,
    gsd: float,
    data_type: str,
    grid_id: str,
    model_href: str,
    source_hrefs: Sequence[str],
    license: str = "various",
    assets: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The Collection over ``items`` (``{relative href: item}``): extent, links, Embedding fields.
    ``license``: STAC 1.0.0's ``various`` by default (the vectors derive from the source imagery and
    the model weights, each under its own license; ``other`` exists only from STAC 1.1.0).
    ``assets``: the Collection's own assets (hrefs relative to collection.json)."""
    bboxes = [it["bbox"] for it in items.values()]
    starts = sorted(it["properties"]["start_datetime"] for it in items.values())
    ends = sorted(it["properties"]["end_datetime"] for it in items.values())
    spatial = ([min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes),
                max(b[3] for b in bboxes)] if bboxes else [-180.0, -90.0, 180.0, 90.0])
    resolutions = sorted({temporal_resolution(it["properties"]["start_datetime"][:10],
                                              _next_day(it["properties"]["end_datetime"][:10]))
                          for it in items.values()})
    links = [
        {"rel": "root", "href": "./catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "./catalog.json", "type": "application/json"},
        {"rel": "emb:model", "href": model_href, "title": "Encoder model"},
        *({"rel": "emb:source-data", "href": h, "title": SOURCE_COLLECTION_TITLE} for h in sorted(set(source_hrefs))),
        *({"rel": "item", "href": href, "type": "application/geo+json"} for href in sorted(items)),
    ]
    return _stac_object("Collection", [EMB_EXTENSION, ITEM_ASSETS_EXTENSION], collection_id, {
        "title": title,
        "description": description,
        "license": license,
        "extent": {"spatial": {"bbox": [spatial]},
                   "temporal": {"interval": [[starts[0] if starts else None, ends[-1] if ends else None]]}},
        "emb:type": "chip",
        "emb:dimensions": int(dimensions),
        "emb:chip_layout": {"layout_type": "regular_grid", "chip_size": [int(chip_px), int(chip_px)],
                            "stride": [int(chip_px), int(chip_px)], "grid_id": grid_id},
        "emb:fit_for_use": ["retrieval", "classification", "change_detection"],
        **({"emb:temporal_resolution": resolutions[0]} if len(resolutions) == 1 else {}),
        "gsd": float(gsd),
        "data_type": data_type,
        "item_assets": {"embeddings": {"type": ZARR_MEDIA_TYPE, "roles": ["data"],
                                       "title": "Embedding cube (Zarr v3, CF + geoemb: attributes)"}},
        **({"assets": {k: dict(v) for k, v in assets.items()}} if assets else {}),
        "links": links,
    })


def _next_day(date: str) -> str:
    return (dt.date.fromisoformat(date) + dt.timedelta(days=1)).isoformat()


def _version() -> str:

    try:
        return version("rs_embed_pipeline")
    except PackageNotFoundError:
        return "unknown"


def build_catalog(collection_id: str, title: str) -> dict[str, Any]:
    return {
        "type": "Catalog", "stac_version": STAC_VERSION, "id": f"{collection_id}-catalog",
        "title": title, "description": f"Embedding products of {collection_id} (rs_embed_pipeline)",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                  {"rel": "child", "href": "./collection.json", "type": "application/json"}],
    }


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


def write_item(stac_uri: str, item: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> str:
    uri = f"{stac_uri.rstrip('/')}/items/{item['id']}.json"
    write_bytes_atomic(uri, _dump(item), storage_options)
    return uri


def read_items(stac_uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{"./items/<id>.json": item}`` of every Item written so far."""
    fs, path = fsspec.core.url_to_fs(f"{stac_uri.rstrip('/')}/items", **dict(storage_options or {}))
    try:
        names = sorted(n for n in fs.ls(path, detail=False, refresh=True) if str(n).endswith(".json"))
    except FileNotFoundError:
        return {}
    return {f"./items/{posixpath.basename(str(n))}": json.loads(fs.cat_file(n)) for n in names}


def write_collection(stac_uri: str, collection: Mapping[str, Any], title: str,
                     storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    root = stac_uri.rstrip("/")
    write_bytes_atomic(f"{root}/collection.json", _dump(collection), storage_options)
    write_bytes_atomic(f"{root}/catalog.json", _dump(build_catalog(str(collection["id"]), title)), storage_options)
    return {"catalog": f"{root}/catalog.json", "collection": f"{root}/collection.json"}


def _timestamps(values: Sequence[str | None]) -> pa.Array:
    parsed = [None if v is None else dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")) for v in values]
    return pa.array(parsed, pa.timestamp("ms", tz="UTC"))


def _column(values: list[Any]) -> pa.Array:
    """A property column: pyarrow's inferred type (nested objects become structs over the keys of
    every Item); a column of nulls only or of empty lists only becomes strings, which every reader types."""
    arr = pa.array(values)
    if pa.types.is_null(arr.type):
        return pa.array(values, pa.string())
    if pa.types.is_list(arr.type) and pa.types.is_null(arr.type.value_type):
        return pa.array(values, pa.list_(pa.string()))
    return arr


def items_table(items: Sequence[Mapping[str, Any]], collection: Mapping[str, Any] | None = None) -> pa.Table:
    """The Items as a stac-geoparquet v1.0.0 table (one row per Item, sorted by id), with the
    GeoParquet 1.1 ``geo`` metadata (``bbox`` covering) and ``collection`` in the file metadata."""
    items = sorted(items, key=lambda it: str(it["id"]))
    geoms = [shape(it["geometry"]) for it in items]
    bounds = [[float(v) for v in it["bbox"]] for it in items]
    columns: dict[str, pa.Array] = {
        "type": pa.array([str(it["type"]) for it in items], pa.string()),
        "stac_version": pa.array([str(it["stac_version"]) for it in items], pa.string()),
        "stac_extensions": pa.array([list(it.get("stac_extensions", [])) for it in items], pa.list_(pa.string())),
        "id": pa.array([str(it["id"]) for it in items], pa.string()),
        "geometry": pa.array([shapely.to_wkb(g) for g in geoms], pa.binary()),
        "bbox": pa.StructArray.from_arrays([pa.array([b[i] for b in bounds], pa.float64()) for i in range(4)],
                                           names=["xmin", "ymin", "xmax", "ymax"]),
        "links": _column([list(it.get("links", [])) for it in items]),
        "assets": _column([dict(it.get("assets", {})) for it in items]),
        "collection": pa.array([it.get("collection") for it in items], pa.string()),
    }
    keys = sorted({k for it in items for k in it["properties"]})
    for key in keys:
        if key in _ITEM_COLUMNS:
            raise ValueError(f"Item property {key!r} has the name of a top-level stac-geoparquet column")
        values = [it["properties"].get(key) for it in items]
        columns[key] = _timestamps(values) if key in _TIMESTAMP_PROPERTIES else _column(values)
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "geometry_types": sorted({g.geom_type for g in geoms}),
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
        **({"bbox": [min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds),
                     max(b[3] for b in bounds)]} if bounds else {})}}}
    stac_meta: dict[str, Any] = {"version": STAC_GEOPARQUET_VERSION}
    if collection is not None:
        stac_meta["collections"] = {str(collection["id"]): dict(collection)}
    return pa.table(columns).replace_schema_metadata({b"geo": json.dumps(geo).encode(),
                                                      b"stac-geoparquet": json.dumps(stac_meta).encode()})


def write_items_geoparquet(stac_uri: str, items: Sequence[Mapping[str, Any]], collection: Mapping[str, Any],
                           storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Items of ``stac_uri``'s Collection as ``<stac_uri>/items.parquet`` (atomic rewrite)."""
    uri = f"{stac_uri.rstrip('/')}/{ITEMS_GEOPARQUET}"
    buf = io.BytesIO()
    pq.write_table(items_table(items, collection), buf, compression="zstd", write_statistics=True)
    write_bytes_atomic(uri, buf.getvalue(), storage_options)
    return {"uri": uri, "items": len(items), "bytes": buf.getbuffer().nbytes}
