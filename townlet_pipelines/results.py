"""Pydantic result records (torch-free): frozen, validated, and round-trippable through JSON."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

RESULTS_SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = RESULTS_SCHEMA_VERSION


class SimulationReport(_Record):
    """What a researcher checks after a simulation run: speed, survival, economy and social life."""

    policy: str
    towns: int
    agents_per_town: int
    ticks: int
    seed: int
    observation_variant: str | None
    wall_seconds: float
    ticks_per_sec: float
    agent_ticks_per_sec: float
    faints: int
    faints_per_agent_day: float
    mean_hunger: float
    mean_hygiene: float
    mean_energy: float
    mean_wallet: float
    wages_per_agent_day: float
    late_arrivals_per_agent_day: float
    absences_per_agent_day: float
    queue_conflicts_per_agent_day: float
    queue_conflict_intensity_per_agent_day: float
    social_events_per_agent_day: dict[str, float]
    chat_quality_mean: float
    reward_per_agent_day: float
    reward_percentiles: dict[str, float]
