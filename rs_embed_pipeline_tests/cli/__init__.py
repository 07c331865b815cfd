"""Tests of the command lines (rs_embed_pipeline/cli/)."""
