"""The replay manifest: a versioned JSON contract for every dataset (docs/DATASETS.md).

A dataset's identity is the sha256 of its manifest's canonical JSON. The manifest holds no timestamps
and no absolute paths, so the same config and seed always give the same identity, and any change to the
data (a shard's bytes, a seed, the world's rules) gives another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from townlet_pipelines.world.observations import ObservationSpec

MANIFEST_SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"

# Per-row arrays of every shard, with their dtypes; `map` is absent for the compact variant.
ROW_ARRAYS: dict[str, str] = {
    "map": "uint8",
    "features": "float32",
    "actions": "int8",
    "expert_actions": "int8",
    "action_mask": "bool",
    "old_log_probs": "float32",
    "value_preds": "float32",
    "rewards": "float32",
    "dones": "bool",
    "tick": "int32",
    "town": "int32",
    "agent": "int16",
    "episode": "int32",
}
# Per-shard arrays: the value of the state after the shard's last tick, for GAE bootstrapping.
SHARD_ARRAYS: dict[str, str] = {"bootstrap_values": "float32"}

SOCIAL_COUNTERS = (
    "queue_conflict_events", "queue_conflict_intensity", "queued_politely_events", "shared_meal_events",
    "late_help_events", "shift_takeover_events", "chat_success_events", "chat_failure_events",
)


class DatasetError(ValueError):
    """A dataset is malformed; the message names the file and field at fault."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShardEntry(_Model):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    rows: int = Field(ge=0)
    tick_start: int = Field(ge=0)
    ticks: int = Field(ge=1)
    agents: int = Field(ge=1, description="rows per tick: the shard's rows reshape to (ticks, agents)")


class FileEntry(_Model):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    rows: int = Field(ge=0)


class Generator(_Model):
    kind: Literal["scripted", "random", "checkpoint"]
    checkpoint_id: str | None = None
    policy_seed: int | None = None
    noise: float = 0.0  # share of expert ticks replaced by a random legal action (DART)


class DatasetMetrics(_Model):
    samples: int
    agent_days: float
    reward_sum: float
    reward_mean: float
    faints: int
    wages: float
    late_arrivals: int
    queue_conflict_events: int
    queue_conflict_intensity: float
    queued_politely_events: int
    shared_meal_events: int
    late_help_events: int
    shift_takeover_events: int
    chat_success_events: int
    chat_failure_events: int
    action_counts: dict[str, int]


class ReplayManifest(_Model):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    observation: ObservationSpec
    world_config_hash: str
    config: dict = Field(description="world, rewards and observations sections that produced the data")
    generator: Generator
    seed: int
    episode_seeds: list[int] = Field(description="base seed of each capture episode; town k adds k")
    towns: int = Field(ge=1)
    agents_per_town: int = Field(ge=1)
    ticks: int = Field(ge=1)
    episodes: int = Field(ge=1, description="episode ids run 0..episodes-1: episode index * towns + town")
    discount: float
    value_source: Literal["discounted_return", "policy"]
    shards: list[ShardEntry]
    telemetry: FileEntry
    metrics: DatasetMetrics

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def identity(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)


def read_manifest(path: str | Path) -> ReplayManifest:
    """Parse and validate a manifest file (or a dataset directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(f"{path}: no manifest there")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the manifest must be a JSON object")
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise DatasetError(
            f"{path}: schema_version {version!r} is not supported (this version reads {SUPPORTED_SCHEMA_VERSIONS})"
        )
    try:
        return ReplayManifest.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()[:5]
        )
        raise DatasetError(f"{path}: invalid manifest: {problems}") from None
