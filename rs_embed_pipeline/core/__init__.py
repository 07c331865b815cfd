"""The domain: tile grid (``grid``), regions and windows (``regions``), the shared vocabulary,
store fingerprints, patch inspection and time parsing. Imports neither Dagster nor torch; both
Python environments use it (docs/architecture.md)."""
