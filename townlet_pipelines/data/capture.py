"""Rollout capture: run a policy in the batched world and write a replay dataset.

Each agent-tick records what the acting policy saw and did — (obs_t, mask_t, a_t, logp_t, v_t) — with the
reward and done that followed (r_t, done_t), never the next tick's observation. Values come from the
policy when it has a value head, else they are the discounted return of the captured trajectory (the
expert's value target), computed backward once the capture is complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from townlet_pipelines.config import TownletConfig, UsageError
from townlet_pipelines.data.files import atomic_directory, npz_bytes, sha256_file
from townlet_pipelines.data.manifest import (
    MANIFEST_NAME, DatasetMetrics, FileEntry, Generator, ReplayManifest, ShardEntry,
)
from townlet_pipelines.world.actions import ACTION_NAMES, NUM_ACTIONS
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld, town_seeds
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

if TYPE_CHECKING:
    import pandas as pd

TELEMETRY_FILE = "telemetry.parquet"  # zstd Parquet: 46 KiB and 52 ms to write where csv.gz took 82 KiB, 723 ms
LEGACY_TELEMETRY_FILE = "telemetry.csv.gz"  # datasets written before Parquet: still read
DEFAULT_SHARD_ROWS = 16384


@dataclass
class PolicyOutput:
    actions: np.ndarray  # (towns, agents) integer
    log_probs: np.ndarray  # (towns, agents) float32: log pi(a_t | obs_t) of the acting policy
    values: np.ndarray | None  # (towns, agents) float32, or None: use the discounted return
    expert_actions: np.ndarray | None = None  # the scripted expert's choice, when the policy computed it


class ActingPolicy(Protocol):
    """What capture needs of a policy. Scripted and random policies wrap here; checkpoints implement it."""

    generator: Generator

    def act(self, world: TownWorld) -> PolicyOutput: ...

    def bootstrap_values(self, world: TownWorld) -> np.ndarray | None:
        """Values of the world's current state (towns, agents), or None for a policy without a value."""


class ScriptedActing:
    """The expert, optionally with noise injected into what it *does* (DART).

    With probability `noise` an agent plays a uniformly drawn legal action instead of the expert's, so the
    data also holds the off-course states a learned policy will reach (hungry and idle, say) — each still
    labelled with the expert's choice in `expert_actions`. The log-prob is the mixture's:
    log((1 - noise) * [a = expert] + noise / legal actions); 0 without noise.
    """

    def __init__(self, config: TownletConfig, noise: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= noise < 1.0:
            raise UsageError(f"rollout.expert_noise must lie in [0, 1), got {noise}")
        self.policy = ScriptedExpert(config.expert)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.generator = Generator(kind="scripted", policy_seed=seed if noise else None, noise=noise)

    def act(self, world: TownWorld) -> PolicyOutput:
        expert = self.policy.act(world)
        if self.noise == 0.0:
            return PolicyOutput(expert, np.zeros(expert.shape, dtype=np.float32), None, expert)
        mask = world.action_mask
        random = np.argmax(self.rng.random(mask.shape) * mask, axis=2)
        actions = np.where(self.rng.random(expert.shape) < self.noise, random, expert)
        legal = mask.sum(axis=2)
        probability = (1.0 - self.noise) * (actions == expert) + self.noise / legal
        return PolicyOutput(actions, np.log(probability).astype(np.float32), None, expert)

    def bootstrap_values(self, world: TownWorld) -> None:
        return None


class RandomActing:
    """Uniform over unmasked actions: log pi(a) = -log(number of unmasked actions)."""

    def __init__(self, seed: int = 0) -> None:
        self.policy = RandomPolicy(seed)
        self.generator = Generator(kind="random", policy_seed=seed)

    def act(self, world: TownWorld) -> PolicyOutput:
        log_probs = -np.log(world.action_mask.sum(axis=2)).astype(np.float32)
        return PolicyOutput(self.policy.act(world), log_probs, None)

    def bootstrap_values(self, world: TownWorld) -> None:
        return None


def acting_policy(name: str, config: TownletConfig, seed: int = 0, noise: float = 0.0) -> ActingPolicy:
    if name == "scripted":
        return ScriptedActing(config, noise, seed)
    if name == "random":
        return RandomActing(seed)
    raise UsageError(f"policy: unknown policy {name!r}; choose scripted or random (checkpoints: `townlet train`)")


@dataclass
class CaptureResult:
    path: Path
    manifest: ReplayManifest
    identity: str
    seconds: float

    @property
    def agent_ticks_per_sec(self) -> float:
        return self.manifest.rows / self.seconds


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, discount: float) -> np.ndarray:
    """G_t = r_t + gamma * (1 - done_t) * G_{t+1} over (ticks, agents), with G = 0 after the last tick."""
    returns = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1], dtype=np.float64)
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + discount * (1.0 - dones[t]) * running
        returns[t] = running
    return returns


def capture(
    config: TownletConfig,
    policy: ActingPolicy,
    towns: int,
    ticks: int,
    seed: int,
    out: str | Path,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> CaptureResult:
    """Capture `ticks` ticks of `towns` towns into a new dataset directory `out` (built atomically)."""
    if towns < 1 or ticks < 1:
        raise UsageError(f"towns and ticks must be positive, got towns={towns} ticks={ticks}")
    start = time.perf_counter()
    world = TownWorld(config, towns)
    agents = towns * config.world.agents_per_town
    shard_ticks = max(1, shard_rows // agents)
    discount = config.expert.discount
    observation, _ = world.reset(town_seeds(seed, towns))
    episode, episode_seeds = 0, [seed]
    rewards_all = np.zeros((ticks, agents), dtype=np.float32)
    dones_all = np.zeros((ticks, agents), dtype=bool)
    values_all: np.ndarray | None = None
    telemetry_rows: list[np.ndarray] = []
    shards: list[dict] = []  # pending shards: rows in memory until values are known
    current: dict[str, list[np.ndarray]] = {}
    labeler = ScriptedExpert(config.expert)  # every row also carries the expert's choice (BC's label)
    action_counts = np.zeros(NUM_ACTIONS, dtype=np.int64)
    town_index = np.repeat(np.arange(towns, dtype=np.int32), config.world.agents_per_town)
    agent_index = np.tile(np.arange(config.world.agents_per_town, dtype=np.int16), towns)

    with atomic_directory(out) as directory:
        for t in range(ticks):
            output = policy.act(world)
            if output.values is not None:
                values_all = np.zeros((ticks, agents), dtype=np.float32) if values_all is None else values_all
                values_all[t] = output.values.reshape(-1)
            row = {
                "features": observation.features.reshape(agents, -1),
                "actions": output.actions.reshape(-1).astype(np.int8),
                "expert_actions": (output.expert_actions if output.expert_actions is not None
                                   else labeler.act(world)).reshape(-1).astype(np.int8),
                "action_mask": world.action_mask.reshape(agents, -1),
                "old_log_probs": output.log_probs.reshape(-1).astype(np.float32),
                "tick": np.full(agents, t, dtype=np.int32),
                "town": town_index,
                "agent": agent_index,
                "episode": (episode * towns + town_index).astype(np.int32),
            }
            if observation.map is not None:
                row["map"] = observation.map.reshape(agents, *observation.map.shape[2:])
            action_counts += np.bincount(row["actions"].astype(np.int64), minlength=NUM_ACTIONS)
            result = world.step(output.actions)
            rewards_all[t] = result.rewards.reshape(-1)
            dones_all[t] = result.dones.reshape(-1) | result.truncated
            telemetry_rows.append(np.column_stack([
                np.full(towns, t), np.arange(towns), episode * towns + np.arange(towns),
                *[result.telemetry[key] for key in TELEMETRY_KEYS],
            ]))
            for key, value in row.items():
                current.setdefault(key, []).append(value)
            if result.truncated and t + 1 < ticks:
                episode += 1
                episode_seeds.append(seed + episode * towns)
                observation, _ = world.reset(town_seeds(episode_seeds[-1], towns))
            else:
                observation = result.observation
            if len(current["tick"]) == shard_ticks or t + 1 == ticks:
                # Park the shard on disk uncompressed until the values are known: memory stays one shard.
                bootstrap = policy.bootstrap_values(world)
                pending = directory / f".pending-{len(shards):05d}.npz"
                pending.write_bytes(npz_bytes({k: np.concatenate(v) for k, v in current.items()}, compress=False))
                shards.append({
                    "tick_start": t + 1 - len(current["tick"]),
                    "pending": pending,
                    "bootstrap": None if bootstrap is None else bootstrap.reshape(-1).astype(np.float32),
                })
                current = {}

        value_source = "policy" if values_all is not None else "discounted_return"
        if values_all is None:
            values_all = discounted_returns(rewards_all, dones_all, discount)
        entries = []
        for index, shard in enumerate(shards):
            with np.load(shard["pending"]) as parked:
                arrays = {key: parked[key] for key in parked.files}
            shard["pending"].unlink()
            t0 = shard["tick_start"]
            t1 = t0 + len(arrays["tick"]) // agents
            arrays["value_preds"] = values_all[t0:t1].reshape(-1)
            arrays["rewards"] = rewards_all[t0:t1].reshape(-1)
            arrays["dones"] = dones_all[t0:t1].reshape(-1)
            if shard["bootstrap"] is not None:
                bootstrap = shard["bootstrap"]
            else:  # the discounted return from the tick after the shard (0 after the capture's end)
                bootstrap = values_all[t1] if t1 < ticks else np.zeros(agents, dtype=np.float32)
            arrays["bootstrap_values"] = bootstrap.astype(np.float32)
            name = f"shard-{index:05d}.npz"
            (directory / name).write_bytes(npz_bytes(arrays))
            entries.append(ShardEntry(
                path=name, sha256=sha256_file(directory / name), bytes=(directory / name).stat().st_size,
                rows=(t1 - t0) * agents, tick_start=t0, ticks=t1 - t0, agents=agents,
            ))

        import pandas as pd  # slow (~0.5 s): only the telemetry table needs it, not the CLI's start

        columns = ["tick", "town", "episode", *TELEMETRY_KEYS]
        table = pd.DataFrame(np.concatenate(telemetry_rows), columns=columns)
        for key in ("tick", "town", "episode"):
            table[key] = table[key].astype(np.int64)
        table.to_parquet(directory / TELEMETRY_FILE, engine="pyarrow", compression="zstd", index=False)
        telemetry = FileEntry(path=TELEMETRY_FILE, sha256=sha256_file(directory / TELEMETRY_FILE),
                              bytes=(directory / TELEMETRY_FILE).stat().st_size, rows=len(table))

        manifest = ReplayManifest(
            observation=world.spec,
            world_config_hash=config.world_hash(),
            config={
                "world": config.world.model_dump(mode="json"),
                "rewards": config.rewards.model_dump(mode="json"),
                "observations": config.observations.model_dump(mode="json"),
            },
            generator=policy.generator,
            seed=seed,
            episode_seeds=episode_seeds,
            towns=towns,
            agents_per_town=config.world.agents_per_town,
            ticks=ticks,
            episodes=(episode + 1) * towns,
            discount=discount,
            value_source=value_source,
            shards=entries,
            telemetry=telemetry,
            metrics=dataset_metrics(rewards_all, table, action_counts, config.world.day_ticks),
        )
        (directory / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    return CaptureResult(path=Path(out), manifest=manifest, identity=manifest.identity(),
                         seconds=time.perf_counter() - start)


def dataset_metrics(rewards: np.ndarray, telemetry: pd.DataFrame, counts: np.ndarray, day_ticks: int) -> DatasetMetrics:
    total = telemetry.sum(numeric_only=True)
    return DatasetMetrics(
        samples=int(rewards.size),
        agent_days=float(rewards.size / day_ticks),
        reward_sum=float(rewards.sum(dtype=np.float64)),
        reward_mean=float(rewards.mean(dtype=np.float64)),
        faints=int(total["faints"]),
        wages=float(total["wages"]),
        late_arrivals=int(total["late_arrivals"]),
        queue_conflict_events=int(total["queue_conflict_events"]),
        queue_conflict_intensity=float(total["queue_conflict_intensity"]),
        queued_politely_events=int(total["queued_politely_events"]),
        shared_meal_events=int(total["shared_meal_events"]),
        late_help_events=int(total["late_help_events"]),
        shift_takeover_events=int(total["shift_takeover_events"]),
        chat_success_events=int(total["chat_success_events"]),
        chat_failure_events=int(total["chat_failure_events"]),
        action_counts={name: int(count) for name, count in zip(ACTION_NAMES, counts)},
    )


def read_telemetry(path: str | Path) -> pd.DataFrame:
    """The per-tick, per-town telemetry table of a dataset directory."""
    import pandas as pd  # slow (~0.5 s): only the telemetry table needs it, not the CLI's start

    path = Path(path)
    if not (path / TELEMETRY_FILE).exists() and (path / LEGACY_TELEMETRY_FILE).exists():
        return pd.read_csv(path / LEGACY_TELEMETRY_FILE)
    return pd.read_parquet(path / TELEMETRY_FILE, engine="pyarrow")
