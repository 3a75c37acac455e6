"""PettingZoo and Gymnasium views of the world, checked with those libraries' own test utilities."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("pettingzoo")

from gymnasium.utils.env_checker import check_env  # noqa: E402
from pettingzoo.test import parallel_api_test  # noqa: E402

from tests.conftest import make_config  # noqa: E402
from townlet_pipelines.world.adapters import TownletParallelEnv, TownletVectorEnv, single_agent_env  # noqa: E402
from townlet_pipelines.world.engine import TownWorld, town_seeds  # noqa: E402

SHORT = {"agents_per_town": 4, "day_ticks": 120, "episode_days": 1,
         "jobs": {"jobs": [{"name": "j", "shift_start": 60, "shift_end": 100}], "work_window_before": 20}}


def test_parallel_env_passes_pettingzoo_api_test():
    env = TownletParallelEnv(make_config(SHORT), render_mode="ansi")
    parallel_api_test(env, num_cycles=200)
    observations, _ = env.reset(seed=3)
    assert set(observations) == set(env.possible_agents)
    for agent, observation in observations.items():
        assert env.observation_space(agent).contains(observation)
    assert "town 0" in env.render()


def test_parallel_env_removes_a_fainted_agent_and_truncates_at_the_time_limit():
    env = TownletParallelEnv(make_config(SHORT))
    env.reset(seed=0)
    env.world.state.needs[0, 1] = 0.0
    env.world.state.starving[0, 1] = env.config.world.needs.faint_ticks - 1
    _, rewards, terminations, truncations, _ = env.step({agent: 0 for agent in env.agents})
    assert terminations["agent_1"] and not terminations["agent_0"] and rewards["agent_1"] < -0.9
    assert "agent_1" not in env.agents and len(env.agents) == 3
    for _ in range(200):
        if not env.agents:
            break
        *_, truncations, _ = env.step({agent: 0 for agent in env.agents})
    assert not env.agents and all(truncations.values()) and env.world.state.tick == 120


def test_gymnasium_check_env_accepts_the_single_agent_view():
    env = single_agent_env(make_config(SHORT))
    check_env(env, skip_render_check=True)


def test_vector_env_spaces_masks_and_same_step_autoreset():
    env = TownletVectorEnv(make_config(SHORT), towns=2, seed=5)
    observations, _ = env.reset()
    assert env.num_envs == 8 and env.observation_space.contains(observations)
    for _ in range(120):
        masks = observations["action_mask"].astype(np.int8)
        actions = np.array([env.single_action_space.sample(mask=mask) for mask in masks])
        assert masks[np.arange(8), actions].all()  # masked actions are never sampled
        observations, rewards, terminations, truncations, infos = env.step(actions)
        assert rewards.shape == terminations.shape == truncations.shape == (8,)
        assert env.observation_space.contains(observations)
    assert truncations.all() and "final_obs" in infos
    assert env.world.state.tick == 0  # reset within the same step
    assert not np.array_equal(infos["final_obs"]["features"], observations["features"])


def test_vector_env_follows_the_raw_world_exactly():
    config = make_config(SHORT)
    env = TownletVectorEnv(config, towns=2, seed=9)
    world = TownWorld(config, 2)
    observations, _ = env.reset()
    world.reset(town_seeds(9, 2))
    rng = np.random.default_rng(0)
    for _ in range(60):
        actions = rng.integers(0, 11, size=8)
        observations, rewards, *_ = env.step(actions)
        result = world.step(actions.reshape(2, 4))
        assert np.array_equal(observations["features"], result.observation.features.reshape(8, -1))
        assert np.array_equal(observations["map"], result.observation.map.reshape(8, *result.observation.map.shape[2:]))
        assert np.array_equal(rewards, result.rewards.reshape(-1))
