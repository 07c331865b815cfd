"""Products built from the embedding cubes, for people and tools outside the pipeline.

* :mod:`.reader`        ``open_cube``: a cube's filled windows as an xarray Dataset
* :mod:`.stac_catalog`  static STAC catalog (Embedding extension) per model x modality
* :mod:`.geoparquet`    pooled embeddings as GeoParquet 1.1 (DuckDB, GeoPandas, LanceDB, pgvector)
* :mod:`.cog`           Cloud-Optimized GeoTIFFs per cube window (GDAL / QGIS / rasterio)
* :mod:`.quantize`, :mod:`.search`, :mod:`.change` (int8 storage, similarity search, change)

No Dagster here: the assets in ``rs_embed_pipeline/assets/products.py`` call these functions.
"""

from rs_embed_pipeline.products.reader import open_cube

__all__ = ["open_cube"]
