"""rs_embed_pipeline: remote-sensing foundation-model embeddings as partitioned Dagster assets.

This package is imported by two environments (docs/architecture.md): the orchestrator (Dagster) and the model
worker (torch). Keep this file free of imports so that either can import its half alone.
"""
