"""The regions / time-window configuration (``config/pipeline.yaml`` or ``RS_EMBED_CONFIG``).

A region is a name and an AOI (``bbox: [minlon, minlat, maxlon, maxlat]`` or ``geojson: path``,
relative to the config file). A bbox's longitudes lie in [-180, 180]; ``minlon > maxlon`` (a box
across the anti-meridian) needs ``crosses_antimeridian: true`` on the entry, so that a box whose
west and east were swapped by mistake is refused instead of spanning the globe. Names become partition keys, so they are restricted to lower-case
letters, digits, ``_`` and ``-``; a name that appears twice is an error, never a silent override.
Keys the format does not know (:data:`REGION_KEYS`, :data:`WINDOW_KEYS`, :data:`TOP_KEYS`) are
errors naming them and the valid ones, never silently ignored.

A region with ``split_km: <whole km>`` is split into one region partition per cell of a global
grid (:class:`rs_embed_pipeline.core.grid.Cell`) that holds the centre of at least one of its
tiles, named ``<name>-<cell id>`` (e.g. ``alps-32N-E0460-N05320``); each tile of every size in
use belongs to the one cell that holds its centre (:meth:`PipelineConfig.partitions`). Which
cells exist depends on the tile sizes in use, so the partitions are known once the plan is.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml
from shapely.geometry.base import BaseGeometry

from collections.abc import Mapping, Sequence

import geopandas as gpd

from rs_embed_pipeline.core.grid import Cell, bbox_aoi, build_tile_grid, load_aoi, split_cells

CADENCES = ("monthly", "quarterly", "yearly")
TOP_KEYS = ("time_windows", "regions")
WINDOW_KEYS = ("cadence", "start")
REGION_KEYS = ("name", "description", "bbox", "geojson", "split_km", "crosses_antimeridian")
REGION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """The pipeline configuration file is invalid."""


@dataclasses.dataclass(frozen=True)
class Region:
    name: str
    aoi: BaseGeometry  # EPSG:4326
    description: str = ""
    split_km: int | None = None  # side of the split cells; None: one partition for the whole AOI


@dataclasses.dataclass(frozen=True)
class RegionPartition:
    """One value of the region partition dimension: a whole region (``cell`` None, ``key`` = its
    name) or one cell of a split region (``key`` = ``<name>-<cell id>``)."""

    key: str
    region: Region
    cell: Cell | None = None

    def tile_grid(self, size_px: int, scale_m: float) -> gpd.GeoDataFrame:
        """The partition's tiles of one size: the region's, or those of them centred in the cell."""
        return build_tile_grid(self.region.aoi, size_px, scale_m, cell=self.cell)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    path: Path
    cadence: str
    start: str
    regions: tuple[Region, ...]

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise ConfigError(
            f"Unknown region {name!r} in {self.path}; configured regions: "
            f"{', '.join(r.name for r in self.regions)}"
        )

    @property
    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def partitions(self, tile_sizes: Sequence[tuple[int, float]]) -> list[RegionPartition]:
        """The region partitions for these tile sizes ((size_px, scale_m) of every tile grid in use),
        in config order, cells of a split region in :func:`split_cells` order. ConfigError when a
        ``split_km`` is not larger than the largest tile's ground size."""
        out: list[RegionPartition] = []
        for region in self.regions:
            if region.split_km is None:
                out.append(RegionPartition(region.name, region))
                continue
            largest = max(((size * scale, size, scale) for size, scale in tile_sizes), default=None)
            if largest is not None and not region.split_km * 1000 > largest[0]:
                raise ConfigError(
                    f"{self.path}: region {region.name!r} has split_km {region.split_km}, which must be larger "
                    f"than the largest tile's ground size, {largest[0] / 1000:g} km ({largest[1]} px x "
                    f"{largest[2]:g} m)")
            out.extend(RegionPartition(f"{region.name}-{cell.cell_id}", region, cell)
                       for cell in split_cells(region.aoi, tile_sizes, region.split_km))
        return out


def _check_keys(found: Mapping[str, Any], valid: Sequence[str], where: str, path: Path) -> None:
    unknown = [str(k) for k in found if k not in valid]
    if unknown:
        raise ConfigError(f"{path}: {where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(valid)}")


def _split_km(value: Any, name: str, path: Path) -> int:
    """A whole number of kilometres > 0 (cell ids are corners in km); the size check against the
    tiles in use follows in :meth:`PipelineConfig.partitions`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != int(value):
        raise ConfigError(f"{path}: region {name!r} has split_km {value!r}; it must be a whole number of "
                          "kilometres larger than the largest tile's ground size (e.g. split_km: 20)")
    return int(value)


def _check_bbox_longitudes(bbox: Sequence[float], crosses: Any) -> None:
    """A bbox's longitudes in [-180, 180], and ``minlon > maxlon`` only when the entry says
    ``crosses_antimeridian: true`` (a swapped box would otherwise load as one spanning the globe)."""
    if not isinstance(crosses, bool):
        raise ValueError(f"crosses_antimeridian must be true or false, got {crosses!r}")
    west, _, east, _ = bbox
    outside = [v for v in (west, east) if not -180.0 <= v <= 180.0]
    if outside:
        raise ValueError(f"bbox longitude(s) {', '.join(f'{v:g}' for v in outside)} outside [-180, 180] "
                         "(a box across the anti-meridian is [west, south, east, north] with west > east and "
                         "crosses_antimeridian: true)")
    if west > east and not crosses:
        raise ValueError(f"bbox west {west:g} > east {east:g}: swap them ([{east:g}, {bbox[1]:g}, {west:g}, "
                         f"{bbox[3]:g}]), or add crosses_antimeridian: true if the box crosses the anti-meridian")
    if crosses and not west > east:
        raise ValueError(f"crosses_antimeridian: true needs west > east (e.g. [170, -20, -170, -10]), got west "
                         f"{west:g}, east {east:g}")


def _parse_region(entry: Any, index: int, base_dir: Path, path: Path) -> Region:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{path}: regions[{index}] must be a mapping with a 'name'")
    name = str(entry["name"])
    _check_keys(entry, REGION_KEYS, f"region {name!r}", path)
    if not REGION_NAME.match(name):
        raise ConfigError(
            f"{path}: region name {name!r} is invalid; use lower-case letters, digits, '_' or '-' "
            "(it becomes a partition key)"
        )
    has_bbox, has_geojson = "bbox" in entry, "geojson" in entry
    if has_bbox == has_geojson:
        raise ConfigError(f"{path}: region {name!r} needs exactly one of 'bbox' or 'geojson'")
    try:
        if has_bbox:
            bbox = entry["bbox"]
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError(f"bbox must be [minlon, minlat, maxlon, maxlat], got {bbox!r}")
            values = [float(v) for v in bbox]
            _check_bbox_longitudes(values, entry.get("crosses_antimeridian", False))
            aoi = bbox_aoi(*values)
        else:
            geojson = Path(entry["geojson"])
            aoi = load_aoi(geojson if geojson.is_absolute() else base_dir / geojson)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: region {name!r} has an invalid AOI: {exc}") from exc
    if "crosses_antimeridian" in entry and not has_bbox:
        raise ConfigError(f"{path}: region {name!r}: crosses_antimeridian applies to a bbox only (a GeoJSON AOI "
                          "crosses the anti-meridian with longitudes beyond 180)")
    split_km = _split_km(entry["split_km"], name, path) if "split_km" in entry else None
    return Region(name=name, aoi=aoi, description=str(entry.get("description", "")), split_km=split_km)


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"Pipeline config {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"Pipeline config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'time_windows' and 'regions'")

    _check_keys(raw, TOP_KEYS, "the top level", path)
    windows = raw.get("time_windows") or {}
    if not isinstance(windows, dict):
        raise ConfigError(f"{path}: time_windows must be a mapping with keys {', '.join(WINDOW_KEYS)}")
    _check_keys(windows, WINDOW_KEYS, "time_windows", path)
    cadence = str(windows.get("cadence", "quarterly")).lower()
    if cadence not in CADENCES:
        raise ConfigError(f"{path}: time_windows.cadence {cadence!r} is not one of {', '.join(CADENCES)}")
    start = str(windows.get("start", "2024-01-01"))
    if not re.fullmatch(r"\d{4}-\d{2}-01", start):
        raise ConfigError(f"{path}: time_windows.start must be a YYYY-MM-01 date, got {start!r}")

    entries = raw.get("regions") or []
    if not entries:
        raise ConfigError(f"{path}: no regions configured")
    regions = [_parse_region(e, i, path.parent, path) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for region in regions:
        if region.name in seen:
            raise ConfigError(f"{path}: region name {region.name!r} is defined more than once")
        seen.add(region.name)
    return PipelineConfig(path=path, cadence=cadence, start=start, regions=tuple(regions))
