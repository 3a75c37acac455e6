"""The guardrail judge, seed ranges, evaluation intervals and the loss pieces that must never drift silently."""

from __future__ import annotations

import numpy as np
import pytest

from townlet_pipelines.config import AnnealConfig, ConfigError, config_from_mapping
from townlet_pipelines.training.evaluation import evaluate, paired_difference
from townlet_pipelines.world.policies import ScriptedExpert

torch = pytest.importorskip("torch")

from townlet_pipelines.training.anneal import judge  # noqa: E402

ANNEAL = AnnealConfig(loss_tolerance=0.10, queue_tolerance=0.15, intensity_tolerance=0.15)
BASELINES = {"loss": 2.0, "queue_events": 0.40, "queue_intensity": 0.60}


def rates(conflicts: float, intensity: float) -> dict[str, float]:
    return {"queue_conflict_events_per_agent_day": conflicts, "queue_conflict_intensity_per_agent_day": intensity}


def test_queue_flag_fires_only_above_the_tolerance():
    assert not judge(2.0, rates(0.46, 0.60), BASELINES, ANNEAL)["queue_flag"]  # 0.46 = 0.40 + 15%
    assert judge(2.0, rates(0.461, 0.60), BASELINES, ANNEAL)["queue_flag"]
    assert not judge(2.0, rates(0.10, 0.60), BASELINES, ANNEAL)["queue_flag"]  # fewer conflicts never flag


def test_intensity_flag_is_judged_on_its_own():
    flags = judge(2.0, rates(0.40, 0.70), BASELINES, ANNEAL)
    assert flags == {"loss_flag": False, "queue_flag": False, "intensity_flag": True}


def test_a_zero_conflict_baseline_flags_any_conflict():
    zero = {"loss": 2.0, "queue_events": 0.0, "queue_intensity": 0.0}
    assert not judge(2.0, rates(0.0, 0.0), zero, ANNEAL)["queue_flag"]
    assert judge(2.0, rates(0.01, 0.02), zero, ANNEAL)["queue_flag"]


@pytest.mark.parametrize("loss, flagged", [(2.2, False), (2.21, True), (1.8, False), (1.79, True), (-2.0, True)])
def test_loss_flag_fires_in_both_directions(loss, flagged):
    assert judge(loss, rates(0.4, 0.6), BASELINES, ANNEAL)["loss_flag"] is flagged


def test_no_baseline_raises_no_flag():
    assert not any(judge(9.9, rates(9.9, 9.9), {"loss": None, "queue_events": None}, ANNEAL).values())


def test_overlapping_seed_ranges_are_refused_naming_both_fields():
    with pytest.raises(ConfigError, match=r"seeds\.guardrail .* overlaps seeds\.test"):
        config_from_mapping({"seeds": {"guardrail": {"start": 500, "count": 10},
                                       "test": {"start": 505, "count": 10},
                                       "expert": {"start": 10**9, "count": 10}}})
    with pytest.raises(ConfigError, match=r"seeds\.dagger .* overlaps seeds\.ppo"):
        config_from_mapping({"seeds": {"dagger": {"start": 1_000_000, "count": 10}}})


def test_a_use_that_outgrows_its_range_is_refused():
    with pytest.raises(ConfigError, match=r"seeds\.expert: 64 town seeds are needed but the range holds 10"):
        config_from_mapping({"rollout": {"towns": 64}, "seeds": {"expert": {"start": 0, "count": 10}}})


def test_default_seed_ranges_are_disjoint_and_the_test_set_is_far_from_the_rest():
    seeds = config_from_mapping({}).seeds
    test = set(seeds.test.seeds())
    for name in ("expert", "dagger", "ppo", "policy_rollouts", "guardrail"):
        assert not getattr(seeds, name).overlaps(seeds.test), name
    assert len(test) >= 64


def test_evaluation_reports_intervals_and_paired_differences():
    config = config_from_mapping({"world": {"agents_per_town": 4, "day_ticks": 360, "episode_days": 1,
                                            "jobs": {"work_window_before": 30, "jobs": [
                                                {"name": "early", "shift_start": 90, "shift_end": 180}]}},
                                  "evaluation": {"ticks": 120}})
    towns: dict = {}
    report = evaluate(config, ScriptedExpert(config.expert).act, seeds=(7, 8, 9, 10), per_town=towns)
    assert report["towns"] == 4 and report["agent_days"] == pytest.approx(4 * 4 * 120 / 360)
    assert report["reward_per_agent_day_ci95"] > 0
    assert report["reward_per_agent_day"] == pytest.approx(np.mean(towns["reward_per_agent_day"]))
    same, half = paired_difference(towns["reward_per_agent_day"], towns["reward_per_agent_day"])
    assert same == 0 and half == 0
    with pytest.raises(ValueError, match="no towns"):
        evaluate(config, ScriptedExpert(config.expert).act, seeds=())


def test_masked_logits_carry_no_probability_and_no_gradient():
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.observations import ObservationSpec, feature_names

    spec = ObservationSpec(variant="compact", map_shape=None, feature_names=feature_names())
    model = PolicyNetwork(spec)
    features = torch.randn(3, spec.feature_dim)
    mask = torch.ones(3, len(spec.action_names), dtype=torch.bool)
    mask[:, 2] = False
    distribution, _ = model.distribution(features, mask)
    assert torch.all(distribution.probs[:, 2] == 0)
    assert torch.all(distribution.sample((200,))[:, :] != 2)
    distribution.entropy().sum().backward()
    assert torch.isfinite(model.policy_head.weight.grad).all()


def test_decision_rows_weigh_more_than_continuations():
    from townlet_pipelines.training.bc import bc_losses, option_columns
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.actions import ACTION_NAMES
    from townlet_pipelines.world.observations import ObservationSpec, feature_names

    spec = ObservationSpec(variant="compact", map_shape=None, feature_names=feature_names())
    torch.manual_seed(0)
    model = PolicyNetwork(spec)
    columns = option_columns(spec)
    features = torch.zeros(2, spec.feature_dim)
    eat = ACTION_NAMES.index("eat")
    features[:, columns.start + eat] = 1.0  # both rows: an `eat` option is in progress
    batch = {"features": features, "action_mask": torch.ones(2, len(ACTION_NAMES), dtype=torch.bool),
             "expert_actions": torch.tensor([eat, ACTION_NAMES.index("sleep")]),  # continue, then a decision
             "value_preds": torch.zeros(2)}
    _, plain, _, _ = bc_losses(model, batch, 0.0, decision_weight=1.0, option_columns=columns)
    _, weighted, _, _ = bc_losses(model, batch, 0.0, decision_weight=10.0, option_columns=columns)
    logits, _ = model(features, batch["action_mask"])
    per_row = torch.nn.functional.cross_entropy(logits, batch["expert_actions"], reduction="none")
    assert plain.item() == pytest.approx(per_row.mean().item(), rel=1e-5)
    assert weighted.item() == pytest.approx(((per_row[0] + 10 * per_row[1]) / 11).item(), rel=1e-5)


def test_the_conflict_multiplier_rises_over_budget_and_never_goes_negative():
    from townlet_pipelines.training.constraint import ConflictMultiplier

    multiplier = ConflictMultiplier(budget=0.5, ki=0.1, window=2)
    rate = multiplier.update(conflicts=3.0, agent_days=2.0)  # 1.5 per agent-day: three times the budget
    assert rate == pytest.approx(1.5) and multiplier.value == pytest.approx(0.2)
    multiplier.update(conflicts=0.0, agent_days=2.0)  # window of two updates: 0.75 per agent-day
    assert multiplier.value == pytest.approx(0.25)
    for _ in range(20):
        multiplier.update(conflicts=0.0, agent_days=2.0)
    assert multiplier.value == 0.0


def test_the_pid_multiplier_answers_an_overshoot_at_once_and_brakes_a_climb():
    from townlet_pipelines.training.constraint import ConflictMultiplier

    plain = ConflictMultiplier(budget=1.0, ki=0.5, integral=2.0)
    pid = ConflictMultiplier(budget=1.0, ki=0.5, kp=4.0, kd=3.0, integral=2.0)
    assert plain.value == pid.value == 2.0  # both start at the configured price
    plain.update(conflicts=1.5, agent_days=1.0)
    pid.update(conflicts=1.5, agent_days=1.0)
    assert plain.value == pytest.approx(2.25)  # dual ascent: one integral step on e = 0.5
    assert pid.value == pytest.approx(2.25 + 4.0 * 0.5)  # plus the proportional answer; no derivative yet
    pid.update(conflicts=2.0, agent_days=1.0)  # climbing by half the budget
    assert pid.value == pytest.approx(2.75 + 4.0 * 1.0 + 3.0 * 0.5)
    pid.update(conflicts=0.5, agent_days=1.0)  # back under budget: the P term lowers the price, I unwinds
    assert pid.value == pytest.approx(max(0.0, 4.0 * -0.5 + 2.5))
    saved = pid.state()
    again = ConflictMultiplier(budget=1.0, ki=0.5, kp=4.0, kd=3.0)
    again.restore(saved)
    assert (again.value, again.integral, again.previous_rate) == (pid.value, pid.integral, pid.previous_rate)


def _shield_model(**model):
    from townlet_pipelines.config import ModelConfig
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.observations import ObservationSpec, feature_names

    spec = ObservationSpec(variant="compact", map_shape=None, feature_names=feature_names())
    return PolicyNetwork(spec, ModelConfig(**model)), spec


def test_the_shield_stops_starting_into_a_full_type_but_never_stops_a_continuation():
    from townlet_pipelines.world.actions import ACTION_NAMES, EAT, SHOWER

    model, spec = _shield_model()
    names = spec.feature_names
    features = torch.zeros(4, spec.feature_dim)
    features[:, names.index("hunger")] = 0.5
    features[:, names.index("hygiene")] = 0.5
    features[:, names.index("fridge_free")] = torch.tensor([0.0, 0.5, 0.0, 0.0])
    features[:, names.index("shower_free")] = 1.0
    features[2, names.index("option_eat")] = 1.0  # row 2 is already on its way to a fridge
    features[3, names.index("hunger")] = 0.1  # row 3 is nearly starving: the shield stands aside
    mask = torch.ones(4, len(ACTION_NAMES), dtype=torch.bool)
    shielded = model.shield_mask(features, mask)
    assert shielded[:, EAT].tolist() == [False, True, True, True]
    assert shielded[:, SHOWER].all()
    logits, _ = model(features, mask)
    assert logits[0, EAT] == torch.finfo(logits.dtype).min
    unshielded, _ = model(features, mask, shield=False)  # BC's loss sees the expert's every label
    assert unshielded[0, EAT] > torch.finfo(logits.dtype).min
    plain, _ = _shield_model(conflict_shield=False)
    assert torch.equal(plain.shield_mask(features, mask), mask)


def test_the_snapshot_selector_prefers_reward_within_the_budget():
    from townlet_pipelines.training.constraint import SnapshotSelector

    model, _ = _shield_model()
    expert = {"reward_per_agent_day": -20.0, "queue_conflict_events_per_agent_day": 0.2, "faints_per_agent_day": 0.0,
              "wages_per_agent_day": 3.0}
    selector = SnapshotSelector(expert, ratio=1.1, wage_ratio=0.95)

    def offer(update, reward, conflicts, faints=0.0, wages=3.0):
        return selector.offer(update, {"reward_per_agent_day": reward, "queue_conflict_events_per_agent_day": conflicts,
                                       "faints_per_agent_day": faints, "wages_per_agent_day": wages}, model)

    assert offer(1, -30.0, 0.5)  # nothing qualifies yet: the fewest conflicts so far
    assert offer(2, -40.0, 0.4)
    assert offer(3, -25.0, 0.21)  # within 1.1 x 0.2: qualifies, beats any that does not
    assert not offer(4, -10.0, 0.3)  # more reward, over the budget
    assert not offer(5, -5.0, 0.1, faints=0.01)  # more reward, but agents faint
    assert not offer(5, -5.0, 0.1, wages=2.8)  # more reward, but it skips work
    assert offer(6, -24.0, 0.2)
    assert selector.best_update == 6 and selector.best["reward_per_agent_day"] == -24.0


def test_ranges_refuse_values_that_would_disable_a_guardrail_or_break_a_record():
    from pydantic import ValidationError

    from townlet_pipelines.results import AnnealStageResult

    for section, values, field in (("anneal", {"loss_tolerance": float("inf")}, "loss_tolerance"),
                                   ("anneal", {"queue_tolerance": float("nan")}, "queue_tolerance"),
                                   ("bc", {"val_fraction": 0}, "val_fraction")):
        with pytest.raises(ConfigError, match=f"{section}.{field}"):
            config_from_mapping({section: values})
    with pytest.raises(ValidationError, match="mode"):
        AnnealStageResult(cycle=0, mode="dqn", passed=True, bc_weight=1.0)
    with pytest.raises(ValidationError, match="cycle"):
        AnnealStageResult(cycle=-1, mode="bc", passed=True, bc_weight=1.0)


def test_the_verdict_reason_names_each_guardrail_that_held_with_its_numbers():
    from townlet_pipelines.config import AnnealConfig
    from townlet_pipelines.results import AnnealStageResult, AnnealSummary
    from townlet_pipelines.training.anneal import verdict_reason

    stage = AnnealStageResult(cycle=1, mode="ppo", passed=False, bc_weight=0.0, loss_total=0.013,
                              queue_conflict_events=0.3, queue_conflict_intensity=0.2, loss_flag=True, queue_flag=True)
    summary = AnnealSummary(stages=[stage], status="HOLD", dataset_label="expert", dataset_identity="d",
                            baselines={"loss": 0.01, "queue_events": 0.139, "queue_intensity": 0.209},
                            promotion_pass_streak=0, promotion_candidate_ready=False, candidate_id="c",
                            final_checkpoint_id="x", final_checkpoint_path=None, evaluation={}, duration_sec=1.0)
    reason = verdict_reason(summary, AnnealConfig())
    assert "loss 0.013 is +30% from the baseline 0.01 (tolerance 10%)" in reason
    assert "conflicts 0.300 per agent-day > limit 0.160 = baseline 0.139 + 15%" in reason
    assert "intensity" not in reason  # only the guardrails that held are named
    assert verdict_reason(summary.model_copy(update={"status": "PASS"}), AnnealConfig()) == "every guardrail passed"


def test_the_anneal_passes_a_bc_stage_exactly_when_the_bc_guardrail_does(monkeypatch, tmp_path):
    """One pass test: a validation accuracy a rounding error below the threshold passes the check, so the
    anneal's stage must pass too (the anneal once compared with a bare >=, without the guardrail's slack)."""
    from types import SimpleNamespace

    from townlet_pipelines.training import anneal
    from townlet_pipelines.training.guardrails import bc_accuracy
    from tests.test_training import tiny

    config = tiny(anneal={"bc_accuracy_threshold": 0.9})
    accuracy = 0.9 - 1e-13
    assert bc_accuracy(accuracy, 0.9).passed
    result = SimpleNamespace(val_accuracy=accuracy, val_loss=0.1, checkpoint_id="c0ffee", checkpoint_path="bc")
    monkeypatch.setattr(anneal, "_run_stage", lambda *args: result)
    context = SimpleNamespace(config=config, artifacts=tmp_path)
    outcome = anneal.AnnealStrategy(tmp_path / "data").run_bc_stages(context)
    assert [stage.passed for stage in outcome.stages] == [True] and not outcome.failed


def test_a_bc_miss_smaller_than_the_shown_digits_reads_as_a_miss():
    from townlet_pipelines.training.guardrails import bc_accuracy

    assert bc_accuracy(0.8996, 0.9).sentence.startswith("BC validation accuracy 0.8996 < threshold 0.9000:")
    assert bc_accuracy(0.85, 0.9).sentence.startswith("BC validation accuracy 0.850 < threshold 0.900:")
    assert bc_accuracy(0.9 - 1e-13, 0.9).sentence == "BC validation accuracy 0.900 >= threshold 0.900"
