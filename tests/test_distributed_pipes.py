"""The training assets with `processes: 2`: torchrun under Dagster Pipes (gloo on the CPU, tiny config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("dagster")

from tests.test_training import TINY  # noqa: E402

# The shortest night that still has a BC and a PPO stage: the test is the plumbing, not the learning.
SHORT = {**TINY, "profile": "tiny", "bc": {**TINY["bc"], "epochs": 1, "dagger_rounds": 0},
         "anneal": {**TINY["anneal"], "bc_accuracy_threshold": 0.0,
                    "schedule": [{"cycle": 0, "mode": "bc", "epochs": 1}, {"cycle": 1, "mode": "ppo", "epochs": 2}]}}
def test_the_training_assets_run_two_ranks_through_dagster_pipes(tmp_path):
    """`processes: 2` on the resource: BC and PPO each run as torchrun through Pipes; the ranks' progress
    reaches the run's log while the step runs, the night's checkpoint is recorded once, and the guardrails
    judge it as always."""
    from dagster import DagsterInstance

    from townlet_pipelines.pipeline.definitions import definitions_for

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(SHORT))
    run_config = {"resources": {"townlet": {"config": {"config_path": str(config), "processes": 2,
                                                       "artifacts_root": str(tmp_path / "artifacts")}}}}
    with DagsterInstance.ephemeral() as instance:
        result = definitions_for(str(config)).resolve_job_def("nightly_anneal").execute_in_process(
            run_config=run_config, instance=instance, partition_key="2026-11-05")
        assert result.success
        ppo = result.asset_materializations_for_node("ppo_checkpoint")[0].metadata
        assert ppo["processes"].value == 2
        assert Path(ppo["path"].value, "checkpoint.json").is_file()
        records = instance.all_logs(result.run_id)
        told = [r.user_message for r in records if r.step_key == "ppo_checkpoint" and r.dagster_event is None]
        assert any(line.startswith("ppo cycle") for line in told)  # rank 0's progress, through Pipes
        assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name != "action_distribution_sane")
        stages = json.loads(Path(ppo["stages_record"].value).read_text())
        ppo_config = TINY["ppo"]
        per_rank = ppo_config["rollout_towns"] * TINY["world"]["agents_per_town"] * ppo_config["rollout_ticks"]
        for stage, result_record in zip(SHORT["anneal"]["schedule"][1:], stages["results"]):
            assert result_record["transitions"] == 2 * per_rank * stage["epochs"]  # each rank its own towns


def test_a_failing_rank_fails_the_step_with_its_own_reason(tmp_path):
    from dagster import DagsterInstance

    from townlet_pipelines.pipeline.definitions import definitions_for

    config = tmp_path / "tiny.yaml"
    # every rank refuses the split: 4 episodes leave none to train on with val_fraction 0.9
    config.write_text(yaml.safe_dump({**TINY, "profile": "tiny", "bc": {**TINY["bc"], "val_fraction": 0.9}}))
    run_config = {"resources": {"townlet": {"config": {"config_path": str(config), "processes": 2,
                                                       "artifacts_root": str(tmp_path / "artifacts")}}}}
    with DagsterInstance.ephemeral() as instance:
        result = definitions_for(str(config)).resolve_job_def("nightly_anneal").execute_in_process(
            run_config=run_config, instance=instance, partition_key="2026-11-05", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.get_step_failure_events() if e.step_key == "bc_checkpoint")
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("rank 0: ") and "cannot be split with val_fraction=0.9" in description
