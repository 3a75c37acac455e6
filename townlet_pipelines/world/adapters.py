"""Standard RL interfaces over the batched world: a PettingZoo `ParallelEnv` and a Gymnasium `VectorEnv`.

Both are thin: each call is one `TownWorld.step` over every agent at once, so the rules live only in the
engine, and the trajectories are the raw world's. They need the optional extra
`pip install townlet-pipelines[envs]`; the world itself never imports either library.
"""

from __future__ import annotations

import numpy as np

try:
    from gymnasium import spaces
    from gymnasium.vector import AutoresetMode, VectorEnv
    from gymnasium.vector.utils import batch_space
    from pettingzoo import ParallelEnv
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "townlet_pipelines.world.adapters needs gymnasium>=1.1 and pettingzoo: "
        "pip install 'townlet-pipelines[envs]'"
    ) from error

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.world.actions import NUM_ACTIONS
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld, town_seeds
from townlet_pipelines.world.observations import Observation, ObservationSpec
from townlet_pipelines.world.render import render_town


def agent_observation_space(spec: ObservationSpec) -> spaces.Space:
    """One agent's observation: `Dict(map, features)` for `hybrid`/`full`, the feature `Box` for `compact`."""
    features = spaces.Box(-np.inf, np.inf, (spec.feature_dim,), np.float32)
    if spec.map_shape is None:
        return features
    return spaces.Dict({"map": spaces.Box(0, 255, spec.map_shape, np.uint8), "features": features})


def _per_agent_rows(observation: Observation) -> np.ndarray | dict[str, np.ndarray]:
    """(towns, agents, ...) arrays as one row per agent, in the layout of `agent_observation_space` (views)."""
    features = observation.features.reshape(-1, observation.features.shape[-1])
    if observation.map is None:
        return features
    return {"map": observation.map.reshape(-1, *observation.map.shape[2:]), "features": features}


class _Episodes:
    """Town seeds per episode: after `reset(seed=s)` episode e plays `town_seeds(s + e * towns)`.

    So every episode of every town can be replayed alone on a raw `TownWorld`; a reset without a seed goes
    on to the next episode rather than replaying the last one (from s = 0 if no seed was ever given).
    """

    def __init__(self, towns: int) -> None:
        self.towns, self.base, self.episode = towns, 0, -1

    def next(self, seed: int | None) -> np.ndarray:
        if seed is not None:
            self.base, self.episode = int(seed), -1
        self.episode += 1
        return town_seeds(self.base + self.episode * self.towns, self.towns)


class TownletParallelEnv(ParallelEnv):
    """One town as a PettingZoo parallel environment; agents are `agent_0` ... `agent_{N-1}`.

    Faints do not terminate. The world respawns a fainted agent at home and the town goes on, so nobody
    leaves `agents`: `terminations` stay False and the faint shows as `infos[agent]["fainted"] = True` plus
    the faint penalty in that tick's reward. (A PettingZoo termination removes the agent for the rest of
    the episode, which would leave a body in the town that no policy drives, and would make this env's
    trajectories differ from the world's.) A learner that treats a faint as the end of a life, as this
    project's PPO does, cuts bootstrapping on `infos[agent]["fainted"]`.

    Every agent is truncated together at the episode's last tick (or after `max_ticks` steps, if sooner;
    the `episode_progress` feature still counts toward the configured episode), and `agents` empties.
    The action mask is `infos[agent]["action_mask"]` (int8, 1 = allowed); the world plays a masked action
    as `wait` and counts it in the town-wide `infos[agent]["telemetry"]["invalid_actions"]`.
    Seeds: `reset(seed=s)` plays town seed s, a later `reset()` the next seed (s + 1, ...).
    """

    metadata = {"name": "townlet_v1", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, config: TownletConfig | None = None, max_ticks: int | None = None,
                 render_mode: str | None = None) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode: {render_mode!r} is not one of {self.metadata['render_modes']}")
        self.config = config or TownletConfig()
        self.world = TownWorld(self.config, towns=1)
        self.max_ticks = min(max_ticks or self.config.world.episode_ticks, self.config.world.episode_ticks)
        self.render_mode = render_mode
        self.possible_agents = [f"agent_{index}" for index in range(self.world.agents)]
        self.agents: list[str] = []
        self.observation_spaces = {agent: agent_observation_space(self.world.spec) for agent in self.possible_agents}
        self.action_spaces = {agent: spaces.Discrete(NUM_ACTIONS) for agent in self.possible_agents}
        self._episodes = _Episodes(towns=1)

    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self.action_spaces[agent]

    def _observations(self) -> dict:
        rows = _per_agent_rows(self.world.observation)
        if isinstance(rows, dict):
            return {agent: {key: value[i] for key, value in rows.items()} for i, agent in enumerate(self.agents)}
        return dict(zip(self.agents, rows))

    def _infos(self, fainted: np.ndarray, telemetry: dict[str, float]) -> dict:
        masks = self.world.action_mask[0].astype(np.int8)
        return {agent: {"action_mask": masks[i], "fainted": bool(fainted[i]), "telemetry": dict(telemetry)}
                for i, agent in enumerate(self.agents)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.world.reset(self._episodes.next(seed))
        self.agents = list(self.possible_agents)
        self._ticks = 0
        return self._observations(), self._infos(np.zeros(self.world.agents, bool), dict.fromkeys(TELEMETRY_KEYS, 0.0))

    def step(self, actions: dict[str, int]):
        if not self.agents:
            raise RuntimeError("the episode is over: call reset() before step()")
        result = self.world.step(np.array([[actions[agent] for agent in self.agents]], dtype=np.int64))
        self._ticks += 1
        truncated = result.truncated or self._ticks >= self.max_ticks
        telemetry = {key: float(value[0]) for key, value in result.telemetry.items()}
        out = (
            self._observations(),
            dict(zip(self.agents, result.rewards[0].tolist())),
            dict.fromkeys(self.agents, False),
            dict.fromkeys(self.agents, truncated),
            self._infos(result.dones[0], telemetry),
        )
        if truncated:
            self.agents = []
        return out

    def render(self) -> str | None:
        return render_town(self.world, 0) if self.render_mode == "ansi" else None

    def close(self) -> None:
        pass


class TownletVectorEnv(VectorEnv):
    """Every agent of a batch of towns as one sub-environment: `num_envs = towns * agents_per_town`.

    Sub-environment `t * agents_per_town + i` is agent i of town t; actions of shape (num_envs,) become
    one (towns, agents) `TownWorld.step`.

    Autoreset is Gymnasium's NEXT_STEP (`metadata["autoreset_mode"]`): the step that plays the episode's
    last tick returns its observations with every `truncations` True; the next `step` ignores its actions,
    resets the world (the next episode's seeds) and returns the first observations, zero rewards and no
    dones. NEXT_STEP rather than SAME_STEP because Gymnasium's vector observation wrappers refuse SAME_STEP.

    Faints need no reset: `terminations[i]` is True on the tick agent i faints, but the world has already
    respawned it, so that step's observation is the respawned agent's first and the next step is an
    ordinary one. The terminal observation itself does not exist (a terminal state is never bootstrapped,
    so learners do not need it). NEXT_STEP-aware code such as `RecordEpisodeStatistics` (which counts a
    life as an episode) takes the tick after a faint for a reset step and leaves it out of its statistics.

    Infos: `action_mask` (num_envs, 11) int8, and `telemetry`, a dict of (num_envs,) arrays holding each
    agent's *town* counts, repeated for the town's agents so that every info array is per sub-environment
    (as `DictInfoToList` requires): sum over towns with `[::agents_per_town]`, not over all entries.
    Seeds: `reset(seed=s)` plays `town_seeds(s, towns)`, the e-th episode after it `town_seeds(s + e * towns)`.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, config: TownletConfig | None = None, towns: int = 1) -> None:
        self.config = config or TownletConfig()
        self.world = TownWorld(self.config, towns)
        self.num_envs = towns * self.world.agents
        self.single_observation_space = agent_observation_space(self.world.spec)
        self.single_action_space = spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._episodes = _Episodes(towns)
        self._autoreset = False

    def _infos(self, mask: np.ndarray, telemetry: dict[str, np.ndarray] | None) -> dict:
        towns, agents = self.world.towns, self.world.agents
        telemetry = telemetry or {key: np.zeros(towns) for key in TELEMETRY_KEYS}
        return {"action_mask": mask.reshape(self.num_envs, NUM_ACTIONS).astype(np.int8),
                "telemetry": {key: np.repeat(value, agents) for key, value in telemetry.items()}}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._autoreset = False
        observation, mask = self.world.reset(self._episodes.next(seed))
        return _per_agent_rows(observation), self._infos(mask, None)

    def step(self, actions):
        if self._autoreset:
            observations, infos = self.reset()
            no = np.zeros(self.num_envs, dtype=bool)
            return observations, np.zeros(self.num_envs, dtype=np.float32), no, no.copy(), infos
        result = self.world.step(np.asarray(actions).reshape(self.world.towns, self.world.agents))
        self._autoreset = result.truncated
        return (_per_agent_rows(result.observation), result.rewards.reshape(-1), result.dones.reshape(-1),
                np.full(self.num_envs, result.truncated), self._infos(result.action_mask, result.telemetry))
