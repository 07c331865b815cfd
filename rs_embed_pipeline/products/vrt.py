"""GDAL virtual mosaics (VRT) over the COGs of a split region's cells: one raster per window, zone and kind.

A split region writes one COG per cell, window, zone and kind (products/cog.py). The VRT written
here (``vrt/<region>/<window>/<EPSG>_{grid,pooled}.vrt``, beside ``cog/``) is one raster over every
cell's COG of that window, zone and kind, for GDAL, QGIS and rasterio: the cells sit on the zone's
tile lattice, so each COG is placed whole at a whole-cell offset (no resampling), and the VRT's
pixels are the COGs' pixels. The XML follows GDAL's VRT format (https://gdal.org/drivers/raster/vrt.html):
one ``VRTRasterBand`` per feature with one ``SimpleSource`` per COG (``SrcRect`` / ``DstRect``);
``SourceProperties`` give each source's size, type and block size so that GDAL opens a COG only
when a read touches it. Paths are relative to the VRT, so the product folder can move as a whole.

Written without GDAL, from the cubes' own georeferencing (the COGs are written with the same
GeoTransform and shape as their cube group). Size: features x cells sources (768 x 1,000 cells is
768,000 ``SimpleSource`` elements, about 300 MB of XML): fine for a region of hundreds of cells;
a continental mosaic is better served per region or by GDAL's GTI driver (a vector tile index).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import fsspec
from pyproj import CRS

from rs_embed_pipeline.products.cog import block_size_for
from rs_embed_pipeline.stores.cube.mosaic import list_cubes, zone_extents
from rs_embed_pipeline.stores.files import write_bytes_atomic

VRT_MEDIA_TYPE = "application/xml; application=gdal-vrt"  # no registered type; GDAL's own files are XML


class VrtError(ValueError):
    """Sources that cannot form one VRT (another CRS, cell size or band count, off the lattice)."""


@dataclasses.dataclass(frozen=True)
class VrtSource:
    """One COG of the mosaic: its href (relative to the VRT, or absolute) and its georeferencing."""

    href: str
    left: float       # upper-left corner, metres of the zone's CRS
    top: float
    width: int        # pixels
    height: int
    bands: int


def _offset(value: float, cell_m: float, what: str) -> int:
    k = value / cell_m
    if abs(k - round(k)) > 1e-6:
        raise VrtError(f"{what} is {value} m, not a whole number of {cell_m} m cells: the COGs are not on one lattice")
    return int(round(k))


def vrt_xml(sources: Sequence[VrtSource], *, epsg: int, cell_m: float,
            band_names: Sequence[str] | None = None, metadata: Mapping[str, str] | None = None) -> str:
    """The VRT document over ``sources`` (at least one; equal band counts, one lattice)."""
    if not sources:
        raise VrtError("a VRT needs at least one source COG")
    bands = {s.bands for s in sources}
    if len(bands) != 1:
        raise VrtError(f"the COGs have different band counts {sorted(bands)}")
    n_bands = bands.pop()
    left, top = min(s.left for s in sources), max(s.top for s in sources)
    width = max(_offset(s.left - left, cell_m, f"{s.href} left edge") + s.width for s in sources)
    height = max(_offset(top - s.top, cell_m, f"{s.href} top edge") + s.height for s in sources)
    block = block_size_for(n_bands)
    names = list(band_names or [f"feature_{b:03d}" for b in range(n_bands)])
    placed = []
    for s in sources:
        x_off, y_off = _offset(s.left - left, cell_m, s.href), _offset(top - s.top, cell_m, s.href)
        placed.append(
            (escape(s.href), f'<SourceProperties RasterXSize="{s.width}" RasterYSize="{s.height}" DataType="Float32" '
                             f'BlockXSize="{min(block, s.width)}" BlockYSize="{min(block, s.height)}"/>'
                             f'<SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>'
                             f'<DstRect xOff="{x_off}" yOff="{y_off}" xSize="{s.width}" ySize="{s.height}"/>',
             "://" not in s.href and not s.href.startswith("/")))
    out = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
           f"<SRS dataAxisToSRSAxisMapping=\"1,2\">{escape(CRS.from_epsg(epsg).to_wkt())}</SRS>",
           f"<GeoTransform>{left!r}, {cell_m!r}, 0.0, {top!r}, 0.0, {-cell_m!r}</GeoTransform>"]
    if metadata:
        out.append("<Metadata>" + "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in metadata.items())
                   + "</Metadata>")
    for b in range(1, n_bands + 1):
        out.append(f'<VRTRasterBand dataType="Float32" band="{b}"><Description>{escape(names[b - 1])}</Description>'
                   "<NoDataValue>nan</NoDataValue>")
        for href, geometry, relative in placed:
            out.append(f'<SimpleSource><SourceFilename relativeToVRT="{int(relative)}">{href}</SourceFilename>'
                       f"<SourceBand>{b}</SourceBand>{geometry}</SimpleSource>")
        out.append("</VRTRasterBand>")
    out.append("</VRTDataset>")
    return "\n".join(out)


def write_vrt(uri: str, sources: Sequence[VrtSource], *, epsg: int, cell_m: float,
              metadata: Mapping[str, str] | None = None,
              storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the VRT over ``sources`` to ``uri`` (atomically); ``sources``' hrefs relative to its folder."""
    xml = vrt_xml(sources, epsg=epsg, cell_m=cell_m, metadata=metadata).encode()
    write_bytes_atomic(uri, xml, storage_options)
    return {"uri": uri, "sources": len(sources), "bytes": len(xml), "epsg": epsg,
            "cogs": sorted(posixpath.normpath(s.href) for s in sources)}


def vrt_path(region: str, window: str, zone: str, kind: str) -> str:
    """The VRT's path under a model x modality's products folder."""
    return f"vrt/{region}/{window}/{zone}_{kind}.vrt"


def cog_path(cube: str, window: str, zone: str, kind: str) -> str:
    """A cell's COG path under the products folder (as the COG asset writes it)."""
    return f"cog/{cube}/{window}/{zone}_{kind}.tif"


def write_region_vrts(products_uri: str, cubes_uri: str, region: str, window: str,
                      storage_options: Mapping[str, Any] | None = None,
                      metadata: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One VRT per zone and kind over the COGs of ``region``'s cubes (its cells, or the region's own
    cube) whose window ``window`` is filled and whose COG exists; returns what was written."""
    fs, root = fsspec.core.url_to_fs(products_uri.rstrip("/"), **dict(storage_options or {}))
    written = []
    for kind in ("grid", "pooled"):
        by_zone: dict[str, list[tuple[Any, str]]] = {}
        for uri in list_cubes(cubes_uri, region, storage_options):
            for ext in zone_extents(uri, kind, storage_options):
                cog = cog_path(ext.cube, window, ext.zone, kind)
                if window in ext.filled and fs.exists(f"{root}/{cog}"):
                    by_zone.setdefault(ext.zone, []).append((ext, cog))
        for zone, found in sorted(by_zone.items()):
            target = vrt_path(region, window, zone, kind)
            here = posixpath.dirname(target)
            sources = [VrtSource(href=posixpath.relpath(cog, here), left=e.left, top=e.top, width=e.nx, height=e.ny,
                                 bands=e.n_feature) for e, cog in found]
            cells = {round(e.cell_m, 9) for e, _ in found}
            if len(cells) != 1:
                raise VrtError(f"{region} {window} {zone} {kind}: the cells' COGs have different cell sizes {sorted(cells)}")
            info = write_vrt(f"{products_uri.rstrip('/')}/{target}", sources, epsg=int(zone.removeprefix("EPSG")),
                             cell_m=found[0][0].cell_m, storage_options=storage_options,
                             metadata={**dict(metadata or {}), "region": region, "window_start": window,
                                       "cube_kind": kind})
            written.append({**info, "zone": zone, "kind": kind, "path": target})
    return written
