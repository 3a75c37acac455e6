"""The queue-conflict constraint during PPO: the price of a conflict (a PID Lagrange multiplier) and the
snapshot choice that keeps only snapshots within the budget (early stopping under the constraint)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.training.evaluation import evaluate


@dataclass
class ConflictMultiplier:
    """The PID Lagrangian of Stooke, Achiam & Abbeel (2020) on queue conflicts: λ prices one conflict in reward.

    The error is e = rate / budget − 1, the rate being conflicts per agent-day over the last `window` readings:
    one validation reading (`ppo.lagrange_measure: validation`, the default), or the rollouts of about one day
    of every rollout town (`rollouts`: meal-time peaks and quiet nights averaged, not chased):

        I ← max(0, I + ki·e)                      the integral: plain dual ascent (PPO-Lagrangian) when kp = kd = 0
        λ = max(0, kp·e + I + kd·max(0, rate − previous rate) / budget)

    The proportional term answers an overshoot within the update instead of after the integral has wound up,
    and the derivative term brakes a rate that is climbing; together they damp the oscillation of plain dual
    ascent. The integral starts at `lagrange_init`, so conflicts are priced from the first update.
    """

    budget: float  # conflicts per agent-day
    ki: float
    kp: float = 0.0
    kd: float = 0.0
    integral: float = 0.0
    value: float = 0.0
    window: int = 1
    previous_rate: float | None = None
    history: collections.deque = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        self.value = max(0.0, self.integral)

    def update(self, conflicts: float, agent_days: float) -> float:
        self.history.append((conflicts, agent_days))
        while len(self.history) > self.window:
            self.history.popleft()
        rate = sum(c for c, _ in self.history) / max(sum(d for _, d in self.history), 1e-9)
        budget = max(self.budget, 1e-9)
        error = rate / budget - 1.0
        self.integral = max(0.0, self.integral + self.ki * error)
        rising = max(0.0, rate - self.previous_rate) / budget if self.previous_rate is not None else 0.0
        self.value = max(0.0, self.kp * error + self.integral + self.kd * rising)
        self.previous_rate = rate
        return rate

    def state(self) -> dict:
        return {"value": self.value, "integral": self.integral, "previous_rate": self.previous_rate,
                "history": [list(item) for item in self.history]}

    def restore(self, state: dict) -> None:
        self.value = state["value"]
        self.integral = state.get("integral", state["value"])
        self.previous_rate = state.get("previous_rate")
        self.history.extend(tuple(item) for item in state["history"])


VALIDATION_KEYS = ("reward_per_agent_day", "faints_per_agent_day", "queue_conflict_events_per_agent_day",
                   "wages_per_agent_day")


def validation_scores(config: TownletConfig, act) -> dict[str, float]:
    """A policy's KPIs on the seeds.validation towns (never the guardrail or the held-out towns)."""
    report = evaluate(config, act, seeds=config.seeds.validation.seeds())
    return {key: report[key] for key in VALIDATION_KEYS}


@dataclass
class SnapshotSelector:
    """Early stopping under the constraint: keep the snapshot with the highest validation reward among those
    whose conflicts stay within `ratio` × the expert's (or within the start's, when the start was offered: a
    snapshot with no more conflicts than the champion it would replace is no step back, even where the
    champion itself reads above `ratio` on these towns), whose faints do not exceed the expert's and whose
    wages reach `wage_ratio` × the expert's; while none qualifies, the one with the fewest conflicts."""

    expert: dict[str, float]
    ratio: float
    wage_ratio: float = 0.0
    best: dict[str, float] | None = None
    best_state: dict | None = None
    best_update: int = 0
    start_conflicts: float | None = None  # the start's validation conflicts, once offered as update 0

    def conflict_limit(self) -> float:
        limit = self.ratio * self.expert["queue_conflict_events_per_agent_day"]
        return max(limit, self.start_conflicts) if self.start_conflicts is not None else limit

    def feasible(self, scores: dict[str, float]) -> bool:
        return (scores["queue_conflict_events_per_agent_day"] <= self.conflict_limit() + 1e-9
                and scores["faints_per_agent_day"] <= self.expert["faints_per_agent_day"] + 1e-9
                and scores["wages_per_agent_day"] >= self.wage_ratio * self.expert["wages_per_agent_day"] - 1e-9)

    def offer(self, update: int, scores: dict[str, float], model, start: bool = False) -> bool:
        if start:
            self.start_conflicts = scores["queue_conflict_events_per_agent_day"]
        better = self.best is None
        if not better:
            if self.feasible(scores) != self.feasible(self.best):
                better = self.feasible(scores)
            elif self.feasible(scores):
                better = scores["reward_per_agent_day"] > self.best["reward_per_agent_day"]
            else:
                better = (scores["queue_conflict_events_per_agent_day"]
                          < self.best["queue_conflict_events_per_agent_day"])
        if better:
            self.best, self.best_update = dict(scores), update
            self.best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        return better
