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
REFERENCES = ("scripted expert", "random")  # the held-out report's fixed rows, in the order they are shown


def evaluate(config: TownletConfig, act, seeds: tuple[int, ...] | None = None, ticks: int | None = None,
             per_town: dict | None = None, on_tick=None) -> dict[str, float]:
    """Run `act(world) -> actions` on one town per seed; KPIs per agent-day with `<kpi>_ci95` half-widths.

    `seeds` defaults to the guardrail evaluation towns (`config.seeds.guardrail`). `act` may be a world
    `Policy.act` or a `TorchPolicy.act` (its `.actions` are used). Pass a dict as `per_town` to receive the
    per-town arrays behind each KPI (paired comparisons use them). `on_tick(world)` runs before each tick
    (a picture watches a town through it).
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
        if on_tick is not None:
            on_tick(world)
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


def held_out_comparison(config: TownletConfig, candidate, champion=None, device=None, cache_root=None,
                         strips: dict | None = None) -> dict[str, dict[str, float]]:
    """The candidate beside the champion (the current release, when there is one), the scripted expert and a
    random policy, greedy on the first `evaluation.report_towns` held-out towns (seeds.test): a picture for
    people, never an input to training, tuning or a guardrail. `candidate`/`champion` are checkpoint folders.

    The expert's and the random policy's rows depend on the config alone, so with `cache_root` they are scored
    once per config and read back on later nights. Pass a dict as `strips` to receive, per checkpoint name, a
    `TownStrip` of the first held-out town over its first day (the picture `town_day_svg` would draw by playing
    that town again); none when `evaluation.ticks` is shorter than a day."""
    from townlet_pipelines.pictures import FirstDay
    from townlet_pipelines.training.cache import cached_reference_scores
    from townlet_pipelines.training.checkpoints import load_checkpoint
    from townlet_pipelines.training.device import device_context
    from townlet_pipelines.training.policy import TorchPolicy

    device = device or device_context("cpu", False, config.runtime.torch_threads)
    seeds = config.seeds.test.seeds()[:config.evaluation.report_towns]
    spec = TownWorld(config, 1).spec
    rows = {}
    whole_day = config.evaluation.ticks >= config.world.day_ticks  # else the caller plays the day itself
    for name, path in (("candidate", candidate), ("champion", champion)):
        if path is not None:
            model, _ = load_checkpoint(path, spec, device=device.device)
            watch = FirstDay(config.world.day_ticks) if strips is not None and whole_day else None
            rows[name] = evaluate(config, TorchPolicy(model, device, greedy=True).act, seeds=seeds, on_tick=watch)
            if watch is not None and watch.strip is not None:
                strips[name] = watch.strip
    references = cached_reference_scores(config, seeds, REFERENCES, lambda: reference_scores(config, seeds),
                                         cache_root)
    rows.update((name, references[name]) for name in REFERENCES)  # the same order every night
    return rows


def reference_scores(config: TownletConfig, seeds) -> dict[str, dict[str, float]]:
    """The scripted expert and a random policy (seed 0) on `seeds`: the fixed ends of the held-out scale."""
    from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

    return {"scripted expert": evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds),
            "random": evaluate(config, RandomPolicy(0).act, seeds=seeds)}
