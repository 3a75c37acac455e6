"""Constrained PPO, the snapshot choice that keeps its start, the expert guardrail, honest intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from townlet_pipelines.config import PPOConfig  # noqa: E402
from townlet_pipelines.training.constraint import ConflictMultiplier  # noqa: E402
from townlet_pipelines.training.ppo import ppo_losses  # noqa: E402
from townlet_pipelines.training.rollouts import Rollout, rollout_rows  # noqa: E402


class Bandit(torch.nn.Module):
    """Two actions: `safe` pays 0.2 and costs nothing, `greedy` pays 1.0 and causes one conflict."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(2))
        self.value = torch.nn.Parameter(torch.zeros(1))

    def distribution(self, features, action_mask, map_=None):
        rows = len(features)
        return torch.distributions.Categorical(logits=self.logits.expand(rows, 2)), self.value.expand(rows)


def _train_bandit(multiplier: ConflictMultiplier | None, updates: int = 80, agents: int = 256) -> list[float]:
    """PPO through the shipped pieces (the penalised rows of `rollout_rows`, `ppo_losses`, the multiplier):
    the rate of the costly action per update."""
    torch.manual_seed(0)
    ppo = PPOConfig(learning_rate=0.05)
    model = Bandit()
    optimizer = torch.optim.Adam(model.parameters(), lr=ppo.learning_rate)
    rates = []
    for _ in range(updates):
        with torch.no_grad():
            distribution, values = model.distribution(torch.zeros(agents, 1), None)
            actions = distribution.sample()
            log_probs = distribution.log_prob(actions).detach()
        costs = actions.float().numpy()
        arrays = {"features": np.zeros((1, agents, 1), np.float32), "action_mask": np.ones((1, agents, 2), bool),
                  "actions": actions.numpy()[None], "old_log_probs": log_probs.numpy()[None],
                  "value_preds": values.detach().numpy()[None], "rewards": (0.2 + 0.8 * costs)[None].astype(np.float32),
                  "costs": costs[None], "dones": np.ones((1, agents), bool)}
        penalty = multiplier.value if multiplier is not None else 0.0
        rows = rollout_rows(Rollout(arrays, np.zeros(agents, np.float32), {}, 1, 0.0), penalty, ppo)
        rates.append(float(costs.mean()))
        if multiplier is not None:
            multiplier.update(conflicts=float(costs.sum()), agent_days=float(agents))
        batch = {key: torch.as_tensor(value) for key, value in rows.items()}
        for _ in range(ppo.update_epochs):
            out = ppo_losses(model, batch, ppo)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
    return rates


def test_advantages_that_differ_only_by_rounding_are_centred_not_scaled_to_unit_spread():
    """A scripted expert's replay rows store their discounted returns as values, so every TD error is 0 up to
    float rounding (~1e-7 of a return of ~1.4): such a mini-batch is only centred, where dividing by its spread
    once made rounding into unit-variance advantages, a random policy gradient. Real advantages of small spread
    (1e-3) are still normalised."""
    ppo = PPOConfig()
    model = Bandit()
    generator = torch.Generator().manual_seed(0)
    rows = 512
    actions = torch.randint(0, 2, (rows,), generator=generator)
    returns = 1.4 + torch.rand(rows, generator=generator)
    with torch.no_grad():
        distribution, values = model.distribution(torch.zeros(rows, 1), None)
        log_probs = distribution.log_prob(actions)
    base = {"features": torch.zeros(rows, 1), "action_mask": None, "actions": actions, "old_log_probs": log_probs,
            "returns": returns, "value_preds": values.detach().clone()}
    rounding = returns - (returns.double() - 1e-7 * torch.randn(rows, generator=generator, dtype=torch.float64)).float()
    assert 1e-8 < float(rounding.std()) < 1e-6  # above the old absolute threshold of 1e-8
    out = ppo_losses(model, {**base, "advantages": rounding}, ppo)
    out["pg_loss"].backward()
    assert out["zero_std"] and float(model.logits.grad.abs().max()) < 1e-5, "no policy gradient from rounding"
    real = 1e-3 * torch.randn(rows, generator=generator)
    out = ppo_losses(model, {**base, "advantages": real}, ppo)
    assert not out["zero_std"] and float(out["adv_std"]) > 5e-4


def test_constrained_ppo_keeps_a_cost_under_budget_that_plain_ppo_overspends():
    budget = 0.3
    plain = _train_bandit(None)
    constrained = _train_bandit(ConflictMultiplier(budget=budget, ki=2.0, kp=20.0, kd=10.0))
    assert np.mean(plain[-20:]) > 0.9  # the costly action pays more: unconstrained PPO takes it nearly always
    late = np.mean(constrained[-20:])
    assert late <= budget * 1.15, late  # held at the budget during training, not only judged at the gate
    assert late >= budget * 0.5, late  # and not priced out of it altogether: the reward is still wanted



# --------------------------------------------------------------------------- the snapshot choice keeps its start
def _scripted_validation(monkeypatch, later_reward: float) -> None:
    """Validation as a script: the expert first, then the start, then every later snapshot at `later_reward`."""
    from townlet_pipelines.training import ppo

    calls = []

    def scores(config, act):
        calls.append(act)
        reward = {1: -2.0, 2: -1.0}.get(len(calls), later_reward)
        conflicts = 0.1 if len(calls) == 1 else 0.05  # the expert's, then every policy's: within the budget
        return {"reward_per_agent_day": reward, "faints_per_agent_day": 0.0,
                "queue_conflict_events_per_agent_day": conflicts, "wages_per_agent_day": 1.0}

    monkeypatch.setattr(ppo, "validation_scores", scores)


def _tiny_ppo(tmp_path, **ppo):
    from townlet_pipelines.training import orchestrator
    from townlet_pipelines.training.constraint import SnapshotSelector
    from townlet_pipelines.training.ppo import PPOStrategy
    from tests.test_training import tiny

    config = tiny(ppo={"select_keep_start": True, "validate_every": 1, "updates": 2, **ppo})
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    kept = {}
    original = SnapshotSelector.offer

    def offer(self, update, scores, model, start=False):  # remember the start's weights as the stage saw them
        if update == 0:
            kept.update({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
        return original(self, update, scores, model, start)

    return config, context, kept, offer, PPOStrategy(evaluate_towns=False)


def test_a_stage_that_finds_nothing_better_returns_its_start(tmp_path, monkeypatch):
    from townlet_pipelines.training.checkpoints import load_checkpoint
    from townlet_pipelines.training.constraint import SnapshotSelector

    _scripted_validation(monkeypatch, later_reward=-5.0)  # every snapshot worse than the start
    config, context, start, offer, strategy = _tiny_ppo(tmp_path, learning_rate=0.05)
    monkeypatch.setattr(SnapshotSelector, "offer", offer)
    result = strategy.run(context)
    assert result.selected_update == 0 and result.validation["reward_per_agent_day"] == -1.0
    model, _ = load_checkpoint(result.checkpoint_path)
    for name, tensor in model.state_dict().items():  # the very weights it started from, not a worse snapshot
        assert torch.equal(tensor, start[name]), name


def test_a_better_snapshot_replaces_the_start(tmp_path, monkeypatch):
    from townlet_pipelines.training.constraint import SnapshotSelector

    _scripted_validation(monkeypatch, later_reward=0.5)
    config, context, start, offer, strategy = _tiny_ppo(tmp_path)
    monkeypatch.setattr(SnapshotSelector, "offer", offer)
    result = strategy.run(context)
    assert result.selected_update == 1  # the first snapshot that did better; the second only tied it
    assert result.validation["reward_per_agent_day"] == 0.5
    import json

    updates = [json.loads(line) for path in sorted((context.artifacts / "logs").glob("ppo*.jsonl"))
               for line in path.read_text().splitlines() if "validation" not in json.loads(line)]
    assert len(updates) == 2 and all(entry["explained_variance"] <= 1.0 for entry in updates)  # CleanRL's critic KPI


def test_explained_variance_is_one_for_a_perfect_critic_and_zero_for_a_constant_one():
    from townlet_pipelines.training.ppo import explained_variance

    returns = np.array([1.0, 2.0, 3.0, 6.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(np.full(4, returns.mean()), returns) == pytest.approx(0.0)
    assert np.isnan(explained_variance(returns, np.ones(4)))


def test_train_tensorboard_is_refused_in_one_line_without_the_extra(monkeypatch, capsys):
    from townlet_pipelines.cli import main
    from townlet_pipelines.training import tensorboard

    monkeypatch.setattr(tensorboard, "enabled", lambda: False)
    monkeypatch.setenv(tensorboard.ENV, "0")  # restored after the test, whatever the command sets
    assert main(["train", "ppo", "--config", "smoke", "--tensorboard"]) == 2
    assert "pip install -e '.[tensorboard]'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the expert bar
def test_the_expert_guardrail_holds_a_candidate_worse_than_the_expert():
    from townlet_pipelines.training.guardrails import expert

    worse = expert({"candidate_reward": -25.0, "expert_reward": -22.0, "difference": -3.0, "difference_ci95": 0.2,
                    "towns": 256})
    assert not worse.passed and "worse within the interval" in worse.sentence and "Student-t" in worse.sentence
    close = expert({"candidate_reward": -22.1, "expert_reward": -22.0, "difference": -0.1, "difference_ci95": 0.2,
                    "towns": 256})
    assert close.passed  # not worse beyond the interval
    assert expert(None).passed and "no PPO stage" in expert(None).sentence
    tolerated = expert({"candidate_reward": -25.0, "expert_reward": -22.0, "difference": -3.0, "difference_ci95": 0.2,
                        "towns": 256}, tolerance=0.2)  # 20% of |-22| = 4.4 allowed below the expert
    assert tolerated.passed and "a tolerance of 20% (4.400)" in tolerated.sentence


def test_the_champion_guardrail_holds_a_worse_challenger():
    from townlet_pipelines.training.guardrails import champion

    comparison = {"candidate_reward": -9.0, "champion_reward": -8.0, "difference": -1.0, "difference_ci95": 0.4,
                  "towns": 256, "release_id": "r0001-abc"}
    worse = champion(comparison)
    assert not worse.passed and "challenger -9.000 vs champion (r0001-abc) -8.000" in worse.sentence
    assert "worse within the interval" in worse.sentence and worse.measured["difference"] == -1.0
    assert champion({**comparison, "difference": -0.3}).passed  # inside the interval: no worse
    assert champion(None).passed and "no champion yet" in champion(None).sentence


def test_a_stage_that_kept_its_start_is_not_held_for_the_loss_of_updates_it_discarded():
    from townlet_pipelines.training.guardrails import ppo_loss

    kept = ppo_loss([(1, 0.0034, 0.0057, True)], 0.10)
    assert kept.passed and "kept its start" in kept.sentence
    moved = ppo_loss([(1, 0.0034, 0.0057, False)], 0.10)
    assert not moved.passed and "-40.4% from the baseline" in moved.sentence


def test_the_queue_guardrail_tells_a_single_conflict_on_a_few_towns_from_a_rise():
    from townlet_pipelines.training.guardrails import queue_conflicts, resolutions

    def verdict(events: int, agent_days: float = 16.0, baseline: float = 0.0):
        rate = events / agent_days
        return queue_conflicts({"conflicts": rate, "conflicts_ci95": 0.0, "intensity": 1.5 * rate,
                                "intensity_ci95": 0.0}, {"conflicts": baseline, "intensity": 1.5 * baseline},
                               {"conflicts": 0.15, "intensity": 0.15}, 4, resolutions(1.0, agent_days))

    one = verdict(1)  # smoke: 4 towns x 4 agents, the expert had none
    assert one.passed and "the evaluation's resolution 0.062" in one.sentence
    assert not verdict(2).passed
    # 256 towns x 8 agents: the resolution (0.0005) is far finer than 15%, which decides as before
    assert verdict(348, 2048.0, 0.148).passed and not verdict(350, 2048.0, 0.148).passed


def test_a_passing_challenger_that_is_not_better_is_not_released(tmp_path):
    from townlet_pipelines.data.promotion import PromotionStore
    from townlet_pipelines.results import AnnealSummary
    from townlet_pipelines.training.orchestrator import apply_promotion

    store = PromotionStore(tmp_path, required_passes=1)
    champion = store.promote("c", "champion-id", first_release=True).release_id
    store.record_evaluation("c", "PASS", night="2026-11-26")

    def summary(difference: float, night: str = "2026-11-26") -> AnnealSummary:
        return AnnealSummary(
            stages=[], status="PASS", dataset_label="expert", dataset_identity="d", baselines={},
            promotion_pass_streak=1, promotion_candidate_ready=True, candidate_id="c",
            final_checkpoint_id=f"challenger{difference}", final_checkpoint_path=None, duration_sec=1.0,
            champion={"release_id": champion, "difference": difference, "difference_ci95": 0.3}, night=night)

    kept = apply_promotion(store, summary(-0.05))
    assert not kept.promoted and "must improve" in kept.reason and store.status().releases == 1
    released = apply_promotion(store, summary(0.4))
    assert released.promoted and store.status().releases == 2
    # A second night judged against the same champion (a backfill) comes after the first's release: it was never
    # compared with that release, so it is not released over it, however far it beat the old champion.
    store.record_evaluation("c", "PASS", night="2026-11-27")
    late = apply_promotion(store, summary(0.9, night="2026-11-27"))
    assert not late.promoted and "the champion moved on" in late.reason
    assert store.status().current_release.release_id == released.release_id


# ------------------------------------------------------------------------------------------- honest intervals
def test_intervals_use_student_t_where_towns_are_few():
    from townlet_pipelines.training.evaluation import half_width, paired_difference, t95

    assert t95(4) == pytest.approx(3.1824) and t95(2) == pytest.approx(12.7062)
    assert t95(256) == pytest.approx(1.9693, abs=1e-4) and t95(64) == pytest.approx(1.9983, abs=1e-4)
    values = np.array([1.0, 2.0, 4.0, 7.0])
    assert half_width(values) == pytest.approx(3.1824 * values.std(ddof=1) / 2)
    mean, half = paired_difference(values, np.zeros(4))
    assert mean == pytest.approx(3.5) and half == pytest.approx(half_width(values))
    with pytest.raises(ValueError, match="at least 2"):
        t95(1)


# ------------------------------------------------------------------------------------------ sampled evaluation
def test_a_sampled_evaluation_replays_its_draws_and_a_town_draws_the_same_alone_or_batched():
    from townlet_pipelines.training.checkpoints import model_for
    from townlet_pipelines.training.device import device_context
    from townlet_pipelines.training.evaluation import evaluate
    from townlet_pipelines.training.policy import evaluation_policy
    from townlet_pipelines.world.engine import TownWorld
    from tests.test_training import tiny

    config = tiny()
    assert not config.evaluation.greedy
    torch.manual_seed(3)
    model, _ = model_for(TownWorld(config, 1).spec, config.model, "cpu")
    device = device_context("cpu", False, 1)
    seeds = (90_000_000, 90_000_001, 90_000_002)

    def rewards(towns):
        per_town: dict = {}
        torch.manual_seed(len(towns))  # the global generator must not matter
        evaluate(config, evaluation_policy(model, device, config).actions, seeds=towns, per_town=per_town)
        return per_town["reward_per_agent_day"]

    batched = rewards(seeds)
    np.testing.assert_array_equal(batched, rewards(seeds))
    assert rewards(seeds[1:2])[0] == batched[1]
    other = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"sample_seed": 1})})
    per_town: dict = {}
    evaluate(other, evaluation_policy(model, device, other).actions, seeds=seeds, per_town=per_town)
    assert not np.array_equal(per_town["reward_per_agent_day"], batched)  # another seed, other draws


# ------------------------------------------------------------------------------------------ a chain of nights
def test_a_smoke_chain_of_three_nights_releases_a_later_night_only_when_it_beats_the_champion(tmp_path):
    """Three consecutive smoke nights through the nightly's own steps (nightly/night.py): the first makes the first
    release; a later night starts from the champion, and is released only when it passed every guardrail, completed
    the streak and scored more than the champion on its guardrail towns; the champion is never a worse one."""
    from townlet_pipelines.config import load_config
    from townlet_pipelines.data.promotion import PromotionStore
    from townlet_pipelines.nightly.night import run_night
    from townlet_pipelines.training.orchestrator import state_dir

    base = load_config("smoke")
    nights = [run_night(base, night, tmp_path, say=lambda _: None)
              for night in ("2026-11-25", "2026-11-26", "2026-11-27")]
    first, *later = nights
    assert first.status == "PASS" and first.promoted and first.champion is None and first.expert is not None
    assert first.expert["difference"] + first.expert["difference_ci95"] >= 0  # no worse than the expert
    for night in later:
        assert night.started_from.startswith(first.candidate_id) or night.started_from.startswith(
            nights[1].candidate_id)  # from the champion of the night before
        assert night.champion is not None and night.expert is not None
    promoted = [night for night in later if night.promoted]
    assert promoted, [night.promotion for night in later]  # a later night improved on the champion
    for night in promoted:
        assert night.status == "PASS" and night.champion["difference"] > 0
    for night in later:
        if night.status == "PASS" and not night.promoted:
            assert "monitoring" in night.promotion or "must improve" in night.promotion
    store = PromotionStore(state_dir(tmp_path, base))
    assert [release.checkpoint_id for release in store.releases()] == [
        first.candidate_id, *(night.candidate_id for night in promoted)]


def test_train_anneal_night_runs_the_nightlys_steps_and_exits_with_the_verdict(tmp_path, capsys):
    from townlet_pipelines.cli import main

    code = main(["train", "anneal", "--config", "smoke", "--night", "2026-11-25", "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith("night 2026-11-25: ") and "promotion:" in out
    assert code == {"PASS": 0, "FAIL": 3, "HOLD": 4}[out.split(": ")[1]]
    assert main(["train", "anneal", "--config", "smoke", "--night", "2026-11-25", "--dataset", "x",
                 "--artifacts", str(tmp_path)]) == 2
    assert "drop --dataset" in capsys.readouterr().err


def test_the_cost_critic_learns_what_a_crowded_hour_costs_so_the_cost_advantage_stops_blaming_every_action():
    """A conflict here comes with the crowded state, whatever the agent does. The raw cost-to-go gives every
    action taken there a large negative advantage; against the fitted cost critic, the advantage of those
    actions is near zero: the constraint's signal is left to what an action changes (OmniSafe's cost critic)."""
    from townlet_pipelines.config import ModelConfig
    from townlet_pipelines.training.cost_critic import CostCriticTrainer
    from townlet_pipelines.training.device import device_context
    from townlet_pipelines.training.distributed import SINGLE
    from townlet_pipelines.training.rollouts import gae
    from townlet_pipelines.world.observations import ObservationSpec

    rng = np.random.default_rng(0)
    ticks, agents = 64, 64
    crowded = rng.random((ticks, agents)) < 0.3
    costs = crowded.astype(np.float32)
    features = np.stack([costs, np.ones_like(costs)], axis=-1)
    dones = np.zeros((ticks, agents), bool)
    arrays = {"features": features, "costs": costs, "dones": dones,
              "actions": rng.integers(0, 2, (ticks, agents)).astype(np.int8)}
    rollout = Rollout(arrays, np.zeros(agents, np.float32), {}, ticks, 0.0, final={"features": features[-1]})
    ppo = PPOConfig(cost_critic_warmup=40, cost_critic_lr=1e-2)
    spec = ObservationSpec(variant="compact", map_shape=None, feature_names=("crowded", "bias"))
    critic = CostCriticTrainer(spec, ModelConfig(hidden=16), ppo, device_context("cpu", False), SINGLE, seed=0)
    critic.warm_up(rollout)
    values, bootstrap = critic.values(rollout)
    with_critic, returns = gae(costs, values, dones, bootstrap, ppo.gamma, ppo.gae_lambda)
    raw, _ = gae(costs, np.zeros_like(costs), dones, np.zeros(agents, np.float32), ppo.gamma, ppo.gae_lambda)
    assert values[crowded].mean() > values[~crowded].mean() + 0.5  # it learned the crowded hour's cost
    assert np.abs(with_critic[crowded]).mean() < 0.3 * np.abs(raw[crowded]).mean()
    rows = rollout_rows(rollout_for_rows(arrays, agents, ticks), 5.0, ppo, (values, bootstrap))
    np.testing.assert_allclose(rows["cost_returns"], returns.reshape(-1), rtol=1e-6)


def rollout_for_rows(arrays: dict, agents: int, ticks: int) -> Rollout:
    """The toy's arrays with the columns `rollout_rows` reads besides the costs."""
    full = {**arrays, "action_mask": np.ones((ticks, agents, 2), bool), "old_log_probs": np.zeros((ticks, agents),
            np.float32), "value_preds": np.zeros((ticks, agents), np.float32),
            "rewards": np.zeros((ticks, agents), np.float32)}
    return Rollout(full, np.zeros(agents, np.float32), {}, ticks, 0.0)


def test_the_price_follows_the_validation_towns_conflicts_not_the_rollouts_noise(tmp_path, monkeypatch):
    """λ is set from the start's validation conflicts before the first update (0.2 against a budget of
    0.6 × the expert's 0.1), holds through the rollouts, and moves at the next validation (0.05: under budget)."""
    import json

    from townlet_pipelines.training import ppo

    readings = iter([0.1, 0.2, 0.05])  # the expert's, the start's, after update 2

    def scores(config, act):
        return {"reward_per_agent_day": -1.0, "faints_per_agent_day": 0.0,
                "queue_conflict_events_per_agent_day": next(readings), "wages_per_agent_day": 1.0}

    monkeypatch.setattr(ppo, "validation_scores", scores)
    config, context, _, _, strategy = _tiny_ppo(tmp_path, validate_every=2, conflict_budget=0.6)
    result = strategy.run(context)
    entries = [json.loads(line) for path in sorted((context.artifacts / "logs").glob("ppo*.jsonl"))
               for line in path.read_text().splitlines()]
    kp, ki, start_integral = config.ppo.lagrange_kp, config.ppo.lagrange_lr, config.ppo.lagrange_init
    first = kp * (0.2 / 0.06 - 1) + start_integral + ki * (0.2 / 0.06 - 1)  # the P and I terms on the first error
    start = next(entry for entry in entries if entry.get("start"))
    updates = [entry for entry in entries if "validation" not in entry]
    assert start["lagrange_multiplier"] == pytest.approx(first)
    assert [entry["lagrange_multiplier"] for entry in updates] == pytest.approx([first, first])  # rollouts: no move
    assert result.lagrange_multiplier_mean == pytest.approx(first)
    after = kp * (0.05 / 0.06 - 1) + max(0.0, start_integral + ki * (0.2 / 0.06 - 1) + ki * (0.05 / 0.06 - 1))
    assert result.lagrange_multiplier == pytest.approx(max(0.0, after))


def test_a_snapshot_with_no_more_conflicts_than_its_start_qualifies_even_above_the_ratio():
    """The champion reads 0.127 against the expert's 0.148 on a night's validation towns, above 0.85 × 0.148: a
    snapshot with more reward and no more conflicts than it is the better choice, not one that only cut
    conflicts at the price of reward."""
    from townlet_pipelines.training.constraint import SnapshotSelector

    model = Bandit()
    expert = {"reward_per_agent_day": -21.7, "queue_conflict_events_per_agent_day": 0.148,
              "faints_per_agent_day": 0.0, "wages_per_agent_day": 3.39}

    def scores(reward, conflicts):
        return {"reward_per_agent_day": reward, "queue_conflict_events_per_agent_day": conflicts,
                "faints_per_agent_day": 0.0, "wages_per_agent_day": 3.38}

    selector = SnapshotSelector(expert, ratio=0.85, wage_ratio=0.96)
    assert selector.offer(0, scores(-2.47, 0.127), model, start=True)
    assert not selector.offer(4, scores(-2.82, 0.105), model)  # fewer conflicts, less reward: not better
    assert selector.offer(8, scores(-2.30, 0.120), model)  # more reward, no more conflicts than the start
    assert not selector.offer(12, scores(-1.90, 0.140), model)  # more reward bought with conflicts
    assert selector.best_update == 8
    fresh = SnapshotSelector(expert, ratio=0.85, wage_ratio=0.96)  # no start offered: the ratio alone
    assert not fresh.feasible(scores(-2.30, 0.127))


def test_the_evaluation_fast_path_scores_exactly_what_the_full_policy_path_scored():
    """`TorchPolicy.actions` (inference mode, the map scaled in numpy, no argument checks, no log-probabilities)
    is a cheaper way to the same actions: every KPI of a sampled and of a greedy evaluation equals, bit for bit,
    what the path every evaluation took before it gives (`bench.evaluation.full_path`: uint8 maps scaled in torch,
    a checked Categorical, log-probabilities and values)."""
    from townlet_pipelines.bench.evaluation import full_path
    from townlet_pipelines.training.checkpoints import model_for
    from townlet_pipelines.training.device import device_context
    from townlet_pipelines.training.evaluation import evaluate
    from townlet_pipelines.training.policy import evaluation_policy, observation_batch
    from townlet_pipelines.world.engine import TownWorld
    from tests.test_training import tiny

    torch.manual_seed(5)
    device = device_context("cpu", False, 1)
    seeds = (90_000_010, 90_000_011)
    world = TownWorld(tiny(), 1)
    world.reset(0)
    assert observation_batch(world)["map"].dtype == np.uint8  # the full path scales the world's cells in torch
    for greedy in (False, True):
        config = tiny()
        config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"greedy": greedy})})
        model, _ = model_for(TownWorld(config, 1).spec, config.model, "cpu")
        before, after = {}, {}
        expected = evaluate(config, full_path(model, device, config), seeds=seeds, per_town=before)
        assert evaluate(config, evaluation_policy(model, device, config).actions, seeds=seeds, per_town=after) == expected
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        assert expected["reward_per_agent_day"] != 0.0  # the towns were played, not skipped


def test_an_evaluation_split_across_processes_scores_the_same_numbers(tmp_path, monkeypatch):
    """The towns of one evaluation shared between this process and a forked worker (evaluation.processes 2, two
    shares of the real minimum of 16 towns) give every KPI and every per-town value that one batched world gives,
    for a network's seeded draws and the expert, and the same picture of town 0; a policy whose draws depend on
    the batch (random, or torch's generator) is never split."""
    import os

    from townlet_pipelines.pictures import FirstDay
    from townlet_pipelines.training import evaluation as evaluation_module
    from townlet_pipelines.training import town_processes
    from townlet_pipelines.training.checkpoints import model_for
    from townlet_pipelines.training.device import device_context
    from townlet_pipelines.training.evaluation import evaluate
    from townlet_pipelines.training.policy import TorchPolicy, evaluation_policy
    from townlet_pipelines.world.engine import TownWorld
    from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert
    from tests.test_training import tiny

    players = tmp_path / "players"
    play_towns = evaluation_module.play_towns

    def play_and_say_who(config, act, seeds, ticks, on_tick=None):  # inherited by the forked worker
        with open(players, "a") as out:
            out.write(f"{os.getpid()}\n")
        return play_towns(config, act, seeds, ticks, on_tick)

    monkeypatch.setattr(evaluation_module, "play_towns", play_and_say_who)
    config = tiny()
    alone = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"processes": 1})})
    split = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"processes": 2})})
    torch.manual_seed(7)
    model, _ = model_for(TownWorld(config, 1).spec, config.model, "cpu")
    device = device_context("cpu", False, 1)
    seeds = tuple(range(90_000_020, 90_000_020 + 2 * town_processes.MIN_TOWNS_PER_PROCESS))
    assert [len(part) for part in town_processes.shares(seeds, 2)] == [16, 16]
    for act in (evaluation_policy(model, device, config).actions, ScriptedExpert(config.expert).act):
        one, two = {}, {}
        watch_one, watch_two = FirstDay(config.world.day_ticks), FirstDay(config.world.day_ticks)
        expected = evaluate(alone, act, seeds=seeds, per_town=one, on_tick=watch_one)
        assert evaluate(split, act, seeds=seeds, per_town=two, on_tick=watch_two) == expected
        for key in one:
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)
        assert watch_two.strip.svg() == watch_one.strip.svg()  # the picture watches town 0, in this process's share
    assert len(set(players.read_text().split())) == 3, "this process, then a worker for each split evaluation"
    assert not town_processes.splittable(RandomPolicy(0).act)
    assert not town_processes.splittable(TorchPolicy(model, device).actions)  # torch's generator: batch-dependent


def _gone_within(pid: int, seconds: float) -> bool:
    """Whether `pid` has stopped running within `seconds`; a zombie (exited, not yet reaped) counts as gone."""
    import time

    def alive() -> bool:
        try:
            with open(f"/proc/{pid}/status") as status:
                return "\nState:\tZ" not in status.read()
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + seconds
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive()


def _sleepy_play(config, act, seeds, ticks, on_tick=None):
    """A share that never ends in a worker, and `act(seeds)` in this process (the test says what it does)."""
    import os
    import time

    if os.getpid() != act.parent:
        print(os.getpid(), flush=True)
        time.sleep(600)
    return act(seeds)


class _ParentAct:
    def __init__(self, then):
        import os

        self.parent, self.then = os.getpid(), then

    def __call__(self, seeds):
        return self.then(seeds)


def test_a_failed_share_fails_the_evaluation_and_ends_the_other_workers_at_once(capfd):
    """An error in this process's share is raised at once and the workers still playing are ended (before, the
    kept pool went on playing them, and the next evaluation and the process's exit waited for them); an error in
    a worker's share is raised here with its type and the worker's traceback."""
    import time

    from townlet_pipelines.training import town_processes

    def fail(seeds):
        time.sleep(1.0)  # the worker has started its endless share
        raise ValueError("this share failed")

    seeds = tuple(range(2 * town_processes.MIN_TOWNS_PER_PROCESS))
    start = time.monotonic()
    with pytest.raises(ValueError, match="this share failed"):
        town_processes.play_split(_sleepy_play, None, _ParentAct(fail), seeds, 1, 2)
    assert time.monotonic() - start < 30
    worker = int(capfd.readouterr().out.split()[0])
    assert _gone_within(worker, 5), "the other share's worker was ended with the evaluation"

    def worker_fails(config, act, seeds, ticks, on_tick=None):
        import os

        if os.getpid() != act.parent:
            raise KeyError("no such town")
        return {"reward": np.zeros(len(seeds))}

    with pytest.raises(KeyError, match="no such town") as raised:
        town_processes.play_split(worker_fails, None, _ParentAct(None), seeds, 1, 2)
    assert "in the evaluation worker that played towns 16..31" in "".join(raised.value.__notes__)


def test_a_process_forked_after_a_split_evaluation_can_split_its_own():
    """Each evaluation forks its own workers: a child forked after this process split an evaluation splits its
    own (a kept pool, inherited, hung the child's first split for ever)."""
    import multiprocessing

    from townlet_pipelines.training import town_processes

    def play(config, act, seeds, ticks, on_tick=None):
        return {"towns": np.asarray(seeds, dtype=float)}

    seeds = tuple(range(2 * town_processes.MIN_TOWNS_PER_PROCESS))
    assert town_processes.play_split(play, None, None, seeds, 1, 2)["towns"].tolist() == list(seeds)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=lambda: results.put(
        town_processes.play_split(play, None, None, seeds, 1, 2)["towns"].tolist()))
    child.start()
    assert results.get(timeout=60) == list(seeds)
    child.join(30)


def test_the_processes_an_evaluation_splits_into_follow_the_containers_cpu_limit(tmp_path):
    """`evaluation.processes` 0 takes the cores this process may use, within a cgroup CPU quota (v2 `cpu.max`,
    v1 `cfs_quota_us`), rounded up, at most 8; no quota, or an unreadable one, leaves the affinity."""
    import os

    from townlet_pipelines.training.town_processes import auto_processes, cgroup_cpu_quota

    cores = min(len(os.sched_getaffinity(0)), 8)
    assert cgroup_cpu_quota(tmp_path) is None and auto_processes(tmp_path) == cores
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None and auto_processes(tmp_path) == cores
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 0.5 and auto_processes(tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5 and auto_processes(tmp_path) == min(cores, 2)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert cgroup_cpu_quota(tmp_path) is None


def test_an_evaluation_worker_leaves_when_its_parent_is_killed(tmp_path):
    """A killed night must not leave forked evaluation workers behind: a worker whose parent died with SIGKILL
    exits within seconds."""
    import subprocess
    import sys

    script = (
        "import os, signal\n"
        "from townlet_pipelines.training import town_processes\n"
        "from tests.test_constrained import _ParentAct, _sleepy_play\n"
        "def die(seeds):\n"
        "    import time; time.sleep(1.0); os.kill(os.getpid(), signal.SIGKILL)\n"
        "town_processes.play_split(_sleepy_play, None, _ParentAct(die), tuple(range(32)), 1, 2)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == -9, run.stderr
    worker = int(run.stdout.split()[0])
    assert _gone_within(worker, 15), f"evaluation worker {worker} outlived its killed parent"


def test_the_network_reads_a_contiguous_scaled_map_on_the_cpu():
    """`network_inputs` hands the encoder the map as float32 cells / 8 in a contiguous (rows, C, w, w) array: the
    world's cells are channel-last, and a layout-preserving scale would make the flatten copy it again."""
    from townlet_pipelines.training.device import device_context
    from townlet_pipelines.training.inputs import MAP_SCALE
    from townlet_pipelines.training.policy import network_inputs, observation_batch
    from townlet_pipelines.world.engine import TownWorld
    from tests.test_training import tiny

    world = TownWorld(tiny(), 2)
    world.reset(np.arange(2, dtype=np.uint64))
    observed = observation_batch(world)
    assert not observed["map"].flags["C_CONTIGUOUS"]  # the case that matters
    scaled = network_inputs(observed, device_context("cpu", False, 1))["map"]
    assert scaled.dtype == torch.float32 and scaled.is_contiguous()
    assert torch.equal(scaled, torch.from_numpy(np.ascontiguousarray(observed["map"])).float() / MAP_SCALE)
