"""Your own GeoTIFF / COG scenes as a static STAC catalog, read by ``LocalStacProvider``.

```bash
python -m rs_embed_pipeline.providers.local_catalogs.user_scenes --scenes my_scenes/ --out my_catalog/
RS_EMBED_LOCAL_CATALOG=my_catalog/catalog.json make ui      # or LocalStacImagery(catalog_path=...)
```

Naming and band convention (one file per scene; anything else in the folder is ignored):

* file name ``<SENSOR>_<YYYYMMDD>[THHMMSS][_<anything>].tif`` (``.tiff`` too, case-insensitive),
  ``SENSOR`` = ``S2`` or ``S1``, e.g. ``S2_20240115_lausanne.tif``,
  ``S1_20240117T053000_ASC_lausanne.tif``. The date is the acquisition time (UTC; midnight when no
  time is given). For S1 an ``ASC`` / ``ASCENDING`` / ``DESC`` / ``DESCENDING`` token sets
  ``sat:orbit_state`` (the ``s1_orbit`` filter);
* bands named by the file's band descriptions when every band has one (S2 ``B1``..``B12``, ``B01``,
  ``B8A``, optional ``SCL``; S1 ``VV``, ``VH``), otherwise by position: S2 with 12 bands
  ``B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B11 B12``, with 10 bands ``B2 B3 B4 B5 B6 B7 B8 B8A B11 B12``
  (THOR's; TerraFM needs all 12), with 13 bands the 12 then ``SCL``; S1 with 2 bands ``VV VH``;
* units: S2 surface-reflectance DN (reflectance x 10000) by default (``--s2-scale 0.0001``); files
  holding reflectance 0..1 need ``--s2-scale 1``, L2A DN with the 04.00 baseline offset
  ``--s2-offset -0.1``. S1 linear sigma0 power by default; dB files need ``--s1-units dB`` *and* the
  imagery resource's ``use_float_linear: false`` (the provider then converts 10**(dB/10));
* nodata: the file's nodata value (else 0); an S2 ``SCL`` band masks clouds / shadows when every S2
  file has one;
* any CRS and resolution: the STAC providers read each block of tiles on its UTM grid (windowed
  reads where the grids nest, odc-stac otherwise), every band nearest neighbour, exactly as for the
  synthetic and Earth Search catalogs.

The catalog (``<out>/catalog.json``, collections ``user-s2`` / ``user-s1``) does not copy pixels:
each band is a small GDAL VRT pointing at its band of your file (relative paths: keep the scenes and
the catalog where they are, or move them together). The root catalog records its collection ids and
mask asset (``rs_embed:collections``), which ``LocalStacImagery`` picks up, so
``RS_EMBED_LOCAL_CATALOG=<out>/catalog.json`` is all the pipeline needs. A file that breaks the
convention, or whose values do not match its sensor's units (e.g. dB where linear power is
expected), is an error naming the file and the fix.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np

from rs_embed_pipeline.core.vocabulary import S1_POLARISATIONS, S2_BANDS

from ..base import ProviderError
from ..catalogs import EARTH_SEARCH_S2_ASSETS, S1_ASSETS
from .static_catalog import clear_catalog
from rs_embed_pipeline.core.inspection import inspect_patch
import importlib

__all__ = [
    "S1_USER_COLLECTION",
    "S2_USER_COLLECTION",
    "build_user_catalog",
    "catalog_collections",
    "main",
    "parse_scene_name",
]

S2_USER_COLLECTION = "user-s2"
S1_USER_COLLECTION = "user-s1"
SYNTHETIC_DEFAULTS = {"s2_collection": "synthetic-s2-l2a", "s1_collection": "synthetic-s1-grd", "mask_asset": "scl"}

S2_ORDER_12 = S2_BANDS
S2_ORDER_10 = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
S1_ORDER = S1_POLARISATIONS
S2_ASSET_KEYS = EARTH_SEARCH_S2_ASSETS  # the default S2 asset map of the STAC providers
S1_ASSET_KEYS = S1_ASSETS
_NAME_RE = re.compile(
    r"^(?P<sensor>S2|S1)[_-](?P<date>\d{8})(?:T(?P<time>\d{6}))?(?:[_-](?P<rest>.*))?\.tiff?$", re.IGNORECASE
)
_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "float32": "Float32", "float64": "Float64",
}


def _require(module: str):

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProviderError(
            f"Missing dependency: {module!r} is needed to build a catalog from GeoTIFF scenes "
            f"({exc}); install the orchestrator environment: pip install -e '.[orchestrator]'"
        ) from exc


def parse_scene_name(name: str) -> dict[str, Any] | None:
    """``{"modality", "datetime", "orbit"}`` from a file name following the convention, else None."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    when = m["date"] + (m["time"] or "000000")
    try:
        t = dt.datetime.strptime(when, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ProviderError(f"{name}: {m['date']}{'T' + m['time'] if m['time'] else ''} is not a valid date") from None
    orbit = None
    for token in re.split(r"[_\-.]", (m["rest"] or "").upper()):
        if token in ("ASC", "ASCENDING"):
            orbit = "ascending"
        elif token in ("DESC", "DESCENDING"):
            orbit = "descending"
    return {"modality": m["sensor"].lower(), "datetime": t, "orbit": orbit}


def _band_name(desc: str | None) -> str | None:
    if not desc:
        return None
    d = desc.strip().upper()
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", d)
    if m:
        return f"B{int(m[1])}{m[2]}"
    return d if d in (*S1_POLARISATIONS, "SCL") else None


def _bands_of(path: Path, modality: str, descriptions: Sequence[str | None]) -> list[str]:
    n = len(descriptions)
    named = [_band_name(d) for d in descriptions]
    valid = set(S2_ORDER_12) | {"SCL"} if modality == "s2" else set(S1_ORDER)
    known = [b for b in named if b is not None and b in valid]
    if len(known) == n and len(set(known)) == n:  # every band named, each once
        bands = known
    elif modality == "s2" and n in (12, 10, 13):
        bands = list(S2_ORDER_12 if n == 12 else S2_ORDER_10 if n == 10 else (*S2_ORDER_12, "SCL"))
    elif modality == "s1" and n == 2:
        bands = list(S1_ORDER)
    else:
        expected = ("12 bands (B1..B12 without B10), 10 bands (B2..B12 without B9, B10) or 13 (12 + SCL)"
                    if modality == "s2" else "2 bands (VV, VH)")
        raise ProviderError(
            f"{path.name}: a {modality.upper()} scene with {n} band(s) (descriptions {list(descriptions)}): "
            f"expected {expected}, or band descriptions naming every band"
        )
    if modality == "s1" and sorted(bands) != sorted(S1_ORDER):
        raise ProviderError(f"{path.name}: an S1 scene needs VV and VH, got {bands}")
    return bands


def _write_vrt(vrt: Path, src: Path, band_index: int, ds, nodata) -> None:
    dtype = str(ds.dtypes[band_index - 1])
    if dtype not in _GDAL_TYPES:
        raise ProviderError(f"{src.name}: band data type {dtype} is not supported")
    gt = ds.transform.to_gdal()
    rel = os.path.relpath(src.resolve(), vrt.parent.resolve())
    nd = "" if nodata is None else f"    <NoDataValue>{nodata!r}</NoDataValue>\n"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">\n'
        f"  <SRS>{escape(ds.crs.to_wkt())}</SRS>\n"
        f"  <GeoTransform>{', '.join(repr(float(v)) for v in gt)}</GeoTransform>\n"
        f'  <VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="1">\n{nd}'
        f"    <SimpleSource>\n"
        f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>\n'
        f"      <SourceBand>{band_index}</SourceBand>\n"
        f"    </SimpleSource>\n"
        f"  </VRTRasterBand>\n"
        f"</VRTDataset>\n"
    )


def _check_units(path: Path, ds, modality: str, index: dict[str, int], scale: float, offset: float,
                 s1_units: str, nodata) -> None:
    """Read a decimated sample and refuse values that do not match the sensor's units."""

    bands = [b for b in index if b != "SCL"]
    h, w = max(1, min(ds.height, 256)), max(1, min(ds.width, 256))
    sample = ds.read([index[b] for b in bands], out_shape=(len(bands), h, w)).astype(np.float64)
    valid = np.ones((h, w), bool)
    if nodata is not None:
        valid &= ~np.any(np.isnan(sample) if np.isnan(nodata) else sample == nodata, axis=0)
    if modality == "s2":
        sample = (sample * scale + offset) * 10000.0
    elif s1_units == "db":
        sample = np.power(10.0, sample / 10.0)
    chk = inspect_patch(sample, valid, modality, expected_channels=len(bands))
    if chk.get("looks_db"):
        raise ProviderError(
            f"{path.name}: S1 values look dB-scaled ({100 * chk['negative_fraction']:.0f}% negative) but "
            "linear sigma0 power is expected: build the catalog with --s1-units dB and set "
            "use_float_linear: false on the imagery resource (or convert with 10 ** (dB / 10))"
        )
    if chk.get("looks_like_dn"):
        raise ProviderError(
            f"{path.name}: S1 values are mostly above 100 - S2 DN or uncalibrated DN, not linear sigma0 power "
            "(is the sensor prefix right?)"
        )
    if chk.get("looks_unit_scaled"):
        raise ProviderError(
            f"{path.name}: after --s2-scale {scale:g} the S2 values are all within +-1.5 DN - the file holds "
            "reflectance 0..1 (use --s2-scale 1) or is not S2 (is the sensor prefix right?)"
        )


def _lonlat_outline(ds: Any) -> tuple[list[list[float]], list[float]]:
    """The raster's outline in lon/lat (11 points a side, closed) and its bbox."""
    import pyproj  # noqa: PLC0415 - pyproj (PROJ database) only when a user scene is catalogued

    left, bottom, right, top = ds.bounds
    tr = pyproj.Transformer.from_crs(ds.crs.to_wkt(), "EPSG:4326", always_xy=True)
    xs = np.linspace(left, right, 11)
    ys = np.linspace(bottom, top, 11)
    ring_x = np.concatenate([xs, np.full(11, right), xs[::-1], np.full(11, left)])
    ring_y = np.concatenate([np.full(11, bottom), ys, np.full(11, top), ys[::-1]])
    lons, lats = tr.transform(ring_x, ring_y)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lons, lats)]
    ring.append(ring[0])
    return ring, [float(v) for v in (min(lons), min(lats), max(lons), max(lats))]


def _scene_item(pystac: Any, path: Path, info: dict[str, Any], ds: Any, bands: list[str], nodata: float,
                out: Path, *, s2_scale: float, s2_offset: float, s1_units: str) -> Any:
    """The STAC item of one scene: one VRT asset per band (written under ``out``), pointing into
    the scene file."""
    modality = info["modality"]
    index = {b: i + 1 for i, b in enumerate(bands)}
    ring, bbox = _lonlat_outline(ds)
    item_id = f"{modality.upper()}_{info['datetime']:%Y%m%dT%H%M%S}_{path.stem}"
    collection = S2_USER_COLLECTION if modality == "s2" else S1_USER_COLLECTION
    item_dir = out / collection / item_id
    item_dir.mkdir(parents=True, exist_ok=True)
    epsg = ds.crs.to_epsg()
    props: dict[str, Any] = {
        "rs_embed:source_file": str(path.resolve()),
        "rs_embed:bands": bands,
        "proj:code": f"EPSG:{epsg}" if epsg else None,
    }
    if modality == "s1":
        props.update({"sar:polarizations": list(S1_POLARISATIONS), "rs_embed:s1_units": s1_units})
        if info["orbit"]:
            props["sat:orbit_state"] = info["orbit"]
    item = pystac.Item(id=item_id, geometry={"type": "Polygon", "coordinates": [ring]},
                       bbox=bbox, datetime=info["datetime"], properties=props, collection=collection)
    res = float(abs(ds.transform.a))
    for band in bands:
        key = "scl" if band == "SCL" else (S2_ASSET_KEYS if modality == "s2" else S1_ASSET_KEYS)[band]
        vrt = item_dir / f"{key}.vrt"
        _write_vrt(vrt, path, index[band], ds, nodata)
        rb: dict[str, Any] = {"nodata": "nan" if np.isnan(nodata) else nodata,
                              "data_type": str(ds.dtypes[index[band] - 1]), "spatial_resolution": res}
        if band != "SCL":
            rb.update(scale=float(s2_scale) if modality == "s2" else 1.0,
                      offset=float(s2_offset) if modality == "s2" else 0.0)
        item.add_asset(key, pystac.Asset(
            href=str(vrt), media_type=None, title=f"{band} of {path.name}",
            roles=["data"], extra_fields={
                "raster:bands": [rb], "proj:shape": [ds.height, ds.width],
                "proj:transform": list(ds.transform)[:6],
                **({"eo:bands": [{"name": band}]} if modality == "s2" else {}),
            },
        ))
    return item


def _add_scene_collection(pystac: Any, catalog: Any, coll_id: str, modality: str, items: list[Any]) -> None:
    """Add the collection of one modality's scene items to ``catalog``, its extent around them."""
    times = [it.datetime for it in items]
    boxes = np.array([it.bbox for it in items])
    coll = pystac.Collection(
        id=coll_id, description=f"User {modality.upper()} scenes ({len(times)})",
        extent=pystac.Extent(
            pystac.SpatialExtent([[float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                   float(boxes[:, 2].max()), float(boxes[:, 3].max())]]),
            pystac.TemporalExtent([[min(times), max(times)]]),
        ),
        license="other",
    )
    catalog.add_child(coll)
    for it in items:
        coll.add_item(it)


NAMING = "<S2|S1>_<YYYYMMDD>[THHMMSS][_<anything>].tif"
NOT_NAMED = f"name does not follow {NAMING}"
NOT_TIFF = "not a .tif / .tiff file"


def scan_scenes(scenes: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[str, str]]]:
    """The scene files of a folder, sorted, each with its parsed name, and the files skipped, each
    with why (:data:`NOT_TIFF`, :data:`NOT_NAMED`); sub-folders (the catalog's own) are not files."""
    parsed: list[tuple[Path, dict[str, Any]]] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(p for p in scenes.iterdir() if p.is_file()):
        if path.suffix.lower() not in (".tif", ".tiff"):
            skipped.append((path.name, NOT_TIFF))
            continue
        info = parse_scene_name(path.name)
        if info is None:
            skipped.append((path.name, NOT_NAMED))
        else:
            parsed.append((path, info))
    return parsed, skipped


def build_user_catalog(
    scenes_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    s2_scale: float = 0.0001,
    s2_offset: float = 0.0,
    s1_units: str = "linear",
    check_units: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write a static STAC catalog of the scenes in ``scenes_dir``; return ``catalog.json``'s path.
    ``out_dir`` defaults to ``<scenes_dir>/stac``. See the module docstring for the convention."""
    pystac = _require("pystac")
    rasterio = _require("rasterio")

    scenes = Path(scenes_dir)
    if not scenes.is_dir():
        raise ProviderError(f"scenes folder {scenes} does not exist")
    s1_units = str(s1_units).strip().lower()
    if s1_units not in ("linear", "db"):
        raise ProviderError(f"s1_units must be 'linear' or 'dB', got {s1_units!r}")
    out = Path(out_dir) if out_dir is not None else scenes / "stac"
    parsed, skipped = scan_scenes(scenes)
    ignored = [name for name, why in skipped if why == NOT_NAMED]
    if not parsed:
        raise ProviderError(
            f"no scene in {scenes} follows the naming convention <S2|S1>_<YYYYMMDD>[THHMMSS][_<anything>].tif"
            + (f" (ignored: {ignored[:5]})" if ignored else "")
        )
    if overwrite:
        clear_catalog(out, (S2_USER_COLLECTION, S1_USER_COLLECTION))
    out.mkdir(parents=True, exist_ok=True)

    catalog = pystac.Catalog(id="user-scenes", description=f"User scenes from {scenes.resolve()}",
                             title="rs_embed_pipeline user scenes")
    items: dict[str, list] = {"s2": [], "s1": []}
    has_scl: list[bool] = []
    for path, info in parsed:
        modality = info["modality"]
        with rasterio.open(path) as ds:
            bands = _bands_of(path, modality, list(ds.descriptions))
            nodata = ds.nodata if ds.nodata is not None else 0.0
            if check_units:
                index = {b: i + 1 for i, b in enumerate(bands)}
                _check_units(path, ds, modality, index, s2_scale, s2_offset, s1_units, nodata)
            items[modality].append(_scene_item(pystac, path, info, ds, bands, nodata, out,
                                               s2_scale=s2_scale, s2_offset=s2_offset, s1_units=s1_units))
        if modality == "s2":
            has_scl.append("SCL" in bands)

    collections: dict[str, Any] = {}
    for modality, coll_id in (("s2", S2_USER_COLLECTION), ("s1", S1_USER_COLLECTION)):
        if items[modality]:
            _add_scene_collection(pystac, catalog, coll_id, modality, items[modality])
            collections[modality] = coll_id

    catalog.extra_fields["rs_embed:collections"] = {
        "s2": collections.get("s2"),
        "s1": collections.get("s1"),
        "mask_asset": "scl" if has_scl and all(has_scl) else None,
        "s1_units": s1_units,
        "s2_scale": float(s2_scale),
        "s2_offset": float(s2_offset),
    }
    catalog.normalize_hrefs(str(out))
    for item in catalog.get_items(recursive=True):
        for asset in item.assets.values():
            asset.href = "./" + Path(asset.href).name
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return out / "catalog.json"


def catalog_collections(catalog_path: str | Path) -> dict[str, Any]:
    """Collection ids and S2 mask asset of a static catalog: those a user-scene catalog records
    (``rs_embed:collections``), else the synthetic catalog's (the providers' defaults)."""
    path = Path(catalog_path)
    try:
        root = json.loads(path.read_text())
    except (OSError, ValueError):
        return dict(SYNTHETIC_DEFAULTS)
    rec = root.get("rs_embed:collections")
    if not isinstance(rec, dict):
        return dict(SYNTHETIC_DEFAULTS)
    return {"s2_collection": rec.get("s2"), "s1_collection": rec.get("s1"), "mask_asset": rec.get("mask_asset")}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m rs_embed_pipeline.providers.local_catalogs.user_scenes",
        description="Build a static STAC catalog from a folder of S2 / S1 GeoTIFF scenes named "
        "<S2|S1>_<YYYYMMDD>[THHMMSS][_<anything>].tif (see the module docstring).",
    )
    ap.add_argument("--scenes", required=True, help="folder of GeoTIFF / COG scenes")
    ap.add_argument("--out", default=None, help="catalog folder (default: <scenes>/stac)")
    ap.add_argument("--s2-scale", type=float, default=0.0001,
                    help="reflectance = DN * scale + offset (default 0.0001: the files hold DN)")
    ap.add_argument("--s2-offset", type=float, default=0.0)
    ap.add_argument("--s1-units", choices=["linear", "dB", "db"], default="linear")
    ap.add_argument("--no-check", action="store_true", help="skip the units check of each scene")
    args = ap.parse_args(argv)
    scenes = Path(args.scenes)
    try:
        parsed, skipped = scan_scenes(scenes) if scenes.is_dir() else ([], [])
        path = build_user_catalog(args.scenes, args.out, s2_scale=args.s2_scale, s2_offset=args.s2_offset,
                                  s1_units=args.s1_units, check_units=not args.no_check)
    except ProviderError as exc:
        ap.exit(2, f"error: {exc}\n")
    for name, why in skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    counts = {m: sum(info["modality"] == m for _, info in parsed) for m in ("s2", "s1")}
    print(path)
    print(f"{len(parsed)} scenes ({counts['s2']} S2, {counts['s1']} S1) from {scenes}"
          + (f"; {len(skipped)} file(s) skipped (listed above)" if skipped else ""))
    print(f"Use it: RS_EMBED_LOCAL_CATALOG={path} (provider local_stac)"
          + ("; S1 in dB: set use_float_linear: false on the imagery resource" if args.s1_units.lower() == "db" else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
