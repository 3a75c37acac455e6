"""Shared helpers: small worlds whose state a test can arrange by hand."""

from __future__ import annotations

import numpy as np
import pytest

from townlet_pipelines.config import TownletConfig, config_from_mapping
from townlet_pipelines.world.actions import WAIT
from townlet_pipelines.world.engine import TownWorld


def make_config(world: dict | None = None, **sections) -> TownletConfig:
    return config_from_mapping({"world": world or {}, **sections})


def make_world(world: dict | None = None, towns: int = 1, seed: int = 0, **sections) -> TownWorld:
    env = TownWorld(make_config(world, **sections), towns)
    env.reset(seed)
    return env


def calm(env: TownWorld) -> None:
    """Full needs, neutral personalities and no cooldowns, so only what a test arranges happens."""
    s = env.state
    s.needs[:] = 1.0
    s.personality[:] = 0.0
    s.personality[..., 1] = -1.0  # forgiveness -1: harmful deltas apply unscaled
    env.action_mask = env.observer.action_mask(s)


def place(env: TownWorld, agent: int, y: int, x: int, town: int = 0) -> None:
    env.state.y[town, agent], env.state.x[town, agent] = y, x
    env.action_mask = env.observer.action_mask(env.state)


def act(env: TownWorld, **chosen: int) -> np.ndarray:
    """Actions for town 0: WAIT for everyone but the agents named as a0=..., a1=..."""
    actions = np.full((env.towns, env.agents), WAIT, dtype=np.int64)
    for name, action in chosen.items():
        actions[:, int(name[1:])] = action
    return actions


@pytest.fixture
def small_world():
    return make_world({"agents_per_town": 2})


@pytest.fixture(autouse=True, scope="session")
def torch_threads():
    """The suite runs with the project's torch thread setting (runtime.torch_threads: auto), as the CLI, the
    Dagster steps and the benchmarks do; without torch there is nothing to set."""
    try:
        from townlet_pipelines.training.device import configure_threads

        configure_threads(0)
    except ImportError:
        pass
    yield
