"""``python -m rs_embed_pipeline.cli.search``: the cells most similar to a point, a tile, a cell or a polygon.

Examples::

    python -m rs_embed_pipeline.cli.search --model terrafm_b --modality s2 --region demo \\
        --window 2024-01-01 --lon 6.62 --lat 46.51 --k 20
    python -m rs_embed_pipeline.cli.search ... --tile-id 32632_p224_s10_c00141_r02301 --kind pooled
    python -m rs_embed_pipeline.cli.search ... --polygon field.geojson --format geojson > hits.geojson

Reads the ``<model>_<modality>_search_index`` asset of the region and window when it was
materialized (milliseconds per query), otherwise indexes the cube window on the fly (exact search).
Stores are found like the pipeline finds them (``RS_EMBED_STORE``, default ``./data``; ``--store``
overrides). ``--model`` takes every name of a model (``terrafm``, ``terrafm_b``, ``thor``,
``thor_1_0_base``, ``thor_v1_base``, ...: ``cli/names.py``); an unknown model, or a region or model
without a cube, is an error listing the names and the cubes that exist. ``--format table`` (default) prints a table, ``geojson`` a FeatureCollection with
properties rank, score, cell_id, tile_id, window, kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import fsspec
from collections.abc import Sequence
from rs_embed_pipeline.cli.names import UsageError, missing_cube_message, model_names, valid_model_names
from rs_embed_pipeline.orchestration.settings import Settings
from rs_embed_pipeline.stores.cube.reader import CubeReadError
from rs_embed_pipeline.stores.layout import StoreLayout
from rs_embed_pipeline.products import similarity as S

MODALITIES = ("s2", "s1")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rs_embed_pipeline.cli.search", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help=f"any model name ({valid_model_names()})")
    ap.add_argument("--modality", required=True, choices=MODALITIES)
    ap.add_argument("--region", required=True)
    ap.add_argument("--window", required=True, help="window start, e.g. 2024-01-01")
    ap.add_argument("--lon", type=float)
    ap.add_argument("--lat", type=float)
    ap.add_argument("--tile-id", help="query with a tile (pooled: its vector; grid: the mean of its cells)")
    ap.add_argument("--cell-id", help="query with a grid cell id (<tile_id>/y<i>x<j>)")
    ap.add_argument("--polygon", help="GeoJSON (text or file) or WKT, lon/lat: the mean vector of the cells inside")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--kind", choices=("grid", "pooled"), default="grid")
    ap.add_argument("--format", choices=("table", "geojson"), default="table")
    ap.add_argument("--store", help="store root (default: RS_EMBED_STORE or ./data)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = args.store or Settings.from_env().store_root
    polygon = args.polygon
    if polygon and not polygon.lstrip().startswith(("{", "POLYGON", "MULTIPOLYGON")) and Path(polygon).is_file():
        polygon = Path(polygon).read_text()
    try:
        model = model_names(args.model).model_id
        uri = S.index_uri(root, model, args.modality, args.region, args.window, args.kind)
        try:
            index = S.load_index(uri)
        except S.SearchError:
            cube = StoreLayout(root).cube(model, args.modality, args.region)
            if not _exists(cube):
                raise UsageError(missing_cube_message(root, model, args.modality, args.region)) from None
            print(f"(no search index at {uri}: indexing the cube window now, exact search)", file=sys.stderr)
            index = S.build_index(cube, args.window, args.kind, ann="exact")
        hits = S.search(index, k=args.k, lon=args.lon, lat=args.lat, tile_id=args.tile_id,
                        cell_id=args.cell_id, polygon=polygon)
    except (S.SearchError, CubeReadError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "geojson":
        json.dump(S.to_geojson(hits), sys.stdout)
        print()
        return 0
    print(f"{len(hits)} cells most similar to {hits.attrs['query']} ({model} {args.modality}, "
          f"{args.region} {args.window}, {index.kind}, {len(index)} cells, {hits.attrs['method']} search "
          f"{hits.attrs['query_ms']:.2f} ms)")
    for row in hits.itertuples():
        c = row.geometry.centroid
        print(f"{row.rank:4d}  {row.score:.6f}  {row.cell_id:40s}  lon {c.x:.5f} lat {c.y:.5f}")
    return 0


def _exists(uri: str) -> bool:
    """Whether a cube (a Zarr group: its ``zarr.json``) is at ``uri``, locally or on S3."""
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.exists(f"{path}/zarr.json"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
