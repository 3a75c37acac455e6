"""Software-defined assets of the nightly anneal, each with the checks that guard it.

Assets write their own files under the run's folder and return metadata (paths, hashes, row counts,
metrics); a downstream asset opens the files its upstream's latest materialization points to. Nothing
large is pickled between steps. Torch is imported only inside asset bodies, so loading the code location
stays fast and works without it.
"""


import contextlib
import functools
import hashlib
import json
import logging
from pathlib import Path

from dagster import (
    AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, AssetKey, AssetObservation, DataVersion, Failure,
    MaterializeResult, MetadataValue, asset, asset_check,
)

from townlet_pipelines.pipeline.resources import TownletResource

GROUP = "townlet"
PACKAGE = Path(__file__).resolve().parents[1]
WORLD = ("world/*.py", "config.py", "data/capture.py", "data/manifest.py", "data/files.py")
MAKERS = {  # the source files whose code makes each asset (and the pipeline's own, this file)
    "replay_manifest": (*WORLD, "data/replay.py", "training/cache.py", "training/orchestrator.py"),
    "rollout_dataset": (*WORLD, "data/replay.py", "training/orchestrator.py", "training/checkpoints.py",
                        "training/policy.py", "training/model.py"),
    "bc_checkpoint": (*WORLD, "data/replay.py", "training/*.py", "pictures.py"),
    "ppo_checkpoint": (*WORLD, "data/replay.py", "training/*.py", "pictures.py"),
    "anneal_summary": ("config.py", "results.py", "training/anneal.py", "training/evaluation.py", "pictures.py",
                       "data/baselines.py", "data/promotion.py", "data/state_file.py"),
    "promoted_policy": ("config.py", "training/orchestrator.py", "data/promotion.py", "data/state_file.py",
                        "pictures.py"),
}


def code_version_of(patterns: tuple[str, ...], root: Path = PACKAGE) -> str:
    """A hash of the source files an asset is made by (glob patterns under the package, plus this module):
    a change to any of them marks the asset stale in the UI."""
    digest = hashlib.sha256()
    files = sorted({path for pattern in patterns for path in root.glob(pattern)} | {root / "pipeline" / "assets.py"})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


CODE_VERSIONS = {name: code_version_of(patterns) for name, patterns in MAKERS.items()}
# Training steps take the GPU when there is one: a Kubernetes run launcher reads this to request it, and
# the `gpu` pool (dagster_home/dagster.yaml: one slot) keeps two training steps off one device.
GPU_OP_TAGS = {"dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}}
GPU_POOL = "gpu"


def told_in_one_line(function):
    """A user's or the environment's error (bad config, damaged data, a full disk) fails the step with the
    same one-line sentence the CLI prints, instead of a traceback; programming errors keep theirs."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Failure:
            raise
        except Exception as error:  # noqa: BLE001 - sorted: only user errors are re-told
            from townlet_pipelines.errors import is_user_error, one_line

            if not is_user_error(error):
                raise
            raise Failure(description=one_line(error)) from None

    return wrapper


@contextlib.contextmanager
def training_log_to(context):
    """While a step trains, the core's `townlet` log lines (BC epochs, DAgger rounds, PPO updates and
    validation scores) go to the run's log as they happen, not only as tables when the step ends."""

    class ToRunLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            (context.log.warning if record.levelno >= logging.WARNING else context.log.info)(record.getMessage())

    logger, handler = logging.getLogger("townlet"), ToRunLog(logging.INFO)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def latest_metadata(context, key: str) -> dict:
    """Metadata of the latest materialization of `key` (this run's, when this run made one)."""
    event = context.instance.get_latest_materialization_event(AssetKey(key))
    if event is None or event.asset_materialization is None:
        raise Failure(f"{key} has never been materialized; materialize it first")
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def latest_run_id(context, key: str) -> str:
    """The run that made the latest materialization of `key`."""
    event = context.instance.get_latest_materialization_event(AssetKey(key))
    if event is None:
        raise Failure(f"{key} has never been materialized; materialize it first")
    return event.run_id


def made(townlet: TownletResource, metadata: dict, data_version: str) -> MaterializeResult:
    """An asset's materialization, with what made it: profile, config source and config hash."""
    return MaterializeResult(metadata={**metadata, **townlet.provenance()}, data_version=DataVersion(data_version))


def _number(value) -> MetadataValue:
    """A float, or the text 'none' when a baseline does not exist yet."""
    return MetadataValue.text("none") if value is None else MetadataValue.float(float(value))


def _fresh(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    if path.exists():
        raise Failure(f"{path} already exists: a run folder is never overwritten (re-execute as a new run)")
    return path


def dataset_metadata(dataset) -> dict:
    manifest = dataset.manifest
    metrics = manifest.metrics
    days = max(metrics.agent_days, 1e-9)
    manifest_path = dataset.directory / "manifest.json"
    from townlet_pipelines.data.files import sha256_file

    return {
        "path": MetadataValue.path(str(dataset.directory)),
        "manifest": MetadataValue.path(str(manifest_path)),
        "dataset_identity": dataset.identity,
        "manifest_sha256": sha256_file(manifest_path),
        "generator": manifest.generator.kind + (f" {manifest.generator.checkpoint_id}" if manifest.generator.checkpoint_id else ""),
        "rows": MetadataValue.int(manifest.rows),
        "shards": MetadataValue.int(len(manifest.shards)),
        "episodes": MetadataValue.int(manifest.episodes),
        "reward_mean": MetadataValue.float(metrics.reward_mean),
        "faints_per_agent_day": MetadataValue.float(metrics.faints / days),
        "queue_conflicts_per_agent_day": MetadataValue.float(metrics.queue_conflict_events / days),
        "queue_intensity_per_agent_day": MetadataValue.float(metrics.queue_conflict_intensity / days),
        "chat_successes_per_agent_day": MetadataValue.float(metrics.chat_success_events / days),
        "action_counts": MetadataValue.json(metrics.action_counts),
        "observation": f"{manifest.observation.variant} map {manifest.observation.map_shape} "
                       f"features {manifest.observation.feature_dim}",
    }


# ---------------------------------------------------------------------------- datasets
@asset(group_name=GROUP, code_version=CODE_VERSIONS["replay_manifest"], kinds={"numpy"},
       description="Expert demonstrations captured from the scripted policy, verified against their manifest.")
@told_in_one_line
def replay_manifest(context: AssetExecutionContext, townlet: TownletResource) -> MaterializeResult:
    from townlet_pipelines.training.cache import cached_expert_dataset

    dataset, reused = cached_expert_dataset(townlet.load_config(), townlet.root(), context.log.warning)
    metadata = dataset_metadata(dataset)
    metadata["reused"] = reused
    # A reused entry was verified in full before reuse (and rebuilt if damaged); a fresh capture is verified
    # once, by the manifest_verified check.
    metadata["verified"] = "full" if reused else "by the check"
    return made(townlet, metadata, dataset.identity)


@asset(group_name=GROUP, code_version=CODE_VERSIONS["rollout_dataset"], kinds={"numpy"},
       description="Rollouts of the current promoted policy (the expert while nothing is promoted); captured only "
                   "when PPO trains on stored rows (ppo.data_mode replay or mixed).")
@told_in_one_line
def rollout_dataset(context: AssetExecutionContext, townlet: TownletResource) -> MaterializeResult:
    from townlet_pipelines.data.replay import ReplayDataset
    from townlet_pipelines.training.orchestrator import capture_release_rollouts, make_context

    config = townlet.load_config()
    if config.ppo.data_mode == "rollout":  # PPO collects its own on-policy rollouts: nothing here would be used
        reason = "not captured: ppo.data_mode is rollout (PPO collects on-policy); replay or mixed would train on it"
        context.log.info(reason)
        return made(townlet, {"captured": False, "reason": reason}, "none")
    out = _fresh(townlet.run_dir(context.run.run_id), "rollout_dataset")
    result, release = capture_release_rollouts(make_context(config, out.parent, townlet.root()), out)
    dataset = ReplayDataset.open(result.path, verify="none")  # verified once, by the manifest_verified check
    metadata = dataset_metadata(dataset)
    metadata.update(captured=True, verified="by the check")
    metadata["release"] = release.release_id if release else "none (expert)"
    return made(townlet, metadata, dataset.identity)


def _dataset_checks(asset_name: str):
    """Data-quality checks shared by both datasets: verified, finite, a sane action distribution."""

    @asset_check(asset=asset_name, name="manifest_verified", blocking=True,
                 description="Paths, sizes, sha256, array headers and every row agree with the manifest.")
    @told_in_one_line
    def manifest_verified(context) -> AssetCheckResult:
        from townlet_pipelines.data.manifest import DatasetError
        from townlet_pipelines.data.replay import ReplayDataset

        meta = latest_metadata(context, asset_name)
        if not meta.get("captured", True):
            return AssetCheckResult(passed=True, metadata={"skipped": meta["reason"]})
        path = meta["path"]
        if meta.get("verified") == "full":  # the asset verified every file and row before reusing it
            return AssetCheckResult(passed=True, metadata={"rows": meta["rows"], "verified_by": "the asset (reuse)",
                                                           "dataset_identity": meta["dataset_identity"]})
        try:
            dataset = ReplayDataset.open(path, verify="full")
        except DatasetError as error:
            return AssetCheckResult(passed=False, metadata={"error": str(error), "path": path})
        return AssetCheckResult(passed=True, metadata={"rows": dataset.rows, "dataset_identity": dataset.identity})

    @asset_check(asset=asset_name, name="no_nan", blocking=True,
                 description="Rewards, values, log-probs and features are finite in every shard.")
    @told_in_one_line
    def no_nan(context) -> AssetCheckResult:
        import numpy as np

        from townlet_pipelines.data.replay import ReplayDataset

        meta = latest_metadata(context, asset_name)
        if not meta.get("captured", True):
            return AssetCheckResult(passed=True, metadata={"skipped": meta["reason"]})
        dataset = ReplayDataset.open(meta["path"], verify="none")
        bad = {}
        for entry in dataset.manifest.shards:
            with np.load(dataset.directory / entry.path) as archive:
                for name in ("rewards", "value_preds", "old_log_probs", "features"):
                    count = int((~np.isfinite(archive[name])).sum())
                    if count:
                        bad[f"{entry.path}:{name}"] = count
        return AssetCheckResult(passed=not bad, metadata={"non_finite": MetadataValue.json(bad)})

    @asset_check(asset=asset_name, name="action_distribution_sane",
                 description="More than one action is used and none is nearly everything (a warning).")
    @told_in_one_line
    def action_distribution_sane(context) -> AssetCheckResult:
        meta = latest_metadata(context, asset_name)
        if not meta.get("captured", True):
            return AssetCheckResult(passed=True, severity=AssetCheckSeverity.WARN, metadata={"skipped": meta["reason"]})
        counts = meta["action_counts"]
        total = max(sum(counts.values()), 1)
        top = max(counts.values()) / total
        used = sum(1 for value in counts.values() if value)
        return AssetCheckResult(passed=used >= 2 and top < 0.98, severity=AssetCheckSeverity.WARN,
                                metadata={"top_action_share": top, "actions_used": used})

    return [manifest_verified, no_nan, action_distribution_sane]


# ---------------------------------------------------------------------------- training
def _stage_table(stages) -> str:
    lines = ["| cycle | mode | passed | accuracy | threshold | loss | conflicts/agent-day | flags |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in stages:
        flags = ", ".join(name for name in ("loss_flag", "queue_flag", "intensity_flag") if getattr(stage, name)) or "-"
        cell = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
        lines.append(f"| {stage.cycle} | {stage.mode} | {'yes' if stage.passed else 'NO'} | {cell(stage.accuracy)} | "
                     f"{cell(stage.threshold)} | {cell(stage.loss)} | {cell(stage.queue_conflict_events)} | {flags} |")
    return "\n".join(lines)


def _log_entries(log_dir: Path, prefix: str) -> list[dict]:
    return [json.loads(line) for path in sorted(log_dir.glob(f"{prefix}*.jsonl")) for line in path.read_text().splitlines()]


def _curve(log_dir: Path, prefix: str, keys: tuple[str, ...]) -> str:
    """A Markdown table of the JSONL training log (its phase column too), beside the picture."""
    rows = [row for row in _log_entries(log_dir, prefix) if "validation" not in row]
    lines = ["| step | phase | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for step, row in enumerate(rows):
        phase = row.get("phase") or row.get("mode", "")
        lines.append(f"| {step} | {phase} | " + " | ".join(f"{row.get(key, float('nan')):.4f}" for key in keys) + " |")
    return "\n".join(lines)


def _picture(draw, entries: list[dict], alt: str) -> MetadataValue:
    from townlet_pipelines.pictures import markdown_image

    return MetadataValue.md(markdown_image(draw(entries), alt))


def _summarize_and_store(strategy, training, bc, ppo, out: Path, run_id: str, context=None):
    """Judge, record and store the anneal's summary; a FAIL or HOLD (the run stops at a blocking check before
    `anneal_summary` runs) is also observed on `anneal_summary`, with its reason, so the graph shows it."""
    from townlet_pipelines.data.files import atomic_write_text
    from townlet_pipelines.training.anneal import verdict_reason

    summary = strategy.summarize(training, bc, ppo, sum(r.duration_sec if hasattr(r, "duration_sec")
                                                        else r.epoch_duration_sec * r.updates
                                                        for r in bc.results + ppo.results), run_id=run_id)
    atomic_write_text(out, summary.model_dump_json(indent=2))
    if context is not None and summary.status != "PASS":
        reason = verdict_reason(summary, training.config.anneal)
        context.log.warning(f"anneal {summary.status}: {reason}; nothing is promoted")
        context.log_event(AssetObservation(asset_key=AssetKey("anneal_summary"), metadata={
            "status": summary.status, "reason": reason, "path": MetadataValue.path(str(out)),
            "candidate_id": summary.candidate_id, "promotion_pass_streak": summary.promotion_pass_streak}))
    return summary


@asset(group_name=GROUP, code_version=CODE_VERSIONS["bc_checkpoint"], deps=[replay_manifest], kinds={"pytorch"},
       op_tags=GPU_OP_TAGS, pool=GPU_POOL,
       description="The anneal schedule's BC stages on the expert demonstrations.")
@told_in_one_line
def bc_checkpoint(context: AssetExecutionContext, townlet: TownletResource) -> MaterializeResult:
    from townlet_pipelines.pictures import bc_curve_png
    from townlet_pipelines.training.anneal import AnnealStrategy, StagesOutcome
    from townlet_pipelines.training.cache import cached_bc_stages

    dataset_meta = latest_metadata(context, "replay_manifest")
    run_dir = townlet.run_dir(context.run.run_id)
    training = townlet.training_context(context.run.run_id)
    strategy = AnnealStrategy(dataset_meta["path"])
    with training_log_to(context):
        outcome, record, reused = cached_bc_stages(strategy, training, dataset_meta["dataset_identity"],
                                                   townlet.root(), context.log.warning)
    if outcome.failed:  # the guardrail below fails this run; record the FAIL evaluation now
        empty = StagesOutcome([], [], outcome.checkpoint, outcome.checkpoint_id)
        _summarize_and_store(strategy, training, outcome, empty, run_dir / "anneal_summary.json",
                             context.run.run_id, context)
    last = outcome.results[-1]
    threshold = training.config.anneal.bc_accuracy_threshold
    return made(townlet, {
        "stages_record": MetadataValue.path(str(record)),
        "path": MetadataValue.path(str(outcome.checkpoint or last.checkpoint_path)),
        "checkpoint_id": last.checkpoint_id,
        "failed": outcome.failed,
        "reused": reused,
        "val_accuracy": MetadataValue.float(last.val_accuracy),
        "accuracy": MetadataValue.float(last.accuracy),
        "val_loss": MetadataValue.float(last.val_loss),
        "bc_accuracy_threshold": MetadataValue.float(threshold),
        "samples_per_sec": MetadataValue.float(last.samples_per_sec),
        "dataset_identity": last.dataset_identity,
        "device": last.device,
        "duration_sec": MetadataValue.float(sum(r.duration_sec for r in outcome.results)),
        "stages": MetadataValue.md(_stage_table(outcome.stages)),
        "training_curve": MetadataValue.md(_curve(record.parent / "logs", "bc", ("loss", "accuracy", "val_loss",
                                                                         "val_accuracy"))),
        "training_curve_plot": _picture(bc_curve_png, _log_entries(record.parent / "logs", "bc"), "BC training curve"),
    }, last.checkpoint_id)


@asset_check(asset=bc_checkpoint, blocking=True, description="Every BC stage reached bc_accuracy_threshold "
             "(validation accuracy on held-out episodes).")
@told_in_one_line
def bc_accuracy_guardrail(context) -> AssetCheckResult:
    meta = latest_metadata(context, "bc_checkpoint")
    accuracy, threshold = meta["val_accuracy"], meta["bc_accuracy_threshold"]
    passed = not meta["failed"]
    sentence = (f"BC validation accuracy {accuracy:.3f} {'>=' if passed else '<'} threshold {threshold:.3f}"
                + ("" if passed else ": the schedule stopped, nothing is promoted"))
    return _judged(context, "bc_accuracy_guardrail", passed, sentence, {
        "measured_val_accuracy": accuracy, "threshold": threshold, "baseline": "n/a (an absolute threshold)"})


def _judged(context, name: str, passed: bool, sentence: str, metadata: dict) -> AssetCheckResult:
    """A guardrail's result with its one-line reason; a failure also says, in the run's log, what held."""
    if not passed:
        context.log.error(f"{name} held the candidate: {sentence}")
    return AssetCheckResult(passed=passed, description=sentence, metadata=metadata)


@asset(group_name=GROUP, code_version=CODE_VERSIONS["ppo_checkpoint"],
       deps=[bc_checkpoint, replay_manifest, rollout_dataset], kinds={"pytorch"}, op_tags=GPU_OP_TAGS, pool=GPU_POOL,
       description="The anneal schedule's PPO stages, starting from the BC weights.")
@told_in_one_line
def ppo_checkpoint(context: AssetExecutionContext, townlet: TownletResource) -> MaterializeResult:
    from townlet_pipelines.data.files import atomic_write_text
    from townlet_pipelines.pictures import ppo_curve_png
    from townlet_pipelines.training.anneal import AnnealStrategy
    from townlet_pipelines.training.cache import read_stages

    bc_meta = latest_metadata(context, "bc_checkpoint")
    bc = read_stages(bc_meta["stages_record"], townlet.root())
    run_dir = townlet.run_dir(context.run.run_id)
    training = townlet.training_context(context.run.run_id)
    config = training.config
    rollout = latest_metadata(context, "rollout_dataset")["path"] if config.ppo.data_mode != "rollout" else None
    strategy = AnnealStrategy(latest_metadata(context, "replay_manifest")["path"], rollout_dataset=rollout)
    with training_log_to(context):
        outcome = strategy.run_ppo_stages(training, bc)
    record = run_dir / "ppo_stages.json"
    atomic_write_text(record, outcome.to_json())
    flagged = any(not stage.passed for stage in outcome.stages)
    if flagged:  # a guardrail below fails this run; record the HOLD evaluation now
        _summarize_and_store(strategy, training, bc, outcome, run_dir / "anneal_summary.json", context.run.run_id,
                             context)
    last = outcome.results[-1]
    baselines = last.model_dump()
    return made(townlet, {
        "stages_record": MetadataValue.path(str(record)),
        "path": MetadataValue.path(str(outcome.checkpoint)),
        "checkpoint_id": outcome.checkpoint_id,
        "parent_checkpoint_id": str(last.parent_checkpoint_id),
        "loss_total": MetadataValue.float(last.loss_total),
        "loss_policy": MetadataValue.float(last.loss_policy),
        "loss_value": MetadataValue.float(last.loss_value),
        "kl_divergence": MetadataValue.float(last.kl_divergence),
        "clip_fraction": MetadataValue.float(last.clip_fraction),
        "env_steps_per_sec": MetadataValue.float(last.env_steps_per_sec),
        "loss_flag": any(s.loss_flag for s in outcome.stages),
        "queue_flag": any(s.queue_flag or s.intensity_flag for s in outcome.stages),
        "loss_per_stage": MetadataValue.json([s.loss_total for s in outcome.stages]),
        "baseline_loss": _number(baselines["baseline_loss"]),
        "loss_tolerance": MetadataValue.float(config.anneal.loss_tolerance),
        "queue_conflicts_per_agent_day": MetadataValue.float(last.evaluation["queue_conflict_events_per_agent_day"]),
        "queue_conflicts_ci95": MetadataValue.float(last.evaluation["queue_conflict_events_per_agent_day_ci95"]),
        "queue_intensity_per_agent_day": MetadataValue.float(
            last.evaluation["queue_conflict_intensity_per_agent_day"]),
        "queue_intensity_ci95": MetadataValue.float(last.evaluation["queue_conflict_intensity_per_agent_day_ci95"]),
        "evaluation_towns": MetadataValue.int(int(last.evaluation["towns"])),
        "intensity_tolerance": MetadataValue.float(config.anneal.intensity_tolerance),
        "lagrange_multiplier": _number(last.lagrange_multiplier),
        "selected_update": MetadataValue.int(int(last.selected_update or last.updates)),
        "validation": MetadataValue.json({"policy": last.validation, "expert": last.validation_expert}),
        "conflict_budget": _number(last.conflict_budget),
        "baseline_queue_conflicts": _number(baselines["baseline_queue_events"]),
        "baseline_queue_intensity": _number(baselines["baseline_queue_intensity"]),
        "queue_tolerance": MetadataValue.float(config.anneal.queue_tolerance),
        "reward_per_agent_day": MetadataValue.float(last.evaluation["reward_per_agent_day"]),
        "device": last.device,
        "stages": MetadataValue.md(_stage_table(outcome.stages)),
        "training_curve": MetadataValue.md(_curve(run_dir / "logs", "ppo", ("loss_total", "kl", "clip_fraction"))),
        "training_curve_plot": _picture(ppo_curve_png, _log_entries(run_dir / "logs", "ppo"), "PPO training curve"),
    }, outcome.checkpoint_id)


@asset_check(asset=ppo_checkpoint, blocking=True,
             description="Every PPO stage's loss lies within loss_tolerance of the baseline for its dataset.")
@told_in_one_line
def ppo_loss_guardrail(context) -> AssetCheckResult:
    meta = latest_metadata(context, "ppo_checkpoint")
    loss, baseline, tolerance = meta["loss_total"], meta["baseline_loss"], meta["loss_tolerance"]
    passed = not meta["loss_flag"]
    if isinstance(baseline, float) and baseline:
        change = (loss - baseline) / abs(baseline)
        sentence = (f"PPO loss {loss:.4g} is {change:+.1%} from the baseline {baseline:.4g}; tolerance "
                    f"±{tolerance:.0%}")
    else:
        sentence = f"PPO loss {loss:.4g}; no baseline yet (this run's first PPO stage sets it)"
    return _judged(context, "ppo_loss_guardrail", passed, sentence, {
        "measured_loss": loss, "per_stage": MetadataValue.json(meta["loss_per_stage"]), "baseline": baseline,
        "tolerance": tolerance})


@asset_check(asset=ppo_checkpoint, blocking=True,
             description="Queue conflicts and their intensity did not rise more than queue_tolerance above baseline.")
@told_in_one_line
def queue_conflict_guardrail(context) -> AssetCheckResult:
    meta = latest_metadata(context, "ppo_checkpoint")
    lines = []
    for name, baseline_key, tolerance_key in (("conflicts", "baseline_queue_conflicts", "queue_tolerance"),
                                              ("intensity", "baseline_queue_intensity", "intensity_tolerance")):
        measured, half = meta[f"queue_{name}_per_agent_day"], meta[f"queue_{name}_ci95"]
        baseline, tolerance = meta[baseline_key], meta[tolerance_key]
        if not isinstance(baseline, float):
            limit = "no baseline"
        else:
            bound = baseline * (1 + tolerance)
            verdict = ">" if measured > bound + 1e-12 else "<="
            limit = f"{verdict} limit {bound:.3f} = baseline {baseline:.3f} + {tolerance:.0%}"
        lines.append(f"{name} {measured:.3f} ± {half:.3f} per agent-day over {meta['evaluation_towns']} towns; {limit}")
    return _judged(context, "queue_conflict_guardrail", not meta["queue_flag"], "; ".join(lines), {
        "measured_conflicts_per_agent_day": meta["queue_conflicts_per_agent_day"],
        "measured_conflicts_ci95": meta["queue_conflicts_ci95"],
        "measured_intensity_per_agent_day": meta["queue_intensity_per_agent_day"],
        "measured_intensity_ci95": meta["queue_intensity_ci95"],
        "evaluation_towns": meta["evaluation_towns"],
        "baseline_conflicts": meta["baseline_queue_conflicts"],
        "baseline_intensity": meta["baseline_queue_intensity"],
        "tolerance": meta["queue_tolerance"], "intensity_tolerance": meta["intensity_tolerance"]})


@asset(group_name=GROUP, code_version=CODE_VERSIONS["anneal_summary"], deps=[bc_checkpoint, ppo_checkpoint],
       kinds={"python"},
       description="The anneal judged against the guardrails and persisted baselines; recorded for promotion.")
@told_in_one_line
def anneal_summary(context: AssetExecutionContext, townlet: TownletResource) -> MaterializeResult:
    from townlet_pipelines.training.anneal import AnnealStrategy, verdict_reason
    from townlet_pipelines.training.cache import read_stages

    bc = read_stages(latest_metadata(context, "bc_checkpoint")["stages_record"], townlet.root())
    ppo = read_stages(latest_metadata(context, "ppo_checkpoint")["stages_record"], townlet.root())
    run_dir = townlet.run_dir(context.run.run_id)
    training = townlet.training_context(context.run.run_id)
    strategy = AnnealStrategy(latest_metadata(context, "replay_manifest")["path"])
    path = run_dir / "anneal_summary.json"
    summary = _summarize_and_store(strategy, training, bc, ppo, path, latest_run_id(context, "ppo_checkpoint"))
    from townlet_pipelines.data.files import sha256_file

    report = {}
    if training.config.evaluation.report_towns and summary.final_checkpoint_path:
        from townlet_pipelines.pictures import comparison_png, markdown_image
        from townlet_pipelines.training.evaluation import held_out_comparison

        champion = training.promotion.status().current_release  # promotion comes after this step
        rows = held_out_comparison(training.config, summary.final_checkpoint_path,
                                   champion.path if champion is not None else None, training.device)
        report = {"held_out_comparison": MetadataValue.md(markdown_image(comparison_png(rows), "held-out comparison")),
                  "held_out_reward": MetadataValue.json({name: round(row["reward_per_agent_day"], 3)
                                                         for name, row in rows.items()})}
    return made(townlet, {
        **report,
        "path": MetadataValue.path(str(path)),
        "status": summary.status,
        "reason": verdict_reason(summary, training.config.anneal),
        "stages": MetadataValue.md(_stage_table(summary.stages)),
        "promotion_pass_streak": MetadataValue.int(summary.promotion_pass_streak),
        "promotion_candidate_ready": summary.promotion_candidate_ready,
        "candidate_id": summary.candidate_id,
        "final_checkpoint_id": str(summary.final_checkpoint_id),
        "baselines": MetadataValue.json(summary.baselines),
        "evaluation": MetadataValue.json(summary.evaluation),
        "duration_sec": MetadataValue.float(summary.duration_sec),
    }, sha256_file(path)[:16])


@asset(group_name=GROUP, code_version=CODE_VERSIONS["promoted_policy"], deps=[anneal_summary], kinds={"python"},
       description="The current release after applying the promotion rule (promoted this run or not).")
@told_in_one_line
def promoted_policy(context: AssetExecutionContext, townlet: TownletResource) -> MaterializeResult:
    from townlet_pipelines.results import AnnealSummary
    from townlet_pipelines.training.orchestrator import apply_promotion

    summary = AnnealSummary.model_validate_json(Path(latest_metadata(context, "anneal_summary")["path"]).read_text())
    training = townlet.training_context(context.run.run_id)
    outcome = apply_promotion(training.promotion, summary)
    status = training.promotion.status()
    release = status.current_release
    pictures = {}
    if release is not None and release.path:  # what the released policy does: one held-out town over a day
        from townlet_pipelines.pictures import markdown_image, town_day_png
        from townlet_pipelines.training.checkpoints import load_checkpoint
        from townlet_pipelines.training.policy import TorchPolicy
        from townlet_pipelines.world.engine import TownWorld

        config = training.config
        model, _ = load_checkpoint(release.path, TownWorld(config, 1).spec, device=training.device.device)
        png = town_day_png(config, TorchPolicy(model, training.device, greedy=True).act, config.seeds.test.start)
        pictures["town_day"] = MetadataValue.md(markdown_image(png, f"release {release.release_id} over a day"))
    return made(townlet, {
        **pictures,
        "promoted_this_run": outcome.promoted,
        "reason": outcome.reason,
        "release_id": str(outcome.release_id),
        "checkpoint_id": str(outcome.checkpoint_id),
        "path": MetadataValue.path(str(release.path if release else "")),
        "state": status.state,
        "pass_streak": MetadataValue.int(status.pass_streak),
        "releases": MetadataValue.int(status.releases),
    }, str(outcome.release_id))


ASSETS = [replay_manifest, rollout_dataset, bc_checkpoint, ppo_checkpoint, anneal_summary, promoted_policy]
CHECKS = [*_dataset_checks("replay_manifest"), *_dataset_checks("rollout_dataset"), bc_accuracy_guardrail,
          ppo_loss_guardrail, queue_conflict_guardrail]
