"""Dagster assets, one module per flow; installed as `clarus_pipelines.assets` (see pyproject.toml)."""
