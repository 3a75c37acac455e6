"""The night's candidate: the anneal's BC stages on the expert data (from the content-addressed cache in one
process), then its PPO stages on the night's towns from the champion (the current release when it fits the recipe,
else the BC weights), each judged by its guardrails. A step runs in this process, or, given `in_processes`,
data-parallel elsewhere (torchrun under Dagster Pipes), which writes the stages record this step reads back."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from townlet_pipelines.config import UsageError
from townlet_pipelines.data.files import atomic_write_text
from townlet_pipelines.nightly.context import NightContext
from townlet_pipelines.nightly.describe import curve, log_entries, picture, stage_table, tensorboard
from townlet_pipelines.nightly.outcome import FilePath, StepOutcome
from townlet_pipelines.nightly.verdict import record_held
from townlet_pipelines.pictures import bc_curve_svg, ppo_curve_svg
from townlet_pipelines.training.anneal import AnnealStrategy, StagesOutcome, bc_verdict, ppo_verdicts
from townlet_pipelines.training.cache import cached_bc_stages, read_stages

InProcesses = Callable[[dict], Path]  # runs a step data-parallel with these extras; returns its stages record


def _or_none(value):
    return "none" if value is None else value


def bc_stages(night: NightContext, replay: dict, processes: int, say: Callable[[str], None],
              in_processes: InProcesses | None = None) -> StepOutcome:
    """The anneal's BC stages (reused from the cache while the data and recipe are unchanged; not cached when
    data-parallel), judged by `bc_accuracy_guardrail`."""
    strategy = AnnealStrategy(replay["path"])
    if in_processes is not None:
        record = in_processes({"kind": "bc", "dataset": replay["path"],
                               "record": str(night.run_dir / "bc-stages" / "bc_stages.json")})
        outcome, reused = read_stages(record, night.root), False
    else:
        outcome, record, reused = cached_bc_stages(strategy, night.training, replay["dataset_identity"], night.root,
                                                   say)
    verdict = bc_verdict(outcome, night.config.anneal)
    held = record_held(night, strategy, outcome, StagesOutcome([], [], None, None), [verdict])
    last = outcome.results[-1]
    logs = record.parent / "logs"
    return StepOutcome({"stages_record": str(record), "checkpoint_id": last.checkpoint_id}, {
        "stages_record": FilePath(record),
        "path": FilePath(outcome.checkpoint or last.checkpoint_path),
        "checkpoint_id": last.checkpoint_id,
        "reused": reused,
        "val_accuracy": float(last.val_accuracy),
        "accuracy": float(last.accuracy),
        "val_loss": float(last.val_loss),
        "bc_accuracy_threshold": float(night.config.anneal.bc_accuracy_threshold),
        "samples_per_sec": float(last.samples_per_sec),
        "processes": int(processes),
        "dataset_identity": last.dataset_identity,
        "device": last.device,
        "duration_sec": float(sum(result.duration_sec for result in outcome.results)),
        "stages": stage_table(outcome.stages),
        "training_curve": curve(logs, "bc", ("loss", "accuracy", "val_loss", "val_accuracy")),
        "training_curve_plot": picture(bc_curve_svg, log_entries(logs, "bc"), "BC training curve"),
        **tensorboard({"bc": record.parent}),
    }, last.checkpoint_id, [verdict], held)


def ppo_stages(night: NightContext, replay: dict, rollouts: dict, bc_record: dict, processes: int,
               in_processes: InProcesses | None = None) -> StepOutcome:
    """The anneal's PPO stages on the night's towns, judged against the baseline, the expert and the champion."""
    bc = read_stages(bc_record["stages_record"], night.root)
    if bc.failed:  # its blocking check stopped the night's run; a partial re-run of this step alone arrives here
        judged = bc_verdict(bc, night.config.anneal).sentence
        raise UsageError(f"night {night.night}: its BC stages failed ({judged}; {bc_record['stages_record']}), so "
                         "PPO has no clone to start from: materialize bc_checkpoint for this night again first")
    strategy = AnnealStrategy(replay["path"], rollout_dataset=rollouts["path"])
    record = night.run_dir / "ppo_stages.json"
    if in_processes is not None:  # each rank on its own towns
        in_processes({"kind": "ppo", "dataset": replay["path"], "rollout_dataset": rollouts["path"],
                      "bc_stages": bc_record["stages_record"], "record": str(record)})
        outcome = read_stages(record, night.root)
    else:
        outcome = strategy.run_ppo_stages(night.training, bc)
        atomic_write_text(record, outcome.to_json())
    verdicts = ppo_verdicts(outcome, night.config.anneal)
    held = record_held(night, strategy, bc, outcome, verdicts)
    last = outcome.results[-1]
    evaluation = last.evaluation
    logs = night.run_dir / "logs"
    return StepOutcome({"stages_record": str(record), "checkpoint_id": outcome.checkpoint_id}, {
        "stages_record": FilePath(record),
        "path": FilePath(outcome.checkpoint),
        "checkpoint_id": outcome.checkpoint_id,
        "started_from": str(outcome.started_from),
        "parent_checkpoint_id": str(last.parent_checkpoint_id),
        "loss_total": float(last.loss_total),
        "loss_policy": float(last.loss_policy),
        "loss_value": float(last.loss_value),
        "kl_divergence": float(last.kl_divergence),
        "clip_fraction": float(last.clip_fraction),
        "env_steps_per_sec": float(last.env_steps_per_sec),
        "processes": int(processes),
        "baseline_loss": _or_none(last.baseline_loss),
        "reward_per_agent_day": float(evaluation["reward_per_agent_day"]),
        "queue_conflict_events_per_agent_day": float(evaluation["queue_conflict_events_per_agent_day"]),
        "evaluation_towns": int(evaluation["towns"]),
        "champion": outcome.champion or {"champion": "none"},
        "expert": outcome.expert or {"expert": "none"},
        "lagrange_multiplier": _or_none(last.lagrange_multiplier),
        "selected_update": int(last.updates if last.selected_update is None else last.selected_update),
        "validation": {"policy": last.validation, "expert": last.validation_expert},
        "device": last.device,
        "stages": stage_table(outcome.stages),
        "training_curve": curve(logs, "ppo", ("loss_total", "kl", "clip_fraction")),
        "training_curve_plot": picture(ppo_curve_svg, log_entries(logs, "ppo"), "PPO training curve"),
        **tensorboard({"bc": Path(bc_record["stages_record"]).parent, "ppo": night.run_dir}),
    }, outcome.checkpoint_id, verdicts, held)
