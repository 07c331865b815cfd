"""Georeferenced embedding cubes: one Zarr v3 store per model, modality and region.

Layout of ``cubes/<model>_<modality>/<region>.zarr``::

    EPSG32632/grid     embedding (time, y, x, feature)   feature maps mosaicked at their own
                                                         resolution (tile side / grid cells)
    EPSG32632/pooled   embedding (time, y, x, feature)   one cell per tile
    (one EPSG group per UTM zone the region's tiles fall in)

Each dataset carries CF metadata that xarray and rioxarray read: ``x``/``y`` cell-centre
coordinates in metres of the tile CRS, a ``spatial_ref`` grid-mapping variable (CF attributes,
``crs_wkt``, GDAL ``GeoTransform``), ``time`` as the window start (CF units),
``window_filled`` (1 where a window was written completely) and ``window_provenance`` (JSON: the
embedding store's fingerprint, tile counts, synthetic flag).

int8 cubes (``quantization``, :mod:`.codec`): ``embedding`` is int8 (fill -128 = no embedding)
with ``embedding_scale`` (per cell, or per feature and window) and ``embedding_offset`` (per
feature and window) beside it, all chunked one window per chunk and grown with the time axis like
the other per-window arrays; :func:`open_cube` returns float32.

The modules, in the order a write uses them:

* :mod:`.request`: :class:`CubeWindowWrite` (what to write, checked when made), the grid readers,
  :class:`CubeWindowWritten` (what was written).
* :mod:`.writer`: :func:`write_cube_window`; concurrent writers of different windows, no locks
  (its docstring says how).
* :mod:`.root`: raw access to the cube's keys; the root group, created once and validated.
* :mod:`.groups`: a UTM zone's tiles on the cube's grid and its two groups' arrays.
* :mod:`.time_axis`: one slot per window, allocated ahead, grown and reconciled by any writer.
* :mod:`.attributes`: schema, storage identity, CF GeoTransform and ``geoemb:`` attributes.
* :mod:`.codec`: the int8 schemes (quantize on write, de-quantize on read).
* :mod:`.reader`: :func:`open_cube` and the window readers products use.
* :mod:`.mosaic`: :func:`open_mosaic`: the cubes of a split region's cells (or any cubes of one
  model x modality) as one lazy Dataset per UTM zone, cropped to an area.
"""

from rs_embed_pipeline.stores.cube.attributes import GEOEMB_CONVENTION, geoemb_attributes, model_url
from rs_embed_pipeline.stores.cube.mosaic import open_mosaic, open_mosaics
from rs_embed_pipeline.stores.cube.reader import (
    CubeReadError, check_georeferencing, open_cube, read_window_state, window_dataset,
)
from rs_embed_pipeline.stores.cube.request import (
    CallableGrids, CubeWindowAccuracy, CubeWindowWrite, CubeWindowWritten, CubeZoneWritten, GridReader,
    TileStoreGrids,
)
from rs_embed_pipeline.stores.cube.root import CubeError
from rs_embed_pipeline.stores.cube.time_axis import TIME_ARRAYS, TIME_BLOCK, TIME_MARGIN, time_capacity
from rs_embed_pipeline.stores.cube.writer import write_cube_window

__all__ = [
    "GEOEMB_CONVENTION", "TIME_ARRAYS", "TIME_BLOCK", "TIME_MARGIN", "CallableGrids", "CubeError", "CubeReadError",
    "CubeWindowAccuracy", "CubeWindowWrite", "CubeWindowWritten", "CubeZoneWritten", "GridReader",
    "TileStoreGrids", "check_georeferencing", "geoemb_attributes", "model_url", "open_cube", "open_mosaic",
    "open_mosaics", "read_window_state",
    "time_capacity", "window_dataset", "write_cube_window",
]
