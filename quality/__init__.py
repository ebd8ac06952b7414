"""Data-quality suites (`suites/*.json`), shipped as `clarus_pipelines.quality` package data."""
