"""Recorded runs: short trajectories must reproduce, bit for bit, the SHA-256 digests in data/world_recorded.json.

Speed work on the world (engine, relationships, observations) must not change a single bit of what a policy sees
or earns, nor of the state. Each run hashes, tick by tick, the actions, rewards, dones, telemetry, conflicts,
observation arrays and action mask, and at the end every state field (values, dtypes and shapes), one digest per
stream, so a failure names what diverged.

Re-record only for a deliberate rule change (never to make a speed change pass):
    TOWNLET_RECORD=1 .venv/bin/pytest tests/test_world_recorded.py
which rewrites the data file; it is refused where CI is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from townlet_pipelines.config import TownletConfig, config_from_mapping, load_config
from townlet_pipelines.world.actions import NUM_ACTIONS
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

DATA = Path(__file__).parent / "data" / "world_recorded.json"
TOWNS, TICKS = 4, 400
STREAMS = ("actions", "rewards", "dones", "telemetry", "conflicts", "features", "map", "mask", "state")


class NoisyExpert:
    """The expert, but agents 0 and 1 of every town and a seeded 10% of the others' ticks pick any action id,
    masked ones included: late and absent workers (takeovers, late help), invalid actions, faints, crowded queues."""

    name = "noisy"

    def __init__(self, config: TownletConfig, seed: int = 0) -> None:
        self.expert, self.rng = ScriptedExpert(config.expert), np.random.default_rng(seed)

    def act(self, world: TownWorld) -> np.ndarray:
        actions = self.expert.act(world)
        noisy = self.rng.random(actions.shape) < 0.1
        noisy[:, :2] = True
        return np.where(noisy, self.rng.integers(0, NUM_ACTIONS, actions.shape), actions)


def _variant(config: TownletConfig, variant: str) -> TownletConfig:
    return config.model_copy(update={"observations": config.observations.model_copy(update={"variant": variant})})


def _stress_config() -> TownletConfig:
    """The smoke profile with 8 agents, room for 2 ties each (evictions) and a claim penalty of 2."""
    data = load_config("smoke").model_dump()
    data["world"]["agents_per_town"] = 8
    data["world"]["relationships"]["max_ties"] = 2
    data["world"]["queues"]["claim_penalty"] = 2.0
    return config_from_mapping(data)


RUNS = {
    "default_expert": lambda: (TownletConfig(), lambda config: ScriptedExpert(config.expert)),
    "default_random": lambda: (TownletConfig(), lambda config: RandomPolicy(0)),
    "full_expert": lambda: (_variant(TownletConfig(), "full"), lambda config: ScriptedExpert(config.expert)),
    "compact_random": lambda: (_variant(TownletConfig(), "compact"), lambda config: RandomPolicy(3)),
    "smoke_expert": lambda: (load_config("smoke"), lambda config: ScriptedExpert(config.expert)),
    "stress_noisy": lambda: (_stress_config(), lambda config: NoisyExpert(config)),
}


def _feed(digest, *arrays) -> None:
    for array in arrays:
        array = np.asarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())


def run_digests(name: str) -> dict[str, str]:
    """Play run `name` and return one hex digest per stream."""
    config, make_policy = RUNS[name]()
    world = TownWorld(config, TOWNS)
    world.reset(0)
    policy = make_policy(config)
    digests = {stream: hashlib.sha256() for stream in STREAMS}
    for _ in range(TICKS):
        actions = policy.act(world)
        result = world.step(actions)
        assert tuple(result.telemetry) == TELEMETRY_KEYS
        _feed(digests["actions"], actions)
        _feed(digests["rewards"], result.rewards)
        _feed(digests["dones"], result.dones, result.truncated)
        _feed(digests["telemetry"], *result.telemetry.values())
        _feed(digests["conflicts"], *(getattr(result.conflicts, f.name) for f in dataclasses.fields(result.conflicts)))
        _feed(digests["features"], result.observation.features)
        _feed(digests["map"], *([] if result.observation.map is None else [result.observation.map]))
        _feed(digests["mask"], result.action_mask)
    for field in dataclasses.fields(world.state):
        digests["state"].update(field.name.encode())
        _feed(digests["state"], getattr(world.state, field.name))
    return {stream: digest.hexdigest() for stream, digest in digests.items()}


def _record(name: str, digests: dict[str, str]) -> None:
    if os.environ.get("CI"):
        pytest.fail("TOWNLET_RECORD: re-recording the world's digests is refused in CI")
    recorded = json.loads(DATA.read_text()) if DATA.exists() else {}
    recorded[name] = digests
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(dict(sorted(recorded.items())), indent=2) + "\n")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_recorded_run_reproduces_bit_for_bit(name):
    digests = run_digests(name)
    if os.environ.get("TOWNLET_RECORD") == "1":
        _record(name, digests)
        pytest.skip(f"recorded {name} into {DATA.name}")
    expected = json.loads(DATA.read_text())[name]
    differ = [stream for stream in STREAMS if digests[stream] != expected[stream]]
    assert not differ, f"{name}: these streams no longer match the recorded run: {differ}"
