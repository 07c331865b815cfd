"""Deterministic synthetic STAC catalog of Sentinel-2 L2A and Sentinel-1 COGs (offline default).

``generate_synthetic_catalog(out_dir, bbox, start, end, seed=0)`` writes a static, self-contained
pystac Catalog::

    out_dir/catalog.json
    out_dir/synthetic-s2-l2a/collection.json
    out_dir/synthetic-s2-l2a/<item id>/<item id>.json  + one COG per asset
    out_dir/synthetic-s1-grd/collection.json
    out_dir/synthetic-s1-grd/<item id>/<item id>.json  + vv / vh COGs

Everything is in the UTM zone of the bbox centre, on a grid snapped to 60 m so that the 10 / 20 /
60 m rasters nest exactly (and nest in every ``rs_embed_pipeline.core.grid`` tile lattice with 10 m
pixels).

Sentinel-2 items mimic Earth Search ``sentinel-2-c1-l2a`` (so the same asset map serves both):
assets ``coastal, blue, green, red, rededge1, rededge2, rededge3, nir, nir08, nir09, swir16,
swir22`` (B1 .. B12, ``eo:bands`` carry the B names) as uint16 at native 10 / 20 / 60 m with
``raster:bands`` ``scale=0.0001, offset=-0.1, nodata=0`` (processing baseline >= 04.00: stored
DN = reflectance * 10000 + 1000), and ``scl`` (uint8, 20 m, nodata 0) with cloud classes 8 / 9
and cloud shadow 3 over some pixels; ``eo:cloud_cover`` is the percentage of SCL pixels in
8 / 9 / 10. Sentinel-1 items carry ``vv`` / ``vh`` float32 linear sigma0 at 10 m (nodata 0).

Pixel values (reflectance x 10000 for S2) are smooth spatial patterns evaluated in UTM world
coordinates (identical across resolutions and catalogs), with band ``i`` (0-based, in the order
B1 .. B12) centred on ``S2_BAND_BASE_DN[i] = 800 * (i + 1)`` and varying by less than
``S2_BAND_HALF_RANGE_DN`` on cloud-free pixels, plus a per-date variation. Cloudy pixels are
bright (> 8000), shadows dark. Acquisition ``k`` (0-based, per collection) is clear for
``k % 4 == 1``, overcast for ``k % 4 == 3`` and has one or two scattered clouds otherwise.

All items have ``"synthetic": true`` in their properties. Same arguments -> identical bytes (the
JSON uses relative hrefs, so even the output directory does not matter).

CLI::

    python -m rs_embed_pipeline.providers.local_catalogs.synthetic --out DIR \
        --bbox 14.90 45.00 14.93 45.02 --start 2024-01-01 --end 2024-04-01 [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import pyproj
import pystac
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from rs_embed_pipeline.core.grid import utm_epsg_for
from rs_embed_pipeline.core.vocabulary import S1_POLARISATIONS

from ..catalogs import EARTH_SEARCH_S2_ASSETS, S1_ASSETS
from .static_catalog import clear_catalog

__all__ = [
    "S1_COLLECTION",
    "S2_COLLECTION",
    "S2_ASSETS",
    "S1_ASSETS",
    "S2_BAND_BASE_DN",
    "S2_BAND_HALF_RANGE_DN",
    "S2_DN_OFFSET",
    "generate_synthetic_catalog",
    "main",
]

S2_COLLECTION = "synthetic-s2-l2a"
S1_COLLECTION = "synthetic-s1-grd"

# band name -> (native resolution m, centre wavelength um)
_S2_BAND_OPTICS: dict[str, tuple[int, float]] = {
    "B1": (60, 0.443), "B2": (10, 0.490), "B3": (10, 0.560), "B4": (10, 0.665),
    "B5": (20, 0.704), "B6": (20, 0.740), "B7": (20, 0.783), "B8": (10, 0.842),
    "B8A": (20, 0.865), "B9": (60, 0.945), "B11": (20, 1.610), "B12": (20, 2.190),
}
# band name -> (Earth Search C1 asset key, native resolution m, centre wavelength um)
S2_ASSETS: dict[str, tuple[str, int, float]] = {
    band: (EARTH_SEARCH_S2_ASSETS[band], res, wl) for band, (res, wl) in _S2_BAND_OPTICS.items()
}
S2_BAND_BASE_DN: dict[str, int] = {b: 800 * (i + 1) for i, b in enumerate(S2_ASSETS)}
S2_BAND_HALF_RANGE_DN = 300  # |value - base| < this on cloud-free pixels
S2_DN_OFFSET = 1000  # stored DN = reflectance * 10000 + S2_DN_OFFSET (raster:bands offset -0.1)
S2_SCALE = 0.0001
_GRID_SNAP_M = 60.0
_SCL_CLOUD_CLASSES = (8, 9, 10)

_COG_OPTIONS = dict(
    driver="COG",
    compress="DEFLATE",
    predictor="YES",
    blocksize=256,
    overviews="AUTO",
    resampling="AVERAGE",
)


# --------------------------------------------------------------------------------------------
# patterns
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in keys]])


def _centres(x0: float, y1: float, width: int, height: int, res: float):
    xs = x0 + (np.arange(width) + 0.5) * res
    ys = y1 - (np.arange(height) + 0.5) * res
    return np.meshgrid(xs, ys)


def _smooth(x: np.ndarray, y: np.ndarray, ph: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Smooth pattern in [-1, 1] of world coordinates (metres)."""
    return 0.6 * np.sin(2 * np.pi * x / (1700.0 * scale) + ph[0]) * np.cos(
        2 * np.pi * y / (1300.0 * scale) + ph[1]
    ) + 0.4 * np.sin(2 * np.pi * (x - 0.5 * y) / (2900.0 * scale) + ph[2])


def _cloud_field(x: np.ndarray, y: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """Max of Gaussian blobs (cx, cy, radius) in [0, 1]."""
    field = np.zeros_like(x, dtype=np.float64)
    for cx, cy, r in blobs:
        field = np.maximum(field, np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))))
    return field


def _cloud_blobs(seed: int, ordinal: int, extent: tuple[float, float, float, float], k: int):
    """Cloud blobs of acquisition number ``k``: k % 4 == 1 clear, k % 4 == 3 overcast, else
    one or two scattered clouds."""
    x0, y0, x1, y1 = extent
    rng = _rng(seed, 2, ordinal)
    size = max(x1 - x0, y1 - y0)
    if k % 4 == 3:
        n, rmin, rmax = 6, 0.35 * size, 0.6 * size
    elif k % 4 == 1:
        n, rmin, rmax = 0, 0.0, 0.0
    else:
        n, rmin, rmax = int(rng.integers(1, 3)), 0.06 * size, 0.15 * size
    cx = rng.uniform(x0, x1, n)
    cy = rng.uniform(y0, y1, n)
    r = rng.uniform(rmin, rmax, n)
    return np.column_stack([cx, cy, r]) if n else np.zeros((0, 3))


_SHADOW_SHIFT = np.array([250.0, -250.0])  # shadow = cloud field moved by this (x, y)
_CLOUD_T, _CLOUD_HIGH_T = 0.45, 0.75


def _s2_band(band_idx: int, x, y, seed: int, ordinal: int, doy: int, blobs) -> np.ndarray:
    ph = _rng(seed, 1, band_idx).uniform(0, 2 * np.pi, 3)
    dph = _rng(seed, 3, ordinal, band_idx).uniform(0, 2 * np.pi, 3)
    jitter = _rng(seed, 4, ordinal, band_idx).uniform(-30.0, 30.0)
    base = 800.0 * (band_idx + 1)
    season = 40.0 * np.sin(2 * np.pi * (doy - 80) / 365.25 + 0.3 * band_idx)
    v = base + 150.0 * _smooth(x, y, ph) + 60.0 * _smooth(x, y, dph, 0.45) + season + jitter
    cloud = _cloud_field(x, y, blobs)
    shadow = _cloud_field(x - _SHADOW_SHIFT[0], y - _SHADOW_SHIFT[1], blobs)
    v = np.where(shadow > _CLOUD_T, 0.4 * v, v)
    v = np.where(cloud > _CLOUD_T, 8200.0 + 1200.0 * cloud, v)
    return np.clip(np.rint(v), 1, 60000).astype(np.uint16)


def _scl(x, y, seed: int, blobs) -> np.ndarray:
    land = _smooth(x, y, _rng(seed, 5).uniform(0, 2 * np.pi, 3), 2.0)
    scl = np.where(land > -0.5, 4, 5).astype(np.uint8)  # vegetation / bare soil
    scl[land < -0.75] = 6  # water
    cloud = _cloud_field(x, y, blobs)
    shadow = _cloud_field(x - _SHADOW_SHIFT[0], y - _SHADOW_SHIFT[1], blobs)
    scl[shadow > _CLOUD_T] = 3
    scl[cloud > _CLOUD_T] = 8
    scl[cloud > _CLOUD_HIGH_T] = 9
    return scl


def _s1_bands(x, y, seed: int, ordinal: int):
    ph = _rng(seed, 6).uniform(0, 2 * np.pi, 3)
    dph = _rng(seed, 7, ordinal).uniform(0, 2 * np.pi, 3)
    jitter = _rng(seed, 8, ordinal).uniform(-0.5, 0.5)
    vv_db = -11.0 + 4.0 * _smooth(x, y, ph) + 1.0 * _smooth(x, y, dph, 0.5) + jitter
    vh_db = vv_db - 7.0 + 1.5 * _smooth(x, y, ph[::-1], 1.3)
    return (10 ** (vv_db / 10)).astype(np.float32), (10 ** (vh_db / 10)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _write_cog(path: Path, arr: np.ndarray, transform: Affine, epsg: int, nodata) -> None:
    profile = dict(
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype=arr.dtype,
        crs=f"EPSG:{epsg}",
        transform=transform,
        nodata=nodata,
    )
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(arr, 1)
        with mem.open() as src:
            rasterio.shutil.copy(src, str(path), **_COG_OPTIONS)


def _utm_extent(
    bbox: Sequence[float], epsg: int, pad_m: float
) -> tuple[float, float, float, float]:
    minlon, minlat, maxlon, maxlat = bbox
    tr = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    lons = np.concatenate(
        [
            np.linspace(minlon, maxlon, 21),
            np.full(21, maxlon),
            np.linspace(maxlon, minlon, 21),
            np.full(21, minlon),
        ]
    )
    lats = np.concatenate(
        [
            np.full(21, minlat),
            np.linspace(minlat, maxlat, 21),
            np.full(21, maxlat),
            np.linspace(maxlat, minlat, 21),
        ]
    )
    xs, ys = tr.transform(lons, lats)
    s = _GRID_SNAP_M
    return (
        math.floor((min(xs) - pad_m) / s) * s,
        math.floor((min(ys) - pad_m) / s) * s,
        math.ceil((max(xs) + pad_m) / s) * s,
        math.ceil((max(ys) + pad_m) / s) * s,
    )


def _footprint(extent, epsg: int) -> tuple[dict, list[float]]:
    x0, y0, x1, y1 = extent
    tr = pyproj.Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    xs = [x0, x1, x1, x0, x0]
    ys = [y0, y0, y1, y1, y0]
    lons, lats = tr.transform(xs, ys)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lons, lats)]
    geom = {"type": "Polygon", "coordinates": [ring]}
    bbox = [
        min(r[0] for r in ring),
        min(r[1] for r in ring),
        max(r[0] for r in ring),
        max(r[1] for r in ring),
    ]
    return geom, bbox


def _parse_date(v) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v)[:10])


_PROJ_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
_RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
_EO_EXT = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
_SAR_EXT = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"


def _acq_time(day: dt.date, lon: float, local_hour: float) -> dt.datetime:
    utc_hour = min(max(local_hour - lon / 15.0, 0.5), 23.0)
    secs = int(round(utc_hour * 3600))
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(
        seconds=secs
    )


def generate_synthetic_catalog(
    out_dir: str | Path,
    bbox: Sequence[float],
    start: str | dt.date,
    end: str | dt.date,
    seed: int = 0,
    *,
    s2_revisit_days: int = 10,
    s1_revisit_days: int = 12,
    s2: bool = True,
    s1: bool = True,
    pad_m: float = 0.0,
    overwrite: bool = True,
    planted: Sequence[dict] | None = None,
) -> Path:
    """Write the synthetic catalog; return the path to ``catalog.json``.

    ``bbox`` = (minlon, minlat, maxlon, maxlat) in EPSG:4326 (keep it small: a few km);
    acquisitions on ``start + k * revisit`` (S2 from day 0, S1 from day 3) up to ``end``
    (exclusive). ``pad_m`` widens the rasters beyond the bbox.

    ``planted`` (opt-in; default none, and then nothing changes): Sentinel-2 squares with a known,
    uniform spectrum, for tests that must find them again (similarity twins, change). Each is a
    dict ``{"lon", "lat", "half_size_m", "start" (optional, first day it is there), "end"
    (optional, exclusive), "reflectance" (optional, band -> reflectance x 10000; default
    :data:`PLANTED_FIELD`)}``. Planted pixels replace the pattern where no cloud is; items list
    the planted squares they show in ``synthetic:planted``.
    """
    minlon, minlat, maxlon, maxlat = (float(v) for v in bbox)
    if not (minlon < maxlon and minlat < maxlat):
        raise ValueError(f"bbox must be (minlon, minlat, maxlon, maxlat), got {tuple(bbox)}")
    d0, d1 = _parse_date(start), _parse_date(end)
    if d1 <= d0:
        raise ValueError(f"end {d1} must be after start {d0}")
    clon, clat = (minlon + maxlon) / 2, (minlat + maxlat) / 2
    epsg = utm_epsg_for(clon, clat)  # the zone of Sentinel-2's own tiles there (MGRS exceptions)
    extent = _utm_extent((minlon, minlat, maxlon, maxlat), epsg, pad_m)
    x0, y0, x1, y1 = extent
    npx = (x1 - x0) * (y1 - y0) / 100.0
    if npx > 25e6:
        raise ValueError(f"bbox too large for the synthetic generator ({npx:.0f} px at 10 m)")
    geom, item_bbox = _footprint(extent, epsg)
    plants = _planted_utm(planted or (), epsg)

    out = Path(out_dir)
    if overwrite:
        clear_catalog(out, (S2_COLLECTION, S1_COLLECTION))
    out.mkdir(parents=True, exist_ok=True)

    t_start = dt.datetime(d0.year, d0.month, d0.day, tzinfo=dt.UTC)
    t_end = dt.datetime(d1.year, d1.month, d1.day, tzinfo=dt.UTC)
    spatial = pystac.SpatialExtent([item_bbox])
    temporal = pystac.TemporalExtent([[t_start, t_end]])

    catalog = pystac.Catalog(
        id="synthetic",
        description=(
            f"Deterministic synthetic Sentinel-1/2 catalog (seed={seed}, bbox={list(bbox)}, "
            f"{d0.isoformat()}..{d1.isoformat()}), rs_embed_pipeline.providers.local_catalogs.synthetic"
        ),
        title="rs_embed_pipeline synthetic catalog",
    )

    def day_list(offset: int, step: int) -> list[dt.date]:
        days, d = [], d0 + dt.timedelta(days=offset)
        while d < d1:
            days.append(d)
            d += dt.timedelta(days=step)
        return days

    def add_collection(collection_id: str, description: str, extensions: list[str]) -> pystac.Collection:
        coll = pystac.Collection(
            id=collection_id,
            description=description,
            extent=pystac.Extent(spatial, temporal),
            license="CC0-1.0",
            extra_fields={"synthetic": True},
            stac_extensions=[*extensions, _RASTER_EXT, _PROJ_EXT],
        )
        catalog.add_child(coll)
        return coll

    if s2:
        coll = add_collection(
            S2_COLLECTION,
            "Synthetic Sentinel-2 L2A (Earth Search C1 asset names, baseline 05.xx DN offset)",
            [_EO_EXT],
        )
        for k, day in enumerate(day_list(0, s2_revisit_days)):
            coll.add_item(_s2_item(out, day, k, seed, epsg, extent, geom, item_bbox, clon, plants))
    if s1:
        coll = add_collection(
            S1_COLLECTION, "Synthetic Sentinel-1 GRD, VV/VH linear sigma0 power at 10 m", [_SAR_EXT]
        )
        for k, day in enumerate(day_list(3, s1_revisit_days)):
            coll.add_item(_s1_item(out, day, k, seed, epsg, extent, geom, item_bbox, clon))

    catalog.normalize_hrefs(str(out))
    # assets were written next to their item JSON; make their hrefs relative to it
    for item in catalog.get_items(recursive=True):
        item_dir = Path(str(item.get_self_href())).parent  # set by normalize_hrefs
        for asset in item.assets.values():
            asset.href = "./" + Path(asset.href).name
        assert item_dir.exists()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return out / "catalog.json"


def _raster_grid(extent, res: float):
    x0, y0, x1, y1 = extent
    w, h = int(round((x1 - x0) / res)), int(round((y1 - y0) / res))
    return w, h, Affine(res, 0.0, x0, 0.0, -res, y1)


# A bright, uniform "field" (vegetation-like: low red, high NIR): far from the smooth pattern.
PLANTED_FIELD: dict[str, int] = {"B1": 300, "B2": 400, "B3": 900, "B4": 300, "B5": 1500, "B6": 4000,
                                 "B7": 4800, "B8": 5200, "B8A": 5300, "B9": 5000, "B11": 2200, "B12": 1000}


def _planted_utm(planted: Sequence[dict], epsg: int) -> list[dict]:
    tr = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    out = []
    for p in planted:
        unknown = set(p) - {"lon", "lat", "half_size_m", "start", "end", "reflectance"}
        if unknown or "lon" not in p or "lat" not in p:
            raise ValueError(f"a planted square needs lon, lat (and optional half_size_m, start, end, "
                             f"reflectance); got keys {sorted(p)}")
        cx, cy = tr.transform(float(p["lon"]), float(p["lat"]))
        refl = {**PLANTED_FIELD, **dict(p.get("reflectance") or {})}
        out.append({"cx": cx, "cy": cy, "half": float(p.get("half_size_m", 200.0)),
                    "start": _parse_date(p["start"]) if p.get("start") else None,
                    "end": _parse_date(p["end"]) if p.get("end") else None, "refl": refl,
                    "spec": {k: (str(v) if k in ("start", "end") else v) for k, v in p.items()}})
    return out


def _plant(refl: np.ndarray, band: str, x, y, day, plants: Sequence[dict]) -> np.ndarray:
    for p in plants:
        if (p["start"] and day < p["start"]) or (p["end"] and day >= p["end"]):
            continue
        inside = (np.abs(x - p["cx"]) <= p["half"]) & (np.abs(y - p["cy"]) <= p["half"]) & (refl < 8000)
        refl = np.where(inside, np.uint16(p["refl"][band]), refl)
    return refl


def _s2_item(out: Path, day, k, seed, epsg, extent, geom, item_bbox, clon, plants=()) -> pystac.Item:
    item_id = f"synthetic_S2_{epsg}_{day.strftime('%Y%m%d')}"
    item_dir = out / S2_COLLECTION / item_id
    item_dir.mkdir(parents=True, exist_ok=True)
    ordinal = day.toordinal()
    doy = day.timetuple().tm_yday
    blobs = _cloud_blobs(seed, ordinal, extent, k)
    assets: dict[str, pystac.Asset] = {}
    for bi, (band, (key, res, wl)) in enumerate(S2_ASSETS.items()):
        w, h, tf = _raster_grid(extent, res)
        x, y = _centres(extent[0], extent[3], w, h, res)
        refl = _s2_band(bi, x, y, seed, ordinal, doy, blobs)
        if plants:
            refl = _plant(refl, band, x, y, day, plants)
        dn = (refl.astype(np.int64) + S2_DN_OFFSET).clip(1, 65535).astype(np.uint16)
        fname = f"{item_id}_{key}.tif"
        _write_cog(item_dir / fname, dn, tf, epsg, 0)
        assets[key] = pystac.Asset(
            href=str(item_dir / fname),
            media_type=pystac.MediaType.COG,
            title=f"{band} ({res} m)",
            roles=["data", "reflectance"],
            extra_fields={
                "eo:bands": [{"name": band, "common_name": key, "center_wavelength": wl}],
                "raster:bands": [
                    {
                        "nodata": 0,
                        "data_type": "uint16",
                        "bits_per_sample": 15,
                        "spatial_resolution": res,
                        "scale": S2_SCALE,
                        "offset": -S2_DN_OFFSET * S2_SCALE,
                    }
                ],
                "proj:shape": [h, w],
                "proj:transform": list(tf)[:6],
            },
        )
    w, h, tf = _raster_grid(extent, 20)
    x, y = _centres(extent[0], extent[3], w, h, 20)
    scl = _scl(x, y, seed, blobs)
    cloud_cover = float(np.isin(scl, _SCL_CLOUD_CLASSES).mean() * 100.0)
    fname = f"{item_id}_scl.tif"
    _write_cog(item_dir / fname, scl, tf, epsg, 0)
    assets["scl"] = pystac.Asset(
        href=str(item_dir / fname),
        media_type=pystac.MediaType.COG,
        title="Scene classification map (SCL)",
        roles=["data"],
        extra_fields={
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
            "proj:shape": [h, w],
            "proj:transform": list(tf)[:6],
        },
    )
    item = pystac.Item(
        id=item_id,
        geometry=geom,
        bbox=item_bbox,
        datetime=_acq_time(day, clon, 10.5),
        properties={
            "synthetic": True,
            "platform": "sentinel-2a" if k % 2 == 0 else "sentinel-2b",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": round(cloud_cover, 4),
            "s2:processing_baseline": "05.10",
            **({"synthetic:planted": [p["spec"] for p in plants
                                      if not ((p["start"] and day < p["start"]) or (p["end"] and day >= p["end"]))]}
               if plants else {}),
            "proj:code": f"EPSG:{epsg}",
            "proj:epsg": epsg,
        },
        stac_extensions=[_EO_EXT, _RASTER_EXT, _PROJ_EXT],
        collection=S2_COLLECTION,
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def _s1_item(out: Path, day, k, seed, epsg, extent, geom, item_bbox, clon) -> pystac.Item:
    item_id = f"synthetic_S1_{epsg}_{day.strftime('%Y%m%d')}"
    item_dir = out / S1_COLLECTION / item_id
    item_dir.mkdir(parents=True, exist_ok=True)
    w, h, tf = _raster_grid(extent, 10)
    x, y = _centres(extent[0], extent[3], w, h, 10)
    vv, vh = _s1_bands(x, y, seed, day.toordinal())
    item = pystac.Item(
        id=item_id,
        geometry=geom,
        bbox=item_bbox,
        datetime=_acq_time(day, clon, 18.0 if k % 2 else 6.0),
        properties={
            "synthetic": True,
            "platform": "sentinel-1a",
            "constellation": "sentinel-1",
            "instruments": ["c-sar"],
            "sar:instrument_mode": "IW",
            "sar:frequency_band": "C",
            "sar:polarizations": list(S1_POLARISATIONS),
            "sar:product_type": "GRD",
            "sat:orbit_state": "descending" if k % 2 else "ascending",
            "proj:code": f"EPSG:{epsg}",
            "proj:epsg": epsg,
        },
        stac_extensions=[_SAR_EXT, _RASTER_EXT, _PROJ_EXT],
        collection=S1_COLLECTION,
    )
    for band, key in S1_ASSETS.items():
        arr = vv if band == "VV" else vh
        fname = f"{item_id}_{key}.tif"
        _write_cog(item_dir / fname, arr, tf, epsg, 0.0)
        item.add_asset(
            key,
            pystac.Asset(
                href=str(item_dir / fname),
                media_type=pystac.MediaType.COG,
                title=f"{band} linear sigma0",
                roles=["data"],
                extra_fields={
                    "sar:polarizations": [band],
                    "raster:bands": [
                        {
                            "nodata": 0,
                            "data_type": "float32",
                            "spatial_resolution": 10,
                            "scale": 1.0,
                            "offset": 0.0,
                            "unit": "linear sigma0",
                        }
                    ],
                    "proj:shape": [h, w],
                    "proj:transform": list(tf)[:6],
                },
            ),
        )
    return item


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m rs_embed_pipeline.providers.local_catalogs.synthetic",
        description="Write a deterministic synthetic Sentinel-1/2 STAC catalog of COGs.",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument(
        "--bbox",
        required=True,
        nargs="+",
        help="minlon minlat maxlon maxlat (4 numbers, or one comma-separated string)",
    )
    ap.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    ap.add_argument("--end", required=True, help="end day (exclusive), YYYY-MM-DD")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--s2-revisit-days", type=int, default=10)
    ap.add_argument("--s1-revisit-days", type=int, default=12)
    ap.add_argument("--pad-m", type=float, default=0.0)
    args = ap.parse_args(argv)
    parts = [p for v in args.bbox for p in str(v).split(",") if p.strip()]
    if len(parts) != 4:
        ap.error(f"--bbox needs 4 numbers, got {parts}")
    path = generate_synthetic_catalog(
        args.out,
        [float(p) for p in parts],
        args.start,
        args.end,
        seed=args.seed,
        s2_revisit_days=args.s2_revisit_days,
        s1_revisit_days=args.s1_revisit_days,
        pad_m=args.pad_m,
    )
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
