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


def test_bench_nights_reports_the_distribution_and_draws_the_champion_across_nights():
    import xml.etree.ElementTree as ET

    from townlet_pipelines.bench.nights import picture, summary_line, table

    expert = {"reward_per_agent_day": -20.0, "reward_per_agent_day_ci95": 0.2, "towns": 128.0,
              "queue_conflict_events_per_agent_day": 0.16}
    random = {"reward_per_agent_day": -50.0}

    def scored(reward: float) -> dict:
        return {"reward_per_agent_day": reward, "vs_expert": reward + 20.0, "vs_expert_ci95": 0.2,
                "vs_expert_pct": 100 * (reward + 20.0) / 20.0, "conflicts_x_expert": 0.8, "wages_x_expert": 0.99,
                "queue_conflict_events_per_agent_day": 0.128, "faints_per_agent_day": 0.0}

    rows = [{"night": f"2026-11-2{index}", "status": status, "reason": reason, "started_from": "abc: why",
             "promoted": promoted, "release_after": "r0001", "seconds": 200.0, "guardrail_champion": None,
             "validation_conflicts": 0.1, "guardrail_conflicts": 0.11, "guardrail_conflicts_ci95": 0.01,
             "candidate": scored(reward), "champion_after": scored(-4.0)}
            for index, (status, reason, promoted, reward) in enumerate(
                [("PASS", "every guardrail passed", True, -4.0), ("HOLD", "conflicts 0.2 > limit 0.18", False, -3.0),
                 ("PASS", "every guardrail passed", False, -6.0)])]
    text = table(rows, expert, random, "header")
    assert text.count("\n| 2026-11-2") == 3 and "2026-11-21 HOLD: conflicts 0.2 > limit 0.18" in text
    assert "0.100 / 0.110 ± 0.010" in text  # validation beside guardrail conflicts
    assert summary_line(rows) == ("candidate over the expert on held-out reward: median +80.0%, worst +70.0%, "
                                  "best +85.0% over 3 nights")
    root = ET.fromstring(picture(rows, expert))
    keys = {line.get("data-key") for line in root.iter("{http://www.w3.org/2000/svg}polyline")}
    assert {"champion_reward", "candidate_reward", "champion_conflicts"} <= keys


def test_bench_evaluation_times_the_three_paths_and_finds_their_kpis_identical(capsys):
    """`bench evaluation` scores one network the old way, the fast way and split across processes, and refuses
    (exit) when their KPIs differ; on 32 smoke towns (two shares of 16) it must report all three identical, and
    with too few towns to split it names no split row."""
    import argparse

    from townlet_pipelines.bench import evaluation

    evaluation.main(argparse.Namespace(config="smoke", checkpoint=None, towns=32, first_seed=60_000_000,
                                       processes=2, rounds=1))
    out = capsys.readouterr().out
    assert out.count("identical KPIs") == 3 and "DIFFER" not in out
    assert "full path" in out and "fast, 2 processes" in out
    evaluation.main(argparse.Namespace(config="smoke", checkpoint=None, towns=4, first_seed=60_000_000,
                                       processes=2, rounds=1))
    out = capsys.readouterr().out
    assert out.count("identical KPIs") == 2 and "processes" not in out.split("seconds per 64 towns")[1]
