"""Command-line tools: ``python -m rs_embed_pipeline.cli.demo`` (``make demo``) and
``python -m rs_embed_pipeline.cli.search`` (similarity search over a finished cube)."""
