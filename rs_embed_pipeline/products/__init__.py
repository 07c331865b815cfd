"""Products built from the embedding cubes, for people and tools outside the pipeline.

* ``open_cube`` (from :mod:`rs_embed_pipeline.stores.cube.reader`): a cube's filled windows as an xarray Dataset
* ``open_mosaic`` / ``open_mosaics`` (:mod:`rs_embed_pipeline.stores.cube.mosaic`): the cubes of a split
  region's cells as one Dataset per UTM zone, cropped to an area
* :mod:`.stac_catalog`  static STAC catalog (Embedding extension) per model x modality
* :mod:`.geoparquet`    pooled embeddings as GeoParquet 1.1 (DuckDB, GeoPandas, LanceDB, pgvector)
* :mod:`.cog`           Cloud-Optimized GeoTIFFs per cube window (GDAL / QGIS / rasterio)
* :mod:`.similarity`, :mod:`.change` (similarity search, change between windows); int8 storage is the
  cube's codec (:mod:`rs_embed_pipeline.stores.cube.codec`)
* :mod:`.pictures`, :mod:`.preview` (PNG pictures for the UI: capped size, PCA colours)

No Dagster here: the assets in ``rs_embed_pipeline/orchestration/assets/products.py`` call these functions.
"""

from rs_embed_pipeline.stores.cube.mosaic import open_mosaic, open_mosaics
from rs_embed_pipeline.stores.cube.reader import open_cube

__all__ = ["open_cube", "open_mosaic", "open_mosaics"]
