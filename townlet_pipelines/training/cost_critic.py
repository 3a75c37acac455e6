"""The cost critic of constrained PPO (OmniSafe's PPOLag keeps one beside the reward critic): V_c(obs), the
expected discounted queue-conflict cost ahead, so that the cost advantage A_c = GAE(c, V_c) blames the action
that led into a queue rather than every action taken in a crowded hour.

It is a network of its own (`model.CostCritic`), built afresh for every stage from its own seed (the policy's
RNG stream is left as it was), fitted on the stage's first rollout before that rollout's advantages are taken,
then trained on every rollout's λ-returns of the cost. It is not part of the policy's checkpoint; a progress
step carries its weights and moments, so a resumed stage continues it exactly.
"""

from __future__ import annotations

import numpy as np

from townlet_pipelines.config import ModelConfig, PPOConfig
from townlet_pipelines.training.device import DeviceContext, to_tensors
from townlet_pipelines.training.distributed import Ranks, average_gradients, same_weights
from townlet_pipelines.training.rollouts import Rollout, gae
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.world.observations import ObservationSpec

INPUT_KEYS = ("features", "map")
PREFIX = "cost_critic."


class CostCriticTrainer:
    def __init__(self, spec: ObservationSpec, model_config: ModelConfig, ppo: PPOConfig, device: DeviceContext,
                 ranks: Ranks, seed: int) -> None:
        torch = require_torch()
        from townlet_pipelines.training.model import CostCritic  # torch at import: only where a stage trains

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = CostCritic(spec, model_config).to(device.device)
        same_weights(self.network, ranks)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=ppo.cost_critic_lr, eps=1e-5)
        self.ppo, self.device, self.ranks, self.seed = ppo, device, ranks, seed
        self.losses: list[float] = []

    def values(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """(T, A) values of the rollout's observations, and (A,) of the observation after its last step."""
        torch = require_torch()
        ticks, agents = rollout.arrays["actions"].shape[:2]
        rows = {key: rollout.arrays[key].reshape(ticks * agents, *rollout.arrays[key].shape[2:])
                for key in INPUT_KEYS if key in rollout.arrays}
        self.network.eval()
        with torch.no_grad():
            batch, final = to_tensors(rows, self.device, INPUT_KEYS), to_tensors(rollout.final, self.device, INPUT_KEYS)
            values = self.network(batch["features"], batch.get("map")).cpu().numpy().reshape(ticks, agents)
            bootstrap = self.network(final["features"], final.get("map")).cpu().numpy()
        return values, bootstrap

    def warm_up(self, rollout: Rollout) -> None:
        """`cost_critic_warmup` passes over the first rollout, each against the λ-returns of the critic it has."""
        arrays, ppo = rollout.arrays, self.ppo
        for index in range(ppo.cost_critic_warmup):
            values, bootstrap = self.values(rollout)
            _, targets = gae(arrays["costs"], values, arrays["dones"], bootstrap, ppo.gamma, ppo.gae_lambda)
            rows = {key: arrays[key].reshape(targets.size, *arrays[key].shape[2:]) for key in INPUT_KEYS
                    if key in arrays}
            self.fit({**rows, "cost_returns": targets.reshape(-1)}, salt=(0, index), epochs=1)

    def fit(self, rows: dict[str, np.ndarray], salt: tuple[int, int], epochs: int | None = None) -> float:
        """MSE regression of V_c onto the rows' `cost_returns`, in the policy's mini-batch size, shuffled by
        (stage seed, *salt, epoch); the mean loss."""
        torch = require_torch()
        ppo, count = self.ppo, len(rows["cost_returns"])
        minibatch, start = max(1, count // ppo.minibatches), len(self.losses)
        self.network.train()
        for epoch in range(ppo.update_epochs if epochs is None else epochs):
            order = np.random.default_rng([self.seed, *salt, epoch]).permutation(count)
            for begin in range(0, count - minibatch + 1, minibatch):
                batch = to_tensors({key: value[order[begin:begin + minibatch]] for key, value in rows.items()},
                                   self.device, (*INPUT_KEYS, "cost_returns"))
                loss = 0.5 * ((self.network(batch["features"], batch.get("map")) - batch["cost_returns"]) ** 2).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(self.network, self.ranks)
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), ppo.max_grad_norm)
                self.optimizer.step()
                self.losses.append(float(loss.detach()))
        return float(np.mean(self.losses[start:])) if len(self.losses) > start else float("nan")

    # ---- a progress step carries the critic
    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"{PREFIX}weights.{name}": tensor.detach().cpu().numpy()
               for name, tensor in self.network.state_dict().items()}
        for index, moments in self.optimizer.state_dict()["state"].items():
            out.update({f"{PREFIX}adam.{index}.{key}": value.detach().cpu().numpy() for key, value in moments.items()})
        return out

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        torch = require_torch()
        weights = {name[len(PREFIX + "weights."):]: torch.from_numpy(value) for name, value in arrays.items()
                   if name.startswith(PREFIX + "weights.")}
        self.network.load_state_dict(weights)
        state = self.optimizer.state_dict()
        for name, value in arrays.items():
            if name.startswith(PREFIX + "adam."):
                index, key = name[len(PREFIX + "adam."):].split(".", 1)
                state["state"].setdefault(int(index), {})[key] = torch.from_numpy(value)
        self.optimizer.load_state_dict(state)
