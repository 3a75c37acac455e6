"""BC, PPO and Anneal on tiny configs: real learning, typed results, guardrails that fire on demand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from townlet_pipelines.config import config_from_mapping  # noqa: E402
from townlet_pipelines.data.promotion import PromotionStore  # noqa: E402
from townlet_pipelines.data.replay import ReplayDataset  # noqa: E402
from townlet_pipelines.results import AnnealSummary, BCTrainingResult, PPOTrainingResult  # noqa: E402
from townlet_pipelines.training import orchestrator  # noqa: E402
from townlet_pipelines.training.checkpoints import load_checkpoint, read_record  # noqa: E402
from townlet_pipelines.training.rollouts import gae  # noqa: E402
from townlet_pipelines.training.torch_support import TrainingError  # noqa: E402

TINY = {
    "world": {"agents_per_town": 4, "day_ticks": 360, "episode_days": 1,
              "jobs": {"work_window_before": 30, "jobs": [
                  {"name": "early", "shift_start": 90, "shift_end": 180},
                  {"name": "late", "shift_start": 200, "shift_end": 290}]}},
    "model": {"conv_channels": [8, 16], "hidden": 64},
    "rollout": {"towns": 4, "ticks": 360, "shard_rows": 2048, "expert_noise": 0.0},
    "bc": {"epochs": 4, "batch_size": 128, "learning_rate": 0.002, "dagger_rounds": 1, "dagger_towns": 2},
    "ppo": {"rollout_towns": 2, "rollout_ticks": 32, "updates": 2, "minibatches": 2, "update_epochs": 2,
            "select_keep_start": False},  # the stages here must move off their start; tests/test_constrained.py keeps it
    "evaluation": {"ticks": 120},
    "seeds": {"validation": {"start": 40000000, "count": 2}, "guardrail": {"start": 50000000, "count": 2},
              "test": {"start": 90000000, "count": 2}},
    "runtime": {"device": "cpu"},
    "anneal": {"schedule": [{"cycle": 0, "mode": "bc", "epochs": 4},
                            {"cycle": 1, "mode": "ppo", "epochs": 2, "bc_weight": 0.1},
                            {"cycle": 2, "mode": "ppo", "epochs": 2, "bc_weight": 0.1}],
               "loss_tolerance": 100.0, "queue_tolerance": 100.0, "intensity_tolerance": 100.0,
               "expert_tolerance": 100.0},  # plumbing: a 2-town, 2-update candidate need not beat the expert
}


def tiny(**overrides):
    data = json.loads(json.dumps(TINY))
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return config_from_mapping(data, "tiny")


@pytest.fixture(scope="module")
def expert_dataset(tmp_path_factory) -> Path:
    return orchestrator.capture_expert(tiny(), tmp_path_factory.mktemp("expert") / "data").path


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory, expert_dataset):
    root = tmp_path_factory.mktemp("bc-root")
    context = orchestrator.make_context(tiny(), orchestrator.new_run_dir(root), root)
    return context, orchestrator.run_bc(context, expert_dataset)


def test_bc_learns_the_expert_far_above_chance(bc_run, expert_dataset):
    context, result = bc_run
    assert isinstance(result, BCTrainingResult)
    assert BCTrainingResult.model_validate_json(result.model_dump_json()) == result
    counts = ReplayDataset.open(expert_dataset, verify="none").manifest.metrics.action_counts
    majority = max(counts.values()) / sum(counts.values())
    assert result.val_accuracy >= 0.9 and result.val_accuracy > majority + 0.05
    assert result.val_rows > 0 and result.train_rows > 0 and result.device == "cpu"
    logs = sorted((context.artifacts / "logs").glob("bc.*.jsonl"))
    entries = [json.loads(line) for path in logs for line in path.read_text().splitlines()]
    assert [entry["phase"] for entry in entries] == ["expert 0", "expert 1", "expert 2", "expert 3", "dagger 1.0",
                                                     "dagger 1.1", "expert refresh 1"]
    # The DAgger round's rollouts were driven by the network and labelled by the expert.
    own = ReplayDataset.open(Path(result.checkpoint_path).parent / "bc-dagger1")
    assert own.manifest.generator.kind == "checkpoint" and result.dagger_rows == own.rows > 0
    assert own.manifest.value_source == "policy"


def test_checkpoint_round_trip_and_spec_refusal(bc_run, tmp_path):
    _, result = bc_run
    record = read_record(result.checkpoint_path)
    assert record.checkpoint_id == result.checkpoint_id and record.kind == "bc"
    assert not list(Path(result.checkpoint_path).glob("*.pt")) and not list(Path(result.checkpoint_path).glob("*.pkl"))
    model, _ = load_checkpoint(result.checkpoint_path, record.observation)
    again, _ = load_checkpoint(result.checkpoint_path)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other = record.observation.model_copy(update={"variant": "compact", "map_shape": None})
    with pytest.raises(TrainingError, match="does not match"):
        load_checkpoint(result.checkpoint_path, other)


def test_ppo_from_bc_has_finite_losses_and_moving_ratios(bc_run, expert_dataset):
    context, bc = bc_run
    result = orchestrator.run_ppo(context, bc.checkpoint_path, expert_dataset, "mixed")
    assert isinstance(result, PPOTrainingResult)
    assert PPOTrainingResult.model_validate_json(result.model_dump_json()) == result
    for name in ("loss_policy", "loss_value", "loss_entropy", "loss_total", "grad_norm", "kl_divergence"):
        assert np.isfinite(getattr(result, name)), name
    assert result.clip_fraction_max > 0 and result.kl_divergence_max > 0
    assert result.parent_checkpoint_id == bc.checkpoint_id
    assert result.transitions > result.steps * 2 * 4  # mixed mode added replay rows to the rollout rows
    assert result.env_steps_per_sec > 0 and result.evaluation["agent_days"] > 0


def test_ppo_warns_of_critic_less_replay_rows_only_where_it_trains_on_them(bc_run, expert_dataset, caplog):
    """The expert's rows store discounted returns as values, so their advantages are 0: `replay` and `mixed` say
    so; `rollout`, the nightly's mode, is handed the same dataset but trains on none of its rows and stays quiet."""
    import logging

    from townlet_pipelines.training.ppo import PPORun, PPOStrategy

    context, bc = bc_run
    warned = {}
    for mode in ("rollout", "mixed", "replay"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="townlet.training"):
            PPORun(PPOStrategy(init_checkpoint=bc.checkpoint_path, replay_dataset=expert_dataset, data_mode=mode,
                               out=context.artifacts / f"warn-{mode}"), context)
        warned[mode] = any("train the value head" in record.getMessage() for record in caplog.records)
    assert warned == {"rollout": False, "mixed": True, "replay": True}


def test_more_mini_batches_than_rows_allow_is_refused_by_field(tmp_path, bc_run):
    """A mini-batch of one row normalises its advantage by a spread of 0: it used to end as "non-finite loss",
    naming no setting."""
    context, bc = bc_run
    config = tiny(ppo={"minibatches": 200})  # 2 towns x 4 agents x 32 ticks = 256 rows
    small = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    with pytest.raises(TrainingError, match=r"256 rows, too few for ppo.minibatches=200"):
        orchestrator.run_ppo(small, bc.checkpoint_path, data_mode="rollout")


def test_gae_bootstraps_from_the_state_after_the_last_step_and_stops_at_dones():
    rewards = np.array([[1.0], [0.0], [2.0]], dtype=np.float32)
    values = np.array([[0.5], [0.2], [0.1]], dtype=np.float32)
    dones = np.array([[False], [True], [False]])
    advantages, returns = gae(rewards, values, dones, np.array([3.0]), gamma=0.9, lam=0.8)
    last = 2.0 + 0.9 * 3.0 - 0.1
    middle = 0.0 - 0.2  # done: no bootstrap, no trace
    first = (1.0 + 0.9 * 0.2 - 0.5) + 0.9 * 0.8 * middle
    np.testing.assert_allclose(advantages[:, 0], [first, middle, last], rtol=1e-6)
    np.testing.assert_allclose(returns, advantages + values)


def _anneal(tmp_path: Path, dataset: Path, **overrides) -> tuple[AnnealSummary, object]:
    config = tiny(**overrides)
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    summary = orchestrator.run_anneal(context, dataset)
    return summary, context


def test_anneal_pass_then_promotion_ready_after_two_passes(tmp_path, expert_dataset):
    summary, context = _anneal(tmp_path, expert_dataset)
    assert summary.status == "PASS" and [s.mode for s in summary.stages] == ["bc", "ppo", "ppo"]
    assert AnnealSummary.model_validate_json(summary.model_dump_json()) == summary
    assert summary.promotion_pass_streak == 1 and not summary.promotion_candidate_ready
    first = orchestrator.apply_promotion(context.promotion, summary)
    assert first.promoted and first.checkpoint_id == summary.final_checkpoint_id  # the first release
    assert context.baselines.get("expert") is not None  # a PASS became the baseline for the next run
    second, context = _anneal(tmp_path, expert_dataset)  # promotion restarted the streak
    assert second.status == "PASS" and second.promotion_pass_streak == 1 and not second.promotion_candidate_ready
    # Better than the champion within its interval: it waits for the streak (the champion's figures set here).
    unproven = second.model_copy(update={"champion": {**second.champion, "difference": 0.1, "difference_ci95": 0.5}})
    assert orchestrator.apply_promotion(context.promotion, unproven).reason == "pass streak 1/2: monitoring"
    # Better beyond its interval: released at once (on a copy of the store; the streak rule goes on below).
    proven = second.model_copy(update={"champion": {**second.champion, "difference": 1.0, "difference_ci95": 0.2}})
    allowed, switched_off = (shutil.copytree(context.promotion.root, tmp_path / name) for name in ("a", "b"))
    released = orchestrator.apply_promotion(PromotionStore(allowed, required_passes=2), proven)
    assert released.promoted and "beyond its interval (+1.000 ± 0.200" in released.reason
    held = orchestrator.apply_promotion(PromotionStore(switched_off, required_passes=2, release_proven=False), proven)
    assert held.reason == "pass streak 1/2: monitoring"  # the rule switched off: the streak alone
    # The same recipe on other PPO towns (as a new night's seeds would be): another checkpoint, the same candidate.
    third, context = _anneal(tmp_path, expert_dataset, seeds={"ppo": {"start": 2_000_000, "count": 8_000_000}})
    assert third.promotion_pass_streak == 2 and third.promotion_candidate_ready
    assert third.candidate_id == second.candidate_id and third.final_checkpoint_id != second.final_checkpoint_id
    assert third.champion["release_id"] == first.release_id  # judged against the champion it started from
    if third.champion["difference"] <= 0:  # ready, but a release must also improve on the champion
        assert "must improve" in orchestrator.apply_promotion(context.promotion, third).reason
        third = third.model_copy(update={"champion": {**third.champion, "difference": 0.5}})  # as if it had
    outcome = orchestrator.apply_promotion(context.promotion, third)
    assert outcome.promoted and outcome.release_id != first.release_id
    release = context.promotion.status().current_release
    assert release.previous_release_id == first.release_id
    assert (Path(release.path) / "weights.safetensors").is_file()  # the release keeps its own copy


def test_anneal_fails_when_bc_misses_the_threshold(tmp_path, expert_dataset):
    summary, context = _anneal(tmp_path, expert_dataset, anneal={"bc_accuracy_threshold": 1.01})
    assert summary.status == "FAIL"
    assert [stage.mode for stage in summary.stages] == ["bc"]  # a failed BC stage stops the schedule
    assert summary.stages[0].rolled_back and not summary.stages[0].passed
    outcome = orchestrator.apply_promotion(context.promotion, summary)
    assert not outcome.promoted and outcome.release_id is None


def test_the_nightly_ppo_step_refuses_a_night_whose_bc_failed_in_one_sentence(tmp_path, expert_dataset):
    """A failed BC's record is the night's latest (its blocking check stops the run after it is written): a
    partial re-run of ppo_checkpoint alone says so, naming the record, instead of an IndexError's traceback."""
    from townlet_pipelines.config import UsageError
    from townlet_pipelines.nightly.candidate import ppo_stages
    from townlet_pipelines.nightly.context import NightContext
    from townlet_pipelines.training.anneal import AnnealStrategy

    config = tiny(bc={"epochs": 1, "dagger_rounds": 0}, anneal={"bc_accuracy_threshold": 1.01})
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    failed = AnnealStrategy(expert_dataset).run_bc_stages(context)
    assert failed.failed
    record = tmp_path / "bc_stages.json"
    record.write_text(failed.to_json())
    night = NightContext(config, "2026-11-25", tmp_path, "run-1", "tiny")
    with pytest.raises(UsageError, match=r"night 2026-11-25: its BC stages failed \(BC validation accuracy .*< "
                                         r"threshold 1\.010: .*; .*bc_stages\.json\), so PPO has no clone"):
        ppo_stages(night, {"path": str(expert_dataset)}, {"path": None}, {"stages_record": str(record)}, 1)


def test_a_hold_names_the_loss_baseline_its_stage_was_judged_against(tmp_path, expert_dataset, monkeypatch):
    """Two PPO stages against a stored loss baseline of 1.0: the first keeps its start (not judged, its discarded
    updates' loss 5.0), the second (loss 2.0) is held against 1.0. The verdict's sentence says 1.0, as the
    ppo_loss_guardrail does, not the first stage's discarded 5.0."""
    from types import SimpleNamespace

    from townlet_pipelines.data.baselines import BaselineStore
    from townlet_pipelines.training import anneal
    from townlet_pipelines.training.anneal import AnnealStrategy, StagesOutcome, verdict_reason

    config = tiny(anneal={"loss_tolerance": 0.5, "schedule": [
        {"cycle": 0, "mode": "bc", "epochs": 1}, {"cycle": 1, "mode": "ppo", "epochs": 1, "bc_weight": 0.0},
        {"cycle": 2, "mode": "ppo", "epochs": 1, "bc_weight": 0.0}]})
    baselines = BaselineStore(tmp_path)
    baselines.accept("expert", loss_total=1.0, queue_conflict_events=0.1, queue_conflict_intensity=0.1, source="t")
    context = SimpleNamespace(config=config, artifacts=tmp_path, promotion=None, baselines=baselines)
    scores = {"queue_conflict_events_per_agent_day": 0.0, "queue_conflict_intensity_per_agent_day": 0.0,
              "queue_conflict_events_per_agent_day_ci95": 0.0, "queue_conflict_intensity_per_agent_day_ci95": 0.0,
              "agent_days": 4.0, "towns": 4.0, "reward_per_agent_day": -6.0}
    stages = iter([(0, 5.0), (3, 2.0)])  # (the update the snapshot choice kept, the stage's loss)

    def trained(context, stage, inputs, phase):
        selected, loss = next(stages)
        return PPOTrainingResult.model_construct(
            selected_update=selected, loss_total=loss, loss_policy=0.0, loss_value=0.0, loss_entropy=0.0,
            evaluation=dict(scores), evaluation_town_rewards=[], checkpoint_id=f"k{selected}",
            checkpoint_path=f"/nowhere/k{selected}", updates=3, epoch_duration_sec=0.1)

    monkeypatch.setattr(anneal, "_run_stage", trained)
    strategy = AnnealStrategy(expert_dataset)
    strategy._expert_cache = {"report": scores, "towns": {"reward_per_agent_day": []}}
    bc = StagesOutcome([], [], None, None)
    summary = strategy.summarize(context, bc, strategy.run_ppo_stages(context, bc), 1.0)
    assert summary.status == "HOLD" and summary.baselines["loss"] == 1.0
    assert verdict_reason(summary, config.anneal) == ("PPO stage (cycle 2): loss 2 is +100% from the baseline 1 "
                                                      "(tolerance 50%)")


def test_anneal_holds_when_a_tolerance_is_zero(tmp_path, expert_dataset):
    summary, context = _anneal(tmp_path, expert_dataset, anneal={"loss_tolerance": 0.0})
    assert summary.status == "HOLD"
    assert summary.stages[2].loss_flag  # the second PPO stage's loss differs from the first's at all
    assert summary.promotion_pass_streak == 0
    assert not orchestrator.apply_promotion(context.promotion, summary).promoted


def test_training_continues_from_a_checkpoint_with_its_optimizer_moments(bc_run, expert_dataset):
    from townlet_pipelines.training.checkpoints import restore_optimizer

    context, first = bc_run
    model, _ = load_checkpoint(first.checkpoint_path)
    optimizer = torch.optim.Adam(model.parameters())
    assert restore_optimizer(first.checkpoint_path, optimizer)
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps and min(steps) > 0  # Adam's moments came back, not a fresh optimizer
    resumed = orchestrator.run_bc(context.__class__(**{**context.__dict__,
                                                        "artifacts": orchestrator.new_run_dir(context.artifacts.parent.parent)}),
                                  expert_dataset, first.checkpoint_path, continue_optimizer=True)
    assert read_record(resumed.checkpoint_path).parent_checkpoint_id == first.checkpoint_id
    assert resumed.val_accuracy >= first.val_accuracy - 0.05


def test_a_non_finite_loss_stops_ppo_and_bc_and_writes_no_checkpoint(bc_run, expert_dataset, monkeypatch, tmp_path):
    from townlet_pipelines.training import bc as bc_module
    from townlet_pipelines.training import ppo as ppo_module
    from townlet_pipelines.training.ppo import PPOStrategy

    context, bc = bc_run
    real_ppo = ppo_module.ppo_losses

    def poisoned_ppo(model, batch, ppo):
        out = real_ppo(model, batch, ppo)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ppo_module, "ppo_losses", poisoned_ppo)
    with pytest.raises(TrainingError, match="ppo: non-finite loss at update 0; no checkpoint was written"):
        PPOStrategy(init_checkpoint=bc.checkpoint_path, out=tmp_path / "ppo").run(context)
    assert not (tmp_path / "ppo").exists()

    real_bc = bc_module.bc_losses

    def poisoned_bc(*args, **kwargs):
        loss, *rest = real_bc(*args, **kwargs)
        return (loss * float("inf"), *rest)

    monkeypatch.setattr(bc_module, "bc_losses", poisoned_bc)
    with pytest.raises(TrainingError, match="bc: non-finite loss; no checkpoint was written"):
        bc_module.BCStrategy(expert_dataset, out=tmp_path / "bc", dagger_rounds=0).run(context)
    assert not (tmp_path / "bc").exists()


@pytest.mark.parametrize("schedule, missing", [([{"cycle": 0, "mode": "bc", "epochs": 1}], "no PPO stage"),
                                               ([{"cycle": 0, "mode": "ppo", "epochs": 1}], "no BC stage")])
def test_an_anneal_without_a_phase_is_refused_before_it_trains(schedule, missing, tmp_path, expert_dataset):
    """A BC-only schedule used to pass the expert and champion guardrails that never ran, and its clone was
    released; a PPO-only one died on an IndexError in the nightly's BC step. The CLI, the night and the Dagster
    steps refuse both by field."""
    from townlet_pipelines.cli import main
    from townlet_pipelines.config import ConfigError
    from townlet_pipelines.nightly.context import NightContext
    from townlet_pipelines.nightly.night import run_night

    config = tiny(anneal={"schedule": schedule})
    with pytest.raises(ConfigError, match=f"anneal.schedule: {missing}"):
        orchestrator.run_anneal(orchestrator.make_context(config, tmp_path / "run", tmp_path), expert_dataset)
    with pytest.raises(ConfigError, match=f"anneal.schedule: {missing}"):
        run_night(config, "2026-11-25", tmp_path / "night")
    with pytest.raises(ConfigError, match=f"anneal.schedule: {missing}"):
        NightContext(config, "2026-11-25", tmp_path / "steps", "run-1", "tiny").config  # noqa: B018
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(json.loads(config.model_dump_json())))
    assert main(["train", "anneal", "--config", str(path), "--artifacts", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "night").exists() and not (tmp_path / "cli").exists()
