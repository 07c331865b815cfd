"""An Earth Engine REST stand-in for tests: the real ``ee`` client talks to it on 127.0.0.1.

What it serves (enough of the Cloud API v1 for ``GEEProvider``):

* ``GET  /$discovery/rest``                 the discovery document shipped in the ee wheel
                                            (``ee/tests/cloud_api_discovery_document.json``,
                                            paths rewritten from v1alpha to v1);
* ``GET  /v1/projects/{p}/algorithms``      the algorithm list shipped in the wheel
                                            (``ee/tests/algorithms.json``);
* ``POST /v1/projects/{p}/value:compute``   evaluates the serialized expression graph;
* ``POST /v1/projects/{p}/image:computePixels``  evaluates the image on the requested grid and
                                            answers NPY (structured array [H, W], one field per
                                            band, masked pixels 0), enforcing the 48 MiB size
                                            limit (pixels x sum over bands of (bytes + 1
                                            mask byte), Earth Engine's rule);
* ``POST /token``                           an OAuth token endpoint for service-account keys;
* ``GET  /_standin/stats``                  request counters (benchmarks in a subprocess).

The expression evaluator implements the algorithms the provider uses (collections, filters,
composites, band math, masks, linkCollection, aggregate_array) over a synthetic :class:`Catalog`.
Pixel values are a deterministic function of the *world* coordinates of each pixel centre, so
any grid / split of the same area gives the same numbers and tests can predict them:

    value(band) = base[band] + offset + pattern_scale * pattern(ix, iy)
    ix = floor(x_centre / 10), iy = floor(y_centre / 10)     (metres, in the request CRS)
    pattern(ix, iy) = (ix mod 31) + 31 * (iy mod 29)        (0 .. 898)

Every request is recorded (:class:`Recorded`: kind, body, grid, inlined expression tree, timing,
answer), the number of requests in flight is tracked (``max_in_flight``), and faults can be
injected (``fault_hook``). Helpers: :func:`inline` / :func:`find_calls` to inspect the graph,
:func:`expected_band` to predict pixels, :func:`make_service_account_key`,
:func:`patch_ee_offline` (the ee client fetches a deprecation list from the internet in
``ee.Initialize``) and :func:`forbid_external_network`.

Run ``python ee_standin.py [--port 0] [--latency-s 0] [--images 1]`` to serve a default catalog
in its own process (prints ``READY <url>``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import io
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
S2_BASE = {b: 1000.0 * (k + 1) for k, b in enumerate(S2_BANDS)}  # B1 1000 .. B12 12000
S1_LINEAR_BASE = {"VV": 0.05, "VH": 0.01}
S1_DB_BASE = {"VV": -13.0, "VH": -20.0}
DEFAULT_LIMIT_BYTES = 48 * 1024 * 1024
MAX_GRID_PX = 32768
ACCESS_TOKEN = "ya29.standin-SECRET-access-token-0123456789"


# ============================================================================================
# pixel pattern (shared with the tests)
# ============================================================================================


def pattern(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    return (np.mod(ix, 31) + 31 * np.mod(iy, 29)).astype(np.float64)


def pixel_indices(x0: float, y0: float, scale: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(ix [1, W], iy [H, 1]) of the pixel centres of a north-up grid with UL corner (x0, y0)."""
    xc = x0 + (np.arange(width) + 0.5) * scale
    yc = y0 - (np.arange(height) + 0.5) * scale
    return np.floor(xc / 10.0)[None, :], np.floor(yc / 10.0)[:, None]


def expected_band(tile: Mapping[str, Any], base: float, offset: float = 0.0,
                  pattern_scale: float = 1.0) -> np.ndarray:
    """The stand-in's value of one band over a tile row (float64 [size, size])."""
    ix, iy = pixel_indices(float(tile["x0"]), float(tile["y0"]), float(tile["scale_m"]),
                           int(tile["size_px"]), int(tile["size_px"]))
    return base + offset + pattern_scale * pattern(ix, iy)


# ============================================================================================
# catalog
# ============================================================================================


@dataclasses.dataclass
class FakeImage:
    """One synthetic image: band values base + offset + pattern_scale * pattern(ix, iy)."""

    index: str
    date: str
    bands: dict[str, float]
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    offset: float = 0.0
    pattern_scale: float = 1.0
    dtype: str = "float32"
    # lon/lat bbox (xmin, ymin, xmax, ymax) or ring [(lon, lat), ...]; None: no footprint (everywhere).
    # Served as Earth Engine does: system:footprint, a geodesic LinearRing in EPSG:4326.
    footprint: tuple[float, float, float, float] | Sequence[tuple[float, float]] | None = None
    valid: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (ix, iy) -> bool
    band_values: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None

    def footprint_geojson(self) -> dict[str, Any] | None:
        """``system:footprint`` as Earth Engine answers it: a closed LinearRing in lon/lat."""
        if self.footprint is None:
            return None
        fp = list(self.footprint)
        if len(fp) == 4 and all(isinstance(v, (int, float)) for v in fp):
            x0, y0, x1, y1 = (float(v) for v in fp)
            ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        else:
            ring = [[float(p[0]), float(p[1])] for p in fp]
        if ring[0] != ring[-1]:
            ring.append(list(ring[0]))
        return {"type": "LinearRing", "coordinates": ring}

    @property
    def time_ms(self) -> int:
        t = dt.datetime.fromisoformat(self.date)
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return int(t.timestamp() * 1000)


#: SCL class of the stand-in's S2 pixels unless a test gives its own (4: vegetation, valid).
SCL_DEFAULT_CLASS = 4


def s2_image(index: str, date: str, cloudy: float = 10.0,
             scl: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, **kw: Any) -> FakeImage:
    """An ``S2_SR_HARMONIZED`` image: the 12 bands and ``SCL`` (as in Earth Engine's band list);
    ``scl``: (ix, iy) -> class, default :data:`SCL_DEFAULT_CLASS` everywhere."""
    props = {"CLOUDY_PIXEL_PERCENTAGE": cloudy, **kw.pop("properties", {})}

    def scl_default(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
        return np.full(np.broadcast(ix, iy).shape, SCL_DEFAULT_CLASS, np.float64)
    values = {"SCL": scl or scl_default, **(kw.pop("band_values", None) or {})}
    return FakeImage(index, date, {**S2_BASE, "SCL": 0.0}, props, dtype="uint16", band_values=values, **kw)


def s1_image(index: str, date: str, mode: str = "IW", pols: Sequence[str] = ("VV", "VH"),
             orbit: str = "ASCENDING", db: bool = False, **kw: Any) -> FakeImage:
    props = {"instrumentMode": mode, "transmitterReceiverPolarisation": list(pols),
             "orbitProperties_pass": orbit, **kw.pop("properties", {})}
    base = S1_DB_BASE if db else S1_LINEAR_BASE
    kw.setdefault("pattern_scale", 0.001 if db else 1e-5)
    return FakeImage(index, date, {p: base[p] for p in pols}, props, dtype="float32", **kw)


def cs_image(index: str, date: str, low_every: int = 4, low: float = 0.3, high: float = 0.9,
             **kw: Any) -> FakeImage:
    """A Cloud Score+ image: cs and cs_cdf = ``low`` where (ix + iy) % low_every == 0."""
    def cs(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
        return np.where(np.mod(ix + iy, low_every) == 0, low, high)
    return FakeImage(index, date, {"cs": 0.0, "cs_cdf": 0.0}, {}, dtype="float32",
                     band_values={"cs": cs, "cs_cdf": cs}, **kw)


class Catalog:
    """Collections of FakeImages by id (thread-safe reads; mutate before serving)."""

    def __init__(self, collections: Mapping[str, Iterable[FakeImage]] | None = None) -> None:
        self.collections: dict[str, list[FakeImage]] = {
            k: list(v) for k, v in (collections or {}).items()
        }

    def add(self, collection: str, *images: FakeImage) -> Catalog:
        self.collections.setdefault(collection, []).extend(images)
        return self

    def get(self, collection: str) -> list[FakeImage]:
        if collection not in self.collections:
            raise EvalError(f"ImageCollection.load: ImageCollection asset '{collection}' not found "
                            "(does not exist or caller does not have access).")
        return self.collections[collection]


def default_catalog(images: int = 1) -> Catalog:
    """S2 (``images`` scenes in 2024 Q1), Cloud Score+, S1 float and dB (IW, VV+VH)."""
    cat = Catalog()
    for k in range(images):
        day = f"2024-01-{5 + 5 * k:02d}" if k < 5 else f"2024-02-{(5 * k) % 28 + 1:02d}"
        idx = f"2024{day[5:7]}{day[8:10]}T100000_2024{day[5:7]}{day[8:10]}T100000_T33TUG"
        cat.add("COPERNICUS/S2_SR_HARMONIZED", s2_image(idx, day, offset=float(k)))
        cat.add("GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED", cs_image(idx, day))
        s1 = f"S1A_IW_GRDH_1SDV_2024{day[5:7]}{day[8:10]}T050000_{k:04d}"
        cat.add("COPERNICUS/S1_GRD_FLOAT", s1_image(s1, day))
        cat.add("COPERNICUS/S1_GRD", s1_image(s1, day, db=True))
    return cat


# ============================================================================================
# expression graph: inlining (static inspection)
# ============================================================================================


def inline(expr: Mapping[str, Any]) -> Any:
    """The serialized graph as one nested tree.

    Calls become ``{"fn": name, "args": {...}}``, constants their value, function definitions
    ``{"lambda": [names], "body": tree}``, argument references ``{"arg": name}``.
    """
    values = expr["values"]

    def node(n: Mapping[str, Any]) -> Any:
        if "constantValue" in n:
            return n["constantValue"]
        if "valueReference" in n:
            return node(values[n["valueReference"]])
        if "argumentReference" in n:
            return {"arg": n["argumentReference"]}
        if "arrayValue" in n:
            return [node(v) for v in n["arrayValue"].get("values", [])]
        if "dictionaryValue" in n:
            return {k: node(v) for k, v in n["dictionaryValue"].get("values", {}).items()}
        if "functionDefinitionValue" in n:
            fd = n["functionDefinitionValue"]
            return {"lambda": list(fd.get("argumentNames", [])), "body": node(values[fd["body"]])}
        if "functionInvocationValue" in n:
            fi = n["functionInvocationValue"]
            return {"fn": fi.get("functionName"),
                    "args": {k: node(v) for k, v in fi.get("arguments", {}).items()}}
        if "integerValue" in n:
            return int(n["integerValue"])
        if "nullValue" in n:
            return None
        raise ValueError(f"unknown expression node {sorted(n)}")

    return node(values[expr["result"]])


def walk(tree: Any) -> Iterator[dict]:
    """Every call node of an inlined tree (depth first)."""
    if isinstance(tree, dict):
        if "fn" in tree and "args" in tree:
            yield tree
            for v in tree["args"].values():
                yield from walk(v)
        elif "lambda" in tree:
            yield from walk(tree["body"])
        else:
            for v in tree.values():
                yield from walk(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from walk(v)


def find_calls(tree: Any, name: str) -> list[dict]:
    """The distinct ``args`` of the calls of ``name`` in an inlined tree (in first-seen order).

    Distinct: a sub-expression used twice (the graph shares it) appears twice in the inlined
    tree but once here.
    """
    seen: set[str] = set()
    out = []
    for c in walk(tree):
        if c["fn"] == name:
            key = json.dumps(c["args"], sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                out.append(c["args"])
    return out


def functions(tree: Any) -> set[str]:
    return {c["fn"] for c in walk(tree)}


def loaded_collections(tree: Any) -> list[str]:
    return sorted({a["id"] for a in find_calls(tree, "ImageCollection.load")})


# ============================================================================================
# evaluation
# ============================================================================================


class EvalError(Exception):
    """An Earth Engine-style error answer (400 INVALID_ARGUMENT unless said otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Grid:
    """The requested pixel grid; per-request cache of evaluated bands."""

    def __init__(self, grid: Mapping[str, Any]) -> None:
        dims = grid.get("dimensions", {})
        self.width = int(dims.get("width", 0))
        self.height = int(dims.get("height", 0))
        aff = grid.get("affineTransform", {})
        self.scale_x = float(aff.get("scaleX", 1))
        self.scale_y = float(aff.get("scaleY", -1))
        self.shear_x = float(aff.get("shearX", 0))
        self.shear_y = float(aff.get("shearY", 0))
        self.x0 = float(aff.get("translateX", 0))
        self.y0 = float(aff.get("translateY", 0))
        self.crs = str(grid.get("crsCode", ""))
        if self.width <= 0 or self.height <= 0:
            raise EvalError("Grid dimensions must be positive.")
        if self.shear_x or self.shear_y:
            raise EvalError("stand-in: sheared grids are not supported")
        xc = self.x0 + (np.arange(self.width) + 0.5) * self.scale_x
        yc = self.y0 + (np.arange(self.height) + 0.5) * self.scale_y
        self.ix = np.floor(xc / 10.0)[None, :]
        self.iy = np.floor(yc / 10.0)[:, None]
        self._pattern: np.ndarray | None = None
        self._pattern32: np.ndarray | None = None
        self.cache: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def pattern(self) -> np.ndarray:
        if self._pattern is None:
            self._pattern = pattern(self.ix, self.iy)
        return self._pattern

    @property
    def pattern32(self) -> np.ndarray:
        if self._pattern32 is None:
            self._pattern32 = self.pattern.astype(np.float32)
        return self._pattern32


class Band:
    """A lazily evaluated band: fn(grid) -> (values [H, W], mask bool [H, W])."""

    def __init__(self, dtype: Any, fn: Callable[[Grid], tuple[np.ndarray, np.ndarray]]) -> None:
        self.dtype = np.dtype(dtype)
        self._fn = fn

    def eval(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        hit = grid.cache.get(id(self))
        if hit is None or hit[0] is not self:  # keep the band in the entry: ids can be reused
            v, m = self._fn(grid)
            hit = (self, np.broadcast_to(v, grid.shape), np.broadcast_to(m, grid.shape))
            grid.cache[id(self)] = hit
        return hit[1], hit[2]


class SImage:
    def __init__(self, bands: dict[str, Band], props: dict[str, Any] | None = None,
                 footprint: Any = None) -> None:
        self.bands = bands
        self.props = dict(props or {})
        self.footprint = footprint


class SCollection:
    def __init__(self, images: list[SImage]) -> None:
        self.images = images


@dataclasses.dataclass
class SFilter:
    fn: Callable[[SImage], bool]
    desc: Any


@dataclasses.dataclass
class SGeometry:
    crs: str
    bbox: tuple[float, float, float, float]  # in crs

    def lonlat_bbox(self) -> tuple[float, float, float, float]:
        if self.crs in ("EPSG:4326", ""):
            return self.bbox
        return _to_lonlat(self.crs, self.bbox)

    def lonlat_polygon(self) -> Any:
        """The rectangle (straight edges in its CRS: geodesic false) as a lon/lat polygon, each
        edge sampled every ~100 m."""
        import shapely  # noqa: PLC0415

        x0, y0, x1, y1 = self.bbox
        if self.crs in ("EPSG:4326", ""):
            return shapely.box(x0, y0, x1, y1)
        n = max(2, int(max(x1 - x0, y1 - y0) / 100.0) + 1)
        t = np.linspace(0.0, 1.0, n)
        xs = np.concatenate([x0 + (x1 - x0) * t, np.full(n, x1), x1 - (x1 - x0) * t, np.full(n, x0)])
        ys = np.concatenate([np.full(n, y0), y0 + (y1 - y0) * t, np.full(n, y1), y1 - (y1 - y0) * t])
        with _TRANSFORMER_LOCK:
            tr = _TRANSFORMERS.get(self.crs)
            if tr is None:
                import pyproj  # noqa: PLC0415

                tr = _TRANSFORMERS[self.crs] = pyproj.Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
            lon, lat = tr.transform(xs, ys)
        return shapely.Polygon(np.column_stack([lon, lat]))


@dataclasses.dataclass
class SFunction:
    names: list[str]
    body: Mapping[str, Any]
    evaluator: Evaluator
    env: dict[str, Any]

    def __call__(self, *args: Any) -> Any:
        env = dict(self.env)
        env.update(zip(self.names, args))
        return self.evaluator.node(self.body, env)


_TRANSFORMERS: dict[str, Any] = {}
_TRANSFORMER_LOCK = threading.Lock()


def _to_lonlat(crs: str, bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    import pyproj  # noqa: PLC0415

    with _TRANSFORMER_LOCK:
        tr = _TRANSFORMERS.get(crs)
        if tr is None:
            tr = _TRANSFORMERS[crs] = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        xs = np.linspace(bbox[0], bbox[2], 5)
        ys = np.linspace(bbox[1], bbox[3], 5)
        gx, gy = np.meshgrid(xs, ys)
        lon, lat = tr.transform(gx.ravel(), gy.ravel())
    return (float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat)))


def _const_image(value: Any) -> SImage:
    values = value if isinstance(value, list) else [value]
    bands = {}
    for k, v in enumerate(values):
        name = "constant" if len(values) == 1 else f"constant_{k}"
        arr = np.asarray(float(v))
        dtype = "int32" if float(v).is_integer() else "float64"
        bands[name] = Band(dtype, lambda g, a=arr: (a, np.asarray(True)))
    return SImage(bands)


def _as_image(x: Any) -> SImage:
    if isinstance(x, SImage):
        return x
    if isinstance(x, (int, float, list)):
        return _const_image(x)
    raise EvalError(f"Expected an Image, got {type(x).__name__}")


def _binary(a: Any, b: Any, op: Callable[[np.ndarray, np.ndarray], np.ndarray], dtype: Any) -> SImage:
    ia, ib = _as_image(a), _as_image(b)
    na, nb = list(ia.bands), list(ib.bands)
    if len(nb) == 1:
        pairs = [(n, ia.bands[n], ib.bands[nb[0]]) for n in na]
    elif len(na) == 1:
        pairs = [(n, ia.bands[na[0]], ib.bands[n]) for n in nb]
    elif len(na) == len(nb):
        pairs = [(n, ia.bands[n], ib.bands[m]) for n, m in zip(na, nb)]
    else:
        raise EvalError(f"Image.binary: images must have the same number of bands or one band "
                        f"({len(na)} vs {len(nb)})")
    out = {}
    for name, ba, bb in pairs:
        def fn(g: Grid, ba=ba, bb=bb) -> tuple[np.ndarray, np.ndarray]:
            va, ma = ba.eval(g)
            vb, mb = bb.eval(g)
            with np.errstate(all="ignore"):
                return op(va.astype(np.float64, copy=False), vb.astype(np.float64, copy=False)), ma & mb
        out[name] = Band(dtype if dtype is not None else np.result_type(ba.dtype, bb.dtype, np.float64), fn)
    # Image math keeps no properties (as in Earth Engine).
    return SImage(out)


def _unary(img: Any, op: Callable[[np.ndarray], np.ndarray], dtype: Any, keep_props: bool) -> SImage:
    im = _as_image(img)
    out = {}
    for name, b in im.bands.items():
        def fn(g: Grid, b=b) -> tuple[np.ndarray, np.ndarray]:
            v, m = b.eval(g)
            with np.errstate(all="ignore"):
                return op(v), m
        out[name] = Band(dtype, fn)
    return SImage(out, im.props if keep_props else {}, im.footprint)


def _cast(img: Any, dtype: str) -> SImage:
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None

    def op(v: np.ndarray) -> np.ndarray:
        if info is not None:
            return np.clip(np.nan_to_num(v), info.min, info.max).astype(dtype)
        return v.astype(dtype)
    return _unary(img, op, dtype, keep_props=True)


def _select(img: SImage, selectors: Any, names: Any = None) -> SImage:
    if not isinstance(selectors, list):
        selectors = [selectors]
    picked: list[str] = []
    for sel in selectors:
        if isinstance(sel, int):
            keys = list(img.bands)
            if not 0 <= sel < len(keys):
                raise EvalError(f"Image.select: Band index {sel} out of bounds.")
            picked.append(keys[sel])
            continue
        if sel in img.bands:
            picked.append(sel)
            continue
        matches = [b for b in img.bands if re.fullmatch(str(sel), b)]
        if not matches:
            raise EvalError(f"Image.select: Pattern '{sel}' did not match any bands. "
                            f"Available bands: {list(img.bands)}")
        picked.extend(matches)
    new_names = names if names else picked
    if len(new_names) != len(picked):
        raise EvalError("Image.select: names must match the selected bands")
    return SImage({n: img.bands[p] for n, p in zip(new_names, picked)}, img.props, img.footprint)


def _median_of(members: list[Band], g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median of the members' valid values (0 where none is valid)."""
    if len(members) == 1:
        return members[0].eval(g)
    stack = np.stack([b.eval(g)[0].astype(np.float64) for b in members])
    masks = np.stack([b.eval(g)[1] for b in members])
    if masks.all():
        return np.median(stack, axis=0), np.ones(g.shape, bool)
    stack = np.where(masks, stack, np.nan)
    valid = masks.any(axis=0)
    with np.errstate(all="ignore"), _quiet():
        med = np.nanmedian(stack, axis=0)
    return np.where(valid, med, 0.0), valid


def _mosaic_of(members: list[Band], g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the last member's valid value (later images on top)."""
    value = np.zeros(g.shape, np.float64)
    mask = np.zeros(g.shape, bool)
    for b in members:
        v, m = b.eval(g)
        value = np.where(m, v, value)
        mask |= m
    return value, mask


def _composite(coll: SCollection, reduce: Callable[[list[Band], Grid], tuple[np.ndarray, np.ndarray]],
               dtype: Any = None) -> SImage:
    """One band per band name of the first image, ``reduce`` over the images that have it;
    ``dtype`` None keeps the first member's type (Earth Engine's mosaic does, its median is double)."""
    if not coll.images:
        return SImage({})
    out = {}
    for name in coll.images[0].bands:
        members = [im.bands[name] for im in coll.images if name in im.bands]
        out[name] = Band(members[0].dtype if dtype is None else dtype, functools.partial(reduce, members))
    return SImage(out)


def _composite_median(coll: SCollection) -> SImage:
    return _composite(coll, _median_of, np.float64)


def _composite_mosaic(coll: SCollection) -> SImage:
    return _composite(coll, _mosaic_of)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fake_to_simage(img: FakeImage) -> SImage:
    props = {"system:index": img.index, "system:time_start": img.time_ms,
             "system:id": img.index, **img.properties}
    footprint = img.footprint_geojson()
    if footprint is not None:  # Earth Engine's images carry it; a stand-in image may have none
        props["system:footprint"] = footprint
    bands: dict[str, Band] = {}
    for name, base in img.bands.items():
        custom = (img.band_values or {}).get(name)

        def fn(g: Grid, base=base, custom=custom) -> tuple[np.ndarray, np.ndarray]:
            if custom is not None:
                v = np.asarray(custom(g.ix, g.iy), np.float64)
            elif np.dtype(img.dtype).itemsize <= 4:  # exact for the integer-valued S2 DN
                v = np.float32(base + img.offset) + np.float32(img.pattern_scale) * g.pattern32
            else:
                v = base + img.offset + img.pattern_scale * g.pattern
            m = np.asarray(img.valid(g.ix, g.iy), bool) if img.valid is not None else np.asarray(True)
            return v, m
        bands[name] = Band(img.dtype, fn)
    return SImage(bands, props, img.footprint)


class Evaluator:
    """Evaluates one serialized expression against a Catalog."""

    def __init__(self, expr: Mapping[str, Any], catalog: Catalog) -> None:
        self.values = expr["values"]
        self.result = expr["result"]
        self.catalog = catalog

    def run(self) -> Any:
        return self.node(self.values[self.result], {})

    def node(self, n: Mapping[str, Any], env: dict[str, Any]) -> Any:
        if "constantValue" in n:
            return n["constantValue"]
        if "valueReference" in n:
            return self.node(self.values[n["valueReference"]], env)
        if "argumentReference" in n:
            return env[n["argumentReference"]]
        if "arrayValue" in n:
            return [self.node(v, env) for v in n["arrayValue"].get("values", [])]
        if "dictionaryValue" in n:
            return {k: self.node(v, env) for k, v in n["dictionaryValue"].get("values", {}).items()}
        if "functionDefinitionValue" in n:
            fd = n["functionDefinitionValue"]
            return SFunction(list(fd.get("argumentNames", [])), self.values[fd["body"]], self, env)
        if "functionInvocationValue" in n:
            fi = n["functionInvocationValue"]
            name = fi.get("functionName")
            impl = ALGORITHMS.get(name)
            if impl is None:
                raise EvalError(f"stand-in: algorithm {name!r} is not implemented")
            args = {k: self.node(v, env) for k, v in fi.get("arguments", {}).items()}
            return impl(self, **args)
        if "integerValue" in n:
            return int(n["integerValue"])
        if "nullValue" in n:
            return None
        raise EvalError(f"stand-in: unknown expression node {sorted(n)}")


def _prop_filter(field: str, pred: Callable[[Any], bool], desc: Any) -> SFilter:
    def fn(img: SImage) -> bool:
        if field not in img.props:
            return False
        try:
            return bool(pred(img.props[field]))
        except TypeError:
            return False
    return SFilter(fn, desc)


def _collection_filter(ev: Evaluator, collection: SCollection, filter: SFilter) -> SCollection:
    return SCollection([im for im in collection.images if filter.fn(im)])


def _geodesic_ring(ring: Sequence[Sequence[float]], step_deg: float = 0.005) -> np.ndarray:
    """A lon/lat ring with each edge sampled along its great circle (Earth Engine's geometries in
    EPSG:4326 are geodesic: edges follow the shortest path on the sphere)."""
    out = []
    for (lon1, lat1), (lon2, lat2) in zip(ring[:-1], ring[1:]):
        a = np.radians([lon1, lat1])
        b = np.radians([lon2, lat2])
        va = np.array([np.cos(a[1]) * np.cos(a[0]), np.cos(a[1]) * np.sin(a[0]), np.sin(a[1])])
        vb = np.array([np.cos(b[1]) * np.cos(b[0]), np.cos(b[1]) * np.sin(b[0]), np.sin(b[1])])
        omega = float(np.arccos(np.clip(va @ vb, -1.0, 1.0)))
        n = max(1, int(np.degrees(omega) / step_deg))
        for f in np.arange(n) / n:
            if omega < 1e-12 or f == 0:
                out.append((lon1, lat1))
                continue
            v = (np.sin((1 - f) * omega) * va + np.sin(f * omega) * vb) / np.sin(omega)
            lon = np.degrees(np.arctan2(v[1], v[0]))
            out.append((lon1 + (lon - lon1 + 180.0) % 360.0 - 180.0, float(np.degrees(np.arcsin(v[2])))))
    out.append(tuple(ring[-1]))
    return np.asarray(out, dtype=float)


def _footprint_polygon(footprint: Mapping[str, Any]) -> Any:
    import shapely  # noqa: PLC0415

    return shapely.Polygon(_geodesic_ring(footprint["coordinates"]))


def _intersects(ev: Evaluator, leftField: str = ".all", rightValue: Any = None, **_: Any) -> SFilter:
    """filterBounds: the images whose footprint intersects the region (exactly: the region's
    straight edges in its CRS, the footprint's geodesic edges); an image without a footprint
    passes."""
    geom = rightValue.get("geometry") if isinstance(rightValue, dict) else rightValue
    if not isinstance(geom, SGeometry):
        raise EvalError("Filter.intersects: expected a geometry")
    region = geom.lonlat_polygon()

    def fn(img: SImage) -> bool:
        fp = img.props.get("system:footprint")
        return fp is None or bool(region.intersects(_footprint_polygon(fp)))
    return SFilter(fn, ("intersects", geom.crs, geom.bbox))


def _date_range_contains(ev: Evaluator, leftValue: Any = None, rightField: str = "system:time_start",
                         **_: Any) -> SFilter:
    start, end = leftValue
    return _prop_filter(rightField, lambda t: start <= t < end, ("date", start, end))


def _parse_ms(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _link_collection(ev: Evaluator, input: SImage, imageCollection: SCollection,
                     linkedBands: Any = None, linkedProperties: Any = None,
                     matchPropertyName: str = "system:index") -> SImage:
    key = input.props.get(matchPropertyName)
    match = next((im for im in imageCollection.images if im.props.get(matchPropertyName) == key), None)
    bands = dict(input.bands)
    for name in linkedBands or []:
        if match is not None and name in match.bands:
            bands[name] = match.bands[name]
        else:
            bands[name] = Band(np.float32, lambda g: (np.zeros(g.shape), np.zeros(g.shape, bool)))
    props = dict(input.props)
    for p in linkedProperties or []:
        props[p] = match.props.get(p) if match is not None else None
    return SImage(bands, props, input.footprint)


def _remap(ev: Evaluator, image: SImage, from_: Any = None, to: Any = None, defaultValue: Any = None,
           bandName: Any = None) -> SImage:
    """``Image.remap``: values of ``from`` -> ``to``, others -> ``defaultValue`` or masked when it
    is not given; the input's mask is kept; one band named ``remapped`` (Earth Engine's)."""
    if from_ is None or to is None or len(from_) != len(to):
        raise EvalError("Image.remap: 'from' and 'to' must be lists of the same length")
    name = bandName if bandName is not None else next(iter(image.bands))
    if name not in image.bands:
        raise EvalError(f"Image.remap: band '{name}' not found")
    b = image.bands[name]

    def fn(g: Grid) -> tuple[np.ndarray, np.ndarray]:
        v, m = b.eval(g)
        out = np.full(v.shape, np.nan if defaultValue is None else float(defaultValue))
        for src, dst in zip(from_, to):
            out[v == src] = float(dst)
        return out, m & ~np.isnan(out)
    return SImage({"remapped": Band(np.float64, fn)}, image.props, image.footprint)


def _band_pairs(image: SImage, other: SImage) -> Iterator[tuple[str, Band, Band]]:
    """Each band of ``image`` with its partner in ``other``: other's only band, else its k-th."""
    partners = list(other.bands.values())
    for k, (name, b) in enumerate(image.bands.items()):
        yield name, b, partners[0] if len(partners) == 1 else partners[k]


def _update_mask(ev: Evaluator, image: SImage, mask: Any) -> SImage:
    out = {}
    for name, b, mb in _band_pairs(image, _as_image(mask)):
        def fn(g: Grid, b=b, mb=mb) -> tuple[np.ndarray, np.ndarray]:
            v, m = b.eval(g)
            mv, mm = mb.eval(g)
            return v, m & mm & (mv != 0)
        out[name] = Band(b.dtype, fn)
    return SImage(out, image.props, image.footprint)


def _mask(ev: Evaluator, image: SImage, mask: Any = None) -> SImage:
    if mask is not None:
        return _update_mask(ev, image, mask)
    out = {}
    for name, b in image.bands.items():
        def fn(g: Grid, b=b) -> tuple[np.ndarray, np.ndarray]:
            _, m = b.eval(g)
            if m.all():
                return np.asarray(1.0), np.asarray(True)
            return m.astype(np.float64), np.asarray(True)
        out[name] = Band(np.float32, fn)
    return SImage(out, image.props, image.footprint)


def _reduce_bands(ev: Evaluator, image: SImage, reducer: Any) -> SImage:
    if reducer not in ("min", "max", "mean"):
        raise EvalError(f"stand-in: reducer {reducer!r} not implemented")
    bands = list(image.bands.values())

    def fn(g: Grid) -> tuple[np.ndarray, np.ndarray]:
        acc: np.ndarray | None = None
        count = np.zeros(g.shape, np.float64) if reducer == "mean" else None
        valid = np.zeros(g.shape, bool)
        for b in bands:  # streaming over bands (masked values ignored)
            v, m = b.eval(g)
            v = v.astype(np.float64, copy=False)
            full = bool(m.all())
            valid |= m
            if reducer == "mean":
                acc = (acc if acc is not None else 0.0) + (v if full else np.where(m, v, 0.0))
                count += m
                continue
            cand = v if full else np.where(m, v, np.nan)
            if acc is None:
                acc = np.array(cand, dtype=np.float64)
            else:
                (np.fmin if reducer == "min" else np.fmax)(acc, cand, out=acc)
        if reducer == "mean":
            with np.errstate(all="ignore"):
                acc = acc / count
        return np.where(valid, np.nan_to_num(acc), 0.0), valid
    return SImage({reducer: Band(np.float64, fn)}, image.props, image.footprint)


def _unmask(ev: Evaluator, input: SImage, value: Any = None, sameFootprint: bool = True) -> SImage:
    out = {}
    for name, b, fill in _band_pairs(input, _as_image(0 if value is None else value)):
        def fn(g: Grid, b=b, fill=fill) -> tuple[np.ndarray, np.ndarray]:
            v, m = b.eval(g)
            if m.all():
                return v, np.asarray(True)
            fv, _ = fill.eval(g)
            return np.where(m, v, fv), np.asarray(True)
        out[name] = Band(b.dtype, fn)
    return SImage(out, input.props, input.footprint)


def _add_bands(ev: Evaluator, dstImg: SImage, srcImg: SImage, names: Any = None,
               overwrite: bool = False) -> SImage:
    bands = dict(dstImg.bands)
    for name, b in srcImg.bands.items():
        if names and name not in names:
            continue
        if name in bands and not overwrite:
            raise EvalError(f"Image.addBands: Can't add a band named '{name}' to image because a "
                            "band with this name already exists.")
        bands[name] = b
    return SImage(bands, dstImg.props, dstImg.footprint)


def _rename(ev: Evaluator, input: SImage, names: Any) -> SImage:
    names = names if isinstance(names, list) else [names]
    if len(names) != len(input.bands):
        raise EvalError("Image.rename: the number of names must match the number of bands")
    return SImage(dict(zip(names, input.bands.values())), input.props, input.footprint)


def _limit(ev: Evaluator, collection: SCollection, limit: Any = None, key: str | None = None,
           ascending: bool = True) -> SCollection:
    """Collection.limit: sorted by ``key`` when given (Earth Engine: no key, no ordering)."""
    images = list(collection.images)
    if key:
        images.sort(key=lambda im: (im.props.get(key) is None, im.props.get(key)),
                    reverse=not ascending if ascending is not None else False)
    if limit is not None:
        images = images[: int(limit)]
    return SCollection(images)


def _map(ev: Evaluator, collection: SCollection, baseAlgorithm: SFunction,
         dropNulls: bool = False) -> SCollection:
    out = [baseAlgorithm(im) for im in collection.images]
    return SCollection([o for o in out if o is not None])


def _to_list_reducer(ev: Evaluator, tupleSize: Any = None, numOptional: Any = None) -> tuple:
    return ("toList", int(tupleSize) if tupleSize is not None else None, int(numOptional or 0))


def _reduce_columns(ev: Evaluator, collection: SCollection, reducer: Any, selectors: Any,
                    weightSelectors: Any = None) -> dict:
    """Collection.reduceColumns with Reducer.toList(tupleSize, numOptional): the selected
    properties of each element, a tuple per element; a tuple whose required (first
    ``tupleSize - numOptional``) inputs are null is dropped, optional ones are null."""
    if not (isinstance(reducer, tuple) and reducer[0] == "toList"):
        raise EvalError(f"stand-in: reduceColumns reducer {reducer!r} not implemented")
    _, size, optional = reducer
    size = 1 if size is None else size
    if len(selectors) != size:
        raise EvalError(f"Collection.reduceColumns: need {size} selectors, got {len(selectors)}")
    rows = []
    for im in collection.images:
        values = [im.props.get(p) for p in selectors]
        if any(v is None for v in values[: size - optional]):
            continue
        rows.append(values if reducer[1] is not None else values[0])
    return {"list": rows}


def _aggregate_array(ev: Evaluator, collection: SCollection, property: str) -> list:
    return [im.props[property] for im in collection.images if property in im.props]


def _rectangle(ev: Evaluator, coordinates: Any, crs: Any = None, geodesic: Any = None,
               evenOdd: Any = None) -> SGeometry:
    flat = np.asarray(coordinates, dtype=float).ravel()
    if flat.size != 4:
        raise EvalError("Rectangle: expected [xmin, ymin, xmax, ymax]")
    return SGeometry(crs or "EPSG:4326", (float(flat[0]), float(flat[1]), float(flat[2]), float(flat[3])))


ALGORITHMS: dict[str, Callable[..., Any]] = {
    # collections
    "ImageCollection.load": lambda ev, id, **_: SCollection([_fake_to_simage(i) for i in ev.catalog.get(id)]),
    "Collection.filter": _collection_filter,
    "Collection.map": _map,
    "Collection.limit": _limit,
    "Collection.size": lambda ev, collection: len(collection.images),
    "AggregateFeatureCollection.array": _aggregate_array,
    "Collection.reduceColumns": _reduce_columns,
    "Reducer.toList": _to_list_reducer,
    "Dictionary.get": lambda ev, dictionary, key, defaultValue=None: (
        dictionary[key] if key in dictionary else defaultValue),
    "ImageCollection.mosaic": lambda ev, collection: _composite_mosaic(collection),
    "reduce.median": lambda ev, collection: _composite_median(collection),
    # filters
    "Filter.intersects": _intersects,
    "Filter.dateRangeContains": _date_range_contains,
    "Filter.equals": lambda ev, leftField, rightValue: _prop_filter(
        leftField, lambda v: v == rightValue, ("equals", leftField, rightValue)),
    "Filter.notEquals": lambda ev, leftField, rightValue: _prop_filter(
        leftField, lambda v: v != rightValue, ("notEquals", leftField, rightValue)),
    "Filter.greaterThan": lambda ev, leftField, rightValue: _prop_filter(
        leftField, lambda v: v > rightValue, ("greaterThan", leftField, rightValue)),
    "Filter.lessThan": lambda ev, leftField, rightValue: _prop_filter(
        leftField, lambda v: v < rightValue, ("lessThan", leftField, rightValue)),
    "Filter.lessThanOrEquals": lambda ev, leftField, rightValue: _prop_filter(
        leftField, lambda v: v <= rightValue, ("lessThanOrEquals", leftField, rightValue)),
    "Filter.greaterThanOrEquals": lambda ev, leftField, rightValue: _prop_filter(
        leftField, lambda v: v >= rightValue, ("greaterThanOrEquals", leftField, rightValue)),
    "Filter.listContains": lambda ev, leftField, rightValue: _prop_filter(
        leftField, lambda v: rightValue in v, ("listContains", leftField, rightValue)),
    "Filter.not": lambda ev, filter: SFilter(lambda im: not filter.fn(im), ("not", filter.desc)),
    "Filter.and": lambda ev, filters: SFilter(lambda im: all(f.fn(im) for f in filters),
                                              ("and", [f.desc for f in filters])),
    "Filter.or": lambda ev, filters: SFilter(lambda im: any(f.fn(im) for f in filters),
                                             ("or", [f.desc for f in filters])),
    "DateRange": lambda ev, start, end=None, timeZone=None: (
        _parse_ms(start), _parse_ms(end) if end is not None else _parse_ms(start) + 1),
    # geometry
    "Projection": lambda ev, crs, transform=None: crs,
    "GeometryConstructors.Rectangle": _rectangle,
    "Feature": lambda ev, geometry=None, metadata=None: {"geometry": geometry, "properties": metadata or {}},
    # images
    "Image.load": lambda ev, id, version=None: _fake_to_simage(
        next(i for c in ev.catalog.collections.values() for i in c if i.index == id)),
    "Image.constant": lambda ev, value: _const_image(value),
    "Image.select": lambda ev, input, bandSelectors, newNames=None: _select(input, bandSelectors, newNames),
    "Image.rename": _rename,
    "Image.addBands": _add_bands,
    "Image.linkCollection": _link_collection,
    "Image.updateMask": _update_mask,
    "Image.remap": lambda ev, image, **kw: _remap(ev, image, kw.pop("from", None), **kw),
    "Image.mask": _mask,
    "Image.unmask": _unmask,
    "Image.reduce": _reduce_bands,
    "Reducer.min": lambda ev, **_: "min",
    "Reducer.max": lambda ev, **_: "max",
    "Reducer.mean": lambda ev, **_: "mean",
    "Image.toFloat": lambda ev, value: _cast(value, "float32"),
    "Image.toDouble": lambda ev, value: _cast(value, "float64"),
    "Image.toUint8": lambda ev, value: _cast(value, "uint8"),
    "Image.toUint16": lambda ev, value: _cast(value, "uint16"),
    "Image.exp": lambda ev, value: _unary(value, np.exp, np.float64, keep_props=False),
    "Image.log10": lambda ev, value: _unary(value, np.log10, np.float64, keep_props=False),
    "Image.multiply": lambda ev, image1, image2: _binary(image1, image2, np.multiply, None),
    "Image.divide": lambda ev, image1, image2: _binary(image1, image2, np.divide, None),
    "Image.add": lambda ev, image1, image2: _binary(image1, image2, np.add, None),
    "Image.subtract": lambda ev, image1, image2: _binary(image1, image2, np.subtract, None),
    "Image.pow": lambda ev, image1, image2: _binary(image1, image2, np.power, None),
    "Image.gt": lambda ev, image1, image2: _binary(image1, image2, lambda a, b: (a > b).astype(np.uint8), np.uint8),
    "Image.gte": lambda ev, image1, image2: _binary(image1, image2, lambda a, b: (a >= b).astype(np.uint8), np.uint8),
    "Image.lt": lambda ev, image1, image2: _binary(image1, image2, lambda a, b: (a < b).astype(np.uint8), np.uint8),
    "Image.lte": lambda ev, image1, image2: _binary(image1, image2, lambda a, b: (a <= b).astype(np.uint8), np.uint8),
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (SImage, SCollection, SFilter, SFunction)):
        raise EvalError(f"stand-in: cannot return a {type(value).__name__} as a value")
    if isinstance(value, SGeometry):
        return {"type": "Rectangle", "crs": value.crs, "coordinates": list(value.bbox)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ============================================================================================
# the HTTP server
# ============================================================================================


@dataclasses.dataclass
class Fault:
    """An error answer injected by ``fault_hook``."""

    status: int
    message: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Recorded:
    kind: str  # "value" | "pixels" | "token" | "discovery" | "algorithms" | "other"
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any = None
    t_start: float = 0.0
    t_end: float = 0.0
    status: int = 0
    response_bytes: int = 0
    request_bytes: int | None = None  # computePixels: Earth Engine's size of the request
    band_names: list[str] | None = None
    error: str | None = None
    _tree: Any = None

    @property
    def grid(self) -> dict | None:
        return (self.body or {}).get("grid") if isinstance(self.body, dict) else None

    @property
    def expression(self) -> dict | None:
        return (self.body or {}).get("expression") if isinstance(self.body, dict) else None

    @property
    def tree(self) -> Any:
        if self._tree is None and self.expression is not None:
            self._tree = inline(self.expression)
        return self._tree


_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _error_json(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": status, "message": message,
                                 "status": _STATUS_NAMES.get(status, "UNKNOWN")}}).encode()


def _ee_package_file(*parts: str) -> str:
    import ee  # noqa: PLC0415

    return os.path.join(os.path.dirname(ee.__file__), *parts)


_STATIC_CACHE: dict[str, bytes] = {}


def _discovery_bytes() -> bytes:
    if "discovery" not in _STATIC_CACHE:
        with open(_ee_package_file("tests", "cloud_api_discovery_document.json"), encoding="utf-8") as fh:
            text = fh.read()
        _STATIC_CACHE["discovery"] = text.replace("v1alpha", "v1").encode()
    return _STATIC_CACHE["discovery"]


def _algorithms_bytes() -> bytes:
    if "algorithms" not in _STATIC_CACHE:
        with open(_ee_package_file("tests", "algorithms.json"), "rb") as fh:
            _STATIC_CACHE["algorithms"] = fh.read()
    return _STATIC_CACHE["algorithms"]


class EEStandIn:
    """A threaded Earth Engine REST stand-in on 127.0.0.1 (use as a context manager).

    Args:
        catalog: the synthetic collections (default: :func:`default_catalog`).
        max_request_bytes: computePixels limit (Earth Engine's 48 MiB by default).
        max_parallel_compute: answers evaluated at once (None: no limit).
        latency_s: simulated compute time of each value / computePixels answer.
        require_token: if set, API calls need ``Authorization: Bearer <token>`` (401 otherwise).
        access_token: what ``/token`` hands out.
        fault_hook: ``fn(recorded) -> Fault | None`` called for value / computePixels requests
            before they are evaluated (``recorded.body`` is parsed); a Fault is answered as is.
        record_bodies: keep request bodies (expressions) in ``requests``.
        payload_only: benchmark mode. computePixels evaluates the expression graph (band names,
            dtypes and the size rule, exactly as in the normal mode) but no pixels: every request of
            one grid shape and band layout gets the NPY payload computed once, for the first grid of
            that shape (its pixels, right size and dtype). A benchmark's figure is then the
            client's, not the stand-in's numpy work. Pixel values of later grids are *not* those of
            their own area: never use this mode where a test checks pixels.
    """

    def __init__(self, catalog: Catalog | None = None, *, max_request_bytes: int = DEFAULT_LIMIT_BYTES,
                 latency_s: float = 0.0, require_token: str | None = None,
                 access_token: str = ACCESS_TOKEN,
                 fault_hook: Callable[[Recorded], Fault | None] | None = None,
                 record_bodies: bool = True, port: int = 0,
                 max_parallel_compute: int | None = None, payload_only: bool = False) -> None:
        self.payload_only = payload_only
        self._payloads: dict[tuple, bytes] = {}
        self._payload_lock = threading.Lock()
        self.catalog = catalog if catalog is not None else default_catalog()
        self.max_request_bytes = max_request_bytes
        self.latency_s = latency_s
        self.require_token = require_token
        self.access_token = access_token
        self.fault_hook = fault_hook
        self.record_bodies = record_bodies
        self._compute_slots = (threading.BoundedSemaphore(max_parallel_compute)
                               if max_parallel_compute else contextlib.nullcontext())
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.api_requests = 0
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> EEStandIn:
        standin = self

        class Handler(_Handler):
            pass
        Handler.standin = standin

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client that gave up (its deadline) closed the socket: not a stand-in error
                import sys  # noqa: PLC0415

                if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    return
                super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", self._port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ee-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> EEStandIn:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- inspection -----------------------------------------------------------------------------
    def of_kind(self, kind: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    @property
    def pixel_requests(self) -> list[Recorded]:
        return self.of_kind("pixels")

    @property
    def value_requests(self) -> list[Recorded]:
        return self.of_kind("value")

    def reset_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0
            self.api_requests = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            kinds: dict[str, int] = {}
            for r in self.requests:
                kinds[r.kind] = kinds.get(r.kind, 0) + 1
            size_errors = sum(1 for r in self.requests
                              if r.kind == "pixels" and (r.error or "").startswith("Total request size"))
            return {"requests": len(self.requests), "api_requests": self.api_requests,
                    "max_in_flight": self.max_in_flight, "by_kind": kinds,
                    "response_bytes": sum(r.response_bytes for r in self.requests),
                    "size_errors": size_errors,
                    "max_request_bytes": max((r.request_bytes or 0 for r in self.requests
                                              if r.kind == "pixels"), default=0)}

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    # ---- answers --------------------------------------------------------------------------------
    def compute_value(self, body: Mapping[str, Any]) -> Any:
        return _jsonable(Evaluator(body["expression"], self.catalog).run())

    def compute_pixels(self, body: Mapping[str, Any], rec: Recorded) -> bytes:
        if body.get("fileFormat") != "NPY":
            raise EvalError(f"stand-in: only fileFormat NPY is served, got {body.get('fileFormat')!r}")
        if "grid" not in body:
            raise EvalError("stand-in: computePixels without a grid is not supported")
        image = Evaluator(body["expression"], self.catalog).run()
        if not isinstance(image, SImage):
            raise EvalError(f"computePixels: expression is not an Image ({type(image).__name__})")
        dims = body["grid"].get("dimensions", {})
        width, height = int(dims.get("width", 0)), int(dims.get("height", 0))
        if width > MAX_GRID_PX or height > MAX_GRID_PX:
            raise EvalError(f"Grid dimensions ({width}x{height}) must be at most {MAX_GRID_PX} "
                            "pixels on each side.")
        names = list(image.bands)
        if body.get("bandIds"):
            names = [b for b in body["bandIds"]]
            missing = [b for b in names if b not in image.bands]
            if missing:
                raise EvalError(f"Band(s) {missing} not found in the image.")
        if not names:
            raise EvalError("Image has no bands.")
        # Earth Engine's rule: one mask byte per band per pixel (google/Xee#50)
        size = width * height * sum(image.bands[n].dtype.itemsize + 1 for n in names)
        rec.request_bytes = size
        rec.band_names = names
        if size > self.max_request_bytes:
            raise EvalError(f"Total request size ({size} bytes) must be less than or equal to "
                            f"{self.max_request_bytes} bytes.")
        if self.payload_only:
            key = (width, height, tuple((n, image.bands[n].dtype.str) for n in names))
            with self._lock:
                cached = self._payloads.get(key)
            if cached is not None:
                return cached
            # one computation per key even when the first requests of a shape arrive together
            with self._payload_lock:
                cached = self._payloads.get(key)
                if cached is None:
                    cached = self._pixels(body, image, names)
                    with self._lock:
                        self._payloads[key] = cached
            return cached
        return self._pixels(body, image, names)

    @staticmethod
    def _pixels(body: Mapping[str, Any], image: SImage, names: Sequence[str]) -> bytes:
        grid = Grid(body["grid"])
        out = np.zeros(grid.shape, dtype=[(n, image.bands[n].dtype) for n in names])
        for n in names:
            v, m = image.bands[n].eval(grid)
            dtype = image.bands[n].dtype
            vals = v if m.all() else np.where(m, v, 0)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                vals = np.clip(np.nan_to_num(vals), info.min, info.max)
            out[n] = vals
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: EEStandIn

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the server
        pass

    # ---- plumbing -------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        return len(payload)

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> int:
        return self._send(status, json.dumps(obj).encode(), "application/json; charset=UTF-8", headers)

    def _send_error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> int:
        return self._send(status, _error_json(status, message), "application/json; charset=UTF-8", headers)

    # ---- routes ---------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        s = self.standin
        path = unquote(urlsplit(self.path).path)
        rec = Recorded("other", path, {k.lower(): v for k, v in self.headers.items()}, t_start=time.monotonic())
        s._record(rec)
        if path.endswith("/$discovery/rest"):
            rec.kind = "discovery"
            rec.status = 200
            rec.response_bytes = self._send(200, _discovery_bytes(), "application/json")
        elif re.fullmatch(r"/v1/projects/[^/]+/algorithms", path):
            rec.kind = "algorithms"
            if not self._authorized():
                rec.status = 401
                self._send_error(401, "Request had invalid authentication credentials.")
            else:
                rec.status = 200
                rec.response_bytes = self._send(200, _algorithms_bytes(), "application/json")
        elif path == "/_standin/stats":
            rec.status = 200
            self._send_json(200, s.stats())
        else:
            rec.status = 404
            self._send_error(404, f"stand-in: no route GET {path}")
        rec.t_end = time.monotonic()

    def do_POST(self) -> None:  # noqa: N802
        s = self.standin
        path = unquote(urlsplit(self.path).path)
        raw = self._read_body()
        rec = Recorded("other", path, {k.lower(): v for k, v in self.headers.items()}, t_start=time.monotonic())
        s._record(rec)  # recorded first: the client may look as soon as it has the answer
        if path == "/token":
            rec.kind = "token"
            form = parse_qs(raw.decode())
            rec.body = {k: ("[assertion]" if k == "assertion" else v) for k, v in form.items()}
            rec.status = 200
            rec.t_end = time.monotonic()
            self._send_json(200, {"access_token": s.access_token, "expires_in": 3600,
                                  "token_type": "Bearer"})
            return
        m = re.fullmatch(r"/v1/projects/([^/]+)/(value:compute|image:computePixels)", path)
        if not m:
            rec.status = 404
            rec.t_end = time.monotonic()
            self._send_error(404, f"stand-in: no route POST {path}")
            return
        rec.kind = "value" if m.group(2) == "value:compute" else "pixels"
        with s._lock:
            s.in_flight += 1
            s.api_requests += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            status, payload, ctype, headers = self._answer(rec, raw)
        finally:
            rec.t_end = time.monotonic()
            with s._lock:  # out of flight before the client can see the answer
                s.in_flight -= 1
        rec.status = status
        rec.response_bytes = len(payload)
        self._send(status, payload, ctype, headers)

    def _answer(self, rec: Recorded, raw: bytes) -> tuple[int, bytes, str, dict[str, str]]:
        s = self.standin
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        rec.body = body
        try:
            if not self._authorized():
                raise EvalError("Request had invalid authentication credentials. Expected OAuth 2 "
                                "access token.", status=401)
            if body is None:
                raise EvalError("Invalid JSON payload received.")
            if s.latency_s:
                time.sleep(s.latency_s)
            if s.fault_hook is not None:
                fault = s.fault_hook(rec)
                if fault is not None:
                    rec.error = fault.message
                    return (fault.status, _error_json(fault.status, fault.message),
                            "application/json; charset=UTF-8", dict(fault.headers))
            with s._compute_slots:
                if rec.kind == "value":
                    result = s.compute_value(body)
                    return 200, json.dumps({"result": result}).encode(), "application/json; charset=UTF-8", {}
                return 200, s.compute_pixels(body, rec), "application/octet-stream", {}
        except EvalError as exc:
            rec.error = str(exc)
            return exc.status, _error_json(exc.status, str(exc)), "application/json; charset=UTF-8", {}
        except Exception as exc:  # a stand-in bug: answer 500 so that it shows
            rec.error = f"stand-in internal error: {type(exc).__name__}: {exc}"
            return 500, _error_json(500, rec.error), "application/json; charset=UTF-8", {}
        finally:
            if not s.record_bodies:
                rec.body = None

    def _authorized(self) -> bool:
        token = self.standin.require_token
        if token is None:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {token}"


# ============================================================================================
# fault helpers
# ============================================================================================


def fail_first(n: int, status: int = 429, message: str = "Too many concurrent requests.",
               kinds: Sequence[str] = ("value", "pixels"),
               headers: Mapping[str, str] | None = None) -> Callable[[Recorded], Fault | None]:
    """The first ``n`` matching requests get ``status``; the others pass."""
    lock = threading.Lock()
    left = [n]

    def hook(rec: Recorded) -> Fault | None:
        if rec.kind not in kinds:
            return None
        with lock:
            if left[0] > 0:
                left[0] -= 1
                return Fault(status, message, dict(headers or {}))
        return None
    return hook


def fail_when(pred: Callable[[Recorded], bool], status: int = 503,
              message: str = "The service is currently unavailable.") -> Callable[[Recorded], Fault | None]:
    """Every request for which ``pred(rec)`` holds gets ``status``."""
    def hook(rec: Recorded) -> Fault | None:
        return Fault(status, message) if pred(rec) else None
    return hook


def grid_contains(rec: Recorded, x: float, y: float) -> bool:
    """Whether a computePixels request's grid covers the point (x, y) (same CRS)."""
    g = rec.grid
    if not g:
        return False
    a = g["affineTransform"]
    w, h = g["dimensions"]["width"], g["dimensions"]["height"]
    x0, y0 = a["translateX"], a["translateY"]
    return x0 <= x < x0 + w * a["scaleX"] and y0 + h * a["scaleY"] < y <= y0


# ============================================================================================
# client-side helpers
# ============================================================================================


def patch_ee_offline(monkeypatch: Any = None) -> None:
    """Stop ``ee.Initialize`` from fetching the deprecated-assets list from storage.googleapis.com."""
    import ee  # noqa: PLC0415

    def no_fetch() -> dict:
        return {}
    if monkeypatch is not None:
        monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", no_fetch)
    else:
        ee.deprecation._FetchDataCatalogStac = no_fetch


def reset_ee() -> None:
    """Forget the ee client's configuration (and the provider's record of it)."""
    import ee  # noqa: PLC0415

    from rs_embed_pipeline.providers.gee import client  # noqa: PLC0415

    ee.Reset()
    with client.EE_CONFIG_LOCK:
        client.EE_CONFIG["key"] = None


_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@contextlib.contextmanager
def forbid_external_network() -> Iterator[None]:
    """Make any connection / name lookup other than 127.0.0.1 raise (tests stay offline)."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if host not in _LOCAL_HOSTS:
                raise ConnectionRefusedError(f"test network guard: connection to {host!r} blocked")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and h not in _LOCAL_HOSTS:
            raise socket.gaierror(f"test network guard: lookup of {h!r} blocked")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo  # type: ignore[assignment]


def make_service_account_key(path: str, token_uri: str, project_id: str = "sa-project") -> dict:
    """Write a service-account JSON key (fresh RSA key) whose token endpoint is ``token_uri``."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": f"pipeline@{project_id}.iam.gserviceaccount.com",
        "client_id": "123456789012345678901",
        "token_uri": token_uri,
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
    return info


def tile_rows(n_cols: int, n_rows: int = 1, *, size_px: int = 16, scale_m: float = 10.0,
              epsg: int = 32633, col0: int | None = None, row0: int | None = None,
              col_step: int = 1) -> list[dict[str, Any]]:
    """tile_grid-like rows on the lattice x0 = col * T, y0 = row * T (T = size_px * scale_m).

    Default origin near (400 km E, 4 600 km N); ``col_step=2`` leaves gaps (no two adjacent).
    """
    step = size_px * scale_m
    col0 = int(400_000 // step) if col0 is None else col0
    row0 = int(4_600_000 // step) if row0 is None else row0
    rows = []
    for r in range(n_rows):
        for c in range(n_cols):
            col, row = col0 + c * col_step, row0 - r
            scale_txt = f"{scale_m:g}".replace(".", "p")
            rows.append({
                "tile_id": f"{epsg}_p{size_px}_s{scale_txt}_c{col:05d}_r{row:05d}",
                "utm_epsg": epsg, "x0": col * step, "y0": row * step,
                "size_px": size_px, "scale_m": scale_m,
            })
    return rows


# ============================================================================================
# a fake clock for the provider (rate limiter, backoff): no test measures wall-clock time
# ============================================================================================


class FakeClock:
    """``clock()`` / ``sleep(s)`` for ``GEEProvider(clock=..., sleep=...)``; thread-safe.

    ``sleep`` returns at once and records the seconds asked (``sleeps``, in call order). With
    ``advance=True`` it also moves the clock forward (one sleeper at a time: exact for a single
    fetch thread); with ``advance=False`` the clock stands still, so that concurrent callers'
    token-bucket reservations are exact.
    """

    def __init__(self, start: float = 1000.0, advance: bool = True) -> None:
        self.now = float(start)
        self.advance = advance
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if self.advance:
                self.now += seconds


class MaxUpperRandom:
    """``rng`` without jitter: ``uniform(a, b)`` returns ``b`` (the full backoff delay)."""

    @staticmethod
    def uniform(a: float, b: float) -> float:
        return b


def hold_until_in_flight(standin: EEStandIn, n: int, linger_s: float = 0.1,
                         timeout_s: float = 30.0) -> Callable[[Recorded], Fault | None]:
    """Fault hook: the first ``n`` API requests wait in the stand-in until all ``n`` are in
    flight at once, then stay ``linger_s`` longer (a request beyond a cap of ``n`` would
    arrive meanwhile and raise ``max_in_flight`` above ``n``). The others pass."""
    barrier = threading.Barrier(n, timeout=timeout_s)
    lock = threading.Lock()
    seen = [0]

    def hook(rec: Recorded) -> Fault | None:
        with lock:
            seen[0] += 1
            held = seen[0] <= n
        if held:
            barrier.wait()
            time.sleep(linger_s)
        return None
    return hook


def main(argv: Sequence[str] | None = None) -> None:
    import argparse  # noqa: PLC0415
    import sys  # noqa: PLC0415

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-s", type=float, default=0.0)
    p.add_argument("--images", type=int, default=1, help="images per collection in 2024 Q1")
    p.add_argument("--compute-slots", type=int, default=os.cpu_count() or 1,
                   help="answers computed at once (the rest wait; latency is simulated apart)")
    p.add_argument("--payload-only", action="store_true",
                   help="serve one precomputed NPY payload per grid shape (benchmarks: no per-request pixels)")
    args = p.parse_args(argv)
    standin = EEStandIn(default_catalog(args.images), latency_s=args.latency_s,
                        record_bodies=False, port=args.port,
                        max_parallel_compute=args.compute_slots, payload_only=args.payload_only).start()
    print(f"READY {standin.url}", flush=True)
    try:
        for _ in sys.stdin:  # serve until stdin closes
            pass
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
