"""The code location (workspace.yaml, ``[tool.dagster]``, ``dg``, deploy/): the Definitions of this
environment's settings. Built by ``orchestration.definitions.build_definitions``."""

from rs_embed_pipeline.orchestration.definitions import build_definitions
from rs_embed_pipeline.orchestration.settings import Settings

defs = build_definitions(Settings.from_env())
