"""Dagster: the code location's definitions, resources, assets and checks, the pipeline plan, settings
(the only reader of the environment), executors, schedules, partitions, store leases and metadata.
The only package that imports Dagster (besides the demo command line); docs/architecture.md."""
