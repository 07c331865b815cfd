"""A static STAC catalog read from files (pystac), its items filtered in Python."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any, Unpack
from collections.abc import Mapping, Sequence

from shapely.geometry import box as shapely_box
from shapely.geometry import shape as shapely_shape

from ..base import ProviderError, Tile
from ..sensor_options import SensorOptions
from .fetch import OdcStacProvider, ReadOptions
from .items import keep_item, search_bboxes
from .specs import CollectionSpec, collection_specs


class LocalStacProvider(OdcStacProvider):
    """Static local STAC catalog (pystac), items filtered in Python.

    Defaults fit :mod:`rs_embed_pipeline.providers.local_catalogs.synthetic` (collections
    ``synthetic-s2-l2a`` / ``synthetic-s1-grd``, Earth Search C1 asset names); pass
    ``s2_collection=None`` or ``s1_collection=None`` to disable a modality, ``s2_assets`` /
    ``s1_assets`` to remap band -> asset key.
    """

    name = "local_stac"

    def __init__(
        self,
        catalog_path: str | Path,
        *,
        s2_collection: str | None = "synthetic-s2-l2a",
        s1_collection: str | None = "synthetic-s1-grd",
        s2_assets: Mapping[str, str] | None = None,
        s1_assets: Mapping[str, str] | None = None,
        mask_asset: str | None = "scl",
        **options: Unpack[ReadOptions],
    ) -> None:
        unknown = sorted(set(options) - set(ReadOptions.__annotations__))
        if unknown:  # local files: no URL signing, no HTTP read settings
            raise TypeError(f"LocalStacProvider got unexpected option(s) {unknown}; valid: "
                            f"{', '.join(ReadOptions.__annotations__)}")
        super().__init__(
            collection_specs(s2_collection, s1_collection, s2_assets, s1_assets, mask_asset), **options
        )
        self.catalog_path = Path(catalog_path)
        self._items: dict[str, list[Any]] | None = None
        self._lock = threading.Lock()

    def _all_items(self) -> dict[str, list[Any]]:
        with self._lock:
            if self._items is None:
                import pystac  # heavy: imported on the first fetch

                if not self.catalog_path.exists():
                    raise ProviderError(f"STAC catalog not found: {self.catalog_path}")
                cat = pystac.read_file(str(self.catalog_path))
                if not isinstance(cat, pystac.Catalog):  # a Collection is a Catalog too
                    raise ProviderError(
                        f"{self.catalog_path} is a STAC {type(cat).__name__}, not a catalog or collection"
                    )
                by_coll: dict[str, list[Any]] = {}
                for it in cat.get_items(recursive=True):
                    it.make_asset_hrefs_absolute()
                    by_coll.setdefault(it.collection_id or "", []).append(it)
                self._items = by_coll
            return self._items

    def _find_items(
        self, spec: CollectionSpec, tiles: Sequence[Tile], start: dt.datetime, end: dt.datetime, flt: SensorOptions
    ) -> list[Any]:
        items = self._all_items().get(spec.collection, [])
        bboxes = [shapely_box(*b) for b in search_bboxes([t.footprint for t in tiles])]
        out = []
        for it in items:
            if not keep_item(it, spec, start, end, flt):
                continue
            if it.geometry is not None:
                g = shapely_shape(it.geometry)
                if not any(g.intersects(b) for b in bboxes):
                    continue
            out.append(it)
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["catalog_path"] = str(self.catalog_path)
        return d
