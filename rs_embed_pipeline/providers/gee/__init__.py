"""Google Earth Engine provider: Sentinel-2 / Sentinel-1 patches through ``image:computePixels``.

What it does, per ``fetch_patches`` call
----------------------------------------
1. **Packing.** Tiles (rows of the ``tile_grid`` GeoDataFrame) are grouped by UTM zone, pixel size
   and tile size, and adjacent tiles are packed into rectangular *blocks* (one larger grid, split
   into tiles afterwards). A block holds as many tiles as fit under Earth Engine's request limit
   (48 MiB = 50,331,648 bytes, counted as Earth Engine counts it: ``width * height * sum over
   bands of (bytes of the band + 1 mask byte)``, google/Xee#50), at most 32,768 px a side, and --
   so that all ``max_concurrent_requests`` slots have work in small runs -- at most
   ``ceil(tiles / max_concurrent_requests)`` tiles. Bands travel in the smallest dtype that keeps
   the numbers exact: S2 ``mosaic`` as uint16 (DN are integers), S2 ``median`` as float32 (the
   median of an even count is a half DN), S1 as float32, plus the uint8 validity band. 224 px S2
   tiles of 12 bands then go 16 to a request as float32 (12 x (4 + 1) + (1 + 1) = 62 B/px) and 26
   as uint16 (38 B/px).
2. **Scene list.** One ``ee.data.computeValue`` per ``fetch_patches`` call lists the scenes of
   the whole area after all filters (per UTM zone and 200 km chunk: ``system:index`` and
   ``system:footprint`` rows, ``reduceColumns(toList(2, 1))``; Sentinel-1 also the list without
   the IW filter for the relaxed retry) and each tile's scene ids are the rows whose footprint
   meets it (``scenes.py``: geodesic footprint edges, the tile's UTM rectangle), in list order:
   what a per-tile ``filterBounds`` returns. Too-large answers are asked again in halves; a chunk
   over 5000 rows is split. ``scene_query="block"`` (or an unreadable footprint) makes one
   ``aggregate_array('system:index')`` query per block instead. Tiles without images are
   ``no_data`` with no pixel request.
3. **Pixels.** One ``ee.data.computePixels`` (``fileFormat: NPY``) per block, on the tiles'
   own UTM grid: ``crsCode EPSG:<utm_epsg>``, ``affineTransform {scaleX: scale_m, shearX: 0,
   translateX: x0, shearY: 0, scaleY: -scale_m, translateY: y0}``, ``dimensions`` = block size.
   No Web Mercator reprojection (rs-embed 0.3.1 resampled to EPSG:3857 and sampled JSON through
   ``sampleRectangle``; this provider does neither). Bands coarser than ``scale_m`` (S2 20/60 m)
   are resampled by Earth Engine's default, nearest neighbour; nothing else is resampled.
   The image sent is ``composite.select(bands).toFloat()`` plus one uint8 band ``rsep_valid``
   (1 where every asked band is unmasked), then ``unmask(0)``: NPY carries no mask, so the mask
   travels as data; masked pixels are 0 and ``valid`` False. The request is the documented REST
   call ``projects.image.computePixels``, posted directly (urllib3) and read from the socket
   straight into one buffer, which the fetch's next answer reuses once the tiles are cut out
   (``client.AnswerBuffers``; ``pixel_transport="rest"``; ``"ee"`` goes through
   ``ee.data.computePixels``).
4. **Too large / memory / timeout answers** split the block in two (along tile boundaries; a
   single tile is split in pixel halves and stitched), recursively.
5. **Retries.** 429 and 5xx (and connection errors) are retried with exponential backoff and
   jitter (``backoff_base_s * 2**attempt``, capped at ``backoff_max_s``, at least the server's
   ``Retry-After``), up to ``max_retries`` times; other errors are final. A tile whose request
   fails for good is yielded ``failed`` with ``meta["reason"]``; the other tiles go on.

Memory: a pixel request holds its NPY answer (up to 48 MiB) until its tiles are cut out (one
float32 copy per tile); at most ``2 x max_concurrent_requests`` blocks are open at once (being
fetched, or fetched and waiting for the consumer), so peak memory is roughly
``2 x max_concurrent_requests x 48 MiB`` (about 4 GB at the defaults); the receive buffers a
fetch reuses are at most as many as were in use at once, and are freed when it ends. Lower
``max_tiles_per_request`` or the concurrency on small machines.

Every slot busy (``scheduler.py``): a fetch is a work queue of requests, each task making at
most one; the halves of a split are two tasks (two slots at once), a retry waits on a timer
(no thread, no slot) and takes a slot like any request, and a slot is held around the HTTP call
only (decoding and cutting an answer do not hold one); twice as many worker threads as slots.
The slots stay full until the last block unless ``max_concurrent_requests`` blocks' patches wait
for a slow consumer (then new requests wait: the memory bound above).

Throughput limits are the process's, per endpoint + project (``limits.py``): every provider of
one process fetching for the same project at the same endpoint, and every concurrent
``fetch_patches`` call of each, share at most ``max_concurrent_requests`` requests in flight
(slots granted first come, first served) and a token bucket of ``max_requests_per_second``
(burst ``rate_burst``, default a tenth of a second's worth); the strictest settings of the
providers alive apply. Several processes share the project's quota through the Dagster pool
``earth_engine`` (README). ``stats()`` returns the counters.

Collections and filters
-----------------------
* Sentinel-2: ``COPERNICUS/S2_SR_HARMONIZED``, ``filterBounds`` (tile / block rectangle in its
  UTM CRS), ``filterDate(start, end)`` (end exclusive), ``CLOUDY_PIXEL_PERCENTAGE <= cloudy_pct``
  (default 30; ``None`` disables), then the per-pixel ``cloud_mask``: ``scl`` (default, as the
  STAC providers: ``updateMask(SCL.remap([0, 1, 3, 8, 9, 10], 0, default 1))``),
  ``cloud_score_plus`` (``linkCollection(GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED, [cs_band])``
  and ``updateMask(cs_band >= cs_threshold)``, defaults ``cs_cdf`` / 0.6; also chosen by
  ``cloud_score_plus=True``) or ``none`` (the scene filter only, as rs-embed 0.3.1). Units: DN
  (reflectance x 10000, UINT16: never below 0), bands in the asked order.
* Sentinel-1: ``COPERNICUS/S1_GRD_FLOAT`` (linear sigma0), ``instrumentMode == IW``,
  ``transmitterReceiverPolarisation`` contains VV and VH, optional
  ``orbitProperties_pass == orbit`` (ASCENDING / DESCENDING). If no IW image exists for a tile
  and ``relax_iw_on_empty`` (default), the tile is fetched without the IW filter
  (``meta["iw_relaxed"]``). ``use_float_linear=False`` uses ``COPERNICUS/S1_GRD`` (dB) and
  converts every image to linear power, ``10 ** (dB / 10)``, before compositing.
* Composites: ``median`` (default) or ``mosaic`` (sorted by ``system:time_start``, latest on top).

Authentication and configuration
--------------------------------
Credentials, in order: ``credentials=`` (a ``google.auth`` credentials object, or
``"anonymous"`` for REST stand-ins), ``credentials_file=`` (a service-account JSON key, through
``ee.ServiceAccountCredentials``), else Application Default Credentials (``google.auth.default``).
The project is ``project=``, else the project of the credentials. The provider reads no
environment variable: in the pipeline ``project=`` is ``EarthEngineImagery.project``, whose value
is, unless configured explicitly, the environment variable ``EE_PROJECT``, read by
``orchestration/settings.py`` (the package's one reader of the environment). The endpoint is
``api_url`` when given, else the high-volume endpoint
(``https://earthengine-highvolume.googleapis.com``, ``use_high_volume=True``, meant for batch
work) or the standard one. Earth Engine's client keeps one configuration per process: the
provider initialises it lazily on first use and refuses to re-point it while another provider
with a different configuration is fetching. It sets the client's own retries to 0 (this
provider retries, counted) and ``request_timeout_s`` as the client deadline.

Secrets (key material, access tokens) never reach logs, ``describe()``, ``stats()`` or patch
metadata: every error text goes through :func:`redact`. ``describe()`` holds only what shapes
the pixels (it feeds store fingerprints); the operational settings (endpoint, project, auth
kind, limits) are in ``stats()["config"]``.
"""

from __future__ import annotations

# The package's public API only; its modules import their siblings' public names (what each module
# offers the others) from the module that owns them.
from rs_embed_pipeline.core.vocabulary import COMPOSITES  # defined once there

from .client import HIGH_VOLUME_URL, STANDARD_URL, TokenBucket, redact
from .expressions import (
    S1_DB_COLLECTION,
    S1_FLOAT_COLLECTION,
    S2_CLAMP,
    S2_CLOUD_SCORE_PLUS_COLLECTION,
    S2_COLLECTION,
    VALID_BAND,
)
from .request_blocks import EE_MAX_GRID_PX, EE_MAX_REQUEST_BYTES, pack_requests
from .provider import GEEProvider

__all__ = [
    "COMPOSITES",
    "EE_MAX_GRID_PX",
    "EE_MAX_REQUEST_BYTES",
    "GEEProvider",
    "HIGH_VOLUME_URL",
    "S1_DB_COLLECTION",
    "S1_FLOAT_COLLECTION",
    "S2_CLAMP",
    "S2_CLOUD_SCORE_PLUS_COLLECTION",
    "S2_COLLECTION",
    "STANDARD_URL",
    "TokenBucket",
    "VALID_BAND",
    "pack_requests",
    "redact",
]
