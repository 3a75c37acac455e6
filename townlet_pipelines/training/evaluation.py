"""Score a policy on a set of towns: KPIs per agent-day, each with a 95% confidence interval over towns.

Every town is one independent sample (its own seed, one day by default), so the interval is Student's t
over the per-town values: mean ± t(0.975, towns − 1) · sd / sqrt(towns). On 256 towns t is 1.97, the normal
1.96; on the smoke profile's 4 towns it is 3.18, where the normal value would claim an interval 38% too
narrow. Guardrails and the learning benchmark compare policies on the same towns, which removes the towns'
own spread from the comparison.
"""

from __future__ import annotations

import numpy as np

from townlet_pipelines.config import TownletConfig, UsageError
from townlet_pipelines.pictures import FirstDay
from townlet_pipelines.training.checkpoints import load_checkpoint
from townlet_pipelines.training.device import device_context
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.training.town_processes import auto_processes, play_split, splittable
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

Z95 = 1.959964
# Student's t, 97.5% quantile, for 1..30 degrees of freedom; beyond 30 the Cornish-Fisher series below is
# exact to 1e-4.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t95(samples: int) -> float:
    """The two-sided 95% Student-t factor for a mean over `samples` values (samples − 1 degrees of freedom)."""
    df = samples - 1
    if df < 1:
        raise ValueError(f"t95: an interval needs at least 2 samples, got {samples}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def half_width(values) -> float:
    """95% half-width of the mean of `values` (Student's t); 0 for a single value."""
    values = np.asarray(values, dtype=float)
    return float(t95(len(values)) * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
REFERENCES = ("scripted expert", "random")  # the held-out report's fixed rows, in the order they are shown


def play_towns(config: TownletConfig, act, seeds: tuple[int, ...], ticks: int, on_tick=None) -> dict[str, np.ndarray]:
    """Play one town per seed for `ticks` ticks in one batched world: per town, the total of every telemetry
    key and of the reward."""
    world = TownWorld(config, len(seeds))
    world.reset(np.asarray(seeds, dtype=np.uint64))
    totals = {key: np.zeros(len(seeds)) for key in (*TELEMETRY_KEYS, "reward")}
    for _ in range(ticks):
        if on_tick is not None:
            on_tick(world)
        actions = act(world)
        result = world.step(getattr(actions, "actions", actions))
        totals["reward"] += result.rewards.sum(axis=1)
        for key in TELEMETRY_KEYS:
            totals[key] += result.telemetry[key]
        if result.truncated:
            world.reset(np.asarray(seeds, dtype=np.uint64) + 7919)
    return totals


def evaluate(config: TownletConfig, act, seeds: tuple[int, ...] | None = None, ticks: int | None = None,
             per_town: dict | None = None, on_tick=None) -> dict[str, float]:
    """Run `act(world) -> actions` on one town per seed; KPIs per agent-day with `<kpi>_ci95` half-widths.

    `seeds` defaults to the guardrail evaluation towns (`config.seeds.guardrail`). `act` may be a world
    `Policy.act`, a `TorchPolicy.actions` or `.act` (its `.actions` are used). When `act`'s policy plays each
    town the same alone or batched, its towns are shared among `evaluation.processes` processes
    (training/town_processes.py; the same numbers). Pass a dict as `per_town` to receive the per-town arrays
    behind each KPI (paired comparisons use them). `on_tick(world)` runs before each tick (a picture watches
    town 0 through it) on the world of this process's towns: all of them, or the first share when split.
    """
    seeds = tuple(config.seeds.guardrail.seeds() if seeds is None else seeds)
    if not seeds:
        raise UsageError("evaluation: no towns to evaluate on (the seed range is empty)")
    ticks = config.evaluation.ticks if ticks is None else ticks
    processes = config.evaluation.processes or auto_processes()
    if processes > 1 and splittable(act):
        totals = play_split(play_towns, config, act, seeds, ticks, processes, on_tick)
    else:
        totals = play_towns(config, act, seeds, ticks, on_tick)
    reward = totals.pop("reward")
    town_days = config.world.agents_per_town * ticks / config.world.day_ticks  # agent-days of one town
    towns = {f"{key}_per_agent_day": value / town_days for key, value in totals.items()
             if key not in ("chat_quality_sum", "invalid_actions")}
    towns["reward_per_agent_day"] = reward / town_days
    report: dict[str, float] = {}
    for key, values in towns.items():
        report[key] = float(values.mean())
        report[f"{key}_ci95"] = half_width(values)
    report["chat_quality"] = float(totals["chat_quality_sum"].sum() / max(totals["chat_success_events"].sum(), 1.0))
    report["agent_days"] = float(len(seeds) * town_days)
    report["towns"] = float(len(seeds))
    if per_town is not None:
        per_town.update(towns)
    return report


def paired_difference(candidate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width (Student's t) of candidate − reference over the same towns."""
    difference = np.asarray(candidate, dtype=float) - np.asarray(reference, dtype=float)
    return float(difference.mean()), half_width(difference)


def held_out_comparison(config: TownletConfig, candidate, champion=None, device=None, cache_root=None,
                         strips: dict | None = None) -> dict[str, dict[str, float]]:
    """The candidate beside the champion (the current release, when there is one), the scripted expert and a
    random policy, greedy on the first `evaluation.report_towns` held-out towns (seeds.test): a picture for
    people, never an input to training, tuning or a guardrail. `candidate`/`champion` are checkpoint folders.

    The expert's and the random policy's rows depend on the config alone, so with `cache_root` they are scored
    once per config and read back on later nights. Pass a dict as `strips` to receive, per checkpoint name, a
    `TownStrip` of the first held-out town over its first day as this evaluation played it (`town_day_svg` plays
    that town alone: the same day for the expert; a network's logits in a batch of one town's 8 rows can round
    differently from those of the evaluation's batch, so a rare action may differ); none when `evaluation.ticks`
    is shorter than a day."""
    from townlet_pipelines.training.cache import cached_reference_scores  # above us: it builds on the anneal

    device = device or device_context("cpu", False, config.runtime.torch_threads)
    seeds = config.seeds.test.seeds()[:config.evaluation.report_towns]
    spec = TownWorld(config, 1).spec
    rows = {}
    whole_day = config.evaluation.ticks >= config.world.day_ticks  # else the caller plays the day itself
    for name, path in (("candidate", candidate), ("champion", champion)):
        if path is not None:
            model, _ = load_checkpoint(path, spec, device=device.device)
            watch = FirstDay(config.world.day_ticks) if strips is not None and whole_day else None
            rows[name] = evaluate(config, evaluation_policy(model, device, config).actions, seeds=seeds, on_tick=watch)
            if watch is not None and watch.strip is not None:
                strips[name] = watch.strip
    references = cached_reference_scores(config, seeds, REFERENCES, lambda: reference_scores(config, seeds),
                                         cache_root)
    rows.update((name, references[name]) for name in REFERENCES)  # the same order every night
    return rows


def reference_scores(config: TownletConfig, seeds) -> dict[str, dict[str, float]]:
    """The scripted expert and a random policy (seed 0) on `seeds`: the fixed ends of the held-out scale."""
    return {"scripted expert": evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds),
            "random": evaluate(config, RandomPolicy(0).act, seeds=seeds)}
