"""STAC providers: odc-stac reads, one code path for a static catalog and a STAC API.

* :class:`LocalStacProvider` reads a static catalog (``catalog.json``, e.g. the synthetic one from
  :mod:`rs_embed_pipeline.providers.local_catalogs.synthetic`); items are filtered in Python.
* :class:`StacProvider` searches a STAC API with pystac-client (default: Element 84 Earth Search,
  Sentinel-2 L2A collection 1).

Per tile (one row of the tile_grid GeoDataFrame) and time window ``[start, end)``:

1. items intersecting the tile footprint, datetime in ``[start, end)``; S2: ``eo:cloud_cover <=
   cloudy_pct`` (``cloudy_pct=None``: no filter); S1: ``sat:orbit_state`` == ``orbit``
   (ASCENDING | DESCENDING, None: both). Sensor options, as for the GEE provider: S2
   ``composite``, ``cloudy_pct``, ``fill_value``; S1 ``composite``, ``orbit``, ``use_float_linear``,
   ``fill_value``;
2. block reads (:mod:`..blocks`): the tiles of a call are grouped into blocks of adjacent tiles of
   one pixel lattice (UTM ``EPSG:utm_epsg``, ``scale_m`` pixels), whatever their sizes; every
   asset of every scene is read once per block on the block's grid -- windowed rasterio reads at
   native resolution when the grids nest (:mod:`..rio_read`, a thread pool of ``max_workers``),
   else ``odc.stac.load`` -- planes grouped by solar day (as ``groupby="solar_day"``); every
   band and SCL **nearest** (Earth Engine's default, so every provider resamples alike: 20 / 60
   m bands were bilinear before the block reads); the composite is computed once per block and
   each tile is cut out of it (a tile whose pixels a scene outside its footprint touches is
   composited from its own scenes, as a single-tile read);
3. harmonization to provider units per item from its ``raster:bands`` ``scale`` / ``offset``:
   S2 ``DN_out = (DN * scale + offset) * 10000`` (Earth Search C1: ``scale=0.0001``,
   ``offset=-0.1`` for processing baseline >= 04.00, read from each item, never hard-coded);
   S1 ``DN * scale + offset``: linear sigma0 power, or (``use_float_linear=False``) dB, converted per
   observation to linear power ``10 ** (dB / 10)`` before compositing;
4. invalid observations: raw value equal to the asset nodata or non-finite in any asked band,
   and for S2 SCL in {0 (nodata), 3 (cloud shadow), 8, 9 (cloud), 10 (cirrus)};
5. composite over time of valid observations (:mod:`..composite`): ``median`` (per band, equal
   to ``np.nanmedian`` bit for bit, without it) or ``mosaic``
   (latest valid observation on top); ``valid`` = at least one valid observation; invalid
   pixels are ``fill_value`` (default 0) in ``data``.

A tile whose window has no item, or no valid pixel, is ``no_data``; an exception while loading a
block makes the tiles of that block ``failed`` (``meta["reason"]``) and the other blocks go on.
A block is read once per call: the patches asset owns tile retries (docs/architecture.md, "Who
owns each failure"); the STAC API client retries only its search requests (``search_retries``,
exponential backoff with jitter). Sensor options are parsed by :mod:`..sensor_options`.
Blocks are read one after the other (memory: one block, at most ``max_block_px`` + one tile a
side, x bands x dates); tiles are yielded block by block. GDAL's options for cloud reads are set in
one place (:mod:`..gdal_env`) and reported by ``stats()``.

Modules, one concern each: :mod:`.specs` (collections: band -> asset maps, SCL classes, nodata
defaults), :mod:`.items` (item times, raster metadata, harmonization groups, filters, search boxes,
URL signing), :mod:`.reads` (block reads, planes by solar day), :mod:`.stack` (a block's loaded
scenes, their units and validity), :mod:`.compositing` (composites and tile cut-outs),
:mod:`.fetch` (the shared fetch path), :mod:`.local` (:class:`LocalStacProvider`) and :mod:`.api`
(:class:`StacProvider`).
"""

from rs_embed_pipeline.core.vocabulary import COMPOSITES

from ..catalogs import EARTH_SEARCH_S2_ASSETS
from .api import StacProvider
from .items import PATCH_URL_SIGNERS
from .local import LocalStacProvider
from .specs import S2_NATIVE_RESOLUTION_M, SCL_INVALID_CLASSES, CollectionSpec

__all__ = [
    "COMPOSITES",
    "EARTH_SEARCH_S2_ASSETS",
    "PATCH_URL_SIGNERS",
    "CollectionSpec",
    "LocalStacProvider",
    "S2_NATIVE_RESOLUTION_M",
    "SCL_INVALID_CLASSES",
    "StacProvider",
]
