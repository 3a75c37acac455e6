"""What a strategy runs with: the config, the device, where to write, and the services it may use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.training.distributed import SINGLE, Ranks
from townlet_pipelines.training.logs import JsonlLog, NullLog

if TYPE_CHECKING:
    from townlet_pipelines.data.baselines import BaselineStore
    from townlet_pipelines.data.promotion import PromotionStore
    from townlet_pipelines.training.device import DeviceContext


@dataclass
class TrainingContext:
    config: TownletConfig
    artifacts: Path  # this run's own folder; strategies write checkpoints and logs below it
    device: "DeviceContext"
    promotion: "PromotionStore | None" = None
    baselines: "BaselineStore | None" = None
    progress: bool = False  # show progress bars on long loops
    ranks: Ranks = SINGLE  # data-parallel processes (training/distributed.py); rank 0 writes

    def log(self, name: str) -> JsonlLog | NullLog:
        if not self.ranks.main:
            return NullLog()
        return JsonlLog(self.artifacts / "logs", name, self.config.runtime.log_rotate_entries)


class TrainingStrategy(Protocol):
    """BC, PPO and Anneal all run this way and return a typed, frozen result record."""

    name: str

    def run(self, context: TrainingContext) -> BaseModel: ...
