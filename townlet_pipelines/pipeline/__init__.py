"""The Dagster layer: assets, checks, jobs, schedules and resources that only wire the core together.

`townlet_pipelines.pipeline.definitions` holds `defs` (named by workspace.yaml). Nothing below this
package imports Dagster.
"""
