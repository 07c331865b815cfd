"""Asset factories: each module builds the assets of one stage from the pipeline configuration."""
