"""COG reads over HTTP (Range requests, as from a cloud bucket): neighbouring blocks never download
the same bytes of a COG twice, and the pixels equal those read from the local files."""

from __future__ import annotations

import copy
import re
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import rasterio.shutil

from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
from rs_embed_pipeline.providers import StacProvider
from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

from .conftest import LocalHttpServer, earth_search_items
from .test_catalogs import _day

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]


class RangeServer(LocalHttpServer):
    """Static files on 127.0.0.1 with single-range GET and HEAD (like a bucket); every request
    is logged as ``(method, path, first_byte, last_byte)``."""

    def __init__(self, root: Path) -> None:
        self.log: list[tuple[str, str, int | None, int | None]] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root), **k)

            def log_message(self, *args):
                pass

            def _serve(self, head: bool) -> None:
                path = Path(self.translate_path(self.path))
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                first, last = (int(m[1]), min(int(m[2] or size - 1), size - 1)) if m else (0, size - 1)
                server.log.append(("HEAD" if head else "GET", self.path, first if m else None, last if m else None))
                self.send_response(206 if m else 200)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(last - first + 1))
                if m:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self.end_headers()
                if not head:
                    with open(path, "rb") as f:
                        f.seek(first)
                        self.wfile.write(f.read(last - first + 1))

            def do_GET(self):
                self._serve(head=False)

            def do_HEAD(self):
                self._serve(head=True)

        super().__init__(Handler)

    def downloaded_twice(self) -> dict[str, int]:
        """Bytes of each file that more than one ranged GET carried."""
        out = {}
        for path in {p for _, p, _, _ in self.log}:
            spans = sorted((a, b) for m, p, a, b in self.log if p == path and m == "GET" and a is not None)
            twice, reach = 0, -1
            for a, b in spans:
                if a <= reach:
                    twice += min(b, reach) - a + 1
                reach = max(reach, b)
            if twice:
                out[path] = twice
        return out


BBOX = (14.90, 45.00, 14.94, 45.03)  # ~3 x 3 km, one scene


@pytest.fixture
def http_archive(tmp_path):
    """One synthetic scene's red band and SCL re-encoded as uncompressed COGs with 32 px internal
    tiles (neighbouring test tiles share COG tiles along their edges), served over HTTP with Range
    support; returns ``(local item, http item, server, collection, (start, end), tiles)``."""
    catalog = generate_synthetic_catalog(tmp_path / "syn", BBOX, "2024-01-01", "2024-01-20", seed=0,
                                         s2_revisit_days=30, s1=False)
    items, coll = earth_search_items(catalog)
    (scene,) = items
    www = tmp_path / "www"
    www.mkdir()
    local = copy.deepcopy(scene)
    local["assets"] = {k: a for k, a in local["assets"].items() if k in ("red", "scl")}
    for key, a in local["assets"].items():
        out = www / f"{key}.tif"
        rasterio.shutil.copy(a["href"], str(out), driver="COG", blocksize=32, compress="NONE", overviews="NONE")
        a["href"] = str(out)
    assert (www / "red.tif").stat().st_size > 4 * 32768, "the COG must be larger than GDAL's header read"
    server = RangeServer(www).__enter__()
    remote = copy.deepcopy(local)
    for key, a in remote["assets"].items():
        a["href"] = f"{server.url}/{key}.tif"
    grid = build_tile_grid(bbox_aoi(*BBOX), 32, 10.0)
    cols, rows = sorted(grid["x0"].unique()), sorted(grid["y0"].unique())
    mid_x, mid_y = cols[len(cols) // 2 - 1: len(cols) // 2 + 2], rows[len(rows) // 2 - 1: len(rows) // 2 + 2]
    tiles = grid[grid["x0"].isin(mid_x) & grid["y0"].isin(mid_y)].reset_index(drop=True)  # 3 x 3 tiles
    yield local, remote, server, coll, _day(scene), tiles
    server.__exit__(None, None, None)


@pytest.mark.parametrize("gdal", [None, {"GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_HTTP_MULTIRANGE": "PARALLEL"}],
                         ids=["defaults", "parallel_ranges"])
def test_blocks_never_download_a_cog_byte_twice(http_archive, stac_api, gdal):
    local, remote, server, coll, (s, e), tiles = http_archive
    assert len(tiles) == 9
    got = {}
    for name, item in (("http", remote), ("local", local)):
        api = stac_api([item], [coll])
        # one block per 32 px tile: neighbouring blocks share the COG tiles along their edges
        prov = StacProvider(api_url=api.url, max_workers=2, max_block_px=32, cloudy_pct=None, rio_config=gdal)
        got[name] = {p.tile_id: p for p in prov.fetch_patches(tiles, s, e, "s2", bands=["B4"], composite="mosaic")}
    for tid, p in got["local"].items():
        assert p.status == got["http"][tid].status and p.status in ("ok", "no_data")
        np.testing.assert_array_equal(p.data, got["http"][tid].data)
    assert sum(p.status == "ok" for p in got["http"].values()) >= 5
    gets = [r for r in server.log if r[0] == "GET"]
    assert len(gets) >= 4 and all(r[2] is not None for r in gets), "ranged reads past the header"
    twice = server.downloaded_twice()
    if gdal is None:
        assert twice == {}, f"bytes downloaded twice per file: {twice}"
    else:  # GDAL's in-read threads / parallel ranges bypass the curl cache (why gdal_env.py sets them off)
        assert twice, "expected re-downloads with the parallel settings; the test no longer sees them"
