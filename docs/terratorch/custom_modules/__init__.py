"""TerraTorch ``custom_modules``: importing this registers THOR v1 (``thor_v1_tiny|small|base|large``)
in TerraTorch's backbone registry, from rs_embed_pipeline (installed in the environment, or this
repository on ``PYTHONPATH``). ``terratorch fit`` imports it through ``custom_modules_path`` (or
by itself when a ``custom_modules`` folder sits in the working directory)."""

import rs_embed_pipeline.models.terratorch_ext  # noqa: F401 - registers on import
