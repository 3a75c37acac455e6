"""The SB3 side of `python -m townlet_pipelines.bench ppo-vs-sb3` (bench/sb3.py): Stable-Baselines3's PPO on the
project's rollout towns, with the project's network inside.

Needs the optional extra `pip install 'townlet-pipelines[bench]'` (stable-baselines3 and gymnasium): bench/sb3.py
loads this module only when the comparison runs, so its project side (`--profile`) needs neither.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3 import __version__ as SB3_VERSION
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv

from townlet_pipelines.bench.sb3 import initial_network
from townlet_pipelines.config import TownletConfig
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.world.actions import NUM_ACTIONS
from townlet_pipelines.world.engine import TownWorld, town_seeds

__all__ = ["SB3_VERSION", "MaskedTownletPolicy", "TownletSB3VecEnv", "run_sb3"]


class TownletSB3VecEnv(VecEnv):
    """Sub-environment t * agents + i is agent i of town t; one `TownWorld.step` per `step`.

    Observations are `Dict(map, features, action_mask)` (the mask as uint8, 1 = allowed). A faint is a done
    (the world has already respawned the agent: the returned observation is its first). At the episode's
    end (`ppo.episode_ticks or evaluation.ticks`, or the world's own last tick) every sub-environment is
    done, the towns restart on the next episode's seeds, as in `PPOStrategy.run`, and the returned
    observation is the new episode's first (SB3's auto-reset; `terminal_observation` is in the infos,
    without `TimeLimit.truncated`, so SB3 does not bootstrap it, like the project).
    """

    render_mode = None

    def __init__(self, config: TownletConfig) -> None:
        ppo = config.ppo
        self.config, self.towns = config, ppo.rollout_towns
        self.world = TownWorld(config, self.towns)
        self.agents = self.world.agents
        self.episode_ticks = ppo.episode_ticks or config.evaluation.ticks
        self.first_town = config.seeds.ppo.start
        self.episode = 0
        spec = self.world.spec
        parts = {"features": spaces.Box(-np.inf, np.inf, (spec.feature_dim,), np.float32),
                 "action_mask": spaces.Box(0, 1, (NUM_ACTIONS,), np.uint8)}
        if spec.map_shape is not None:
            parts["map"] = spaces.Box(0, 255, spec.map_shape, np.uint8)
        super().__init__(self.towns * self.agents, spaces.Dict(parts), spaces.Discrete(NUM_ACTIONS))
        self._actions = None

    def _observation(self) -> dict[str, np.ndarray]:
        observation, rows = self.world.observation, self.num_envs
        out = {"features": observation.features.reshape(rows, -1),
               "action_mask": self.world.action_mask.reshape(rows, -1).astype(np.uint8)}
        if observation.map is not None:
            out["map"] = observation.map.reshape(rows, *observation.map.shape[2:])
        return out

    def reset(self):
        self.episode = 0
        self.world.reset(town_seeds(self.first_town, self.towns))
        return self._observation()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        actions = np.asarray(self._actions, dtype=np.int64).reshape(self.towns, self.agents)
        result = self.world.step(actions)
        restart = result.truncated or self.world.state.tick >= self.episode_ticks
        dones = result.dones.reshape(-1) | restart
        infos = [{} for _ in range(self.num_envs)]
        if restart:
            last = self._observation()
            for index, info in enumerate(infos):
                info["terminal_observation"] = {key: value[index] for key, value in last.items()}
            self.episode += 1
            self.world.reset(town_seeds(self.first_town + self.episode * self.towns, self.towns))
        return self._observation(), result.rewards.reshape(-1), dones, infos

    def close(self) -> None:
        pass

    # The sub-environments are agents of one batched world, not objects of their own: attribute and method
    # calls go to that world's wrapper once per requested index, as SB3's VecEnv contract expects a list.
    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))


class MaskedTownletPolicy(ActorCriticPolicy):
    """Every SB3 entry point goes through `PolicyNetwork(features, action_mask, map)`: the same masked
    logits (the conflict shield included) and value as the project's PPO. SB3's observation
    preprocessing is bypassed (the network scales its own map); the mask arrives as float32 from the
    rollout buffer or uint8 from the env, and is made boolean here."""

    def __init__(self, *args, network=None, **kwargs) -> None:
        object.__setattr__(self, "_pending_network", network)  # before Module.__init__: not a submodule yet
        kwargs.setdefault("ortho_init", False)  # the network is initialised already
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:
        self.net = self.__dict__.pop("_pending_network")
        self.optimizer = self.optimizer_class(self.net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _run(self, obs):
        mask = obs["action_mask"] > 0
        logits, values = self.net(obs["features"].float(), mask, obs.get("map"))
        return self.action_dist.proba_distribution(action_logits=logits), values.unsqueeze(-1)

    def forward(self, obs, deterministic: bool = False):
        distribution, values = self._run(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, values, distribution.log_prob(actions)

    def evaluate_actions(self, obs, actions):
        distribution, values = self._run(obs)
        return values, distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs):
        return self._run(obs)[0]

    def predict_values(self, obs):
        return self._run(obs)[1]


class RolloutClock(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds, self._start = 0.0, 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.seconds += time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def run_sb3(config: TownletConfig, updates: int, init_checkpoint: str | Path | None = None):
    """Train SB3's PPO for `updates` rollouts; (the trained PolicyNetwork, wall seconds, collect seconds)."""
    ppo = config.ppo
    require_torch().set_num_threads(1)
    start = time.perf_counter()
    env = TownletSB3VecEnv(config)
    rows = ppo.rollout_ticks * env.num_envs
    model = PPO(
        MaskedTownletPolicy, env, learning_rate=ppo.learning_rate, n_steps=ppo.rollout_ticks,
        batch_size=max(1, rows // ppo.minibatches), n_epochs=ppo.update_epochs, gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda, clip_range=ppo.clip_coef, clip_range_vf=ppo.value_clip_coef,
        normalize_advantage=True, ent_coef=ppo.entropy_coef, vf_coef=ppo.value_coef / 2,
        max_grad_norm=ppo.max_grad_norm, seed=ppo.seed, device="cpu", verbose=0,
        policy_kwargs={"network": initial_network(config, init_checkpoint)},
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes a /tmp/SB3-<time> folder per run
    clock = RolloutClock()
    model.learn(total_timesteps=updates * rows, callback=clock, progress_bar=False)
    seconds = time.perf_counter() - start
    return model.policy.net, seconds, clock.seconds
