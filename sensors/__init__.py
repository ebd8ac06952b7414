"""Dagster sensors, one module per flow; installed as `clarus_pipelines.sensors` (see pyproject.toml)."""
