"""Where each asset's data lives under the store root (a directory or ``s3://bucket/prefix``).

```
<root>/tile_grid/<region>/<window>.parquet
<root>/patches/<modality>/<region>/<window>/p<size_px>.zarr
<root>/embeddings/<model>_<modality>/<region>/<window>.zarr
<root>/cubes/<model>_<modality>/<region>.zarr        (time grows; one group per UTM zone)
```
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class StoreLayout:
    root: str

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def tile_grid(self, region: str, window: str) -> str:
        return self._join("tile_grid", region, f"{window}.parquet")

    def patches(self, modality: str, region: str, window: str, size_px: int) -> str:
        return self._join("patches", modality, region, window, f"p{size_px}.zarr")

    def embeddings(self, model: str, modality: str, region: str, window: str) -> str:
        return self._join("embeddings", f"{model}_{modality}", region, f"{window}.zarr")

    def cubes(self, model: str, modality: str) -> str:
        """The folder of a model x modality's cubes (one per region or region cell)."""
        return self._join("cubes", f"{model}_{modality}")

    def cube(self, model: str, modality: str, region: str) -> str:
        return self._join("cubes", f"{model}_{modality}", f"{region}.zarr")
