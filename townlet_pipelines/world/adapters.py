"""Standard interfaces over the batched world, for other RL code: PettingZoo and Gymnasium.

Both are thin: every step is one `TownWorld.step` over all agents. They need the optional extra
`pip install townlet-pipelines[envs]`; the world itself never imports either library.

Faints. The world respawns a fainted agent in place (the town goes on), which the two APIs express
differently:
- PettingZoo: a faint *terminates* that agent for the rest of the episode; it leaves `agents`, and its
  respawned body in the world plays `wait` from then on.
- Gymnasium (autoreset mode SAME_STEP): a faint is `terminated=True` and the observation returned is
  already the respawned agent's (its reset). The terminal observation is not kept: a terminal state is
  never bootstrapped, so learners do not need it. At the episode's time limit every agent is truncated,
  the world resets within the same step, and `infos["final_obs"]` holds the last observations.
"""

from __future__ import annotations

import functools

import numpy as np

try:
    import gymnasium
    from gymnasium import spaces
    from gymnasium.vector import AutoresetMode, VectorEnv
    from gymnasium.vector.utils import batch_space
    from pettingzoo import ParallelEnv
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "townlet_pipelines.world.adapters needs gymnasium and pettingzoo: pip install 'townlet-pipelines[envs]'"
    ) from error

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.world.actions import NUM_ACTIONS, WAIT
from townlet_pipelines.world.engine import Observation, TownWorld, town_seeds
from townlet_pipelines.world.observations import ObservationSpec
from townlet_pipelines.world.render import render_town


def agent_observation_space(spec: ObservationSpec) -> spaces.Dict:
    """One agent's observation: the map (unless compact), the features and the action mask."""
    parts = {
        "features": spaces.Box(-np.inf, np.inf, (spec.feature_dim,), np.float32),
        "action_mask": spaces.MultiBinary(NUM_ACTIONS),
    }
    if spec.map_shape is not None:
        parts["map"] = spaces.Box(0, 255, spec.map_shape, np.uint8)
    return spaces.Dict(parts)


def _rows(observation: Observation, mask: np.ndarray) -> dict[str, np.ndarray]:
    """(towns, agents, ...) arrays flattened to one row per agent."""
    rows = len(observation.features.reshape(-1, observation.features.shape[-1]))
    out = {"features": observation.features.reshape(rows, -1), "action_mask": mask.reshape(rows, -1).astype(np.int8)}
    if observation.map is not None:
        out["map"] = observation.map.reshape(rows, *observation.map.shape[2:])
    return out


class TownletParallelEnv(ParallelEnv):
    """One town as a PettingZoo parallel environment; agents are `agent_0` ... `agent_{N-1}`."""

    metadata = {"name": "townlet_v1", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, config: TownletConfig | None = None, render_mode: str | None = None,
                 max_ticks: int | None = None) -> None:
        self.config = config or TownletConfig()
        self.world = TownWorld(self.config, 1)
        self.render_mode = render_mode
        self.max_ticks = max_ticks or self.config.world.episode_ticks
        self.possible_agents = [f"agent_{index}" for index in range(self.world.agents)]
        self.agents: list[str] = []
        self._index = {name: index for index, name in enumerate(self.possible_agents)}
        self._ticks = 0

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str) -> spaces.Dict:
        return agent_observation_space(self.world.spec)

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str) -> spaces.Discrete:
        return spaces.Discrete(NUM_ACTIONS)

    def _observe(self) -> dict[str, dict[str, np.ndarray]]:
        rows = _rows(self.world.observation, self.world.action_mask)
        return {agent: {key: value[self._index[agent]] for key, value in rows.items()} for agent in self.agents}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.world.reset(np.array([0 if seed is None else seed], dtype=np.uint64))
        self.agents = list(self.possible_agents)
        self._ticks = 0
        return self._observe(), {agent: {} for agent in self.agents}

    def step(self, actions: dict[str, int]):
        chosen = np.full((1, self.world.agents), WAIT, dtype=np.int64)
        for agent, action in actions.items():
            chosen[0, self._index[agent]] = int(action)
        result = self.world.step(chosen)
        self._ticks += 1
        truncated = result.truncated or self._ticks >= self.max_ticks
        observations = self._observe()
        rewards = {agent: float(result.rewards[0, self._index[agent]]) for agent in self.agents}
        terminations = {agent: bool(result.dones[0, self._index[agent]]) for agent in self.agents}
        truncations = {agent: truncated for agent in self.agents}
        infos = {agent: {"telemetry": {k: float(v[0]) for k, v in result.telemetry.items()}} for agent in self.agents}
        self.agents = [agent for agent in self.agents if not (terminations[agent] or truncated)]
        return observations, rewards, terminations, truncations, infos

    def render(self) -> str | None:
        return render_town(self.world, 0) if self.render_mode == "ansi" else None

    def close(self) -> None:
        pass


class TownletVectorEnv(VectorEnv):
    """Every agent of a batch of towns as one sub-environment: `num_envs = towns x agents_per_town`."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, config: TownletConfig | None = None, towns: int = 1, seed: int = 0) -> None:
        self.config = config or TownletConfig()
        self.world = TownWorld(self.config, towns)
        self.num_envs = towns * self.world.agents
        self.single_observation_space = agent_observation_space(self.world.spec)
        self.single_action_space = spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._seed = seed
        self._episode = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed = seed
        self._episode = 0
        observation, mask = self.world.reset(town_seeds(self._seed, self.world.towns))
        return _rows(observation, mask), {}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64).reshape(self.world.towns, self.world.agents)
        result = self.world.step(actions)
        observations = _rows(result.observation, result.action_mask)
        terminations = result.dones.reshape(-1).copy()
        truncations = np.full(self.num_envs, result.truncated)
        infos = {"telemetry": result.telemetry}
        if result.truncated:  # SAME_STEP autoreset: hand back the next episode's first observations
            infos["final_obs"] = observations
            self._episode += 1
            observation, mask = self.world.reset(
                town_seeds(self._seed + self._episode * self.world.towns, self.world.towns))
            observations = _rows(observation, mask)
        return observations, result.rewards.reshape(-1).copy(), terminations, truncations, infos


def single_agent_env(config: TownletConfig | None = None, seed: int = 0) -> gymnasium.Env:
    """A one-agent town as a plain `gymnasium.Env`, so Gymnasium's own `check_env` can inspect it."""
    config = config or TownletConfig()
    world_config = config.world.model_copy(update={"agents_per_town": 1})
    return _SingleAgentEnv(config.model_copy(update={"world": world_config}), seed)


class _SingleAgentEnv(gymnasium.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, config: TownletConfig, seed: int) -> None:
        self.vector = TownletVectorEnv(config, towns=1, seed=seed)
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space
        self.render_mode = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        observations, _ = self.vector.reset(seed=seed)
        return {key: value[0] for key, value in observations.items()}, {}

    def step(self, action):
        observations, rewards, terminations, truncations, infos = self.vector.step(np.array([action]))
        return ({key: value[0] for key, value in observations.items()}, float(rewards[0]), bool(terminations[0]),
                bool(truncations[0]), {})
