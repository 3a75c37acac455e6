"""The batched world state: plain numpy arrays over (towns, agents) and (towns, objects)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from townlet_pipelines.config import WorldConfig
from townlet_pipelines.world import rng
from townlet_pipelines.world.actions import WAIT
from townlet_pipelines.world.layout import Layout

PERSONALITY_NAMES = ("extroversion", "forgiveness", "ambition")


@dataclass
class WorldState:
    tick: int
    seeds: np.ndarray  # (B,) uint64, one per town
    y: np.ndarray  # (B, N) int32 tile row
    x: np.ndarray  # (B, N) int32 tile column
    needs: np.ndarray  # (B, N, 3) float32 hunger, hygiene, energy
    wallet: np.ndarray  # (B, N) float32
    personality: np.ndarray  # (B, N, 3) float32 extroversion, forgiveness, ambition
    option: np.ndarray  # (B, N) int64 last chosen action
    active: np.ndarray  # (B, N) bool: an object option is in progress (walking, queued or using)
    option_age: np.ndarray  # (B, N) int32 ticks the current option has run
    target: np.ndarray  # (B, N) int32 object the option walks to, -1 when none
    holding: np.ndarray  # (B, N) bool: the agent holds (uses) its target object
    progress: np.ndarray  # (B, N) int32 ticks of use so far
    queued: np.ndarray  # (B, N) bool: waiting in its target's FIFO queue
    ticket: np.ndarray  # (B, N) int64 queue order: lower is served first
    cooldown_until: np.ndarray  # (B, N, O) int32 first tick the agent may queue for the object again
    chat_ready_at: np.ndarray  # (B, N) int32
    starving: np.ndarray  # (B, N) int32 consecutive ticks with a need at 0
    arrived: np.ndarray  # (B, N) bool: arrived for the current shift
    late: np.ndarray  # (B, N) bool: the current shift's arrival was late
    lateness: np.ndarray  # (B, N) int32 late arrivals so far
    shifts_attended: np.ndarray  # (B, N) int32
    shifts_elapsed: np.ndarray  # (B, N) int32
    holder: np.ndarray  # (B, O) int32 agent using the object, -1 when free
    last_holder: np.ndarray  # (B, O) int32 agent that used it last, -1 when none
    meals: np.ndarray  # (B,) int32 meals in the town's pantry
    rel: np.ndarray  # (B, N, N, 3) float32 trust, familiarity, rivalry of i toward j
    tie: np.ndarray  # (B, N, N) bool: i keeps a tie to j

    def copy(self) -> "WorldState":
        return WorldState(
            **{f.name: (getattr(self, f.name).copy() if isinstance(getattr(self, f.name), np.ndarray)
                        else getattr(self, f.name)) for f in fields(self)}
        )


def initial_state(config: WorldConfig, layout: Layout, seeds: np.ndarray) -> WorldState:
    towns, agents, objects = len(seeds), config.agents_per_town, layout.num_objects
    needs_cfg = config.needs
    spread = needs_cfg.initial_max - needs_cfg.initial_min
    needs = needs_cfg.initial_min + spread * rng.uniform(seeds, 0, rng.STREAM_NEEDS, (agents, 3))
    personality = 2.0 * rng.uniform(seeds, 0, rng.STREAM_PERSONALITY, (agents, 3)) - 1.0
    home = layout.home_bed[None, :].repeat(towns, 0)
    return WorldState(
        tick=0,
        seeds=seeds.astype(np.uint64),
        y=layout.access_y[home].astype(np.int32),
        x=layout.access_x[home].astype(np.int32),
        needs=needs.astype(np.float32),
        wallet=np.full((towns, agents), config.initial_wallet, dtype=np.float32),
        personality=personality.astype(np.float32),
        option=np.full((towns, agents), WAIT, dtype=np.int64),
        active=np.zeros((towns, agents), dtype=bool),
        option_age=np.zeros((towns, agents), dtype=np.int32),
        target=np.full((towns, agents), -1, dtype=np.int32),
        holding=np.zeros((towns, agents), dtype=bool),
        progress=np.zeros((towns, agents), dtype=np.int32),
        queued=np.zeros((towns, agents), dtype=bool),
        ticket=np.zeros((towns, agents), dtype=np.int64),
        cooldown_until=np.zeros((towns, agents, objects), dtype=np.int32),
        chat_ready_at=np.zeros((towns, agents), dtype=np.int32),
        starving=np.zeros((towns, agents), dtype=np.int32),
        arrived=np.zeros((towns, agents), dtype=bool),
        late=np.zeros((towns, agents), dtype=bool),
        lateness=np.zeros((towns, agents), dtype=np.int32),
        shifts_attended=np.zeros((towns, agents), dtype=np.int32),
        shifts_elapsed=np.zeros((towns, agents), dtype=np.int32),
        holder=np.full((towns, objects), -1, dtype=np.int32),
        last_holder=np.full((towns, objects), -1, dtype=np.int32),
        meals=np.full(towns, config.initial_meals, dtype=np.int32),
        rel=np.zeros((towns, agents, agents, 3), dtype=np.float32),
        tie=np.zeros((towns, agents, agents), dtype=bool),
    )
