"""The VRT over a split region's COGs (products/vrt.py), opened with rasterio (GDAL): one raster
over every cell, pixels equal to the cells' COGs and to the cube mosaic; a window filled in some
cells only lists those; sources off the lattice are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows

from rs_embed_pipeline.products import cog, vrt
from rs_embed_pipeline.stores.cube.mosaic import open_mosaic
from rs_embed_pipeline.stores.cube.reader import window_dataset
from rs_embed_pipeline_tests.stores import cells as C


def build(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """The five cells' cubes and, as the COG asset writes them, their COGs per window, zone and kind."""
    cubes, products = tmp_path / "cubes/tiny_s2", tmp_path / "products/tiny_s2"
    uris = C.write_build(cubes)
    for name, uri in uris.items():
        zone = f"EPSG{32632 if '-32N-' in name else 32633}"
        for window in C.STARTS[:2]:
            for kind in ("grid", "pooled"):
                try:
                    ds = window_dataset(uri, zone, kind, window)
                except ValueError:
                    continue  # the window is not filled in this cell
                x0, cell, _, y0, _, _ = (float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split())
                cog.write_cog(str(products / vrt.cog_path(name, window, zone, kind)), ds["embedding"].values,
                              epsg=int(zone[4:]), left=x0, top=y0, cell_m=cell)
    return cubes, products, uris


def test_the_vrt_is_one_raster_equal_to_the_cells_cogs(tmp_path: Path) -> None:
    cubes, products, uris = build(tmp_path)
    written = vrt.write_region_vrts(str(products), str(cubes), "demo", "2024-01-01")
    assert sorted((w["zone"], w["kind"], w["sources"]) for w in written) == [
        ("EPSG32632", "grid", 4), ("EPSG32632", "pooled", 4), ("EPSG32633", "grid", 1), ("EPSG32633", "pooled", 1)]
    for kind in ("grid", "pooled"):
        path = products / vrt.vrt_path("demo", "2024-01-01", "EPSG32632", kind)
        mosaic = open_mosaic(str(cubes), zone=32632, kind=kind, windows="2024-01-01")
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32632 and src.count == (C.D_GRID if kind == "grid" else C.D)
            assert (src.height, src.width) == (mosaic.sizes["y"], mosaic.sizes["x"])
            left, _, _, top = (float(v) for v in src.bounds)
            x0, cell, _, y0, _, _ = (float(v) for v in mosaic["spatial_ref"].attrs["GeoTransform"].split())
            assert (left, top, src.res) == (x0, y0, (cell, cell))
            assert src.descriptions[0] == "feature_000"
            pixels = src.read()
            # The cube mosaic, feature first: the same numbers (NaN where no tile).
            assert np.array_equal(pixels, np.moveaxis(mosaic["embedding"].values[0], -1, 0), equal_nan=True)
            for name in (n for n in uris if "-32N-" in n):
                with rasterio.open(products / vrt.cog_path(name, "2024-01-01", "EPSG32632", kind)) as one:
                    part = src.read(window=rasterio.windows.from_bounds(*one.bounds, transform=src.transform))
                    assert np.array_equal(part, one.read(), equal_nan=True), name
                    assert np.isfinite(part).any()
    # Window 2024-04-01 is filled in three of the four 32N cells: three sources.
    later = vrt.write_region_vrts(str(products), str(cubes), "demo", "2024-04-01")
    assert {(w["zone"], w["kind"]): w["sources"] for w in later}[("EPSG32632", "grid")] == 3
    xml = (products / vrt.vrt_path("demo", "2024-04-01", "EPSG32632", "grid")).read_text()
    assert xml.count("<SimpleSource>") == 3 * C.D_GRID
    assert '<SourceFilename relativeToVRT="1">../../../cog/demo-32N-E0100-N00160/2024-04-01/EPSG32632_grid.tif' in xml


def test_sources_off_the_lattice_are_refused() -> None:
    a = vrt.VrtSource("a.tif", left=0.0, top=320.0, width=2, height=2, bands=3)
    b = vrt.VrtSource("b.tif", left=330.0, top=320.0, width=2, height=2, bands=3)
    with pytest.raises(vrt.VrtError, match=r"^b.tif left edge is 330.0 m, not a whole number of 160.0 m cells"):
        vrt.vrt_xml([a, b], epsg=32632, cell_m=160.0)
    with pytest.raises(vrt.VrtError, match=r"^the COGs have different band counts \[3, 4\]$"):
        vrt.vrt_xml([a, vrt.VrtSource("c.tif", 320.0, 320.0, 2, 2, 4)], epsg=32632, cell_m=160.0)
    with pytest.raises(vrt.VrtError, match=r"^a VRT needs at least one source COG$"):
        vrt.vrt_xml([], epsg=32632, cell_m=160.0)
