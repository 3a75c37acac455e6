"""The PettingZoo and Gymnasium views of the world, checked with those libraries' own utilities.

PettingZoo ships `parallel_api_test` and `parallel_seed_test`; both run on the parallel env. Gymnasium 1.4
has no checker for vector envs (`gymnasium.utils.env_checker.check_env` takes a single `gymnasium.Env`),
so `check_env` runs on `_OneAgentView`, a test-only `gymnasium.Env` that forwards every call to a
`TownletVectorEnv` of one town of one agent: it checks the vector env's spaces, seeding, determinism and
that returned arrays are never reused. The batched spaces are checked with `space.contains` on every
observation of whole episodes, and Gymnasium's own vector wrappers (which refuse unsupported autoreset
modes and need per-sub-env infos) are run over a whole episode.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")
pytest.importorskip("pettingzoo")

from gymnasium.utils.env_checker import check_env  # noqa: E402
from gymnasium.wrappers.vector import DictInfoToList, RecordEpisodeStatistics, TransformObservation  # noqa: E402
from pettingzoo.test import parallel_api_test, parallel_seed_test  # noqa: E402

from tests.conftest import make_config  # noqa: E402
from townlet_pipelines.world.actions import NUM_ACTIONS, WAIT  # noqa: E402
from townlet_pipelines.world.adapters import TownletParallelEnv, TownletVectorEnv  # noqa: E402
from townlet_pipelines.world.engine import TownWorld, town_seeds  # noqa: E402

EPISODE = 120
SHORT = {"agents_per_town": 4, "day_ticks": EPISODE, "episode_days": 1,
         "jobs": {"jobs": [{"name": "j", "shift_start": 60, "shift_end": 100}], "work_window_before": 20}}
VARIANTS = ("hybrid", "compact", "full")


def short(variant: str = "hybrid", **world):
    return make_config({**SHORT, **world}, observations={"variant": variant})


def faint_next_tick(world: TownWorld, town: int, agent: int) -> None:
    world.state.needs[town, agent] = 0.0
    world.state.starving[town, agent] = world.config.world.needs.faint_ticks - 1


def rows(observations, index):
    """Row `index` of a batched observation (Dict or Box)."""
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


# ---------------------------------------------------------------- PettingZoo


def test_parallel_env_passes_pettingzoo_api_and_seed_tests():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the API test reports missing or extra per-agent keys as warnings
        parallel_api_test(TownletParallelEnv(short()), num_cycles=2 * EPISODE)
    parallel_seed_test(lambda: TownletParallelEnv(short()), num_cycles=EPISODE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parallel_env_observations_and_masks_match_the_spaces(variant):
    env = TownletParallelEnv(short(variant))
    observations, infos = env.reset(seed=3)
    for _ in range(EPISODE):
        for agent in env.agents:
            assert env.observation_space(agent).contains(observations[agent]), agent
            mask = infos[agent]["action_mask"]
            assert mask.dtype == np.int8 and mask.shape == (NUM_ACTIONS,)
            assert np.array_equal(mask, env.world.action_mask[0, env.possible_agents.index(agent)])
        actions = {agent: env.action_space(agent).sample(mask=infos[agent]["action_mask"]) for agent in env.agents}
        assert all(infos[agent]["action_mask"][action] == 1 for agent, action in actions.items())
        observations, _, _, truncations, infos = env.step(actions)
        assert infos["agent_0"]["telemetry"]["invalid_actions"] == 0  # masked sampling never picks a masked action
    assert all(truncations.values()) and env.agents == []
    if variant == "compact":
        assert isinstance(env.observation_space("agent_0"), gymnasium.spaces.Box)
    else:
        assert set(env.observation_space("agent_0").spaces) == {"map", "features"}


def test_parallel_env_reports_a_faint_without_removing_the_agent():
    env = TownletParallelEnv(short())
    env.reset(seed=0)
    faint_next_tick(env.world, 0, 1)
    observations, rewards, terminations, truncations, infos = env.step(dict.fromkeys(env.agents, WAIT))
    assert [infos[agent]["fainted"] for agent in env.possible_agents] == [False, True, False, False]
    assert not any(terminations.values()) and not any(truncations.values())
    assert env.agents == env.possible_agents and rewards["agent_1"] < -0.9 < rewards["agent_0"]
    respawn = env.config.world.needs.respawn_level
    assert np.allclose(observations["agent_1"]["features"][:3], respawn, atol=0.01)  # respawned, needs refilled


def test_parallel_env_follows_the_raw_world_and_truncates_at_max_ticks():
    config = short()
    env, world = TownletParallelEnv(config, max_ticks=30), TownWorld(config, 1)
    env.reset(seed=11)
    world.reset(town_seeds(11, 1))
    rng = np.random.default_rng(1)
    for tick in range(30):
        actions = rng.integers(0, NUM_ACTIONS, size=4)
        observations, rewards, _, truncations, _ = env.step(dict(zip(env.agents, actions)))
        result = world.step(actions[None, :])
        for key in ("map", "features"):
            stacked = np.stack([observations[agent][key] for agent in observations])
            assert np.array_equal(stacked, getattr(result.observation, key)[0])
        assert np.array_equal([rewards[a] for a in rewards], result.rewards[0])
        assert all(truncations.values()) == (tick == 29)
    assert env.agents == [] and env.render() is None  # no render_mode, no frame
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})
    env.reset()  # the next episode plays the next seed
    assert np.array_equal(env.world.state.seeds, town_seeds(12, 1))


def test_parallel_env_renders_text_frames():
    env = TownletParallelEnv(short(), render_mode="ansi")
    env.reset(seed=0)
    assert env.render().startswith("town 0  day 0")
    with pytest.raises(ValueError, match="render_mode"):
        TownletParallelEnv(short(), render_mode="human")


# ---------------------------------------------------------------- Gymnasium


class _OneAgentView(gymnasium.Env):
    """Sub-env 0 of a one-town, one-agent `TownletVectorEnv`, so that `check_env` can drive it."""

    def __init__(self, variant: str) -> None:
        self.vector = TownletVectorEnv(short(variant, agents_per_town=1))
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        observations, infos = self.vector.reset(seed=seed)
        return rows(observations, 0), {"action_mask": infos["action_mask"][0]}

    def step(self, action):
        observations, rewards, terminations, truncations, infos = self.vector.step(np.array([action]))
        return (rows(observations, 0), float(rewards[0]), bool(terminations[0]), bool(truncations[0]),
                {"action_mask": infos["action_mask"][0]})


@pytest.mark.parametrize("variant", VARIANTS)
def test_gymnasium_check_env_accepts_the_vector_env_through_a_one_agent_view(variant):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any complaint fails the test, except that the features are unbounded
        warnings.filterwarnings("ignore", message=".*A Box observation space (minimum|maximum) value is")
        check_env(_OneAgentView(variant), skip_render_check=True)


@pytest.mark.parametrize("variant", ("hybrid", "compact"))
def test_vector_env_spaces_masks_and_next_step_autoreset(variant):
    env = TownletVectorEnv(short(variant), towns=2)
    assert env.num_envs == 8 and env.metadata["autoreset_mode"] is gymnasium.vector.AutoresetMode.NEXT_STEP
    observations, infos = env.reset(seed=5)
    for tick in range(EPISODE):
        assert env.observation_space.contains(observations)
        assert infos["action_mask"].shape == (8, NUM_ACTIONS) and infos["action_mask"].dtype == np.int8
        actions = env.action_space.sample(mask=tuple(infos["action_mask"]))
        assert infos["action_mask"][np.arange(8), actions].all()
        observations, rewards, terminations, truncations, infos = env.step(actions)
        assert rewards.shape == terminations.shape == truncations.shape == (8,)
        assert all(value.shape == (8,) for value in infos["telemetry"].values())
        assert infos["telemetry"]["invalid_actions"].sum() == 0
        assert truncations.all() == (tick == EPISODE - 1)
    assert env.world.state.tick == EPISODE and env.observation_space.contains(observations)  # last tick's obs
    # The next step ignores its actions and starts the next episode, seeded town_seeds(5 + 2, 2).
    observations, rewards, terminations, truncations, _ = env.step(np.full(8, 7))
    fresh, _ = TownWorld(env.config, 2).reset(town_seeds(7, 2))
    assert env.world.state.tick == 0 and not rewards.any() and not terminations.any() and not truncations.any()
    features = observations if variant == "compact" else observations["features"]
    assert np.array_equal(features, fresh.features.reshape(8, -1))
    env.step(np.zeros(8, dtype=np.int64))
    assert env.world.state.tick == 1  # and then an ordinary step


def test_vector_env_faint_is_a_termination_without_a_reset():
    env = TownletVectorEnv(short(), towns=2)
    env.reset(seed=0)
    for _ in range(10):
        env.step(np.zeros(8, dtype=np.int64))
    faint_next_tick(env.world, 1, 2)
    _, rewards, terminations, truncations, infos = env.step(np.zeros(8, dtype=np.int64))
    assert np.flatnonzero(terminations).tolist() == [6] and not truncations.any() and rewards[6] < -0.9
    assert infos["telemetry"]["faints"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    _, rewards, terminations, _, _ = env.step(np.zeros(8, dtype=np.int64))
    assert env.world.state.tick == 12 and not terminations.any() and rewards[6] != 0


def test_vector_env_follows_the_raw_world_exactly_across_an_autoreset():
    config = short()
    env, world = TownletVectorEnv(config, towns=2), TownWorld(config, 2)
    env.reset(seed=9)
    world.reset(town_seeds(9, 2))
    rng = np.random.default_rng(0)
    for tick in range(EPISODE + 40):
        actions = rng.integers(0, NUM_ACTIONS, size=8)  # masked ones included: both play them as `wait`
        if tick == EPISODE:
            observations, *_ = env.step(actions)
            observation, mask = world.reset(town_seeds(9 + 2, 2))
            rewards, dones = np.zeros(8), np.zeros(8, dtype=bool)
        else:
            observations, rewards, dones, _, infos = env.step(actions)
            result = world.step(actions.reshape(2, 4))
            observation, mask = result.observation, result.action_mask
            assert np.array_equal(rewards, result.rewards.reshape(-1))
            assert np.array_equal(dones, result.dones.reshape(-1))
            assert np.array_equal(infos["action_mask"], mask.reshape(8, -1))
        assert np.array_equal(observations["features"], observation.features.reshape(8, -1))
        assert np.array_equal(observations["map"], observation.map.reshape(8, *observation.map.shape[2:]))


def test_vector_env_runs_under_gymnasiums_own_vector_wrappers():
    """`TransformObservation` refuses SAME_STEP envs; `DictInfoToList` needs every info array per sub-env."""
    env = TownletVectorEnv(short(), towns=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a mismatch between the batched and the single spaces
        features_only = TransformObservation(env, lambda obs: obs["features"],
                                             single_observation_space=env.single_observation_space["features"])
        wrapped = DictInfoToList(RecordEpisodeStatistics(features_only))
    features, infos = wrapped.reset(seed=1)
    assert features.shape == (8, env.single_observation_space["features"].shape[0]) and len(infos) == 8
    returns = np.zeros(8)
    for _ in range(EPISODE):
        _, rewards, _, truncations, infos = wrapped.step(np.zeros(8, dtype=np.int64))
        returns += rewards
    assert truncations.all() and all(info["episode"]["l"] == EPISODE for info in infos)
    assert np.allclose([info["episode"]["r"] for info in infos], returns)
    assert infos[5]["action_mask"].shape == (NUM_ACTIONS,) and "faints" in infos[5]["telemetry"]


def test_the_world_never_imports_the_env_libraries_and_adapters_say_how_to_get_them():
    code = (
        "import sys\n"
        "import townlet_pipelines.world.engine, townlet_pipelines.world.policies\n"
        "assert 'gymnasium' not in sys.modules and 'pettingzoo' not in sys.modules\n"
        "sys.modules['pettingzoo'] = None\n"
        "try:\n"
        "    import townlet_pipelines.world.adapters\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "pip install 'townlet-pipelines[envs]'" in output
