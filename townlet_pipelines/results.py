"""Pydantic result records (torch-free): frozen, validated, and round-trippable through JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RESULTS_SCHEMA_VERSION = 1


class _Record(BaseModel):
    """Frozen, strict, and finite: JSON cannot hold NaN or infinity, so a record that holds one is refused
    when it is made rather than written as `null` and unreadable afterwards."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: int = RESULTS_SCHEMA_VERSION


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: computed from measured values by the core, shown by the Dagster check as it is."""

    name: str
    passed: bool
    sentence: str  # one line: what was measured, the limit, and how the limit was made
    measured: dict = field(default_factory=dict)  # the numbers behind the sentence, for metadata
    warning_only: bool = False  # a failure warns and blocks nothing


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
    queue_conflict_events_per_agent_day: float
    queue_conflict_intensity_per_agent_day: float
    social_events_per_agent_day: dict[str, float]
    chat_quality_mean: float
    reward_per_agent_day: float
    reward_percentiles: dict[str, float]


class BCTrainingResult(_Record):
    accuracy: float = Field(ge=0, le=1)  # over every training row of the last epoch, not one mini-batch
    loss: float
    val_accuracy: float = Field(ge=0, le=1)  # on held-out episodes
    val_loss: float
    learning_rate: float
    batch_size: int
    epochs: int
    weight_decay: float
    device: str
    manifest: str  # the dataset's manifest path
    dataset_identity: str
    duration_sec: float = Field(ge=0)
    samples_per_sec: float = Field(ge=0)
    train_rows: int
    val_rows: int
    seed: int
    dagger_rounds: int = 0
    dagger_rows: int = 0  # rows of the network's own rollouts labelled by the expert
    checkpoint_id: str | None = None
    checkpoint_path: str | None = None


class PPOTrainingResult(_Record):
    epoch: int
    updates: int
    transitions: int
    steps: int
    loss_policy: float
    loss_value: float
    loss_entropy: float
    loss_total: float
    loss_bc: float
    clip_fraction: float
    clip_fraction_max: float
    adv_mean: float
    adv_std: float
    adv_min_std: float
    adv_zero_std_batches: int
    clip_triggered_minibatches: int
    grad_norm: float
    grad_norm_max: float
    kl_divergence: float
    kl_divergence_max: float
    lr: float
    batch_entropy_mean: float
    batch_entropy_std: float
    reward_advantage_corr: float
    data_mode: str
    cycle_id: int
    rollout_ticks: int
    epoch_duration_sec: float
    env_steps_per_sec: float
    device: str
    # The world's telemetry over this stage's rollouts (TOWNLET.md section 1).
    queue_conflict_events: int
    queue_conflict_intensity: float
    shared_meal_events: int
    late_help_events: int
    shift_takeover_events: int
    chat_success_events: int
    chat_failure_events: int
    chat_quality: float
    # The conflict constraint (PPO-Lagrangian), when on: budget in conflicts per agent-day, final and mean λ.
    conflict_budget: float | None = None
    lagrange_multiplier: float | None = None
    lagrange_multiplier_mean: float | None = None
    # The snapshot the stage returns (ppo.validate_every): its update and its validation KPIs beside the expert's.
    selected_update: int | None = None
    validation: dict[str, float] = {}
    validation_expert: dict[str, float] = {}
    # Anneal fields.
    anneal_cycle: int | None = None
    anneal_stage: int | None = None
    dataset_label: str | None = None
    bc_accuracy: float | None = None
    bc_threshold: float | None = None
    baseline_loss: float | None = None
    baseline_queue_events: float | None = None
    baseline_queue_intensity: float | None = None
    loss_flag: bool = False
    queue_flag: bool = False
    intensity_flag: bool = False
    baseline_dataset_metrics: dict[str, float] = {}
    evaluation: dict[str, float] = {}
    evaluation_town_rewards: list[float] = []  # reward per agent-day of each evaluation town, in seed order
    checkpoint_id: str | None = None
    checkpoint_path: str | None = None
    parent_checkpoint_id: str | None = None


class AnnealStageResult(_Record):
    cycle: int = Field(ge=0)
    mode: Literal["bc", "ppo"]
    accuracy: float | None = None
    loss: float | None = None
    threshold: float | None = None
    passed: bool
    bc_weight: float
    rolled_back: bool = False
    loss_policy: float | None = None
    loss_value: float | None = None
    loss_entropy: float | None = None
    loss_total: float | None = None
    queue_conflict_events: float | None = None  # per agent-day on the guardrail towns (seeds.guardrail)
    queue_conflict_intensity: float | None = None
    loss_flag: bool = False
    queue_flag: bool = False
    intensity_flag: bool = False
    checkpoint_id: str | None = None


class AnnealSummary(_Record):
    stages: list[AnnealStageResult]
    status: Literal["PASS", "FAIL", "HOLD"]
    dataset_label: str
    dataset_identity: str
    baselines: dict[str, float | None]
    promotion_pass_streak: int
    promotion_candidate_ready: bool
    candidate_id: str
    final_checkpoint_id: str | None
    final_checkpoint_path: str | None
    evaluation: dict[str, float] = {}
    duration_sec: float = Field(ge=0)
    namespace: str | None = None  # the profile and world whose baselines and releases judged it
    night: str | None = None  # the nightly partition (its towns: townlet_pipelines/training/nights.py)
    started_from: str | None = None  # the checkpoint PPO started from (the champion's or the BC clone's) and why
    champion: dict[str, float | int | str] | None = None  # challenger vs champion on the guardrail towns
    expert: dict[str, float | int | str] | None = None  # candidate vs the scripted expert on the same towns
