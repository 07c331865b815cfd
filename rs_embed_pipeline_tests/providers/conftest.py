"""Fixtures for the provider tests: a small synthetic catalog, a tiny STAC API on 127.0.0.1 and
the Earth Engine REST stand-in with a provider on a fake clock."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlparse

import pystac
import pytest

from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

from . import ee_standin as S

# ~1.1 km x 1.1 km near 45 N / 15 E (UTM 33N); S2 every 15 days in Q1 2024 (6 dates, the 4th
# overcast), S1 every 12 days
BBOX = (14.900, 45.000, 14.914, 45.010)
START, END = "2024-01-01", "2024-04-01"
TILE_PX, SCALE = 32, 10.0


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_catalog(out, BBOX, START, END, seed=0, s2_revisit_days=15)


@pytest.fixture(scope="session")
def grid():
    return build_tile_grid(bbox_aoi(*BBOX), TILE_PX, SCALE)


@pytest.fixture(scope="session")
def inner_tiles(grid, synthetic_catalog):
    """Tiles entirely inside the synthetic rasters' extent."""
    cat = pystac.read_file(str(synthetic_catalog))
    item = next(iter(cat.get_child("synthetic-s2-l2a").get_items()))
    tf = item.assets["blue"].extra_fields["proj:transform"]
    h, w = item.assets["blue"].extra_fields["proj:shape"]
    x0, y1 = tf[2], tf[5]
    x1, y0 = x0 + w * tf[0], y1 + h * tf[4]
    T = TILE_PX * SCALE
    inside = (
        (grid["x0"] >= x0) & (grid["x0"] + T <= x1) & (grid["y0"] <= y1) & (grid["y0"] - T >= y0)
    )
    tiles = grid[inside].reset_index(drop=True)
    assert len(tiles) >= 4, "test bbox too small"
    return tiles


# --------------------------------------------------------------------------------------------
# a tiny STAC API
# --------------------------------------------------------------------------------------------

CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


def _parse_dt(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _bbox_hit(item_bbox, q) -> bool:
    return not (
        item_bbox[2] < q[0] or item_bbox[0] > q[2] or item_bbox[3] < q[1] or item_bbox[1] > q[3]
    )


_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


class LocalHttpServer:
    """A ThreadingHTTPServer on a free 127.0.0.1 port, serving from a daemon thread while the
    ``with`` block lasts (``url``: its root)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def static_catalog(items: Iterable[dict], out_dir: Path, collection: str = "sentinel-2-c1-l2a") -> Path:
    """Write STAC item dicts as a static catalog of one collection (absolute asset hrefs)."""
    world: list[list[float | int]] = [[-180, -90, 180, 90]]
    open_interval: list[list[dt.datetime | None]] = [[None, None]]
    cat = pystac.Catalog(id="static", description="test copy")
    coll = pystac.Collection(id=collection, description="test copy", extent=pystac.Extent(
        pystac.SpatialExtent(world), pystac.TemporalExtent(open_interval)))
    cat.add_child(coll)
    for item in items:
        coll.add_item(pystac.Item.from_dict(item))
    cat.normalize_hrefs(str(out_dir))
    cat.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return out_dir / "catalog.json"


class StacApiServer(LocalHttpServer):
    """Earth-Search-like STAC API (landing page, /conformance, /collections, GET+POST /search with
    bbox / datetime / collections / ids / query, paginated with a ``token``). Records every
    request in ``self.requests`` as ``(method, path, params)``."""

    def __init__(self, items: Iterable[dict], collections: Iterable[dict]):
        self.items = list(items)
        self.collections = {c["id"]: c for c in collections}
        self.requests: list[tuple[str, str, dict]] = []
        self.fail_search = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(u.query).items()}
                server._route(self, "GET", u.path, params)

            def do_POST(self):
                u = urlparse(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                params = json.loads(self.rfile.read(n) or b"{}")
                server._route(self, "POST", u.path, params)

        super().__init__(Handler)

    @property
    def searches(self) -> list[dict]:
        return [p for m, path, p in self.requests if path == "/search"]

    # ---- routes -----------------------------------------------------------------------------

    def _links(self) -> list[dict]:
        u = self.url
        return [
            {"rel": "self", "href": f"{u}/", "type": "application/json"},
            {"rel": "root", "href": f"{u}/", "type": "application/json"},
            {"rel": "conformance", "href": f"{u}/conformance", "type": "application/json"},
            {"rel": "data", "href": f"{u}/collections", "type": "application/json"},
            {
                "rel": "search",
                "href": f"{u}/search",
                "type": "application/geo+json",
                "method": "GET",
            },
            {
                "rel": "search",
                "href": f"{u}/search",
                "type": "application/geo+json",
                "method": "POST",
            },
        ]

    def _collection(self, c: dict) -> dict:
        c = copy.deepcopy(c)
        c["links"] = [
            {"rel": "self", "href": f"{self.url}/collections/{c['id']}"},
            {"rel": "root", "href": f"{self.url}/"},
            {"rel": "items", "href": f"{self.url}/collections/{c['id']}/items"},
        ]
        return c

    def _route(self, h, method: str, path: str, params: dict) -> None:
        self.requests.append((method, path, params))
        path = path.rstrip("/") or "/"
        if path == "/":
            return h._send(
                200,
                {
                    "type": "Catalog",
                    "id": "test-api",
                    "stac_version": "1.0.0",
                    "description": "test STAC API",
                    "conformsTo": CONFORMANCE,
                    "links": self._links(),
                },
            )
        if path == "/conformance":
            return h._send(200, {"conformsTo": CONFORMANCE})
        if path == "/collections":
            return h._send(
                200,
                {
                    "collections": [self._collection(c) for c in self.collections.values()],
                    "links": [],
                },
            )
        if path.startswith("/collections/"):
            parts = path.split("/")
            c = self.collections.get(parts[2])
            if c is None:
                return h._send(404, {"code": "NotFound", "description": parts[2]})
            if len(parts) == 3:
                return h._send(200, self._collection(c))
            if len(parts) == 4 and parts[3] == "items":
                return self._search(h, "GET", {**params, "collections": parts[2]}, path)
        if path == "/search":
            if self.fail_search:
                return h._send(500, {"code": "ServerError", "description": "boom"})
            return self._search(h, method, params, path)
        return h._send(404, {"code": "NotFound", "description": path})

    def _search(self, h, method: str, params: dict, path: str) -> None:
        if method == "GET":
            p: dict[str, Any] = dict(params)
            if "collections" in p:
                p["collections"] = str(p["collections"]).split(",")
            if "bbox" in p:
                p["bbox"] = [float(v) for v in str(p["bbox"]).split(",")]
            if "ids" in p:
                p["ids"] = str(p["ids"]).split(",")
            if "query" in p:
                p["query"] = json.loads(p["query"])
        else:
            p = dict(params)
        hits = []
        for it in self.items:
            if p.get("collections") and it.get("collection") not in p["collections"]:
                continue
            if p.get("ids") and it["id"] not in p["ids"]:
                continue
            if p.get("bbox") and not _bbox_hit(it["bbox"], p["bbox"]):
                continue
            if p.get("datetime"):
                t = _parse_dt(it["properties"]["datetime"])
                if "/" in p["datetime"]:
                    a, b = p["datetime"].split("/")
                    if a not in ("", "..") and t < _parse_dt(a):
                        continue
                    if b not in ("", "..") and t > _parse_dt(b):
                        continue
                elif t != _parse_dt(p["datetime"]):
                    continue
            ok = True
            for prop, cond in (p.get("query") or {}).items():
                v = it["properties"].get(prop)
                for op, ref in cond.items():
                    if v is None or not _OPS[op](v, ref):
                        ok = False
            if ok:
                hits.append(it)
        limit = int(p.get("limit") or 10)
        start = int(p.get("token") or 0)
        page = hits[start : start + limit]
        links = []
        if start + limit < len(hits):
            if method == "POST":
                links.append(
                    {
                        "rel": "next",
                        "href": f"{self.url}{path}",
                        "method": "POST",
                        "body": {**p, "token": start + limit},
                        "merge": False,
                        "type": "application/geo+json",
                    }
                )
            else:
                q = {k: v for k, v in params.items()}
                q["token"] = str(start + limit)
                qs = "&".join(f"{k}={v}" for k, v in q.items())
                links.append(
                    {
                        "rel": "next",
                        "href": f"{self.url}{path}?{qs}",
                        "type": "application/geo+json",
                    }
                )
        return h._send(
            200,
            {
                "type": "FeatureCollection",
                "features": page,
                "links": links,
                "numberMatched": len(hits),
                "numberReturned": len(page),
            },
        )


def earth_search_items(
    catalog_path: Path, collection: str = "sentinel-2-c1-l2a", offset: float | None = None
) -> tuple[list[dict], dict]:
    """The synthetic S2 items dressed as Earth Search C1 items: collection renamed, absolute file
    hrefs, projection v1.1 ``proj:epsg``; ``offset`` overrides every band's raster:bands offset
    (the pixels stay the same)."""
    src = pystac.Catalog.from_file(str(catalog_path)).get_child("synthetic-s2-l2a")
    assert src is not None, f"{catalog_path} has no synthetic-s2-l2a collection"
    items = []
    for it in src.get_items():
        it.make_asset_hrefs_absolute()
        d = it.to_dict(include_self_link=False, transform_hrefs=False)
        d["collection"] = collection
        d["links"] = []
        d["stac_version"] = "1.0.0"
        d["stac_extensions"] = [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        ]
        code = d["properties"].pop("proj:code")
        d["properties"].pop("synthetic", None)
        d["properties"]["proj:epsg"] = int(code.split(":")[1])
        for key, a in d["assets"].items():
            assert Path(a["href"]).is_absolute()
            if offset is not None and key != "scl":
                a["raster:bands"][0]["offset"] = offset
        items.append(d)
    coll = {
        "type": "Collection",
        "id": collection,
        "stac_version": "1.0.0",
        "description": "test copy",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2015-06-27T00:00:00Z", None]]},
        },
        "links": [],
    }
    return items, coll


@pytest.fixture
def stac_api() -> Iterator[Callable[[Iterable[dict], Iterable[dict]], StacApiServer]]:
    """Factory: ``stac_api(items, collections) -> running StacApiServer``, stopped after the
    test."""
    servers: list[StacApiServer] = []

    def make(items: Iterable[dict], collections: Iterable[dict]) -> StacApiServer:
        s = StacApiServer(items, collections).__enter__()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.__exit__(None, None, None)


@pytest.fixture
def es_items(synthetic_catalog):
    """Factory: ``es_items(collection=..., offset=None) -> (items, collection)``."""

    def make(collection: str = "sentinel-2-c1-l2a", offset: float | None = None):
        return earth_search_items(synthetic_catalog, collection, offset)

    return make


# --------------------------------------------------------------------------------------------
# GEE provider tests (test_gee*.py, pipeline/test_gee_pipeline.py): the Earth Engine REST
# stand-in (ee_standin.py) and a provider against it
# --------------------------------------------------------------------------------------------


@pytest.fixture
def gee_env(monkeypatch) -> Iterator[None]:
    """Offline ee client (no deprecation fetch, no connection but 127.0.0.1), fresh state."""
    S.patch_ee_offline(monkeypatch)
    monkeypatch.delenv("EE_PROJECT", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # google-auth looks up a service account's "regional access boundary" on
    # iamcredentials.googleapis.com in a background thread: not in tests.
    with contextlib.suppress(ImportError, AttributeError):
        from google.auth import _regional_access_boundary_utils as rab  # noqa: PLC0415

        monkeypatch.setattr(rab._RegionalAccessBoundaryManager, "maybe_start_refresh",
                            lambda self, credentials, request: None)
    S.reset_ee()
    with S.forbid_external_network():
        yield
    S.reset_ee()


@pytest.fixture
def standin(gee_env: None) -> Iterator[S.EEStandIn]:
    with S.EEStandIn() as s:
        yield s


@pytest.fixture
def fake_clock() -> S.FakeClock:
    """A clock whose sleeps return at once (recorded in ``fake_clock.sleeps``)."""
    return S.FakeClock()


@pytest.fixture
def make_provider(standin: S.EEStandIn, fake_clock: S.FakeClock) -> Callable[..., Any]:
    """GEEProvider against ``standin`` on ``fake_clock`` (rate-limit and backoff sleeps return
    at once and are recorded), tiny backoff delays; keyword overrides."""
    from rs_embed_pipeline.providers.gee import GEEProvider  # noqa: PLC0415

    def make(**kw: Any) -> Any:
        opts: dict[str, Any] = {"project": "test-project", "api_url": standin.url,
                                "credentials": "anonymous", "backoff_base_s": 0.001,
                                "backoff_max_s": 0.01, "request_timeout_s": 30,
                                "clock": fake_clock, "sleep": fake_clock.sleep}
        opts.update(kw)
        return GEEProvider(**opts)
    return make


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "live_gee: talks to the real Earth Engine API; runs only with EE credentials in the "
        "environment (EE_PROJECT and GOOGLE_APPLICATION_CREDENTIALS or EE_SERVICE_ACCOUNT_KEY)",
    )
