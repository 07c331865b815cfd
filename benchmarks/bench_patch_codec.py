"""Which codec for the patch stores' ``data``? Decode speed per core and bytes per S2 tile.

    .venv/bin/python benchmarks/bench_patch_codec.py                 # 64 tiles of 224 px, 12 bands

S2 tiles come from the real fetch (``LocalStacProvider``, median composite) over the synthetic
catalog (generated once under ``--workdir``), repeated to ``--tiles`` tiles. Each candidate layout
holds them one chunk per tile; the read is ``TileStore.read`` batch by batch (8 tiles) with zarr's
thread pool and Blosc at one thread, so the CPU time is one core's. Printed per layout: CPU ms per
tile to read and decode to float32 provider units (and to encode and write them), its ratio to today's layout (float32, Blosc
zstd-1 byte shuffle) measured in the same run, and stored bytes per tile and their ratio. The
``dy-zigzag`` / ``dx-zigzag`` rows store the codes as zigzag differences to the previous row / column
(exact; undone on the host after the read, which the read time includes): candidates for #21's
bytes target. The ``delta_y`` rows store row differences without zigzag (modulo 2**16); ``(new)``
is the layout of new stores, Blosc zstd-6 no shuffle, one Blosc block per tile (``2M``: blocksize
2 MiB; the others Blosc's own block size), written and read by ``TileStore`` (``ArraySpec(filter=)``:
the running sum is one numpy add per row over the read batch); ``--batch`` tiles per read (the
worker reads its batch: 32 on the CPU benchmarks, 256 on a GPU).
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START, END = "2024-01-01", "2024-04-01"
LON, LAT = 14.90, 45.00  # UTM 33N


def synthetic_s2_tiles(workdir: Path, km: float, side: int) -> np.ndarray:
    """Every ok S2 tile (float32 provider units) of a ``km`` x ``km`` region of the synthetic catalog."""
    from rs_embed_pipeline.core.grid import bbox_aoi, build_tile_grid
    from rs_embed_pipeline.providers import S2_BANDS, LocalStacProvider
    from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog

    dlat = km / 111.32
    bbox = (LON, LAT, LON + km / (111.32 * math.cos(math.radians(LAT))), LAT + dlat)
    work = workdir / f"km{km:g}"
    if not (work / "catalog.json").exists():
        generate_synthetic_catalog(work, bbox, START, END, seed=0, s2_revisit_days=10, s1=False, pad_m=600.0)
    tiles = build_tile_grid(bbox_aoi(*bbox), side, 10.0)
    provider = LocalStacProvider(work / "catalog.json", max_workers=1)
    return np.stack([p.data for p in provider.fetch_patches(tiles, START, END, "s2", bands=list(S2_BANDS))
                     if p.status == "ok"])


def filtered(codes: np.ndarray, how: str) -> np.ndarray:
    """uint16 codes as differences to the previous row (``dyz``) or column (``dxz``), zigzag-mapped
    (small magnitudes -> small codes); exact modulo 2**16."""
    axis = -2 if how == "dyz" else -1
    d = codes.copy()
    head = [slice(None)] * d.ndim
    tail = [slice(None)] * d.ndim
    head[axis], tail[axis] = slice(1, None), slice(None, -1)
    d[tuple(head)] -= codes[tuple(tail)]
    s = d.view(np.int16)
    return ((s << 1) ^ (s >> 15)).view(np.uint16)


def unfilter(stored: np.ndarray, how: str) -> np.ndarray:
    """:func:`filtered` undone: zigzag back, then a running sum along the axis (wrapping in uint16)."""
    s = stored >> 1
    s ^= (-(stored & 1).view(np.int16)).view(np.uint16)
    return np.cumsum(s, axis=-2 if how == "dyz" else -1, dtype=np.uint16, out=s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--km", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3, help="best of N reads per layout")
    ap.add_argument("--batch", type=int, default=8, help="tiles per read")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rs_embed_bench_codec"))
    args = ap.parse_args(argv)

    import numcodecs.blosc
    import zarr
    from zarr.codecs import BloscCodec

    from rs_embed_pipeline.stores import TileStore
    from rs_embed_pipeline.stores.patch_encoding import (
        FILTER_ATTR, FLOAT32, ROW_DELTA, ROW_DELTA_BLOCKSIZE, S2_DN_HALF_UINT16, apply_filter,
    )

    numcodecs.blosc.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1})
    fetched = synthetic_s2_tiles(args.workdir, args.km, args.side)
    data = np.concatenate([fetched] * math.ceil(args.tiles / len(fetched)))[: args.tiles]
    codes, adjusted = S2_DN_HALF_UINT16.encode(data)
    assert int(adjusted.sum()) == 0 and np.array_equal(S2_DN_HALF_UINT16.decode(codes), data), "encoding not exact"
    layouts = {
        "float32 zstd-1 shuffle (today)": (FLOAT32, "zstd", 1, "shuffle"),
        "uint16 lz4 shuffle": (S2_DN_HALF_UINT16, "lz4", 5, "shuffle"),
        "uint16 lz4 bitshuffle": (S2_DN_HALF_UINT16, "lz4", 5, "bitshuffle"),
        "uint16 zstd-1 shuffle": (S2_DN_HALF_UINT16, "zstd", 1, "shuffle"),
        "uint16 zstd-1 bitshuffle": (S2_DN_HALF_UINT16, "zstd", 1, "bitshuffle"),
        "uint16 zstd-3 shuffle": (S2_DN_HALF_UINT16, "zstd", 3, "shuffle"),
        "uint16 zstd-5 shuffle": (S2_DN_HALF_UINT16, "zstd", 5, "shuffle"),
        "uint16 zstd-5 bitshuffle": (S2_DN_HALF_UINT16, "zstd", 5, "bitshuffle"),
        # a filter before the codec (not a layout of the stores: measured for #21's 0.55x bytes target)
        "uint16 dy-zigzag zstd-3 shuffle": (S2_DN_HALF_UINT16, "zstd", 3, "shuffle", "dyz"),
        "uint16 dy-zigzag zstd-5 shuffle": (S2_DN_HALF_UINT16, "zstd", 5, "shuffle", "dyz"),
        "uint16 dy-zigzag zstd-5 bitshuffle": (S2_DN_HALF_UINT16, "zstd", 5, "bitshuffle", "dyz"),
        "uint16 dx-zigzag zstd-5 shuffle": (S2_DN_HALF_UINT16, "zstd", 5, "shuffle", "dxz"),
        # new stores' layout: TileStore applies and undoes the filter
        "uint16 delta_y zstd-5 bitshuffle": (S2_DN_HALF_UINT16, "zstd", 5, "bitshuffle", ROW_DELTA),
        "uint16 delta_y zstd-5 noshuffle": (S2_DN_HALF_UINT16, "zstd", 5, "noshuffle", ROW_DELTA),
        "uint16 delta_y zstd-5 noshuffle 2M": (S2_DN_HALF_UINT16, "zstd", 5, "noshuffle", ROW_DELTA, ROW_DELTA_BLOCKSIZE),
        "uint16 delta_y zstd-7 noshuffle 2M": (S2_DN_HALF_UINT16, "zstd", 7, "noshuffle", ROW_DELTA, ROW_DELTA_BLOCKSIZE),
        "uint16 delta_y zstd-6 noshuffle 2M (new)": (S2_DN_HALF_UINT16, "zstd", 6, "noshuffle", ROW_DELTA,
                                                     ROW_DELTA_BLOCKSIZE),
    }
    new = S2_DN_HALF_UINT16.compressors(ROW_DELTA)[0]  # the "(new)" row is what new stores use
    assert (new.cname.value, new.clevel, new.shuffle.value, new.blocksize) == ("zstd", 6, "noshuffle", ROW_DELTA_BLOCKSIZE)
    for f in ("dyz", "dxz"):
        assert np.array_equal(unfilter(filtered(codes, f), f), codes), f"{f} not exact"
    root = Path(tempfile.mkdtemp(prefix="bench_codec_"))
    rows = []
    try:
        for label, (enc, cname, level, shuffle, *filt) in layouts.items():
            f = filt[0] if filt else None
            blocksize = filt[1] if len(filt) > 1 else 0
            uri = str(root / label.split(" (")[0].replace(" ", "_"))
            n, c = data.shape[:2]
            group = zarr.open_group(uri, mode="w")
            arr = group.create_array("data", shape=data.shape, chunks=(1, c, args.side, args.side), dtype=enc.dtype,
                                     compressors=[BloscCodec(cname=cname, clevel=level, shuffle=shuffle, blocksize=blocksize,
                                                             typesize=np.dtype(enc.dtype).itemsize)],
                                     attributes={**enc.attributes(), **({FILTER_ATTR: f} if f == ROW_DELTA else {})},
                                     fill_value=0)
            c0 = time.process_time()
            if f == ROW_DELTA:
                arr[:] = apply_filter(codes, f)
            else:
                arr[:] = (filtered(codes, f) if f else codes) if enc is S2_DN_HALF_UINT16 else data
            write_ms = 1e3 * (time.process_time() - c0) / n
            nbytes = sum(p.stat().st_size for p in Path(uri, "data").rglob("*") if p.is_file() and p.name != "zarr.json")
            store = TileStore(zarr.open_group(uri, mode="r"), uri)
            if f == ROW_DELTA:  # exact through the store
                assert np.array_equal(store.read_stored("data", range(n)), codes), "delta_y not exact"
            best = math.inf
            for _ in range(args.repeat):
                c0 = time.process_time()
                for s in range(0, n, args.batch):
                    batch = range(s, min(n, s + args.batch))
                    if f and f != ROW_DELTA:  # the filter undone on the host, then the codes decoded
                        enc.decode(unfilter(store.read_stored("data", batch), f))
                    else:
                        store.read("data", batch)  # decoded to float32 (delta_y undone by the store)
                best = min(best, time.process_time() - c0)
            rows.append((label, 1e3 * best / n, nbytes / n, write_ms))
        base_ms, base_bytes = rows[0][1], rows[0][2]
        print(f"bench_patch_codec: {args.tiles} S2 tiles {args.side} px x {data.shape[1]} bands (synthetic catalog, "
              f"median composite), one core; {platform.processor() or platform.machine()}")
        print(f"{'layout':40s} {'read ms/tile':>12s} {'x today':>8s} {'KB/tile':>9s} {'x today':>8s} {'write ms/tile':>13s}")
        for label, ms, nbytes, write_ms in rows:
            print(f"{label:40s} {ms:12.2f} {ms / base_ms:8.2f} {nbytes / 1e3:9.0f} {nbytes / base_bytes:8.2f} "
                  f"{write_ms:13.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
