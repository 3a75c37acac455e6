"""Score a policy on fixed evaluation seeds, so scores compare across runs and against the expert."""

from __future__ import annotations

import numpy as np

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld


def evaluate(config: TownletConfig, act, seeds: tuple[int, ...] | None = None, ticks: int | None = None) -> dict[str, float]:
    """Run `act(world) -> actions` on one town per evaluation seed; KPIs per agent-day.

    `act` may be a world `Policy.act` or a `TorchPolicy` (its `.act(world).actions`).
    """
    seeds = tuple(config.evaluation.seeds if seeds is None else seeds)
    ticks = config.evaluation.ticks if ticks is None else ticks
    world = TownWorld(config, len(seeds))
    world.reset(np.asarray(seeds, dtype=np.uint64))
    totals = {key: 0.0 for key in TELEMETRY_KEYS}
    reward = 0.0
    for _ in range(ticks):
        actions = act(world)
        actions = getattr(actions, "actions", actions)
        result = world.step(actions)
        reward += float(result.rewards.sum())
        for key in TELEMETRY_KEYS:
            totals[key] += float(result.telemetry[key].sum())
        if result.truncated:
            world.reset(np.asarray(seeds, dtype=np.uint64) + 7919)
    agent_days = len(seeds) * config.world.agents_per_town * ticks / config.world.day_ticks
    report = {f"{key}_per_agent_day": value / agent_days for key, value in totals.items()
              if key not in ("chat_quality_sum", "invalid_actions")}
    report["reward_per_agent_day"] = reward / agent_days
    report["chat_quality"] = totals["chat_quality_sum"] / max(totals["chat_success_events"], 1.0)
    report["agent_days"] = agent_days
    return report
