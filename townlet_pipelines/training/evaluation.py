"""Score a policy on a set of towns: KPIs per agent-day, each with a 95% confidence interval over towns.

Every town is one independent sample (its own seed, one day by default), so the interval is the normal
approximation over the per-town values: mean ± 1.96 · sd / sqrt(towns). Guardrails and the learning
benchmark compare policies on the same towns, which removes the towns' own spread from the comparison.
"""

from __future__ import annotations

import numpy as np

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld

Z95 = 1.959964


def evaluate(config: TownletConfig, act, seeds: tuple[int, ...] | None = None, ticks: int | None = None,
             per_town: dict | None = None) -> dict[str, float]:
    """Run `act(world) -> actions` on one town per seed; KPIs per agent-day with `<kpi>_ci95` half-widths.

    `seeds` defaults to the guardrail evaluation towns (`config.seeds.guardrail`). `act` may be a world
    `Policy.act` or a `TorchPolicy.act` (its `.actions` are used). Pass a dict as `per_town` to receive the
    per-town arrays behind each KPI (paired comparisons use them).
    """
    seeds = tuple(config.seeds.guardrail.seeds() if seeds is None else seeds)
    if not seeds:
        raise ValueError("evaluation: no towns to evaluate on (the seed range is empty)")
    ticks = config.evaluation.ticks if ticks is None else ticks
    world = TownWorld(config, len(seeds))
    world.reset(np.asarray(seeds, dtype=np.uint64))
    totals = {key: np.zeros(len(seeds)) for key in TELEMETRY_KEYS}
    reward = np.zeros(len(seeds))
    for _ in range(ticks):
        actions = act(world)
        actions = getattr(actions, "actions", actions)
        result = world.step(actions)
        reward += result.rewards.sum(axis=1)
        for key in TELEMETRY_KEYS:
            totals[key] += result.telemetry[key]
        if result.truncated:
            world.reset(np.asarray(seeds, dtype=np.uint64) + 7919)
    town_days = config.world.agents_per_town * ticks / config.world.day_ticks  # agent-days of one town
    towns = {f"{key}_per_agent_day": value / town_days for key, value in totals.items()
             if key not in ("chat_quality_sum", "invalid_actions")}
    towns["reward_per_agent_day"] = reward / town_days
    report: dict[str, float] = {}
    for key, values in towns.items():
        report[key] = float(values.mean())
        report[f"{key}_ci95"] = float(Z95 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    report["chat_quality"] = float(totals["chat_quality_sum"].sum() / max(totals["chat_success_events"].sum(), 1.0))
    report["agent_days"] = float(len(seeds) * town_days)
    report["towns"] = float(len(seeds))
    if per_town is not None:
        per_town.update(towns)
    return report


def paired_difference(candidate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width of candidate − reference over the same towns."""
    difference = np.asarray(candidate, dtype=float) - np.asarray(reference, dtype=float)
    half = Z95 * difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    return float(difference.mean()), float(half)


def held_out_comparison(config: TownletConfig, candidate, champion=None, device=None) -> dict[str, dict[str, float]]:
    """The candidate beside the champion (the current release, when there is one), the scripted expert and a
    random policy, greedy on the first `evaluation.report_towns` held-out towns (seeds.test): a picture for
    people, never an input to training, tuning or a guardrail. `candidate`/`champion` are checkpoint folders."""
    from townlet_pipelines.training.checkpoints import load_checkpoint
    from townlet_pipelines.training.device import device_context
    from townlet_pipelines.training.policy import TorchPolicy
    from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

    device = device or device_context("cpu", False, config.runtime.torch_threads)
    seeds = config.seeds.test.seeds()[:config.evaluation.report_towns]
    spec = TownWorld(config, 1).spec
    rows = {}
    for name, path in (("candidate", candidate), ("champion", champion)):
        if path is not None:
            model, _ = load_checkpoint(path, spec, device=device.device)
            rows[name] = evaluate(config, TorchPolicy(model, device, greedy=True).act, seeds=seeds)
    rows["scripted expert"] = evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds)
    rows["random"] = evaluate(config, RandomPolicy(0).act, seeds=seeds)
    return rows
