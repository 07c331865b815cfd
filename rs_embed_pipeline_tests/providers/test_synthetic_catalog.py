"""The synthetic STAC catalog generator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import rasterio

from rs_embed_pipeline.providers.local_catalogs.synthetic import (
    S2_ASSETS,
    S2_BAND_BASE_DN,
    S2_BAND_HALF_RANGE_DN,
    S2_DN_OFFSET,
    generate_synthetic_catalog,
    main,
)

SMALL = (14.900, 45.000, 14.906, 45.004)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_bytes(tmp_path):
    a = generate_synthetic_catalog(tmp_path / "a", SMALL, "2024-01-01", "2024-02-01", seed=3)
    b = generate_synthetic_catalog(tmp_path / "b", SMALL, "2024-01-01", "2024-02-01", seed=3)
    c = generate_synthetic_catalog(tmp_path / "c", SMALL, "2024-01-01", "2024-02-01", seed=4)
    da, db, dc = _digest(a.parent), _digest(b.parent), _digest(c.parent)
    assert da == db and len(da) > 20
    assert da.keys() == dc.keys()
    tifs = [k for k in da if k.endswith(".tif")]
    assert sum(da[k] != dc[k] for k in tifs) > 0.9 * len(tifs)
    assert all(da[k] != dc[k] for k in tifs if not k.endswith("_scl.tif"))
    # regenerating into the same directory overwrites it identically
    generate_synthetic_catalog(tmp_path / "a", SMALL, "2024-01-01", "2024-02-01", seed=3)
    assert _digest(a.parent) == da
    # a shorter window rewritten over it leaves no item of the longer one, and keeps foreign files
    (a.parent / "notes.txt").write_text("mine")
    generate_synthetic_catalog(tmp_path / "a", SMALL, "2024-01-01", "2024-01-10", seed=3)
    left = _digest(a.parent)
    assert "notes.txt" in left and len(left) < len(da)
    assert set(left) - {"notes.txt"} < set(da)


def test_catalog_structure(synthetic_catalog):
    cat = pystac.read_file(str(synthetic_catalog))
    assert {c.id for c in cat.get_children()} == {"synthetic-s2-l2a", "synthetic-s1-grd"}
    s2 = list(cat.get_child("synthetic-s2-l2a").get_items())
    s1 = list(cat.get_child("synthetic-s1-grd").get_items())
    assert len(s2) == 7 and len(s1) == 8  # Q1 2024: every 15 days / every 12 days from day 3
    s2.sort(key=lambda i: i.datetime)
    ccs = [it.properties["eo:cloud_cover"] for it in s2]
    assert ccs[1] == ccs[5] == 0 and ccs[3] > 50  # clear / overcast dates
    assert all(0 < c < 30 for c in ccs[0::2])
    for it in s2 + s1:
        assert it.properties["synthetic"] is True
        assert it.properties["proj:code"] == "EPSG:32633"
        raw = json.loads(Path(it.get_self_href()).read_text())
        assert raw["properties"]["proj:epsg"] == 32633  # (pystac migrates it away on read)
    it = s2[0]
    assert set(it.assets) == {k for k, _, _ in S2_ASSETS.values()} | {"scl"}
    for band, (key, res, _) in S2_ASSETS.items():
        a = it.assets[key]
        rb = a.extra_fields["raster:bands"][0]
        assert rb["scale"] == 0.0001 and rb["offset"] == -0.1 and rb["nodata"] == 0
        assert a.extra_fields["eo:bands"][0]["name"] == band
        assert a.extra_fields["proj:transform"][0] == res
        with rasterio.open(a.get_absolute_href()) as src:
            assert src.dtypes[0] == "uint16" and src.res == (res, res)
            assert src.profile["tiled"] and src.crs.to_epsg() == 32633
            assert src.shape == tuple(a.extra_fields["proj:shape"])
            assert src.transform[:6] == tuple(a.extra_fields["proj:transform"])
            arr = src.read(1)
        # cloud-free pixels sit in the band's own DN range (+ the baseline-04 offset)
        refl = arr.astype(int) - S2_DN_OFFSET
        lo = S2_BAND_BASE_DN[band] - S2_BAND_HALF_RANGE_DN
        hi = S2_BAND_BASE_DN[band] + S2_BAND_HALF_RANGE_DN
        assert ((refl > lo) & (refl < hi)).mean() > 0.5
    with rasterio.open(it.assets["scl"].get_absolute_href()) as src:
        assert src.dtypes[0] == "uint8" and src.res == (20.0, 20.0)
    cloudy = [x for x in s2 if x.properties["eo:cloud_cover"] > 0]
    with rasterio.open(cloudy[0].assets["scl"].get_absolute_href()) as src:
        scl = src.read(1)
    assert np.isin(scl, (8, 9)).any() and np.isin(scl, (4, 5, 6)).any()
    with rasterio.open(s1[0].assets["vv"].get_absolute_href()) as src:
        vv = src.read(1)
        assert src.dtypes[0] == "float32" and src.res == (10.0, 10.0)
    with rasterio.open(s1[0].assets["vh"].get_absolute_href()) as src:
        vh = src.read(1)
    assert (vv > 0).all() and (vv < 1).all() and (vh < vv).all()
    assert vv.std() > 0  # spatial structure


def test_cli(tmp_path, capsys):
    rc = main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--bbox",
            "14.900,45.000,14.904,45.003",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-15",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("catalog.json") and Path(out).exists()
