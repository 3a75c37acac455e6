"""The benchmarks' own fixtures: `hollow_nightly` must keep the real job's shape, or its floor means nothing."""

from __future__ import annotations

import pytest

pytest.importorskip("dagster")

from dagster import DagsterInstance  # noqa: E402

from townlet_pipelines.bench import hollow_nightly  # noqa: E402
from townlet_pipelines.pipeline.definitions import defs  # noqa: E402


def _shape(definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    return {key.to_user_string(): (sorted(parent.to_user_string() for parent in graph.get(key).parent_keys),
                                   sorted(check.name for check in graph.get(key).check_keys),
                                   graph.get(key).partitions_def == hollow_nightly.NIGHTS)
            for key in graph.get_all_asset_keys()}


def test_the_hollow_twin_has_the_real_jobs_assets_inputs_checks_and_nights():
    assert _shape(hollow_nightly.defs) == _shape(defs)


def test_the_hollow_twin_runs_a_night_with_every_check_passing(tmp_path):
    job = hollow_nightly.defs.resolve_job_def("nightly_anneal")
    config = {"resources": {"townlet": {"config": {"config_path": "smoke", "artifacts_root": str(tmp_path)}}}}
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(run_config=config, instance=instance, partition_key="2026-11-05")
    assert result.success and len(result.get_asset_materialization_events()) == 6
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 11 and all(evaluation.passed for evaluation in evaluations)  # the job's check specs
