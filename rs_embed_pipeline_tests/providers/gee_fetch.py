"""The fetch call the Earth Engine provider tests share: one ``fetch_patches`` call, its patches
by tile id, each row answered exactly once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rs_embed_pipeline.providers import Patch

#: The stand-in's quarter (its scenes fall in Q1 2024).
Q1 = ("2024-01-01", "2024-04-01")


def fetch(provider: Any, rows: Any, modality: str = "s2", window: tuple[str, str] = Q1,
          bands: Iterable[str] | None = None, **options: Any) -> dict[str, Patch]:
    """Patches by tile id; ``rows`` a list of tile rows or a tile-grid GeoDataFrame."""
    out: dict[str, Patch] = {}
    band_list = None if bands is None else list(bands)
    for patch in provider.fetch_patches(rows, window[0], window[1], modality, bands=band_list, **options):
        assert patch.tile_id not in out, f"tile {patch.tile_id} answered twice"
        out[patch.tile_id] = patch
    ids = list(rows["tile_id"]) if hasattr(rows, "columns") else [r["tile_id"] for r in rows]
    assert set(out) == set(ids)
    return out


def fetch_b2(provider: Any, rows: Any, bands: Iterable[str] = ("B2",), **options: Any) -> dict[str, Patch]:
    """:func:`fetch` of band B2 unless ``bands`` are given: the request-size and throughput tests
    count one band's bytes per pixel."""
    return fetch(provider, rows, bands=bands, **options)
