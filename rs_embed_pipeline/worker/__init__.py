"""The model worker (runs in .venv-worker; no Dagster beyond dagster-pipes)."""
