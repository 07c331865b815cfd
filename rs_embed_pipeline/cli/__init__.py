"""Command-line tools: ``python -m rs_embed_pipeline.cli.demo`` (``make demo``),
``python -m rs_embed_pipeline.cli.build`` (materialize named regions x windows without the UI) and
``python -m rs_embed_pipeline.cli.search`` (similarity search over a finished cube); also as
``python -m rs_embed_pipeline <command>``. ``names.py``: the model names and listings they share."""
