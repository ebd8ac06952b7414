"""The shipped example policies (`sandbox.yaml`), installed as `clarus_pipelines.config` package data."""
