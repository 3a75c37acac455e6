"""Policies that drive the world without a network: the scripted expert and a uniform random policy.

Both are vectorized over (towns, agents) like the world itself. A policy maps the world to one action
per agent; trained checkpoints plug in through the same `Policy` protocol (see `data/`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from townlet_pipelines.config import ExpertConfig
from townlet_pipelines.world.actions import CHAT, COOK, EAT, SHOWER, SLEEP, WAIT, WORK
from townlet_pipelines.world.engine import TownWorld

_NEED_OPTIONS = ((EAT, COOK), (SHOWER, SHOWER), (SLEEP, SLEEP))  # first choice, fallback per need


class Policy(Protocol):
    name: str

    def act(self, world: TownWorld) -> np.ndarray:
        """One action per agent, shape (towns, agents), never a masked one."""


class ScriptedExpert:
    """TOWNLET.md's scripted policy, in priority order:

    finish an object use in progress; go to work `job_arrival_buffer` ticks before the shift; keep walking
    or queueing for the current option; satisfy the lowest need under its threshold (cook when the
    pantry is empty); chat with an adjacent agent when extroverted and off cooldown; otherwise wait.
    Avoiding queues that hold a rival is the world's targeting rule, which every policy shares.
    """

    name = "scripted"
    towns_independent = True  # no draws: each town plays the same alone or batched (evaluations may split them)

    def __init__(self, config: ExpertConfig) -> None:
        self.config = config
        self.thresholds = np.array(config.thresholds(), dtype=np.float32)

    def act(self, world: TownWorld) -> np.ndarray:
        s, mask, rules = world.state, world.action_mask, world.rules
        B, N = s.y.shape
        tod = s.tick % world.config.world.day_ticks
        rows, cols = np.arange(B)[:, None], np.arange(N)[None, :]
        allowed = lambda option: mask[rows, cols, option]  # noqa: E731

        current_ok = s.active & allowed(s.option)
        work_time = (tod >= rules.shift_start - self.config.job_arrival_buffer) & (tod < rules.shift_end)
        go_work = work_time[None, :] & ~(s.arrived & ~s.active) & mask[..., WORK]

        need_action = np.full((B, N), -1, dtype=np.int64)
        need_level = np.full((B, N), np.inf, dtype=np.float32)
        for need, (first, fallback) in enumerate(_NEED_OPTIONS):
            level = s.needs[..., need]
            choice = np.where(mask[..., first], first, np.where(mask[..., fallback], fallback, -1))
            better = (level < self.thresholds[need]) & (choice >= 0) & (level < need_level)
            need_action = np.where(better, choice, need_action)
            need_level = np.where(better, level, need_level)

        chat = (s.personality[..., 0] >= self.config.chat_extroversion_min) & mask[..., CHAT]
        action = np.full((B, N), WAIT, dtype=np.int64)
        action = np.where(chat, CHAT, action)
        action = np.where(need_action >= 0, need_action, action)
        action = np.where(current_ok, s.option, action)
        action = np.where(go_work & ~(current_ok & s.holding), WORK, action)
        return action


class RandomPolicy:
    """Uniform over the unmasked actions of each agent."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, world: TownWorld) -> np.ndarray:
        scores = self.rng.random(world.action_mask.shape) * world.action_mask
        return np.argmax(scores, axis=2)
