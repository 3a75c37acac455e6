"""A trained network acting in the batched world: the checkpoint case of capture's `ActingPolicy`."""

from __future__ import annotations

import numpy as np

from townlet_pipelines.data.capture import PolicyOutput
from townlet_pipelines.data.manifest import Generator
from townlet_pipelines.training.device import DeviceContext, to_tensors
from townlet_pipelines.training.inputs import scaled_map
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.world import rng
from townlet_pipelines.world.engine import TownWorld


def observation_batch(world: TownWorld) -> dict[str, np.ndarray]:
    """The world's latest observation and mask, flattened to rows of agents."""
    observation = world.observation
    if observation is None:
        raise RuntimeError("the world's last step ran with observe=False; a network policy needs observations")
    rows = world.towns * world.agents
    batch = {"features": observation.features.reshape(rows, -1), "action_mask": world.action_mask.reshape(rows, -1)}
    if observation.map is not None:
        batch["map"] = observation.map.reshape(rows, *observation.map.shape[2:])
    return batch


def network_inputs(observed: dict[str, np.ndarray], device: DeviceContext) -> dict:
    """An observation batch as the network's tensors. On the CPU the map goes in already scaled and contiguous
    (`scaled_map`: one numpy pass); on a GPU its uint8 cells cross (a quarter of the bytes) and scale there."""
    if device.name == "cpu" and "map" in observed:
        observed = {**observed, "map": scaled_map(observed["map"])}
    return to_tensors(observed, device, ("map", "features", "action_mask"))


class TorchPolicy:
    """Samples (or, greedy, takes the most likely) legal action; reports log-probs and values.

    With `seed`, each agent's draw is the world's counter-based uniform for (its town's seed, the tick, the
    policy stream, the agent), inverted through the action probabilities: an evaluation replays the same draws
    whatever else used torch's generator before it, town k draws the same numbers batched or alone, and two
    policies scored on the same towns share their random numbers (a paired comparison measures the policies,
    not the dice). Without it, torch's global generator samples (PPO's rollouts, seeded by the run).
    """

    def __init__(self, model, device: DeviceContext, greedy: bool = False, checkpoint_id: str | None = None,
                 seed: int | None = None) -> None:
        self.model, self.device, self.greedy = model, device, greedy
        self.generator = Generator(kind="checkpoint", checkpoint_id=checkpoint_id)
        self.stream = None if seed is None or greedy else rng.STREAM_POLICY + 16 * seed
        self.model.eval()  # no layer of the network behaves differently in training; said once, not every tick

    @property
    def towns_independent(self) -> bool:
        """Each town plays the same alone or batched (greedy, or the seeded per-town draws), on the CPU: an
        evaluation may then split its towns across processes (training/town_processes.py)."""
        return (self.greedy or self.stream is not None) and self.device.name == "cpu"

    def _forward(self, world: TownWorld):
        batch = network_inputs(observation_batch(world), self.device)
        return self.model.distribution(batch["features"], batch["action_mask"], batch.get("map"))

    def _choose(self, world: TownWorld, distribution):
        if self.greedy:
            return distribution.probs.argmax(dim=1)
        if self.stream is not None:
            return self._inverse_cdf(world, distribution.probs)
        return distribution.sample()

    def act(self, world: TownWorld) -> PolicyOutput:
        torch = require_torch()
        with torch.inference_mode():
            distribution, values = self._forward(world)
            actions = self._choose(world, distribution)
            log_probs = distribution.log_prob(actions)
        shape = (world.towns, world.agents)
        return PolicyOutput(actions.cpu().numpy().reshape(shape), log_probs.cpu().numpy().reshape(shape).astype(np.float32),
                            values.cpu().numpy().reshape(shape).astype(np.float32))

    def actions(self, world: TownWorld) -> np.ndarray:
        """The actions alone, (towns, agents): what an evaluation reads, without the log-probabilities and
        values `act` reports for a dataset. The same actions as `act`'s."""
        torch = require_torch()
        with torch.inference_mode():
            distribution, _ = self._forward(world)
            return self._choose(world, distribution).cpu().numpy().reshape(world.towns, world.agents)

    def _inverse_cdf(self, world: TownWorld, probs):
        """The action whose cumulative probability first exceeds the agent's counter-based uniform draw (scaled
        by the row's total, so rounding never picks past the last legal action)."""
        torch = require_torch()
        draws = rng.uniform(world.state.seeds, world.state.tick, self.stream, (world.agents,)).reshape(-1, 1)
        cumulative = probs.double().cumsum(dim=1)
        threshold = torch.from_numpy(draws).to(probs.device) * cumulative[:, -1:]
        return (cumulative <= threshold).sum(dim=1).clamp_(max=probs.shape[1] - 1)

    def bootstrap_values(self, world: TownWorld) -> np.ndarray:
        torch = require_torch()
        with torch.inference_mode():
            _, values = self._forward(world)
        return values.cpu().numpy().reshape(world.towns, world.agents).astype(np.float32)


def evaluation_policy(model, device: DeviceContext, config) -> TorchPolicy:
    """How every evaluation plays a network (validation, guardrails, champion, held-out report, `townlet
    evaluate`): as `config.evaluation` says, greedy or sampled with its seed. Pass its `.actions` to `evaluate`."""
    evaluation = config.evaluation
    return TorchPolicy(model, device, greedy=evaluation.greedy, seed=evaluation.sample_seed)
