"""PPO's data, in Stable-Baselines3's order: collect rollouts into storage allocated once, then turn them into
training rows with returns and advantages (GAE, and the conflict constraint's cost advantage), or stream stored
replay rows.

- `collect_rollout` drives the batched world with the current network (on-policy) and stores
  (obs_t, mask_t, a_t, r_t, c_t, done_t, logp_t, v_t), where c_t is the agent's share of this tick's queue
  conflicts: half of each to the blocked agent, half to the one holding the object.
- `gae` turns rewards into advantages and returns, bootstrapped from the value of the state after the last step.
- `rollout_rows` flattens a rollout into rows, with PPO-Lagrangian's advantage (A_r − λ·A_c) / (1 + λ).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from townlet_pipelines.config import PPOConfig
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.training.device import DeviceContext
from townlet_pipelines.training.policy import network_inputs, observation_batch
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld

OBS_KEYS = ("map", "features", "action_mask")
ROW_KEYS = (*OBS_KEYS, "actions", "old_log_probs", "value_preds", "advantages", "returns", "rewards")


@dataclass
class Rollout:
    arrays: dict[str, np.ndarray]  # (T, A, ...) per tick and agent
    bootstrap: np.ndarray  # (A,) V(obs_T), the state after the last step
    telemetry: dict[str, float]  # the world's event counts over the rollout, all towns
    ticks: int
    seconds: float
    final: dict[str, np.ndarray] | None = None  # the observation after the last step (the cost critic's bootstrap)


class RolloutBuffer:
    """(T, A, ...) storage for one rollout, allocated on the first tick written (CleanRL's
    `obs = torch.zeros(...)`) and overwritten by every later rollout of the same length: a rollout's arrays are
    views of it, valid until the next `collect_rollout` into the same buffer."""

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks
        self.arrays: dict[str, np.ndarray] = {}

    def write(self, tick: int, key: str, value: np.ndarray) -> None:
        storage = self.arrays.get(key)
        if storage is None:
            storage = self.arrays[key] = np.empty((self.ticks, *value.shape), dtype=value.dtype)
        storage[tick] = value


def collect_rollout(model, world: TownWorld, ticks: int, device: DeviceContext, next_seed,
                    episode_ticks: int | None = None, buffer: RolloutBuffer | None = None) -> Rollout:
    """Drive every town with the current network (sampling) for `ticks` ticks; a finished episode (or one
    `episode_ticks` long) restarts on fresh seeds from `next_seed()`. Written into `buffer` (a new one if none)."""
    torch = require_torch()
    buffer = buffer if buffer is not None and buffer.ticks == ticks else RolloutBuffer(ticks)
    agents = world.towns * world.agents
    totals = {key: 0.0 for key in TELEMETRY_KEYS}
    start = time.perf_counter()
    model.eval()
    for tick in range(ticks):
        observed = observation_batch(world)
        with torch.inference_mode():
            batch = network_inputs(observed, device)
            distribution, values = model.distribution(batch["features"], batch["action_mask"], batch.get("map"))
            actions = distribution.sample()
            log_probs, entropy = distribution.log_prob(actions), distribution.entropy()
        actions_np = actions.cpu().numpy()
        result = world.step(actions_np.reshape(world.towns, world.agents))
        costs = np.zeros((world.towns, world.agents), dtype=np.float32)
        if result.conflicts is not None and len(result.conflicts.town):
            # A conflict takes two: half its cost to the agent that was blocked, half to the one holding the
            # object (a policy that hogs the fridge causes the conflicts of others).
            np.add.at(costs, (result.conflicts.town, result.conflicts.blocked), 0.5)
            np.add.at(costs, (result.conflicts.town, result.conflicts.blocker), 0.5)
        for key in OBS_KEYS:
            if key in observed:
                buffer.write(tick, key, observed[key])
        restart = result.truncated or (episode_ticks is not None and world.state.tick >= episode_ticks)
        for key, value in (("actions", actions_np.astype(np.int8)), ("old_log_probs", log_probs.cpu().numpy()),
                           ("value_preds", values.cpu().numpy()), ("entropy", entropy.cpu().numpy()),
                           ("rewards", result.rewards.reshape(-1)), ("costs", costs.reshape(-1)),
                           ("dones", result.dones.reshape(-1) | restart)):
            buffer.write(tick, key, value)
        for key in TELEMETRY_KEYS:
            totals[key] += float(result.telemetry[key].sum())
        if restart:
            world.reset(next_seed())
    final = {key: value.copy() for key, value in observation_batch(world).items()}
    with torch.inference_mode():
        batch = network_inputs(final, device)
        _, bootstrap = model(batch["features"], batch["action_mask"], batch.get("map"))
    assert buffer.arrays["actions"].shape[:2] == (ticks, agents)
    return Rollout(dict(buffer.arrays), bootstrap.cpu().numpy(), totals, ticks, time.perf_counter() - start, final)


# ------------------------------------------------------------------------------- returns/advantages
def gae(rewards, values, dones, bootstrap, gamma: float, lam: float):
    """Generalised advantage estimation over (T, A) arrays.

    Row t holds (obs_t, a_t, r_t, done_t, V(obs_t)); `bootstrap` is V(obs_T), the state after the last step.
    A done (faint or episode end) stops both the bootstrap and the advantage trace.
    """
    advantages = np.zeros_like(rewards, dtype=np.float32)
    last = np.zeros(rewards.shape[1], dtype=np.float32)
    next_value = bootstrap.astype(np.float32)
    for t in range(len(rewards) - 1, -1, -1):
        not_done = 1.0 - dones[t].astype(np.float32)
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
        next_value = values[t]
    return advantages, advantages + values


def rollout_rows(rollout: Rollout, penalty: float, ppo: PPOConfig,
                 cost_values: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Flattened training rows of a rollout, with PPO-Lagrangian's advantage (A_r − λ·A_c) / (1 + λ).

    A_r is GAE on the world's reward against the value head, which learns the reward's return alone (its
    targets do not move when λ does). A_c is GAE on the conflict cost against the cost critic's values
    `cost_values` ((T, A) values, (A,) bootstrap; the rows then carry the critic's targets as `cost_returns`),
    or, without a critic, the raw discounted cost-to-go over GAE's horizon (γ·λ_GAE, about 17 ticks).
    Dividing by 1 + λ (as OpenAI's safety-starter-agents and OmniSafe do) keeps the advantage on the reward's
    scale however high the price goes.
    """
    arrays = rollout.arrays
    reward_advantages, returns = gae(arrays["rewards"], arrays["value_preds"], arrays["dones"], rollout.bootstrap,
                                     ppo.gamma, ppo.gae_lambda)
    rows = {key: arrays[key] for key in (*OBS_KEYS, "actions", "old_log_probs", "value_preds", "rewards")
            if key in arrays}
    if cost_values is not None:
        values, bootstrap = cost_values
        cost_advantages, rows["cost_returns"] = gae(arrays["costs"], values, arrays["dones"], bootstrap,
                                                    ppo.gamma, ppo.gae_lambda)
    elif penalty > 0:
        cost_advantages, _ = gae(arrays["costs"], np.zeros_like(arrays["costs"]), arrays["dones"],
                                 np.zeros_like(rollout.bootstrap), ppo.gamma, ppo.gae_lambda)
    if penalty > 0:
        penalty = np.float64(penalty)  # in float64 whether the price comes from this run or from a resumed one's JSON
        advantages = (reward_advantages - penalty * cost_advantages) / (1.0 + penalty)
    else:
        advantages = reward_advantages
    rows["advantages"], rows["returns"] = advantages, returns
    count = rollout.ticks * arrays["actions"].shape[1]
    return {key: value.reshape(count, *value.shape[2:]) for key, value in rows.items()}


# ------------------------------------------------------------------------------------ stored rows
def replay_rows(dataset: ReplayDataset, gamma: float, lam: float, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless stream of stored shards with GAE from their stored values, in a fresh order each pass."""
    rng = np.random.default_rng(seed)
    while True:
        for index in rng.permutation(len(dataset.manifest.shards)):
            entry = dataset.manifest.shards[int(index)]
            shard = dataset.load_shard(int(index))
            shape = (entry.ticks, entry.agents)
            advantages, returns = gae(shard["rewards"].reshape(shape), shard["value_preds"].reshape(shape),
                                      shard["dones"].reshape(shape), shard["bootstrap_values"], gamma, lam)
            rows = {key: shard[key] for key in ROW_KEYS if key in shard}
            rows["advantages"], rows["returns"] = advantages.reshape(-1), returns.reshape(-1)
            yield rows


def take_rows(stream: Iterator[dict[str, np.ndarray]], count: int, pending: list) -> dict[str, np.ndarray]:
    """`count` rows from a stream of row blocks, keeping the leftover in `pending` for next time."""
    parts, have = [], 0
    while have < count:
        block = pending.pop() if pending else next(stream)
        need = count - have
        if len(block["actions"]) > need:
            pending.append({key: value[need:] for key, value in block.items()})
            block = {key: value[:need] for key, value in block.items()}
        parts.append(block)
        have += len(block["actions"])
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
