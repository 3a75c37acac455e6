"""Run a policy in the batched world and summarise the KPIs a user cares about."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from townlet_pipelines.config import TownletConfig, UsageError
from townlet_pipelines.results import SimulationReport
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld
from townlet_pipelines.world.policies import Policy, RandomPolicy, ScriptedExpert

SOCIAL_EVENTS = ("shared_meal_events", "queued_politely_events", "late_help_events", "shift_takeover_events",
                 "chat_success_events", "chat_failure_events")


def make_policy(name: str, config: TownletConfig, seed: int = 0) -> Policy:
    if name == "scripted":
        return ScriptedExpert(config.expert)
    if name == "random":
        return RandomPolicy(seed)
    raise UsageError(f"policy: unknown policy {name!r} (choose scripted or random)")


def simulate(
    config: TownletConfig,
    towns: int,
    ticks: int,
    policy: Policy,
    seed: int = 0,
    observe: bool = True,
    on_tick: Callable[[TownWorld], None] | None = None,
) -> SimulationReport:
    world = TownWorld(config, towns)
    world.reset(seed)
    totals = {key: 0.0 for key in TELEMETRY_KEYS}
    reward_sum = 0.0
    needs_sum = np.zeros(3)
    samples: list[np.ndarray] = []
    stride = max(1, ticks // 200)  # keep a bounded sample of per-tick rewards for the percentiles
    start = time.perf_counter()
    for tick in range(ticks):
        result = world.step(policy.act(world), observe=observe)
        for key in TELEMETRY_KEYS:
            totals[key] += float(result.telemetry[key].sum())
        reward_sum += float(result.rewards.sum())
        needs_sum += world.state.needs.mean(axis=(0, 1))
        if tick % stride == 0:
            samples.append(result.rewards.ravel().copy())
        if on_tick is not None:
            on_tick(world)
    wall = time.perf_counter() - start
    agents = towns * config.world.agents_per_town
    agent_days = agents * ticks / config.world.day_ticks
    per_day = lambda value: value / agent_days  # noqa: E731
    rewards = np.concatenate(samples)
    needs = needs_sum / max(ticks, 1)
    return SimulationReport(
        policy=policy.name, towns=towns, agents_per_town=config.world.agents_per_town, ticks=ticks, seed=seed,
        observation_variant=config.observations.variant if observe else None,
        wall_seconds=wall, ticks_per_sec=ticks / wall, agent_ticks_per_sec=agents * ticks / wall,
        faints=int(totals["faints"]), faints_per_agent_day=per_day(totals["faints"]),
        mean_hunger=float(needs[0]), mean_hygiene=float(needs[1]), mean_energy=float(needs[2]),
        mean_wallet=float(world.state.wallet.mean()),
        wages_per_agent_day=per_day(totals["wages"]),
        late_arrivals_per_agent_day=per_day(totals["late_arrivals"]),
        absences_per_agent_day=per_day(totals["absences"]),
        queue_conflict_events_per_agent_day=per_day(totals["queue_conflict_events"]),
        queue_conflict_intensity_per_agent_day=per_day(totals["queue_conflict_intensity"]),
        social_events_per_agent_day={key: per_day(totals[key]) for key in SOCIAL_EVENTS},
        chat_quality_mean=totals["chat_quality_sum"] / max(totals["chat_success_events"], 1.0),
        reward_per_agent_day=per_day(reward_sum),
        reward_percentiles={f"p{q}": float(np.percentile(rewards, q)) for q in (1, 10, 50, 90, 99)},
    )
