"""Sensor options and the ee expression graphs of one fetch (collections, filters,
composites, the validity band)."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rs_embed_pipeline.core.vocabulary import S1_BANDS, S1_POLARISATIONS, S2_BANDS

from ..base import ProviderError, Tile
from ..catalogs import SCL_INVALID_CLASSES
from ..sensor_options import EarthEngineSensorOptions, SensorOptionError, SensorOptions
from .client import AnswerBuffers, import_ee
from .request_blocks import PixelBox
from . import scenes  # scenes.MAX_ROWS_PER_CHUNK read at call time (tests lower it)
from .scenes import Chunk

S2_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"

#: What becomes of harmonized S2 DN below 0 (the patches' ``clamp``, as the STAC providers record
#: theirs): ``S2_SR_HARMONIZED`` stores its reflectance bands as UINT16, so its harmonization
#: (baseline >= 04.00 scenes shifted by -1000) leaves no DN below 0: the composites get DN >= 0
#: by the collection, the values the STAC providers clamp to.
S2_CLAMP = ("harmonized S2 DN below 0 are 0 in the collection (S2_SR_HARMONIZED's bands are UINT16: "
            "DN >= 0 by the collection); nothing clamped here")

#: The Scene Classification band of ``S2_SR_HARMONIZED`` (``cloud_mask="scl"``).
SCL_BAND = "SCL"


S2_CLOUD_SCORE_PLUS_COLLECTION = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"


S1_FLOAT_COLLECTION = "COPERNICUS/S1_GRD_FLOAT"


S1_DB_COLLECTION = "COPERNICUS/S1_GRD"


#: The uint8 band carrying the validity mask through NPY (which has no mask of its own).
VALID_BAND = "rsep_valid"


_FLOAT32_BYTES = 4


_VALID_BAND_BYTES = 1


_LN10_OVER_10 = math.log(10.0) / 10.0


@dataclasses.dataclass(frozen=True)
class Sensor:
    modality: str
    bands: tuple[str, ...]
    composite: str
    fill_value: float = 0.0  # data value of pixels without a valid observation
    # S2
    cloudy_pct: float | None = None
    cloud_mask: str = "scl"
    cs_threshold: float = 0.6
    cs_band: str = "cs_cdf"
    # S1
    orbit: str | None = None
    use_float_linear: bool = True
    require_iw: bool = True
    relax_iw_on_empty: bool = True

    @property
    def cloud_score_plus(self) -> bool:
        return self.cloud_mask == "cloud_score_plus"

    @property
    def clamp(self) -> str | None:
        """The ``clamp`` record of S2 patches (:data:`S2_CLAMP`); None for S1."""
        return S2_CLAMP if self.modality == "s2" else None

    @property
    def collection(self) -> str:
        if self.modality == "s2":
            return S2_COLLECTION
        return S1_FLOAT_COLLECTION if self.use_float_linear else S1_DB_COLLECTION

    @property
    def send_dtype(self) -> str:
        """The smallest dtype that carries the composite exactly: S2 DN are integers in uint16,
        so a mosaic (one scene's DN per pixel) travels as uint16 (when the fill value is one too);
        a median of an even count is a half DN, and S1 is linear power: float32."""
        exact_fill = float(self.fill_value).is_integer() and 0 <= self.fill_value <= 65535
        if self.modality == "s2" and self.composite == "mosaic" and exact_fill:
            return "uint16"
        return "float32"

    @property
    def band_bytes(self) -> tuple[int, ...]:
        """Bytes per pixel of each band sent: the asked bands, then the validity band."""
        per_band = np.dtype(self.send_dtype).itemsize
        return (per_band,) * len(self.bands) + (_VALID_BAND_BYTES,)

    def composite_description(self) -> str:
        if self.composite == "mosaic":
            return "mosaic (sorted by system:time_start, latest on top)"
        return "median"

    def filters(self, start: str, end: str, *, iw: bool | None = None) -> dict[str, Any]:
        """The filters applied, for provenance (``iw``: the IW filter for this tile, S1)."""
        f: dict[str, Any] = {"bounds": "tile rectangle in its UTM CRS",
                             "date": [start, end], "date_end_exclusive": True}
        if self.modality == "s2":
            f["CLOUDY_PIXEL_PERCENTAGE_lte"] = self.cloudy_pct
            f["cloud_mask"] = self.cloud_mask
            f["scl"] = ({"band": SCL_BAND, "invalid_classes": list(SCL_INVALID_CLASSES)}
                        if self.cloud_mask == "scl" else None)
            f["cloud_score_plus"] = (
                {"collection": S2_CLOUD_SCORE_PLUS_COLLECTION, "band": self.cs_band,
                 "threshold": self.cs_threshold, "rule": f"{self.cs_band} >= threshold"}
                if self.cloud_score_plus else None
            )
        else:
            f["transmitterReceiverPolarisation_contains"] = list(S1_POLARISATIONS)
            f["instrumentMode"] = "IW" if (self.require_iw if iw is None else iw) else None
            f["orbitProperties_pass"] = self.orbit
        return f


def parse_sensor(modality: str, bands: Iterable[str] | None, options: SensorOptions | None,
                 keywords: Mapping[str, Any], defaults: Mapping[str, Any]) -> Sensor:
    """The sensor of one fetch: its options parsed once, by the shared parser
    (:meth:`EarthEngineSensorOptions.for_fetch`: ``options`` as given, or the ``keywords`` over the
    provider's ``defaults``), and its bands checked."""
    modality = str(modality).lower().strip()
    try:
        opts = EarthEngineSensorOptions.for_fetch(modality, options, keywords, defaults=defaults)
    except SensorOptionError as exc:  # the provider's errors all start alike
        raise SensorOptionError(f"GEE provider: {exc}", option=exc.option, value=exc.value, valid=exc.valid) from None

    allowed = S2_BANDS if modality == "s2" else S1_BANDS
    band_list = tuple(str(b) for b in (bands if bands is not None else allowed))
    if not band_list:
        raise ProviderError("GEE provider: empty band list")
    bad = [b for b in band_list if b not in allowed]
    if bad:
        raise ProviderError(f"GEE provider: band(s) {bad} not available for {modality}; "
                            f"valid: {list(allowed)}")
    if len(set(band_list)) != len(band_list):
        raise ProviderError(f"GEE provider: duplicate bands in {list(band_list)}")

    if modality == "s2":
        cloudy = opts.cloudy_pct
        if cloudy is not None and cloudy == int(cloudy):
            cloudy = int(cloudy)  # Earth Engine's filter and the provenance hold a whole percentage as an int
        if opts.cloud_mask is None or opts.cs_threshold is None or opts.cs_band is None:
            raise ProviderError("GEE provider: cloud_mask, cs_threshold and cs_band need the provider's defaults")
        return Sensor("s2", band_list, opts.composite, fill_value=opts.fill_value, cloudy_pct=cloudy,
                      cloud_mask=opts.cloud_mask, cs_threshold=opts.cs_threshold, cs_band=opts.cs_band)
    return Sensor("s1", band_list, opts.composite, fill_value=opts.fill_value, orbit=opts.orbit,
                  use_float_linear=opts.use_float_linear, require_iw=opts.require_iw,
                  relax_iw_on_empty=opts.relax_iw_on_empty)


class FetchRun:
    """Settings and ee expression builders of one ``fetch_patches`` call."""

    def __init__(self, sensor: Sensor, start: str, end: str, max_tiles: int) -> None:
        self.ee = import_ee()
        self.sensor = sensor
        self.start = start
        self.end = end
        self.max_tiles = max_tiles
        self._gap_warned = False
        self._gap_lock = threading.Lock()
        self.buffers = AnswerBuffers()  # the fetch's computePixels receive buffers, reused

    def first_gap_warning(self) -> bool:
        """True once per fetch: the scene-gap warning is logged for the first sparse tile only
        (patches are built on the scheduler's threads)."""
        with self._gap_lock:
            first, self._gap_warned = not self._gap_warned, True
        return first

    # ---- geometry -----------------------------------------------------------------------------
    def rect(self, box: PixelBox):
        return self.ee.Geometry.Rectangle(box.bounds(), f"EPSG:{box.epsg}", False)

    # ---- collections --------------------------------------------------------------------------
    def _s1_base(self, region):
        ee = self.ee
        s = self.sensor
        coll = ee.ImageCollection(s.collection).filterBounds(region).filterDate(self.start, self.end)
        if s.orbit:
            coll = coll.filter(ee.Filter.eq("orbitProperties_pass", s.orbit))
        coll = coll.filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VV"))
        coll = coll.filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VH"))
        return coll

    def scene_collections(self, region) -> list:
        """Collections whose ids the scene query returns (S1: [IW, without IW] as needed)."""
        ee = self.ee
        s = self.sensor
        if s.modality == "s2":
            coll = ee.ImageCollection(s.collection).filterBounds(region).filterDate(self.start, self.end)
            if s.cloudy_pct is not None:
                coll = coll.filter(ee.Filter.lte("CLOUDY_PIXEL_PERCENTAGE", s.cloudy_pct))
            return [coll]
        dual = self._s1_base(region)
        if not s.require_iw:
            return [dual]
        iw = dual.filter(ee.Filter.eq("instrumentMode", "IW"))
        return [iw, dual] if s.relax_iw_on_empty else [iw]

    def pixel_collection(self, region, variant: str):
        """The collection composited for a block; ``variant``: "ok" (S2), "iw" / "any" (S1)."""
        ee = self.ee
        s = self.sensor
        if s.modality == "s2":
            coll = self.scene_collections(region)[0]
        else:
            coll = self._s1_base(region)
            if variant == "iw":
                coll = coll.filter(ee.Filter.eq("instrumentMode", "IW"))
        if s.composite == "mosaic":
            # Sort before any per-image arithmetic (which drops image properties); map keeps order.
            coll = coll.sort("system:time_start")
        if s.modality == "s2":
            if s.cloud_score_plus:
                threshold = s.cs_threshold
                band = s.cs_band
                coll = coll.linkCollection(ee.ImageCollection(S2_CLOUD_SCORE_PLUS_COLLECTION), [band])
                coll = coll.map(lambda img: img.updateMask(img.select(band).gte(threshold)))
            elif s.cloud_mask == "scl":
                # SCL classes of SCL_INVALID_CLASSES -> 0 (masked), every other class -> 1; SCL is
                # 20 m and read at the request's scale with the default nearest neighbour, as the
                # STAC providers read it
                invalid = list(SCL_INVALID_CLASSES)
                coll = coll.map(lambda img: img.updateMask(
                    img.select(SCL_BAND).remap(invalid, [0] * len(invalid), 1)))
            coll = coll.select(list(s.bands))
        else:
            bands = list(s.bands)
            if s.use_float_linear:
                coll = coll.select(bands)
            else:
                # dB -> linear power per image, before compositing: 10 ** (dB / 10) = exp(dB * ln10 / 10).
                coll = coll.map(lambda img: img.select(bands).multiply(_LN10_OVER_10).exp())
        return coll

    def pixel_image(self, box: PixelBox, variant: str):
        ee = self.ee
        coll = self.pixel_collection(self.rect(box), variant)
        composite = coll.mosaic() if self.sensor.composite == "mosaic" else coll.median()
        img = composite.select(list(self.sensor.bands))
        img = img.toUint16() if self.sensor.send_dtype == "uint16" else img.toFloat()
        valid = img.mask().reduce(ee.Reducer.min()).gt(0).toUint8().rename(VALID_BAND)
        return img.addBands(valid).unmask(0, False)

    def scene_query(self, tiles: Sequence[Tile]):
        ee = self.ee
        per_tile = []
        for t in tiles:
            region = self.rect(PixelBox(t.utm_epsg, t.scale_m, t.x0, t.y0, t.size_px, t.size_px))
            lists = [c.aggregate_array("system:index") for c in self.scene_collections(region)]
            per_tile.append(ee.List(lists))
        return ee.List(per_tile)

    def scene_list_query(self, chunks: Sequence[Chunk]):
        """One list of the scenes of every chunk: per chunk, per scene collection (as
        :meth:`scene_collections`), ``[system:index, system:footprint]`` rows in collection order,
        at most ``MAX_ROWS_PER_CHUNK + 1`` (one more tells the caller to split the chunk)."""
        ee = self.ee
        # toList(2, 1): the footprint is optional (a row without one is kept, its footprint null)
        reducer = ee.Reducer.toList(2, 1)
        per_chunk = []
        for chunk in chunks:
            region = ee.Geometry.Rectangle(chunk.bounds(), f"EPSG:{chunk.epsg}", False)
            lists = [c.limit(scenes.MAX_ROWS_PER_CHUNK + 1)
                     .reduceColumns(reducer, ["system:index", "system:footprint"]).get("list")
                     for c in self.scene_collections(region)]
            per_chunk.append(ee.List(lists))
        return ee.List(per_chunk)
