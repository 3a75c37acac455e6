"""The thin facade both entry points use: `townlet train ...` and the Dagster assets.

Artifacts live under one root (`TOWNLET_ARTIFACTS`, default `dagster_home/artifacts`): each run in its own
folder `runs/<run id>/` that is never overwritten, and the durable state (promotion history, baselines)
in `state/`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from townlet_pipelines.config import TownletConfig, config_from_mapping
from townlet_pipelines.data.baselines import BaselineStore
from townlet_pipelines.data.capture import CaptureResult, acting_policy, capture
from townlet_pipelines.data.files import atomic_write_text
from townlet_pipelines.data.promotion import PromotionError, PromotionStore
from townlet_pipelines.results import AnnealSummary, BCTrainingResult, PPOTrainingResult
from townlet_pipelines.training.anneal import AnnealStrategy
from townlet_pipelines.training.bc import BCStrategy
from townlet_pipelines.training.checkpoints import load_checkpoint
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.device import device_context
from townlet_pipelines.training.distributed import SINGLE, Ranks, device_for
from townlet_pipelines.training.namespaces import artifacts_root, namespace
from townlet_pipelines.training.policy import TorchPolicy
from townlet_pipelines.training.ppo import PPOStrategy
from townlet_pipelines.training.resume import progress_dir, require_progress
from townlet_pipelines.training.torch_support import TrainingError
from townlet_pipelines.world.engine import TownWorld


def new_run_dir(root: str | Path | None = None, run_id: str | None = None) -> Path:
    """A fresh folder for one run; an existing one is never reused."""
    run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    path = artifacts_root(root) / "runs" / run_id
    path.mkdir(parents=True, exist_ok=False)
    return path


def state_dir(root: str | Path | None, config: TownletConfig) -> Path:
    path = artifacts_root(root) / "state" / namespace(config)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_context(config: TownletConfig, run_dir: Path, root: str | Path | None = None,
                 progress: bool = False, ranks: Ranks = SINGLE) -> TrainingContext:
    state = state_dir(root, config)
    return TrainingContext(
        config=config, artifacts=Path(run_dir), device=device_context(
            device_for(ranks, config.runtime.device), config.runtime.amp, config.runtime.torch_threads),
        promotion=PromotionStore.for_config(state, config),
        baselines=BaselineStore(state), progress=progress and ranks.main, ranks=ranks,
    )


def capture_expert(config: TownletConfig, out: str | Path) -> CaptureResult:
    """The expert demonstrations of `config.rollout`: BC's data and PPO's anchor and replay."""
    rollout = config.rollout
    seed = config.seeds.expert.start
    policy = acting_policy("scripted", config, seed=seed, noise=rollout.expert_noise)
    return capture(config, policy, rollout.towns, rollout.ticks, seed, out, shard_rows=rollout.shard_rows)


def capture_release_rollouts(context: TrainingContext, out: str | Path):
    """Rollouts of the current release (the scripted expert while nothing is released) on the
    `seeds.policy_rollouts` towns, half of `rollout.towns`: (capture result, release or None)."""
    config, rollout = context.config, context.config.rollout
    release = context.promotion.status().current_release if context.promotion is not None else None
    if release is None:
        policy = acting_policy("scripted", config)
    else:
        model, record = load_checkpoint(release.path, TownWorld(config, 1).spec, device=context.device.device)
        policy = TorchPolicy(model, context.device, checkpoint_id=record.checkpoint_id)
    result = capture(config, policy, max(1, rollout.towns // 2), rollout.ticks, config.seeds.policy_rollouts.start,
                     out, shard_rows=rollout.shard_rows)
    return result, release


def run_bc(context: TrainingContext, dataset: str | Path, init_checkpoint: str | Path | None = None,
           continue_optimizer: bool = False, resume: bool = False) -> BCTrainingResult:
    return BCStrategy(dataset, init_checkpoint, continue_optimizer=continue_optimizer, resume=resume).run(context)


def run_ppo(context: TrainingContext, init_checkpoint: str | Path | None = None, dataset: str | Path | None = None,
            data_mode: str | None = None, continue_optimizer: bool = False, resume: bool = False) -> PPOTrainingResult:
    return PPOStrategy(init_checkpoint=init_checkpoint, replay_dataset=dataset, data_mode=data_mode,
                       continue_optimizer=continue_optimizer, resume=resume).run(context)


INVOCATION = "invocation.json"


def record_invocation(run_dir: Path, kind: str, config: TownletConfig, **arguments) -> None:
    """What `--resume RUN_FOLDER` needs to run the same training again: the kind, the config, the arguments."""
    atomic_write_text(Path(run_dir) / INVOCATION, json.dumps(
        {"kind": kind, "config": config.model_dump(mode="json"), "arguments": arguments}, indent=2, default=str))


def resume_training(run_dir: str | Path, expected_kind: str | None = None, progress: bool = False):
    """Continue the BC or PPO run that was killed in `run_dir`, from its newest progress checkpoint."""
    run_dir = Path(run_dir).absolute()
    path = run_dir / INVOCATION
    if not path.is_file():
        raise TrainingError(f"{run_dir}: not a training run folder to resume (no {INVOCATION}; `townlet train "
                            "bc|ppo` writes one)")
    try:
        invocation = json.loads(path.read_text())
        kind, arguments = invocation["kind"], invocation["arguments"]
    except (ValueError, KeyError) as error:
        raise TrainingError(f"{path}: unreadable ({error}); the run cannot be resumed") from None
    if expected_kind is not None and kind != expected_kind:
        raise TrainingError(f"{run_dir}: holds a {kind} run, not {expected_kind}; resume it with townlet train {kind}")
    final = run_dir / kind
    if (final / "checkpoint.json").is_file():
        raise TrainingError(f"{run_dir}: this {kind} run finished (checkpoint {final}); nothing to resume")
    require_progress(progress_dir(final))
    config = config_from_mapping(invocation["config"], str(path))
    context = make_context(config, run_dir, run_dir.parent.parent, progress=progress)
    if kind == "bc":
        return run_bc(context, arguments["dataset"], arguments.get("init"), arguments.get("continue_optimizer", False),
                      resume=True)
    if kind == "ppo":
        return run_ppo(context, arguments.get("init"), arguments.get("dataset"), arguments.get("mode"),
                       arguments.get("continue_optimizer", False), resume=True)
    raise TrainingError(f"{path}: kind {kind!r} cannot be resumed (bc or ppo)")


def judge_and_store(strategy: AnnealStrategy, context: TrainingContext, bc, ppo, out: Path,
                    run_id: str | None = None) -> AnnealSummary:
    """Judge the stages, record the evaluation for promotion, and keep the summary at `out` (atomically).

    The graph calls this from `anneal_summary` on a PASS, and from the training step whose guardrail held
    the candidate (the run stops at that blocking check), so FAIL and HOLD are recorded too.
    """
    duration = sum(r.duration_sec if hasattr(r, "duration_sec") else r.epoch_duration_sec * r.updates
                   for r in bc.results + ppo.results)
    summary = strategy.summarize(context, bc, ppo, duration, run_id=run_id)
    atomic_write_text(out, summary.model_dump_json(indent=2))
    return summary


def run_anneal(context: TrainingContext, dataset: str | Path) -> AnnealSummary:
    """Run the anneal and keep its summary in the run folder (`anneal_summary.json`), as the graph does."""
    summary = AnnealStrategy(dataset).run(context)
    atomic_write_text(context.artifacts / "anneal_summary.json", summary.model_dump_json(indent=2))
    return summary


@dataclass
class PromotionOutcome:
    promoted: bool
    reason: str
    release_id: str | None  # the current release after this decision
    checkpoint_id: str | None


def apply_promotion(store: PromotionStore, summary: AnnealSummary) -> PromotionOutcome:
    """Promote the anneal's final checkpoint when the rule allows it.

    The rule: the candidate's pass streak has reached `required_passes` (state `ready`), or the instance
    has no release yet and this run passed every guardrail (the first release), or (`promotion.release_proven`)
    this passing night's challenger beat the champion beyond the 95% paired interval. A later release must also
    have scored more than the champion it would replace on the night's guardrail towns: `champion_guardrail`
    holds a challenger that is worse beyond the interval, and this keeps one that is merely no worse; and the
    champion it was compared with must still be the current release when it is released.
    """
    status = store.status()
    current = status.current_release.release_id if status.current_release else None
    if summary.status != "PASS" or summary.final_checkpoint_id is None:
        return PromotionOutcome(False, f"anneal status {summary.status}: nothing promoted", current,
                                status.current_release.checkpoint_id if status.current_release else None)
    first = status.current_release is None
    champion = summary.champion
    proven = (not first and store.release_proven and champion is not None
              and champion["difference"] - champion["difference_ci95"] > 0)
    if not (summary.promotion_candidate_ready or first or proven):
        return PromotionOutcome(
            False, f"pass streak {summary.promotion_pass_streak}/{store.required_passes}: monitoring", current,
            status.current_release.checkpoint_id if status.current_release else None)
    withdrawn = store.withdrawn(summary.final_checkpoint_id)
    if withdrawn is not None:
        return PromotionOutcome(
            False, f"checkpoint {summary.final_checkpoint_id} was rolled back at {withdrawn.at}: not promoted again "
            "without an operator override (townlet promotion promote --override)", current,
            status.current_release.checkpoint_id if status.current_release else None)
    if status.current_release is not None and status.current_release.checkpoint_id == summary.final_checkpoint_id:
        return PromotionOutcome(False, "this checkpoint is the current release already", current,
                                status.current_release.checkpoint_id)
    if not first and champion is not None and champion["difference"] <= 0:  # passing is not improving
        return PromotionOutcome(
            False, f"not promoted: the challenger scored {champion['difference']:+.3f} reward per agent-day against "
            f"the champion {champion['release_id']} on the night's guardrail towns; a release must improve on it",
            current, status.current_release.checkpoint_id)
    hashes = {"checkpoint_id": summary.final_checkpoint_id, "dataset_identity": summary.dataset_identity}
    metrics = {key: float(value) for key, value in summary.evaluation.items()}
    try:
        release = store.promote(summary.candidate_id, summary.final_checkpoint_id, hashes, metrics,
                                path=summary.final_checkpoint_path, first_release=first,
                                proven_better=proven and not summary.promotion_candidate_ready,
                                replaces=None if first or champion is None else champion["release_id"])
    except PromotionError as error:  # the ledger moved on since this run judged (two nights at once): the rule,
        now = store.status().current_release  # checked again under the store's lock, refuses; nothing changes
        return PromotionOutcome(False, f"not promoted: {error}", now.release_id if now else None,
                                now.checkpoint_id if now else None)
    if first:
        reason = "first release: passed every guardrail"
    elif summary.promotion_candidate_ready:
        reason = "pass streak reached the required passes"
    else:
        reason = (f"better than the champion beyond its interval ({champion['difference']:+.3f} ± "
                  f"{champion['difference_ci95']:.3f} reward per agent-day on {champion['towns']} guardrail towns): "
                  "released without waiting for the streak")
    return PromotionOutcome(True, reason, release.release_id, release.checkpoint_id)

