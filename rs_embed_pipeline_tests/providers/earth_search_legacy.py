"""Items of Earth Search v1's legacy ``sentinel-2-l2a`` collection, laid out field for field as the
API returns them, with hrefs on the test's local COGs.

The layout (every property, link, asset key and asset field, in the API's order) is that of
https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2A_39QTA_20230628_0_L2A
(``sentinel2-to-stac`` 0.1.0 items; the response is kept in geopython/eodm
``tests/data/test_data.py``). Element84/earth-search#66 quotes the same ``raster:bands`` for the
legacy B04 asset of S2B_52SFA_20220126_0_L2A (baseline 04.00, ``earthsearch:boa_offset_applied``
false), the case the tests reproduce.

What describes the scene comes from the local C1 item the legacy copy is made of: id and
``s2:*`` identifiers (platform, MGRS square, date, sequence), ``datetime``, ``geometry``, ``bbox``,
``eo:cloud_cover``, ``proj:epsg`` and each asset's ``proj:shape`` / ``proj:transform``; the flag
and the processing baseline are the test's. The scene statistics (``s2:*_percentage``, sun
angles, reflectance conversion factor) are the example's own values: no provider reads them.

Asset hrefs mirror the bucket's layout (``sentinel-s2-l2a-cogs/<zone>/<band>/<square>/<yyyy>/<m>/
<id>/B02.tif``, ``.../tiles/.../B02.jp2`` for the JPEG 2000 originals) under the test's directory:
the spectral bands and ``SCL.tif`` are the local COGs, the others (AOT, WVP, TCI, JPEG 2000,
metadata, thumbnail) are not written and never read.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np
import rasterio

SOURCE_URL = ("https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/"
              "S2A_39QTA_20230628_0_L2A")
API = "https://earth-search.aws.element84.com/v1"

# asset key -> (file, title, eo:bands description, common_name, center_wavelength, fwhm, gsd)
_BANDS: dict[str, tuple[str, str, str, str, float, float, int]] = {
    "blue": ("B02", "Blue (band 2) - 10m", "Blue (band 2)", "blue", 0.49, 0.098, 10),
    "coastal": ("B01", "Coastal aerosol (band 1) - 60m", "Coastal aerosol (band 1)", "coastal", 0.443, 0.027, 60),
    "green": ("B03", "Green (band 3) - 10m", "Green (band 3)", "green", 0.56, 0.045, 10),
    "nir": ("B08", "NIR 1 (band 8) - 10m", "NIR 1 (band 8)", "nir", 0.842, 0.145, 10),
    "nir08": ("B8A", "NIR 2 (band 8A) - 20m", "NIR 2 (band 8A)", "nir08", 0.865, 0.033, 20),
    "nir09": ("B09", "NIR 3 (band 9) - 60m", "NIR 3 (band 9)", "nir09", 0.945, 0.026, 60),
    "red": ("B04", "Red (band 4) - 10m", "Red (band 4)", "red", 0.665, 0.038, 10),
    "rededge1": ("B05", "Red edge 1 (band 5) - 20m", "Red edge 1 (band 5)", "rededge", 0.704, 0.019, 20),
    "rededge2": ("B06", "Red edge 2 (band 6) - 20m", "Red edge 2 (band 6)", "rededge", 0.74, 0.018, 20),
    "rededge3": ("B07", "Red edge 3 (band 7) - 20m", "Red edge 3 (band 7)", "rededge", 0.783, 0.028, 20),
    "swir16": ("B11", "SWIR 1 (band 11) - 20m", "SWIR 1 (band 11)", "swir16", 1.61, 0.143, 20),
    "swir22": ("B12", "SWIR 2 (band 12) - 20m", "SWIR 2 (band 12)", "swir22", 2.19, 0.242, 20),
}
#: the example's raster:bands of a reflectance band (also quoted in earth-search#66)
REFLECTANCE_RASTER_BANDS = {"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": 10,
                            "scale": 0.0001, "offset": -0.1}
_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_EXTENSIONS = [
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
]


def mgrs_square(epsg: int, x: float, y: float, lat: float) -> tuple[int, str, str]:
    """(UTM zone, latitude band, 100 km square) of a point of a northern UTM zone (MGRS, WGS 84):
    a Sentinel-2 tile is named by the square holding its centre."""
    zone = epsg - 32600
    band = "CDEFGHJKLMNPQRSTUVWXX"[int((lat + 80) // 8)]
    col = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3][int(x // 100_000) - 1]
    row = "ABCDEFGHJKLMNPQRSTUV"[(int(y // 100_000) + (0 if zone % 2 else 5)) % 20]
    return zone, band, col + row


def _eo(key: str) -> dict[str, Any]:
    _, _, desc, common, center, fwhm, _ = _BANDS[key]
    return {"name": key, "common_name": common, "description": desc, "center_wavelength": center,
            "full_width_half_max": fwhm}


def legacy_item(c1: Mapping[str, Any], out_dir: Path, *, seq: int, applied: bool, baseline: str,
                blue: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """The legacy ``sentinel-2-l2a`` item of the scene of the local C1 item ``c1`` (sequence
    ``seq``, ``earthsearch:boa_offset_applied`` ``applied``, ``s2:processing_baseline``
    ``baseline``), its COGs under ``out_dir``; ``blue`` rewrites the blue COG's DN (raw -> what
    the legacy COG holds), else the C1 COG is linked as it is."""
    props = c1["properties"]
    when = dt.datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
    epsg = int(props["proj:epsg"])
    tf, (h, w) = c1["assets"]["blue"]["proj:transform"], c1["assets"]["blue"]["proj:shape"]
    bbox = c1["bbox"]
    zone, lat_band, square = mgrs_square(epsg, tf[2] + w * tf[0] / 2, tf[5] + h * tf[4] / 2,
                                         (bbox[1] + bbox[3]) / 2)
    sat = "S2" + props["platform"][-1].upper()
    mgrs = f"{zone}{lat_band}{square}"
    iid = f"{sat}_{mgrs}_{when:%Y%m%d}_{seq}_L2A"
    prefix = f"sentinel-s2-l2a-cogs/{zone}/{lat_band}/{square}/{when.year}/{when.month}/{iid}"
    cogs = out_dir / prefix
    jp2 = out_dir / f"sentinel-s2-l2a/tiles/{zone}/{lat_band}/{square}/{when.year}/{when.month}/{when.day}/{seq}"
    cogs.mkdir(parents=True, exist_ok=True)
    nbase = "N" + baseline.replace(".", "")
    stamp = f"{when:%Y%m%dT%H%M%S}"
    made = (when + dt.timedelta(hours=8)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    proj = {10: c1["assets"]["blue"], 20: c1["assets"]["scl"], 60: c1["assets"]["coastal"]}

    def grid(res: int) -> dict[str, Any]:
        return {"proj:shape": list(proj[res]["proj:shape"]), "proj:transform": list(proj[res]["proj:transform"])}

    def local(key: str, name: str) -> str:
        dst = cogs / name
        if not dst.exists():
            src = c1["assets"][key]["href"]
            if key == "blue" and blue is not None:
                with rasterio.open(src) as s:
                    profile, arr = s.profile, s.read(1)
                profile.update(driver="GTiff")
                with rasterio.open(dst, "w", **profile) as out:
                    out.write(blue(arr), 1)
            else:
                os.symlink(src, dst)
        return str(dst)

    def band(key: str, href: str, media: str) -> dict[str, Any]:
        _, title, _, _, _, _, gsd = _BANDS[key]
        return {"href": href, "type": media, "title": title, "eo:bands": [_eo(key)], "gsd": gsd, **grid(gsd),
                "raster:bands": [dict(REFLECTANCE_RASTER_BANDS, spatial_resolution=gsd)],
                "roles": ["data", "reflectance"]}

    def aux(title: str, scale: float, unit: str | None, href: str, media: str) -> dict[str, Any]:
        rb: dict[str, Any] = {"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": 20}
        if unit:
            rb["unit"] = unit
        rb.update({"scale": scale, "offset": 0})
        return {"href": href, "type": media, "title": title, **grid(20), "raster:bands": [rb],
                "roles": ["data", "reflectance"]}

    def scl(href: str, media: str) -> dict[str, Any]:
        return {"href": href, "type": media, "title": "Scene classification map (SCL)", **grid(20),
                "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
                "roles": ["data", "reflectance"]}

    def visual(href: str, media: str) -> dict[str, Any]:
        return {"href": href, "type": media, "title": "True color image",
                "eo:bands": [_eo("red"), _eo("green"), _eo("blue")], **grid(10), "roles": ["visual"]}

    assets: dict[str, Any] = {
        "aot": aux("Aerosol optical thickness (AOT)", 0.001, None, str(cogs / "AOT.tif"), _COG),
        "blue": band("blue", local("blue", "B02.tif"), _COG),
        "coastal": band("coastal", local("coastal", "B01.tif"), _COG),
        "granule_metadata": {"href": str(cogs / "granule_metadata.xml"), "type": "application/xml",
                             "roles": ["metadata"]},
    }
    for key in ("green", "nir", "nir08", "nir09", "red", "rededge1", "rededge2", "rededge3"):
        assets[key] = band(key, local(key, f"{_BANDS[key][0]}.tif"), _COG)
    assets["scl"] = scl(local("scl", "SCL.tif"), _COG)
    for key in ("swir16", "swir22"):
        assets[key] = band(key, local(key, f"{_BANDS[key][0]}.tif"), _COG)
    assets["thumbnail"] = {"href": str(cogs / "thumbnail.jpg"), "type": "image/jpeg", "title": "Thumbnail image",
                           "roles": ["thumbnail"]}
    assets["tileinfo_metadata"] = {"href": str(cogs / "tileinfo_metadata.json"), "type": "application/json",
                                   "roles": ["metadata"]}
    assets["visual"] = visual(str(cogs / "TCI.tif"), _COG)
    assets["wvp"] = aux("Water vapour (WVP)", 0.001, "cm", str(cogs / "WVP.tif"), _COG)
    assets["aot-jp2"] = aux("Aerosol optical thickness (AOT)", 0.001, None, str(jp2 / "AOT.jp2"), "image/jp2")
    for key in ("blue", "coastal", "green", "nir", "nir08", "nir09", "red", "rededge1", "rededge2", "rededge3"):
        assets[f"{key}-jp2"] = band(key, str(jp2 / f"{_BANDS[key][0]}.jp2"), "image/jp2")
    assets["scl-jp2"] = scl(str(jp2 / "SCL.jp2"), "image/jp2")
    for key in ("swir16", "swir22"):
        assets[f"{key}-jp2"] = band(key, str(jp2 / f"{_BANDS[key][0]}.jp2"), "image/jp2")
    assets["visual-jp2"] = visual(str(jp2 / "TCI.jp2"), "image/jp2")
    assets["wvp-jp2"] = aux("Water vapour (WVP)", 0.001, "cm", str(jp2 / "WVP.jp2"), "image/jp2")

    item_url = f"{API}/collections/sentinel-2-l2a/items/{iid}"
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": iid,
        "properties": {
            "created": made,
            "platform": props["platform"],
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": props["eo:cloud_cover"],
            "proj:epsg": epsg,
            "mgrs:utm_zone": zone,
            "mgrs:latitude_band": lat_band,
            "mgrs:grid_square": square,
            "grid:code": f"MGRS-{mgrs}",
            "view:sun_azimuth": 72.5914543525993,
            "view:sun_elevation": 69.8613692052989,
            "s2:degraded_msi_data_percentage": 0,
            "s2:nodata_pixel_percentage": 0,
            "s2:saturated_defective_pixel_percentage": 0,
            "s2:dark_features_percentage": 0,
            "s2:cloud_shadow_percentage": 0,
            "s2:vegetation_percentage": 0,
            "s2:not_vegetated_percentage": 95.974845,
            "s2:water_percentage": 0,
            "s2:unclassified_percentage": 2e-05,
            "s2:medium_proba_clouds_percentage": 0.128606,
            "s2:high_proba_clouds_percentage": 0.132266,
            "s2:thin_cirrus_percentage": 3.764264,
            "s2:snow_ice_percentage": 0,
            "s2:product_type": "S2MSI2A",
            "s2:processing_baseline": baseline,
            "s2:product_uri": f"{sat}_MSIL2A_{stamp}_{nbase}_R106_T{mgrs}_{stamp}.SAFE",
            "s2:generation_time": when.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "s2:datatake_id": f"G{sat}_{stamp}_041859_N{baseline}",
            "s2:datatake_type": "INS-NOBS",
            "s2:datastrip_id": f"{sat}_OPER_MSI_L2A_DS_2APS_{stamp}_S{stamp}_N{baseline}",
            "s2:granule_id": f"{sat}_OPER_MSI_L2A_TL_2APS_{stamp}_A041859_T{mgrs}_N{baseline}",
            "s2:reflectance_conversion_factor": 0.967915542603869,
            "datetime": props["datetime"],
            "s2:sequence": str(seq),
            "earthsearch:s3_path": f"s3://sentinel-cogs/{prefix}",
            "earthsearch:payload_id": "roda-sentinel2/workflow-sentinel2-to-stac/08df7afa5bd2122b76659edafeca15e5",
            "earthsearch:boa_offset_applied": applied,
            "processing:software": {"sentinel2-to-stac": "0.1.0"},
            "updated": made,
        },
        "geometry": copy.deepcopy(c1["geometry"]),
        "links": [
            {"rel": "self", "href": item_url, "type": "application/geo+json"},
            {"rel": "canonical", "href": f"s3://sentinel-cogs/{prefix}/{iid}.json", "type": "application/json"},
            {"rel": "license", "href": "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice"},
            {"rel": "derived_from", "href": f"{API}/collections/sentinel-2-l1c/items/{iid[:-3]}L1C",
             "type": "application/geo+json"},
            {"rel": "parent", "href": f"{API}/collections/sentinel-2-l2a", "type": "application/json"},
            {"rel": "collection", "href": f"{API}/collections/sentinel-2-l2a", "type": "application/json"},
            {"rel": "root", "href": API, "type": "application/json", "title": "Earth Search by Element 84"},
            {"rel": "thumbnail", "href": f"{item_url}/thumbnail"},
        ],
        "assets": assets,
        "bbox": list(bbox),
        "stac_extensions": list(_EXTENSIONS),
        "collection": "sentinel-2-l2a",
    }
