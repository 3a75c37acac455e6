"""Anneal: the schedule's BC stages, then its PPO stages from the BC weights, judged by the guardrails.

Status: FAIL if a BC stage missed `bc_accuracy_threshold` (validation accuracy; the schedule stops and the
failed stage's weights are not carried forward), else HOLD if any PPO stage raised a flag, else PASS.
Baselines come from the persisted store (the last accepted run for the dataset label); without one, the
first PPO stage sets the loss baseline and the dataset's own conflict rates set the queue baselines. A
PASS is accepted as the new baseline. Each summary is recorded as a promotion evaluation.

The three phases are separate methods so the Dagster assets (`bc_checkpoint`, `ppo_checkpoint`,
`anneal_summary`) and `townlet train anneal` run exactly the same code.

Each stage's strategy is looked up by its `mode` in the strategy registry (training/registry.py) and built by
its factory from the stage and the night's `StageInputs`; the factory's `phase` says whether it runs with the
BC stages or the PPO stages and how its record is judged. A stage's `AnnealStageResult.mode` records that phase.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from townlet_pipelines.config import AnnealConfig, AnnealStage, ConfigError, TownletConfig, UsageError
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.results import AnnealStageResult, AnnealSummary, BCTrainingResult, PPOTrainingResult, Verdict
from townlet_pipelines.training import registry
from townlet_pipelines.training.champion import compare_with_champion, current_champion
from townlet_pipelines.training.namespaces import namespace
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.evaluation import evaluate, paired_difference
from townlet_pipelines.training.guardrails import champion as champion_verdict
from townlet_pipelines.training.guardrails import expert as expert_verdict
from townlet_pipelines.training.guardrails import (
    bc_accuracy, limit_text, loss_within, ppo_loss, queue_conflicts, rate_within, resolutions,
)
from townlet_pipelines.world.policies import ScriptedExpert

log = logging.getLogger("townlet.training")


def candidate_id(config: TownletConfig, label: str) -> str:
    """The candidate a pass streak belongs to: the dataset label and the training recipe."""
    recipe = {key: config.model_dump(mode="json")[key] for key in ("model", "bc", "ppo", "anneal")}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{label}:{digest}"


def judge(loss_total: float, evaluation: dict[str, float], baselines: dict[str, float | None],
          anneal: AnnealConfig) -> dict[str, bool]:
    """The PPO guardrails, decided from the measured values, the baselines and the tolerances.

    `loss_flag`: |loss − baseline| / |baseline| > loss_tolerance (either direction; no baseline or a zero
    one raises nothing). `queue_flag` / `intensity_flag`: the evaluated rate per agent-day rose more than
    its tolerance above the baseline, or `anneal.queue_resolution_events` over the evaluation, whichever allows
    more (so a zero baseline on a few towns does not flag a single conflict).
    """
    resolution = resolutions(anneal.queue_resolution_events, evaluation.get("agent_days", 0.0))
    return {
        "loss_flag": not loss_within(loss_total, baselines.get("loss"), anneal.loss_tolerance),
        "queue_flag": not rate_within(evaluation["queue_conflict_events_per_agent_day"], baselines.get("queue_events"),
                                      anneal.queue_tolerance, resolution["conflicts"]),
        "intensity_flag": not rate_within(evaluation["queue_conflict_intensity_per_agent_day"],
                                          baselines.get("queue_intensity"), anneal.intensity_tolerance,
                                          resolution["intensity"]),
    }


def verdict_reason(summary: AnnealSummary, anneal: AnnealConfig) -> str:
    """Why the anneal ended as it did, in one line a user reads beside the verdict."""
    if summary.status == "PASS":
        return "every guardrail passed"
    parts = []
    baselines = summary.baselines
    for stage in summary.stages:
        if stage.passed:
            continue
        if stage.mode == "bc":
            parts.append(f"BC stage (cycle {stage.cycle}): validation accuracy {stage.accuracy:.3f} < threshold "
                         f"{stage.threshold}")
            continue
        if stage.loss_flag and baselines.get("loss"):
            change = (stage.loss_total - baselines["loss"]) / abs(baselines["loss"])
            parts.append(f"PPO stage (cycle {stage.cycle}): loss {stage.loss_total:.4g} is {change:+.0%} from the "
                         f"baseline {baselines['loss']:.4g} (tolerance {anneal.loss_tolerance:.0%})")
        resolution = resolutions(anneal.queue_resolution_events, summary.evaluation.get("agent_days", 0.0))
        for flag, value, key, tolerance, name, kind in (
                ("queue_flag", stage.queue_conflict_events, "queue_events", anneal.queue_tolerance, "conflicts",
                 "conflicts"),
                ("intensity_flag", stage.queue_conflict_intensity, "queue_intensity", anneal.intensity_tolerance,
                 "conflict intensity", "intensity")):
            if getattr(stage, flag) and baselines.get(key) is not None:
                parts.append(f"PPO stage (cycle {stage.cycle}): {name} {value:.3f} per agent-day > "
                             f"{limit_text(baselines[key], tolerance, resolution[kind])}")
    for verdict in (expert_verdict(summary.expert, anneal.expert_tolerance), champion_verdict(summary.champion)):
        if not verdict.passed:
            parts.append(verdict.sentence)
    return "; ".join(parts) or "a guardrail held the candidate"


def bc_verdict(outcome: "StagesOutcome", anneal: AnnealConfig) -> Verdict:
    """`bc_accuracy_guardrail` from the measured validation accuracy of the last BC stage that ran (the
    schedule stops at the first one that misses the threshold)."""
    return bc_accuracy(outcome.results[-1].val_accuracy, anneal.bc_accuracy_threshold)


def ppo_verdicts(outcome: "StagesOutcome", anneal: AnnealConfig) -> list[Verdict]:
    """`ppo_loss_guardrail`, `queue_conflict_guardrail`, `expert_guardrail` and `champion_guardrail` from what
    the PPO stages measured and the baselines each was judged against (every stage; a failing stage names
    itself)."""
    results = [r for r in outcome.results if isinstance(r, PPOTrainingResult)]
    loss = ppo_loss([(r.anneal_cycle or 0, r.loss_total, r.baseline_loss, r.selected_update == 0) for r in results],
                    anneal.loss_tolerance)
    queues = []
    for r in results:
        e = r.evaluation
        queues.append(queue_conflicts(
            {"conflicts": e["queue_conflict_events_per_agent_day"],
             "conflicts_ci95": e["queue_conflict_events_per_agent_day_ci95"],
             "intensity": e["queue_conflict_intensity_per_agent_day"],
             "intensity_ci95": e["queue_conflict_intensity_per_agent_day_ci95"]},
            {"conflicts": r.baseline_queue_events, "intensity": r.baseline_queue_intensity},
            {"conflicts": anneal.queue_tolerance, "intensity": anneal.intensity_tolerance}, int(e["towns"]),
            resolutions(anneal.queue_resolution_events, e.get("agent_days", 0.0))))
    if not queues:
        return [loss, Verdict("queue_conflict_guardrail", True, "no PPO stage ran"),
                expert_verdict(outcome.expert, anneal.expert_tolerance), champion_verdict(outcome.champion)]
    queue = next((v for v in queues if not v.passed), queues[-1])
    return [loss, queue, expert_verdict(outcome.expert, anneal.expert_tolerance), champion_verdict(outcome.champion)]


def check_judgeable(config: TownletConfig) -> None:
    """An anneal that decides a release needs a stage of each phase: BC's accuracy guardrail judges the BC
    phase, and the loss, queue, expert and champion guardrails judge what the PPO phase trained. Without one,
    guardrails that never ran would pass (a BC-only schedule was released without meeting the expert)."""
    check_schedule(config)
    phases = {registry.strategy(stage.mode).phase for stage in config.anneal.schedule}
    missing = [phase.upper() for phase in ("bc", "ppo") if phase not in phases]
    if missing:
        raise ConfigError(f"anneal.schedule: no {' and no '.join(missing)} stage; an anneal that decides a release "
                          "needs both phases (BC's accuracy guardrail; PPO's loss, queue, expert and champion "
                          "guardrails): train one phase alone with `townlet train bc` or `townlet train ppo`")


def check_schedule(config: TownletConfig) -> None:
    """Every stage names a registered strategy, and no stage of the BC phase follows one of the PPO phase in
    cycle order (the config checks this for the built-in names when it loads; it cannot see the registry)."""
    phases = []
    for index, stage in enumerate(config.anneal.schedule):
        try:
            phases.append((stage.cycle, index, stage.mode, registry.strategy(stage.mode).phase))
        except UsageError as error:
            raise ConfigError(f"anneal.schedule.{index}.mode: {error}") from None
    phases.sort()
    for (_, _, before, first), (_, index, after, then) in zip(phases, phases[1:]):
        if (first, then) == ("ppo", "bc"):
            raise ConfigError(f"anneal.schedule.{index}: the {after} stage (BC phase) may not follow the {before} "
                              "stage (PPO phase) in cycle order")


RECORDS = {"bc": BCTrainingResult, "ppo": PPOTrainingResult}


def _run_stage(context: TrainingContext, stage: AnnealStage, inputs: registry.StageInputs, phase: str):
    """Build the stage's strategy through the registry and run it; its record must be its phase's."""
    result = registry.build(stage.mode, stage, inputs).run(context)
    if not isinstance(result, RECORDS[phase]):
        raise TypeError(f"strategy {stage.mode!r} ({phase} phase) returned a {type(result).__name__}, not the "
                        f"{RECORDS[phase].__name__} its phase is judged by")
    return result


@dataclass
class StagesOutcome:
    """What a group of stages produced: per-stage records and the checkpoint carried forward."""

    stages: list[AnnealStageResult]
    results: list[BCTrainingResult | PPOTrainingResult]
    checkpoint: str | None  # path of the checkpoint carried forward
    checkpoint_id: str | None
    failed: bool = False
    started_from: str | None = None  # PPO: the champion's or the BC clone's checkpoint, and why
    champion: dict | None = None  # PPO: challenger against champion on the guardrail towns (None: no champion)
    expert: dict | None = None  # PPO: the candidate against the scripted expert on the same towns
    baseline_label: str | None = None  # PPO: the loss baseline's key (the dataset label, @ the champion started from)

    def to_json(self) -> str:
        return json.dumps({
            "stages": [stage.model_dump(mode="json") for stage in self.stages],
            "results": [{"kind": "bc" if isinstance(r, BCTrainingResult) else "ppo", **r.model_dump(mode="json")}
                        for r in self.results],
            "checkpoint": self.checkpoint, "checkpoint_id": self.checkpoint_id, "failed": self.failed,
            "started_from": self.started_from, "champion": self.champion, "baseline_label": self.baseline_label,
            "expert": self.expert,
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "StagesOutcome":
        data = json.loads(text)
        results = []
        for item in data["results"]:
            kind = item.pop("kind")
            results.append((BCTrainingResult if kind == "bc" else PPOTrainingResult).model_validate(item))
        return cls([AnnealStageResult.model_validate(stage) for stage in data["stages"]], results,
                   data["checkpoint"], data["checkpoint_id"], data["failed"], data.get("started_from"),
                   data.get("champion"), expert=data.get("expert"), baseline_label=data.get("baseline_label"))


@dataclass
class AnnealStrategy:
    dataset: str | Path  # the expert replay dataset (BC data and the PPO anchor)
    dataset_label: str | None = None
    rollout_dataset: str | Path | None = None  # PPO's stored rows for replay/mixed; default: the expert's
    name: str = "anneal"
    from_champion: bool = True  # PPO starts from the current release when it fits, and must not fall behind it
    _expert_cache: dict | None = field(default=None, repr=False)

    def _label(self, context: TrainingContext) -> str:
        return self.dataset_label or context.config.anneal.dataset_label

    def _stages(self, context: TrainingContext, phase: str) -> list[tuple[int, AnnealStage]]:
        """(index in cycle order, stage) of the schedule's stages whose strategy runs in `phase`."""
        check_schedule(context.config)
        return [(index, stage) for index, stage in enumerate(context.config.anneal.ordered())
                if registry.strategy(stage.mode).phase == phase]

    def _inputs(self, context: TrainingContext, index: int, stage: AnnealStage,
                checkpoint: str | None) -> registry.StageInputs:
        return registry.StageInputs(dataset=self.dataset, replay_dataset=self.rollout_dataset or self.dataset,
                                    init_checkpoint=checkpoint,
                                    out=context.artifacts / f"{stage.mode}-cycle{stage.cycle}-stage{index}",
                                    name=f"{stage.mode}-cycle{stage.cycle}")

    def run_bc_stages(self, context: TrainingContext, init_checkpoint: str | Path | None = None) -> StagesOutcome:
        anneal = context.config.anneal
        outcome = StagesOutcome([], [], str(init_checkpoint) if init_checkpoint else None, None)
        for index, stage in self._stages(context, "bc"):
            result = _run_stage(context, stage, self._inputs(context, index, stage, outcome.checkpoint), "bc")
            passed = bc_accuracy(result.val_accuracy, anneal.bc_accuracy_threshold).passed  # the guardrail's own test
            outcome.results.append(result)
            outcome.stages.append(AnnealStageResult(
                cycle=stage.cycle, mode="bc", accuracy=result.val_accuracy, loss=result.val_loss,
                threshold=anneal.bc_accuracy_threshold, passed=passed, bc_weight=stage.bc_weight,
                rolled_back=not passed, checkpoint_id=result.checkpoint_id,
            ))
            if not passed:
                outcome.failed = True
                break
            outcome.checkpoint, outcome.checkpoint_id = result.checkpoint_path, result.checkpoint_id
        return outcome

    def baseline_label(self, context: TrainingContext, champion_checkpoint_id: str | None = None) -> str:
        """Whose loss baseline a PPO stage is judged against: the dataset label's, or, when PPO starts from a
        champion, that label's for this champion (a loss is comparable only from the same starting point: a
        champion's fitted value head makes the next night's loss lower by design)."""
        label = self._label(context)
        return f"{label}@{champion_checkpoint_id}" if champion_checkpoint_id else label

    def baselines(self, context: TrainingContext, label: str | None = None) -> dict[str, float | None]:
        """Loss: the last accepted (PASS) run's for `label` (none yet: the first PPO stage sets it). Queue: the
        dataset's generator, the scripted expert, scored on this run's guardrail towns, the very towns the
        candidate is judged on (each night has its own), so the limit never drifts with accepted runs."""
        stored = context.baselines.get(label or self._label(context)) if context.baselines is not None else None
        expert = self._expert_evaluation(context)
        return {"loss": stored.loss_total if stored is not None else None,
                "queue_events": expert["queue_conflict_events_per_agent_day"],
                "queue_intensity": expert["queue_conflict_intensity_per_agent_day"]}

    def _judged_baselines(self, context: TrainingContext, ppo: StagesOutcome) -> dict[str, float | None]:
        """The baselines the PPO stages were judged against, as their records carry them (the expert is
        scored once per run, by the PPO step); with no PPO stage (a FAIL) nothing was judged against any."""
        if not ppo.results:
            return {"loss": None, "queue_events": None, "queue_intensity": None}
        first = ppo.results[0]
        # The loss baseline the stages were judged against: the first a stage carries (a stage that kept its start
        # is not judged and carries none); none at all, the first stage's own loss, which set it.
        judged = next((r.baseline_loss for r in ppo.results if r.baseline_loss is not None), first.loss_total)
        return {"loss": judged, "queue_events": first.baseline_queue_events,
                "queue_intensity": first.baseline_queue_intensity}

    def _expert_evaluation(self, context: TrainingContext) -> dict[str, float]:
        """The dataset's generator — the scripted expert, without the capture's DART noise — scored on the
        guardrail towns (seeds.guardrail) exactly as a candidate is: the queue baselines of a first run, and
        the reward every candidate must not fall below (`expert_guardrail`)."""
        if self._expert_cache is None:
            towns: dict = {}
            report = evaluate(context.config, ScriptedExpert(context.config.expert).act, per_town=towns)
            self._expert_cache = {"report": report, "towns": towns}
        return self._expert_cache["report"]

    def compare_with_expert(self, context: TrainingContext, candidate: PPOTrainingResult) -> dict:
        """The candidate's reward on the guardrail towns (as its PPO stage scored them) against the expert's on
        the same towns: their paired difference, which decides `expert_guardrail`."""
        report = self._expert_evaluation(context)
        expert_towns = self._expert_cache["towns"]["reward_per_agent_day"]
        rewards = np.asarray(candidate.evaluation_town_rewards)
        if len(rewards) != len(expert_towns):
            raise ValueError(f"expert comparison: the candidate was scored on {len(rewards)} towns, the expert on "
                             f"{len(expert_towns)}")
        difference, half = paired_difference(rewards, expert_towns)
        comparison = {"candidate_reward": float(candidate.evaluation["reward_per_agent_day"]),
                      "expert_reward": report["reward_per_agent_day"], "difference": difference,
                      "difference_ci95": half, "towns": int(report["towns"])}
        log.info("candidate %.3f vs scripted expert %.3f reward per agent-day (%+.3f ± %.3f, %d towns)",
                 comparison["candidate_reward"], comparison["expert_reward"], difference, half, comparison["towns"])
        return comparison

    def run_ppo_stages(self, context: TrainingContext, bc: StagesOutcome) -> StagesOutcome:
        anneal = context.config.anneal
        outcome = StagesOutcome([], [], bc.checkpoint, bc.checkpoint_id)
        if bc.failed:
            return outcome
        stages = self._stages(context, "ppo")
        release, why = current_champion(context) if self.from_champion else (None, "from the BC clone")
        log.info(why)
        if release is not None:
            outcome.checkpoint, outcome.checkpoint_id = release.path, release.checkpoint_id
        outcome.started_from = f"{outcome.checkpoint_id}: {why}"
        outcome.baseline_label = self.baseline_label(context, release.checkpoint_id if release is not None else None)
        baselines = self.baselines(context, outcome.baseline_label)
        bc_accuracy = bc.stages[-1].accuracy if bc.stages else None
        for index, stage in stages:
            result = _run_stage(context, stage, self._inputs(context, index, stage, outcome.checkpoint), "ppo")
            # A stage that kept its start (no snapshot did better) returns weights no PPO update touched: the loss of
            # the updates it discarded says nothing about them, so it is neither judged nor taken as a baseline.
            kept_start = result.selected_update == 0
            judged = {**baselines, "loss": None} if kept_start else baselines
            flags = judge(result.loss_total, result.evaluation, judged, anneal)
            result = result.model_copy(update={
                "bc_accuracy": bc_accuracy, "anneal_cycle": stage.cycle, "anneal_stage": index,
                "dataset_label": self._label(context), "bc_threshold": anneal.bc_accuracy_threshold,
                "baseline_loss": judged.get("loss"), "baseline_queue_events": baselines.get("queue_events"),
                "baseline_queue_intensity": baselines.get("queue_intensity"), **flags})
            if baselines.get("loss") is None and not kept_start:
                baselines["loss"] = result.loss_total  # the first PPO stage of a first run sets it
            flags = (result.loss_flag, result.queue_flag, result.intensity_flag)
            outcome.results.append(result)
            outcome.stages.append(AnnealStageResult(
                cycle=stage.cycle, mode="ppo", loss=result.loss_total, passed=not any(flags),
                bc_weight=stage.bc_weight, loss_policy=result.loss_policy, loss_value=result.loss_value,
                loss_entropy=result.loss_entropy, loss_total=result.loss_total,
                queue_conflict_events=result.evaluation["queue_conflict_events_per_agent_day"],
                queue_conflict_intensity=result.evaluation["queue_conflict_intensity_per_agent_day"],
                loss_flag=result.loss_flag, queue_flag=result.queue_flag, intensity_flag=result.intensity_flag,
                checkpoint_id=result.checkpoint_id,
            ))
            outcome.checkpoint, outcome.checkpoint_id = result.checkpoint_path, result.checkpoint_id
        champion = release  # the bar is the release this night started from (or, from the BC clone, the current)
        if champion is None and context.promotion is not None:
            champion = context.promotion.status().current_release
        if outcome.results and outcome.results[-1].evaluation_town_rewards:
            outcome.expert = self.compare_with_expert(context, outcome.results[-1])
        if outcome.results and champion is not None and champion.path:
            outcome.champion = compare_with_champion(context, outcome.results[-1], champion)
        return outcome

    def summarize(self, context: TrainingContext, bc: StagesOutcome, ppo: StagesOutcome,
                  duration_sec: float, run_id: str | None = None) -> AnnealSummary:
        """Judge the stages, record the evaluation for promotion, and accept a PASS as the new baseline.

        `run_id` names the run that trained the judged checkpoint (default: this context's run folder);
        the promotion history records one evaluation per (run, checkpoint), however often it is summarized.
        """
        label = self._label(context)
        stages = bc.stages + ppo.stages
        if bc.failed:
            status = "FAIL"
        elif (any(not stage.passed for stage in ppo.stages)
              or not expert_verdict(ppo.expert, context.config.anneal.expert_tolerance).passed
              or not champion_verdict(ppo.champion).passed):
            status = "HOLD"
        else:
            status = "PASS"
        last_ppo = ppo.results[-1] if ppo.results else None
        baselines = self._judged_baselines(context, ppo)
        evaluation = dict(last_ppo.evaluation) if last_ppo is not None else {}
        candidate = candidate_id(context.config, label)
        streak, ready = 0, False
        if context.promotion is not None:
            metrics = {"status_pass": float(status == "PASS"), **{k: float(v) for k, v in evaluation.items()}}
            snapshot = context.promotion.record_evaluation(
                candidate, status, metrics,
                checkpoint={"checkpoint_id": ppo.checkpoint_id, "path": ppo.checkpoint},
                note=f"anneal of dataset {label}", run_id=run_id or context.artifacts.name,
                night=str(context.config.nightly.night) if context.config.nightly.night else None,
            )
            streak, ready = snapshot.pass_streak, snapshot.ready
        if status == "PASS" and context.baselines is not None and last_ppo is not None and last_ppo.selected_update != 0:
            context.baselines.accept(
                ppo.baseline_label or label, loss_total=last_ppo.loss_total,
                queue_conflict_events=evaluation["queue_conflict_events_per_agent_day"],
                queue_conflict_intensity=evaluation["queue_conflict_intensity_per_agent_day"],
                source=ppo.checkpoint_id or "",
            )
        return AnnealSummary(
            stages=stages, status=status, dataset_label=label,
            dataset_identity=ReplayDataset.open(self.dataset, verify="none").identity,
            baselines={key: value for key, value in baselines.items() if key != "source"},
            promotion_pass_streak=streak, promotion_candidate_ready=ready, candidate_id=candidate,
            final_checkpoint_id=ppo.checkpoint_id, final_checkpoint_path=ppo.checkpoint,
            evaluation=evaluation, duration_sec=duration_sec, namespace=namespace(context.config),
            night=str(context.config.nightly.night) if context.config.nightly.night else None,
            started_from=ppo.started_from, champion=ppo.champion, expert=ppo.expert,
        )

    def run(self, context: TrainingContext) -> AnnealSummary:
        check_judgeable(context.config)
        start = time.perf_counter()
        bc = self.run_bc_stages(context)
        ppo = self.run_ppo_stages(context, bc)
        return self.summarize(context, bc, ppo, time.perf_counter() - start)
