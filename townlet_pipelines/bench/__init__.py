"""Benchmarks: scripts that print figures (never timed tests). Run `python -m townlet_pipelines.bench --help`."""
