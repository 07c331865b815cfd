"""A STAC API searched with pystac-client (default: Earth Search, Sentinel-2 L2A collection 1)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any, Unpack
from collections.abc import Mapping, Sequence

from ..base import Tile, backoff_s
from ..sensor_options import SensorOptions
from .fetch import OdcStacProvider, RemoteReadOptions
from .items import keep_item, search_bboxes
from .specs import CollectionSpec, collection_specs

log = logging.getLogger(__name__)


SEARCH_BACKOFF_S = 0.5  # first wait before a STAC API search is retried (then x2 per attempt, jitter)


class StacProvider(OdcStacProvider):
    """STAC API search (pystac-client) + odc-stac reads.

    Default: Earth Search v1 ``sentinel-2-c1-l2a`` (assets ``coastal .. swir22, scl``, scale /
    offset from each item's ``raster:bands``). ``s1_collection`` (+ ``s1_assets``) enables S1;
    that collection must serve linear backscatter (sigma0, or RTC gamma0: Planetary Computer's
    ``sentinel-1-rtc``, recorded as ``s1_backscatter``; Earth Search's ``sentinel-1-grd`` is
    uncalibrated DN and therefore not a default). ``patch_url`` signs / rewrites asset hrefs
    (e.g. ``planetary_computer.sign``, or the name ``"planetary_computer"``). ``rio_config``:
    GDAL option overrides (upper-case keys) over :data:`..gdal_env.GDAL_HTTP_OPTIONS`, used by the
    windowed reads and ``odc.stac.configure_rio``. ``max_block_px``: block size (see
    :mod:`..blocks`). Searches use ``bbox`` (one around all tiles of the call, two across the
    anti-meridian), ``datetime`` ``start/end`` made end-exclusive (end - 1 microsecond, then a
    strict filter in Python), and for S2 ``query={"eo:cloud_cover": {"lte": cloudy_pct}}``.
    """

    name = "stac"

    def __init__(
        self,
        api_url: str = "https://earth-search.aws.element84.com/v1",
        collection: str | None = "sentinel-2-c1-l2a",
        *,
        s1_collection: str | None = None,
        s2_assets: Mapping[str, str] | None = None,
        s1_assets: Mapping[str, str] | None = None,
        mask_asset: str | None = "scl",
        search_retries: int = 2,
        page_size: int = 100,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        **options: Unpack[RemoteReadOptions],
    ) -> None:
        super().__init__(
            collection_specs(collection, s1_collection, s2_assets, s1_assets, mask_asset), **options
        )
        self.api_url = api_url
        self.search_retries = max(0, int(search_retries))
        self.page_size = int(page_size)
        self.headers = dict(headers or {})
        self.timeout = float(timeout)
        self.rio_config = dict(options.get("rio_config") or {})
        self._client: Any = None  # a pystac_client.Client, opened on first use
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        self._configure_rio()
        with self._lock:
            if self._client is None:
                import pystac_client  # heavy optional dependency: only a STAC API provider needs it

                self._client = pystac_client.Client.open(
                    self.api_url, headers=self.headers or None, timeout=self.timeout
                )
            return self._client

    def _find_items(
        self, spec: CollectionSpec, tiles: Sequence[Tile], start: dt.datetime, end: dt.datetime, flt: SensorOptions
    ) -> list[Any]:
        end_incl = end - dt.timedelta(microseconds=1)
        query: dict[str, dict[str, Any]] | None = None
        if flt.cloudy_pct is not None and spec.cloud_cover_property:
            query = {spec.cloud_cover_property: {"lte": flt.cloudy_pct}}
        if flt.orbit is not None:
            query = {**(query or {}), "sat:orbit_state": {"eq": flt.orbit.lower()}}
        found: dict[str, Any] = {}
        for bbox in search_bboxes([t.footprint for t in tiles]):
            last: Exception | None = None
            for attempt in range(self.search_retries + 1):
                try:
                    client = self._get_client()
                    search = client.search(
                        collections=[spec.collection],
                        bbox=list(bbox),
                        datetime=[start, end_incl],
                        query=query,
                        limit=self.page_size,
                    )
                    for it in search.items():
                        found.setdefault(it.id, it)
                    last = None
                    break
                except Exception as exc:
                    last = exc
                    log.warning("STAC search attempt %d failed: %s", attempt + 1, exc)
                    if attempt < self.search_retries:
                        time.sleep(backoff_s(SEARCH_BACKOFF_S, attempt))
            if last is not None:
                raise last
        return [it for it in found.values() if keep_item(it, spec, start, end, flt)]

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["config"]["search_retries"] = self.search_retries  # the client's retries of one search request
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            {
                "api_url": self.api_url,
                "page_size": self.page_size,
                "patch_url": getattr(self.patch_url, "__qualname__", None),
            }
        )
        return d
