"""Lookup tables derived once from the config: per-option costs and effects, per-agent shift windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from townlet_pipelines.config import WorldConfig
from townlet_pipelines.world.actions import COOK, EAT, NUM_ACTIONS, SHOWER, SLEEP
from townlet_pipelines.world.layout import Layout


@dataclass(frozen=True)
class RuleTables:
    duration: np.ndarray  # (A,) ticks of use; 1 for options without a timed use
    cost: np.ndarray  # (A,) charged when the use starts
    effects: np.ndarray  # (A, 3) need changes on completion
    shift_start: np.ndarray  # (N,) of each agent's job
    shift_end: np.ndarray  # (N,)
    wage: np.ndarray  # (N,) per tick worked


def rule_tables(world: WorldConfig, layout: Layout) -> RuleTables:
    aff = world.affordances
    duration = np.ones(NUM_ACTIONS, dtype=np.int32)
    cost = np.zeros(NUM_ACTIONS, dtype=np.float32)
    effects = np.zeros((NUM_ACTIONS, 3), dtype=np.float32)
    for option, affordance in ((EAT, aff.eat_meal), (COOK, aff.cook_meal), (SHOWER, aff.use_shower),
                               (SLEEP, aff.rest_sleep)):
        duration[option] = affordance.duration
        cost[option] = affordance.cost
        effects[option] = affordance.effects()
    jobs = [world.jobs.jobs[j] for j in layout.job_of_agent]
    return RuleTables(
        duration=duration, cost=cost, effects=effects,
        shift_start=np.array([job.shift_start for job in jobs], dtype=np.int32),
        shift_end=np.array([job.shift_end for job in jobs], dtype=np.int32),
        wage=np.array([job.wage for job in jobs], dtype=np.float32),
    )
