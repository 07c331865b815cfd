"""The regions / time-window configuration (``config/pipeline.yaml`` or ``RS_EMBED_CONFIG``).

A region is a name and an AOI (``bbox: [minlon, minlat, maxlon, maxlat]`` or ``geojson: path``,
relative to the config file). Names become partition keys, so they are restricted to lower-case
letters, digits, ``_`` and ``-``; a name that appears twice is an error, never a silent override.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml
from shapely.geometry.base import BaseGeometry

from rs_embed_pipeline.core.grid import bbox_aoi, load_aoi

CADENCES = ("monthly", "quarterly", "yearly")
REGION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """The pipeline configuration file is invalid."""


@dataclasses.dataclass(frozen=True)
class Region:
    name: str
    aoi: BaseGeometry  # EPSG:4326
    description: str = ""


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


def _parse_region(entry: Any, index: int, base_dir: Path, path: Path) -> Region:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{path}: regions[{index}] must be a mapping with a 'name'")
    name = str(entry["name"])
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
            aoi = bbox_aoi(*[float(v) for v in bbox])
        else:
            geojson = Path(entry["geojson"])
            aoi = load_aoi(geojson if geojson.is_absolute() else base_dir / geojson)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: region {name!r} has an invalid AOI: {exc}") from exc
    return Region(name=name, aoi=aoi, description=str(entry.get("description", "")))


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

    windows = raw.get("time_windows") or {}
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
