"""Guardrail baselines per dataset label: the last accepted PPO run's loss and conflict rates.

Tonight's anneal is compared with the last accepted run, not only with an earlier stage of its own run.
Every accepted baseline is kept (per label, in order), in one atomically replaced JSON file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from townlet_pipelines.data.state_file import StateModel, finite_metrics, locked_state, read_state

BASELINES_SCHEMA_VERSION = 1


class Baseline(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    loss_total: float
    queue_conflict_events: float  # per agent-day on the guardrail towns (seeds.guardrail)
    queue_conflict_intensity: float  # per agent-day
    source: str  # the checkpoint (or run) that set it
    accepted_at: str


class BaselineFile(StateModel):
    SCHEMA_VERSION = BASELINES_SCHEMA_VERSION

    labels: dict[str, list[Baseline]] = Field(default_factory=dict)  # oldest first; the last is current


class BaselineStore:
    FILE = "baselines.json"

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / self.FILE

    def get(self, label: str) -> Baseline | None:
        history = read_state(self.path, BaselineFile).labels.get(label)
        return history[-1] if history else None

    def history(self, label: str) -> list[Baseline]:
        return list(read_state(self.path, BaselineFile).labels.get(label, []))

    def all(self) -> dict[str, Baseline]:
        return {label: items[-1] for label, items in read_state(self.path, BaselineFile).labels.items() if items}

    def accept(self, label: str, loss_total: float, queue_conflict_events: float, queue_conflict_intensity: float,
               source: str) -> Baseline:
        values = finite_metrics({"loss_total": loss_total, "queue_conflict_events": queue_conflict_events,
                                 "queue_conflict_intensity": queue_conflict_intensity}, f"baseline {label}")
        loss_total, queue_conflict_events, queue_conflict_intensity = values.values()
        baseline = Baseline(loss_total=loss_total, queue_conflict_events=queue_conflict_events,
                            queue_conflict_intensity=queue_conflict_intensity, source=source,
                            accepted_at=datetime.now(timezone.utc).isoformat())
        with locked_state(self.path, BaselineFile) as holder:
            holder[0].labels.setdefault(label, []).append(baseline)
        return baseline
