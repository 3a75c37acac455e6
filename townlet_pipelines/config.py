"""One Pydantic model tree for the whole Townlet configuration, loaded from YAML.

Every number of the world's rules lives here, never as a literal in the engine. The defaults are tuned
so that the scripted expert keeps a 16x16 town of 8 agents alive and solvent for a week, and so that the
expert's per-tick reward sits well inside the clip; `docs/WORLD.md` records the reasoning.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
import datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file and field at fault."""


class UsageError(ValueError):
    """Something the user asked for cannot be done as asked, and the user can fix it: a bad command-line argument
    (`--seeds 9:3`), a partition key that is not a night, an unknown strategy name. Both entry points tell it in
    one line (errors.py); a bare `ValueError` is a programming error and keeps its traceback."""


class _Strict(BaseModel):
    """Unknown keys are errors, values are immutable, and no number is NaN or infinite (a tolerance of .inf
    would silently switch a guardrail off)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


NEED_NAMES: tuple[str, ...] = ("hunger", "hygiene", "energy")


class NeedsConfig(_Strict):
    """Decay per tick of each need (1 is fully satisfied) and the faint rule.

    The original's 0.010/0.005/0.008 drain hunger in 100 ticks, so a town had to eat 14 meals a day and
    could never pay for them on one shift. These rates ask for about two meals, one shower and one sleep
    a day, which one shift pays for several times over.
    """

    hunger_decay: float = Field(0.0006, gt=0, lt=1)
    hygiene_decay: float = Field(0.0004, gt=0, lt=1)
    energy_decay: float = Field(0.0005, gt=0, lt=1)
    initial_min: float = Field(0.5, ge=0, le=1)
    initial_max: float = Field(1.0, ge=0, le=1)
    respawn_level: float = Field(0.8, gt=0, le=1)
    faint_ticks: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _range(self) -> "NeedsConfig":
        if self.initial_min > self.initial_max:
            raise ValueError("initial_min must not exceed initial_max")
        return self

    def decay(self) -> tuple[float, float, float]:
        return (self.hunger_decay, self.hygiene_decay, self.energy_decay)


class AffordanceConfig(_Strict):
    """One object use: how long it takes, what it costs at the start, what it does on completion."""

    duration: int = Field(ge=1)
    cost: float = Field(ge=0)
    hunger: float = 0.0
    hygiene: float = 0.0
    energy: float = 0.0

    def effects(self) -> tuple[float, float, float]:
        return (self.hunger, self.hygiene, self.energy)


class AffordancesConfig(_Strict):
    eat_meal: AffordanceConfig = AffordanceConfig(duration=15, cost=0.40, hunger=0.40, energy=0.05)
    cook_meal: AffordanceConfig = AffordanceConfig(
        duration=40, cost=0.15, hunger=0.10, energy=-0.05, hygiene=-0.02
    )
    use_shower: AffordanceConfig = AffordanceConfig(duration=30, cost=0.20, hygiene=0.45, energy=-0.03)
    rest_sleep: AffordanceConfig = AffordanceConfig(duration=60, cost=0.0, energy=0.80)


class JobConfig(_Strict):
    """A job's daily shift window [shift_start, shift_end) in ticks of the day, and its wage per tick."""

    name: str
    shift_start: int = Field(ge=0)
    shift_end: int = Field(ge=1)
    wage: float = Field(0.02, ge=0)


class JobsConfig(_Strict):
    jobs: tuple[JobConfig, ...] = (
        JobConfig(name="early", shift_start=180, shift_end=360, wage=0.02),
        JobConfig(name="late", shift_start=400, shift_end=560, wage=0.02),
    )
    work_window_before: int = Field(60, ge=0, description="ticks before a shift that `work` is allowed")
    takeover_delay: int = Field(15, ge=1, description="ticks after the start when a coworker covers")
    takeover_ambition: float = Field(
        0.0, ge=-1, le=1, description="a covering coworker more ambitious than this takes the shift over"
    )


class ObjectsConfig(_Strict):
    """How many of each shared object a town has; every agent also has its own desk at its job site."""

    fridges: int = Field(2, ge=1)
    stoves: int = Field(2, ge=1)
    showers: int = Field(2, ge=1)
    beds: int = Field(4, ge=1)


class QueueConfig(_Strict):
    cooldown_ticks: int = Field(60, ge=0, description="fairness: wait before re-queueing the same object")
    intensity_base: float = Field(1.5, ge=0)
    intensity_per_waiter: float = Field(0.25, ge=0)
    intensity_min: float = Field(0.1, ge=0)
    intensity_max: float = Field(5.0, ge=0)
    rivalry_per_intensity: float = Field(0.15, ge=0)
    rival_threshold: float = Field(0.5, ge=0, le=1, description="rivalry above this makes a rival")
    busy_penalty: float = Field(4.0, ge=0, description="targeting: path tiles one occupant is worth")
    rival_penalty: float = Field(20.0, ge=0, description="targeting: path tiles a rival in line is worth")
    retarget_walkers: bool = Field(
        True, description="an agent walking to an object that someone else takes first re-picks its object "
        "(another of the type may be free) instead of walking on into the queue")
    claim_penalty: float = Field(
        4.0, ge=0, description="targeting: path tiles an agent already walking to the object is worth (two "
        "agents that set out on consecutive ticks no longer pick the same fridge while the other stands free)")


class EventDelta(_Strict):
    trust: float = 0.0
    familiarity: float = 0.0
    rivalry: float = 0.0

    def vector(self) -> tuple[float, float, float]:
        return (self.trust, self.familiarity, self.rivalry)


class RelationshipConfig(_Strict):
    max_ties: int = Field(6, ge=1)
    daily_decay: float = Field(0.1, ge=0, le=1, description="fraction of every tie lost each day")
    shared_meal: EventDelta = EventDelta(trust=0.10, familiarity=0.25)
    queued_politely: EventDelta = EventDelta(trust=0.05, familiarity=0.05, rivalry=-0.05)
    queue_conflict: EventDelta = EventDelta(familiarity=-0.05)
    shift_takeover: EventDelta = EventDelta(trust=-0.10, rivalry=0.30)
    late_help: EventDelta = EventDelta(trust=0.20, familiarity=0.10, rivalry=-0.10)
    chat_success: EventDelta = EventDelta(trust=0.05, familiarity=0.10)
    chat_failure: EventDelta = EventDelta(familiarity=-0.05, rivalry=0.05)
    forgiveness_min_scale: float = Field(
        0.5, ge=0, le=1, description="harmful deltas are scaled to this at forgiveness +1"
    )
    ambition_rivalry_boost: float = Field(0.3, ge=0, description="extra rivalry on work events at +1")


class ChatConfig(_Strict):
    base_success: float = Field(0.7, ge=0, le=1)
    trust_coef: float = 0.3
    familiarity_coef: float = 0.2
    cooldown_ticks: int = Field(30, ge=0)
    quality_noise: float = Field(0.1, ge=0)


def layout_bands(grid_size: int) -> int:
    """Object rows a grid holds: objects stand on rows 1, 4, 7, ... with their access tiles just below."""
    return (grid_size - 3) // 3 + 1


def layout_band_width(grid_size: int) -> int:
    """Objects one row holds: every other column, leaving a walkway between them."""
    return (grid_size - 1) // 2


def layout_groups(objects: "ObjectsConfig", agents_per_town: int, n_jobs: int) -> list[list[str]]:
    """Object types in placement order, one list per group; each group starts on a fresh row.

    Amenities (fridges, stoves, showers) share the kitchen/bathroom rows, each job's desks form its
    workplace, and the beds form the homes. Agent i works job i % n_jobs at its own desk.
    """
    amenities = ["fridge"] * objects.fridges + ["stove"] * objects.stoves + ["shower"] * objects.showers
    desks = [["desk"] * len(range(job, agents_per_town, n_jobs)) for job in range(n_jobs)]
    return [amenities, *[group for group in desks if group], ["bed"] * objects.beds]


def layout_bands_needed(objects: "ObjectsConfig", agents_per_town: int, n_jobs: int, grid_size: int) -> int:
    width = layout_band_width(grid_size)
    return sum(-(-len(group) // width) for group in layout_groups(objects, agents_per_town, n_jobs))


class WorldConfig(_Strict):
    grid_size: int = Field(16, ge=4, description="the town is grid_size x grid_size tiles")
    agents_per_town: int = Field(8, ge=1, le=64)
    day_ticks: int = Field(1440, ge=60)
    episode_days: int = Field(7, ge=1)
    initial_wallet: float = Field(1.0, ge=0)
    initial_meals: int = Field(4, ge=0, description="meals in each town's pantry at reset")
    needs: NeedsConfig = NeedsConfig()
    affordances: AffordancesConfig = AffordancesConfig()
    jobs: JobsConfig = JobsConfig()
    objects: ObjectsConfig = ObjectsConfig()
    queues: QueueConfig = QueueConfig()
    relationships: RelationshipConfig = RelationshipConfig()
    chat: ChatConfig = ChatConfig()

    @model_validator(mode="after")
    def _shifts_inside_day(self) -> "WorldConfig":
        for index, job in enumerate(self.jobs.jobs):
            if not job.shift_start < job.shift_end <= self.day_ticks:
                raise ValueError(
                    f"jobs.jobs.{index}.shift_start/shift_end: shift window [{job.shift_start}, "
                    f"{job.shift_end}) must be non-empty and inside the day of {self.day_ticks} ticks"
                )
            if job.shift_start - self.jobs.work_window_before < 0:
                raise ValueError(
                    f"jobs.jobs.{index}.shift_start: {job.shift_start} leaves no room for "
                    f"jobs.work_window_before={self.jobs.work_window_before} ticks before the shift"
                )
        if not self.jobs.jobs:
            raise ValueError("jobs.jobs: a town needs at least one job")
        needed = layout_bands_needed(self.objects, self.agents_per_town, len(self.jobs.jobs), self.grid_size)
        if needed > layout_bands(self.grid_size):
            raise ValueError(
                f"grid_size: a {self.grid_size}x{self.grid_size} grid holds {layout_bands(self.grid_size)} "
                f"object rows of {layout_band_width(self.grid_size)}, but the objects and "
                f"{self.agents_per_town} desks need {needed} rows"
            )
        return self

    @property
    def episode_ticks(self) -> int:
        return self.day_ticks * self.episode_days


class RewardConfig(_Strict):
    """Per-agent, per-tick reward terms.

    `homeostasis_scale` keeps the needs penalty from dominating: at needs of 0.6 the expert pays about
    0.02 a tick, wages add 0.02 while working, so its ticks sit well inside the +-0.2 clip. The faint
    penalty is added after clipping, so a faint never looks like an ordinary bad tick.
    """

    hunger_weight: float = Field(1.0, ge=0)
    hygiene_weight: float = Field(0.6, ge=0)
    energy_weight: float = Field(0.8, ge=0)
    homeostasis_scale: float = Field(0.05, ge=0)
    wage_scale: float = Field(1.0, ge=0)
    punctuality_bonus: float = Field(0.05, ge=0)
    lateness_penalty: float = Field(0.10, ge=0)
    survival: float = 0.002
    faint_penalty: float = Field(1.0, ge=0)
    queue_conflict_penalty: float = Field(0.0, ge=0, description="charged to a blocked agent per conflict")
    chat_base: float = 0.01
    chat_trust: float = 0.3
    chat_familiarity: float = 0.2
    clip: float = Field(0.2, gt=0)

    def need_weights(self) -> tuple[float, float, float]:
        return (self.hunger_weight, self.hygiene_weight, self.energy_weight)


ObservationVariant = Literal["hybrid", "compact", "full"]


class ObservationConfig(_Strict):
    variant: ObservationVariant = "hybrid"
    window: int = Field(11, ge=3, description="side of the hybrid egocentric map (odd)")
    full_window: int = Field(21, ge=3, description="side of the full variant's map (odd)")

    @model_validator(mode="after")
    def _odd(self) -> "ObservationConfig":
        for name in ("window", "full_window"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd so the agent sits at the centre")
        return self


class ExpertConfig(_Strict):
    job_arrival_buffer: int = Field(20, ge=0)
    hunger_threshold: float = Field(0.4, ge=0, le=1)
    hygiene_threshold: float = Field(0.4, ge=0, le=1)
    energy_threshold: float = Field(0.4, ge=0, le=1)
    chat_extroversion_min: float = Field(0.2, ge=-1, le=1)
    discount: float = Field(0.99, gt=0, le=1, description="gamma of the expert's value target")

    def thresholds(self) -> tuple[float, float, float]:
        return (self.hunger_threshold, self.hygiene_threshold, self.energy_threshold)


class ModelConfig(_Strict):
    """The policy network: an encoder of the map, an MLP over the features, policy and value heads."""

    conv_channels: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (), description="3x3 conv layers over the map before its linear encoder (the second and later with stride "
        "2); empty: the map is flattened straight into the linear encoder. On the 11x11 map the empty default "
        "trains 8x faster per mini-batch than (16, 32) and its nightly candidate scored higher on the held-out "
        "towns (docs/BENCHMARKS.md)")
    hidden: int = Field(128, ge=8)
    conflict_shield: bool = Field(
        True, description="the policy may not *start* eating, cooking, showering or sleeping while no object of "
        "that type is free for it (`<type>_free` = 0: all held, queued for, walked to, or on its cooldown), unless "
        "the need is below shield_floor: it waits instead of walking into a queue (safe-RL shielding; "
        "docs/TRAINING.md)")
    shield_floor: float = Field(0.2, ge=0, le=1, description="below this need level the shield stands aside")


class BCConfig(_Strict):
    learning_rate: float = Field(3e-4, gt=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(5, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    value_coef: float = Field(0.5, ge=0, description="lambda: weight of the value MSE against the return")
    decision_weight: float = Field(
        10.0, ge=1, description="cross-entropy weight of decision rows (the expert starts or switches an "
        "option) relative to rows that merely continue one; 1 is plain BC")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of episodes held out for validation")
    dagger_rounds: int = Field(4, ge=0, description="DAgger rounds after the epochs on the demonstrations (4: "
                               "the clone's own conflicts fell from 0.15 to 0.07 per agent-day against 2 rounds)")
    dagger_epochs: int = Field(2, ge=1, description="epochs on each round's expert-labelled own rollouts")
    dagger_towns: int = Field(8, ge=1, description="towns of each round's rollouts (rollout.ticks long)")
    seed: int = Field(0, ge=0)


PPO_CYCLE_SEEDS = 100_000  # each anneal cycle's PPO rollouts use their own slice of seeds.ppo


class PPOConfig(_Strict):
    """CleanRL's PPO, every hyperparameter named; the defaults follow CleanRL's Atari settings except where
    a comment says why."""

    learning_rate: float = Field(
        1e-4, gt=0, description="Adam step size; a third of CleanRL's 3e-4, since PPO here fine-tunes a cloned "
        "policy: the larger step traded queue conflicts for reward within a few updates")
    gamma: float = Field(0.99, gt=0, le=1, description="discount of future reward")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE's bias/variance trade-off")
    clip_coef: float = Field(0.2, gt=0, description="the surrogate's ratio is clipped to 1 +- clip_coef")
    value_clip_coef: float = Field(0.2, gt=0, description="a value may move this far from its old one for free")
    entropy_coef: float = Field(0.01, ge=0, description="weight of the entropy bonus")
    value_coef: float = Field(0.5, ge=0, description="weight of the value loss")
    max_grad_norm: float = Field(0.5, gt=0, description="global gradient norm clip")
    minibatches: int = Field(4, ge=1, description="mini-batches per update epoch")
    update_epochs: int = Field(4, ge=1, description="passes over each update's rows")
    updates: int = Field(8, ge=1, description="rollout-then-update iterations of a PPO stage run alone")
    rollout_towns: int = Field(8, ge=1, description="towns driven by the network in each rollout")
    rollout_ticks: int = Field(180, ge=2, description="ticks of each rollout; towns run on across updates (180 "
                               "divides the default day, so every update sees one eighth of it)")
    episode_ticks: int | None = Field(
        None, ge=2, description="rollout towns restart on fresh seeds after this many ticks; default: "
        "evaluation.ticks, the horizon every policy is judged on (BC's demonstrations cover it too)")
    data_mode: Literal["rollout", "replay", "mixed"] = "rollout"
    mixed_replay_fraction: float = Field(0.5, ge=0, le=1, description="share of replay rows in `mixed`")
    conflict_budget: float = Field(
        0.7, ge=0, description="constrained PPO: keep the policy's queue conflicts per agent-day under this multiple "
        "of the scripted expert's rate on the seeds.validation towns (0 turns it off). Below 1 on purpose: the "
        "guardrail allows 1.15 on other towns, and a chain of nights must not spend that margin night by night")
    lagrange_lr: float = Field(10.0, ge=0, description="the conflict multiplier's integral gain: dual ascent's step "
                               "per reading (every validate_every updates) on the relative error rate / budget − 1")
    lagrange_kp: float = Field(40.0, ge=0, description="the PID Lagrangian's proportional gain on rate / budget − 1 "
                               "(Stooke et al. 2020; 0 with lagrange_kd 0 is plain dual ascent)")
    lagrange_kd: float = Field(10.0, ge=0, description="the PID Lagrangian's derivative gain on a rising rate "
                               "(relative to the budget): it brakes a climb before the integral winds up")
    lagrange_init: float = Field(30.0, ge=0, description="the conflict multiplier's starting value (its integral): "
                                 "a conflict costs about what PPO gains from one (~20-40 reward per agent-day) "
                                 "from the first update; 0 leaves a policy under budget free")
    lagrange_measure: Literal["validation", "rollouts"] = Field(
        "validation", description="the conflict rate λ follows: the seeds.validation towns' at the start and every "
        "validate_every updates (512 agent-days of the policy as evaluation plays it, the reading the snapshot "
        "choice uses), or the rollouts' over the last day of every update (a few conflicts a day on 8 towns: "
        "λ chased their noise and collapsed while validation conflicts climbed, docs/BENCHMARKS.md)")
    cost_critic: bool = Field(
        True, description="constrained PPO learns a critic of the conflicts' discounted cost (OmniSafe's cost value "
        "head, a network of its own that the checkpoint does not keep), and A_c is GAE against it; off: A_c is "
        "the raw cost-to-go over GAE's horizon, which blames every action taken before a conflict alike")
    cost_critic_lr: float = Field(1e-3, gt=0, description="Adam step size of the cost critic (it starts afresh "
                                  "every stage, so faster than the policy's)")
    cost_critic_warmup: int = Field(
        8, ge=0, description="passes over the stage's first rollout that fit the fresh cost critic before its "
        "advantages are taken (each pass recomputes the λ-returns it fits)")
    select_conflict_ratio: float = Field(
        0.85, gt=0, description="a snapshot qualifies when its validation conflicts are at most this multiple of "
        "the expert's on the same towns (below 1: 64 validation towns are noisier than the guardrail's 256, "
        "so the choice keeps a margin under the 15% queue tolerance)")
    select_wage_ratio: float = Field(
        0.96, ge=0, description="... and its wages at least this share of the expert's (a policy that skips work "
        "to eat and wash more is not the one we want)")
    validate_every: int = Field(
        4, ge=0, description="every this many updates (and after the last), score the policy (as evaluation plays it) on the "
        "seeds.validation towns and keep the best snapshot: the highest reward among those within "
        "select_conflict_ratio and select_wage_ratio and with no more faints than the expert, else the fewest "
        "conflicts (0 keeps the last update)")
    select_keep_start: bool = Field(
        True, description="the starting weights compete as update 0 in the snapshot choice: a stage that finds no "
        "snapshot with more validation reward within the constraints returns its start (the champion, or the BC "
        "clone), never a worse snapshot")
    seed: int = Field(0, ge=0, description="seeds torch and the mini-batch order")


class AnnealStage(_Strict):
    """One stage; stages run in cycle order (their order within a cycle is kept).

    `bc_weight` weighs the behaviour-cloning loss: a BC stage scales its loss by it (0 is refused), a PPO
    stage adds `bc_weight x cross-entropy` on expert replay rows to each update, anchoring fine-tuning
    to the demonstrations (0 is pure PPO).
    """

    cycle: int = Field(ge=0)
    mode: str = Field(min_length=1, description="the stage's training strategy by its registered name: bc, ppo or "
                      "a plugin's (training/registry.py); an unknown name is refused when the schedule runs, since "
                      "the registry lives above the config")
    epochs: int = Field(1, ge=1, description="BC epochs, or PPO updates, for this stage")
    bc_weight: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _weight(self) -> "AnnealStage":
        if self.mode == "bc" and self.bc_weight == 0:
            raise ValueError("bc_weight: a BC stage with weight 0 would learn nothing")
        return self


class AnnealConfig(_Strict):
    # One PPO stage by default: with no persisted baseline yet, a first PPO stage sets the loss baseline and a
    # later stage of the same run is judged against it; PPO losses of successive stages routinely differ by
    # more than 10%, so a multi-stage default would never pass a first night. Nightly runs are deterministic,
    # so an unchanged recipe reproduces its accepted loss and a changed one is held for a look.
    schedule: tuple[AnnealStage, ...] = (
        AnnealStage(cycle=0, mode="bc", epochs=5, bc_weight=1.0),
        AnnealStage(cycle=1, mode="ppo", epochs=24, bc_weight=0.0),
    )
    bc_accuracy_threshold: float = Field(0.9, ge=0, allow_inf_nan=False)
    loss_tolerance: float = Field(0.10, ge=0, allow_inf_nan=False)  # infinite would switch a guardrail off
    queue_tolerance: float = Field(0.15, ge=0, allow_inf_nan=False)
    intensity_tolerance: float = Field(0.15, ge=0, allow_inf_nan=False)
    queue_resolution_events: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="the queue guardrail holds a rise above the baseline only when it "
        "is more than queue_tolerance and more than this many conflicts over all the guardrail towns: on the smoke "
        "profile's 4 towns one conflict is 0.06 per agent-day, which a zero baseline would flag; on the default's 256 "
        "towns it is 0.0005, far below the 15%")
    expert_tolerance: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="expert_guardrail: the candidate's reward may fall this share "
        "of the expert's |reward| below the expert's (beyond the paired 95% interval) and still pass; 0, the "
        "default: never worse than the expert")
    dataset_label: str = "expert"

    @model_validator(mode="after")
    def _schedule(self) -> "AnnealConfig":
        """Stages run in cycle order; BC stages must come before PPO stages in that order.

        The nightly graph runs the BC stages in one asset and the PPO stages (from the BC weights) in the
        next, and `townlet train anneal` runs the very same code, so a BC stage after a PPO stage could not
        be honoured by both; it is refused rather than silently reordered.
        """
        if not self.schedule:
            raise ValueError("schedule: an anneal needs at least one stage")
        ordered = sorted(self.schedule, key=lambda stage: stage.cycle)
        modes = [stage.mode for stage in ordered]
        if "ppo" in modes and "bc" in modes[modes.index("ppo"):]:
            raise ValueError("schedule: a BC stage may not follow a PPO stage in cycle order")
        return self

    def ordered(self) -> list[AnnealStage]:
        return sorted(self.schedule, key=lambda stage: stage.cycle)


class PromotionConfig(_Strict):
    required_passes: int = Field(2, ge=1, description="a later candidate is released after this many passing "
                                 "nights in a row (that also scored more than the champion)")
    release_proven: bool = Field(
        True, description="... or at once, on a passing night whose challenger beats the champion beyond the "
        "95% paired interval on the guardrail towns: the streak guards against one lucky night, which the "
        "interval already rules out (a chain measured releases held back a night by the streak alone)")


class RolloutConfig(_Strict):
    """The expert capture that feeds BC (and replay PPO)."""

    expert_noise: float = Field(0.2, ge=0, lt=1, description="share of expert ticks played at random (DART)")
    towns: int = Field(16, ge=1)
    ticks: int = Field(1440, ge=1)
    shard_rows: int = Field(16384, ge=1)


class EvaluationConfig(_Strict):
    """How every policy is scored: on the towns of `seeds.guardrail` (guardrails) or `seeds.test` (held out)."""

    ticks: int = Field(1440, ge=1, description="ticks each evaluation town runs (one day by default)")
    greedy: bool = Field(
        False, description="take each network's most likely action instead of sampling from it. Off by default: "
        "the released policy is the stochastic one PPO optimises, and on the held-out towns the BC clone scores "
        "+39% over the expert sampled but -11% greedy (greedy agents fall into step and crowd the same objects; "
        "docs/TRAINING.md)")
    sample_seed: int = Field(
        0, ge=0, description="the seed of a sampled evaluation's draws: every policy scored on the same towns gets "
        "the same random numbers, so an evaluation is reproducible and a paired comparison compares policies")
    processes: int = Field(
        0, ge=0, description="processes that play one evaluation's towns at once (0: one per core this process may "
        "use, within its container's CPU limit, at most 8; 1: this process alone). Only a policy that plays each "
        "town the same alone or batched is split (a network played greedy or with its seeded draws, the scripted "
        "expert), in shares of at least 16 towns: the KPIs are the same numbers either way")
    report_towns: int = Field(
        32, ge=0, description="held-out towns (the first of seeds.test) on which each passing nightly shows the "
        "candidate beside the champion, the expert and a random policy; a report only, nothing is judged or tuned "
        "on it (0: off)")


class SeedRange(_Strict):
    """Town seeds [start, start + count): town k of a batch started at `s` gets seed s + k."""

    start: int = Field(ge=0)
    count: int = Field(ge=1)

    @property
    def stop(self) -> int:
        return self.start + self.count

    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.stop))

    def overlaps(self, other: "SeedRange") -> bool:
        return self.start < other.stop and other.start < self.stop


class SeedsConfig(_Strict):
    """Disjoint town-seed ranges, one per use, so that no town is both learned from and judged on.

    `test` is the held-out set: no training, tuning or guardrail uses it; `townlet evaluate` and
    `python -m townlet_pipelines.bench learning` report on it. `guardrail` sizes the guardrail evaluation:
    256 town-days put the expert's conflict rate within 4% across disjoint sets (128: 9%; 8: 47%), a quarter
    of the 15% queue tolerance (`python -m townlet_pipelines.bench guardrail-noise`, docs/BENCHMARKS.md).
    """

    expert: SeedRange = SeedRange(start=0, count=100_000)  # expert demonstrations (BC data, PPO anchor)
    dagger: SeedRange = SeedRange(start=100_000, count=900_000)  # BC's DAgger rounds
    ppo: SeedRange = SeedRange(start=1_000_000, count=9_000_000)  # PPO rollouts, per cycle and episode
    policy_rollouts: SeedRange = SeedRange(start=10_000_000, count=1_000_000)  # rollout_dataset
    validation: SeedRange = SeedRange(start=40_000_000, count=64)  # PPO's conflict budget and snapshot choice
    guardrail: SeedRange = SeedRange(start=50_000_000, count=256)  # guardrail evaluation and baselines
    test: SeedRange = SeedRange(start=90_000_000, count=128)  # held out: reported, never used

    @model_validator(mode="after")
    def _disjoint(self) -> "SeedsConfig":
        names = list(type(self).model_fields)
        for index, first in enumerate(names):
            for second in names[index + 1:]:
                a, b = getattr(self, first), getattr(self, second)
                if a.overlaps(b):
                    raise ValueError(
                        f"seeds.{first} [{a.start}, {a.stop}) overlaps seeds.{second} [{b.start}, {b.stop}): "
                        "every use needs its own towns")
        return self


class NightlyConfig(_Strict):
    """Where each night's own towns come from (`townlet_pipelines/training/nights.py`, docs/PIPELINE.md).

    Night `d` (a partition date) takes slot `d.toordinal() % slots` of the block [start, start + stride x
    slots): its PPO rollouts, the champion's rollouts, its PPO validation towns (snapshot choice) and its
    guardrail towns, so every night learns from, chooses on and
    is judged on towns of its own, consecutive nights never share one, and none is a held-out test town. The
    block must not overlap any range of `seeds`; one slot must hold seeds.ppo, policy_rollouts, validation
    and guardrail (their counts). `night` is set only on a night's derived config.
    """

    start: int = Field(100_000_000, ge=0, description="first seed of the nightly block")
    stride: int = Field(16_000_000, ge=1, description="seeds per night (one slot)")
    slots: int = Field(1000, ge=1, description="distinct nights before a slot is used again (about 2.7 years)")
    night: datetime.date | None = Field(None, description="the night this config was derived for; None: the base")

    @property
    def block(self) -> SeedRange:
        return SeedRange(start=self.start, count=self.stride * self.slots)


NIGHTLY_RANGES = ("ppo", "policy_rollouts", "validation", "guardrail")  # the ranges each night replaces with its own


class RuntimeConfig(_Strict):
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    amp: bool = True
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads; 0 = auto: a quarter of the cores, 1 to 4 (one on a 2-core "
        "machine: the world and the data loader need the other core, and this network's small ops gain little "
        "from splitting)")
    log_rotate_entries: int = Field(1000, ge=1)
    progress_every_epochs: int = Field(
        1, ge=1, description="BC writes a progress checkpoint (weights, optimizer, RNG, loop state) every this many "
        "epochs; a killed run continues from the newest with `--resume RUN_FOLDER`")
    progress_every_updates: int = Field(
        4, ge=1, description="PPO writes a progress checkpoint every this many updates (about 0.1 s each on the "
        "default profile)")


class TownletConfig(_Strict):
    """The whole configuration: the world that makes data, and the trainers that learn from it."""

    profile: str = Field("default", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="the profile's name: "
                         "its state folder's and asset keys' prefix, so letters, digits, _ . - only")
    world: WorldConfig = WorldConfig()
    rewards: RewardConfig = RewardConfig()
    observations: ObservationConfig = ObservationConfig()
    expert: ExpertConfig = ExpertConfig()
    model: ModelConfig = ModelConfig()
    bc: BCConfig = BCConfig()
    ppo: PPOConfig = PPOConfig()
    anneal: AnnealConfig = AnnealConfig()
    promotion: PromotionConfig = PromotionConfig()
    rollout: RolloutConfig = RolloutConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    seeds: SeedsConfig = SeedsConfig()
    nightly: NightlyConfig = NightlyConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _seed_budgets(self) -> "TownletConfig":
        """Each use's towns must fit inside its own range, or they would spill into another's."""
        episode = self.world.episode_ticks
        needs = {
            "expert": self.rollout.towns * -(-self.rollout.ticks // episode),
            "dagger": self.bc.dagger_rounds * self.bc.dagger_towns * -(-self.rollout.ticks // episode),
            "policy_rollouts": max(1, self.rollout.towns // 2) * -(-self.rollout.ticks // episode),
        }
        needs["ppo"] = PPO_CYCLE_SEEDS * (1 + max((s.cycle for s in self.anneal.schedule), default=0))
        ppo_episode = min(episode, self.ppo.episode_ticks or self.evaluation.ticks)
        ppo_towns = self.ppo.rollout_towns * (
            2 + max(self.ppo.updates, *(s.epochs for s in self.anneal.schedule)) * self.ppo.rollout_ticks // ppo_episode)
        if ppo_towns > PPO_CYCLE_SEEDS:
            raise ValueError(f"ppo: a cycle needs {ppo_towns} town seeds, more than its {PPO_CYCLE_SEEDS}")
        for name, towns in needs.items():
            available = getattr(self.seeds, name).count
            if towns > available:
                raise ValueError(f"seeds.{name}: {towns} town seeds are needed but the range holds {available}")
        per_night = sum(getattr(self.seeds, name).count for name in NIGHTLY_RANGES)
        if per_night > self.nightly.stride:
            raise ValueError(f"nightly.stride: a night needs {per_night} seeds (seeds.ppo + policy_rollouts + "
                             f"validation + guardrail) but a slot holds {self.nightly.stride}")
        if self.nightly.night is None:  # a night's own config holds its slices inside the block, on purpose
            block = self.nightly.block
            for name in type(self.seeds).model_fields:
                other = getattr(self.seeds, name)
                if block.overlaps(other):
                    raise ValueError(f"nightly: the block [{block.start}, {block.stop}) overlaps seeds.{name} "
                                     f"[{other.start}, {other.stop}): nights need towns of their own")
        return self

    def world_hash(self) -> str:
        """Identity of the rules that produce data: world, rewards and observations, not the trainer."""
        payload = {
            "world": self.world.model_dump(mode="json"),
            "rewards": self.rewards.model_dump(mode="json"),
            "observations": self.observations.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


PROFILES: tuple[str, ...] = ("default", "smoke")


def _format_error(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def config_from_mapping(data: dict, source: str = "<mapping>") -> TownletConfig:
    try:
        return TownletConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(source, error)) from None


def load_config(path_or_profile: str | Path | None = None) -> TownletConfig:
    """Load a YAML config file, or a packaged profile by name (`default`, `smoke`); None is `default`."""
    if path_or_profile is None:
        path_or_profile = "default"
    if isinstance(path_or_profile, str) and path_or_profile in PROFILES:
        text = resources.files("townlet_pipelines").joinpath(f"profiles/{path_or_profile}.yaml").read_text()
        source = f"profile {path_or_profile}"
    else:
        path = Path(path_or_profile)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (profiles: {', '.join(PROFILES)})")
        text = path.read_text()
        source = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    if data is None:  # a blank file would quietly train, judge and promote in the default profile's namespace
        raise ConfigError(f"{source}: the config file is empty; start it from a profile (`profile: default`) and "
                          "override the sections you change")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return config_from_mapping(data, source)
