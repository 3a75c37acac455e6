"""Software-defined assets of the nightly anneal: each one a call into the core, plus metadata and checks.

Every asset is daily-partitioned (a partition is a night: its own towns, townlet_pipelines/training/
nights.py). An asset writes its files under the run's folder and returns a small record (paths, ids) that
the `night_records` IO manager keeps per night; a downstream asset receives its own night's records as
inputs. The checks are the asset's check specs: the core computes each verdict from the measured value, its
baseline and tolerance, the asset reports it, and a blocking failure stops the run before promotion (a
FAIL or HOLD is recorded first). Torch is imported only inside asset bodies, so loading the code location
stays fast and works without it.
"""


import contextlib
import functools
import hashlib
import json
import logging
import time
from pathlib import Path

from dagster import (
    AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, AssetKey, AssetObservation,
    DataVersion, Failure, MaterializeResult, MetadataValue, asset,
)

from townlet_pipelines.pipeline.observability import (
    DATASET_SCHEMA, OWNERS, catalog_tags, dataset_preview, held_out_plots, release_plots,
)
from townlet_pipelines.pipeline.records import NIGHTS, refuse_another_profile
from townlet_pipelines.pipeline.resources import TownletResource

GROUP = "townlet"
PACKAGE = Path(__file__).resolve().parents[1]
WORLD = ("world/*.py", "config.py", "data/capture.py", "data/manifest.py", "data/files.py", "data/quality.py",
         "results.py", "training/nights.py", "pipeline/records.py")
MAKERS = {  # the source files whose code makes each asset (and the pipeline's own, this file)
    "replay_manifest": (*WORLD, "data/replay.py", "training/cache.py", "training/orchestrator.py"),
    "rollout_dataset": (*WORLD, "data/replay.py", "training/orchestrator.py", "training/checkpoints.py",
                        "training/policy.py", "training/model.py"),
    "bc_checkpoint": (*WORLD, "data/replay.py", "training/*.py", "pictures.py", "svg.py",
                      "pipeline/distributed_step.py"),
    "ppo_checkpoint": (*WORLD, "data/replay.py", "training/*.py", "pictures.py", "svg.py",
                       "pipeline/distributed_step.py"),
    "anneal_summary": ("config.py", "results.py", "training/anneal.py", "training/evaluation.py", "training/cache.py",
                       "pictures.py", "svg.py", "training/guardrails.py", "data/baselines.py", "data/promotion.py",
                       "data/state_file.py"),
    "promoted_policy": ("config.py", "training/orchestrator.py", "data/promotion.py", "data/state_file.py",
                        "pictures.py", "svg.py"),
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
    """The step's outcome in one line, never a traceback a user has to read: a user's or the environment's
    error (bad config, damaged data, a full disk) fails the step with the sentence the CLI prints
    (programming errors keep their traceback), and a guardrail that holds the candidate fails it with the
    guardrail's own verdict ("bc_accuracy_guardrail held the candidate: BC validation accuracy 0.900 < ...")
    once the materialization and its checks are recorded, which stops the run before promotion. Before the step
    makes anything, a config of another profile than the code location's is refused (records.py)."""

    @functools.wraps(function)
    def wrapper(context, **kwargs):
        try:
            townlet = kwargs["townlet"]
            refuse_another_profile(context.asset_key, townlet.load_config(), townlet.config_source())
            result = function(context, **kwargs)
        except Failure:
            raise
        except Exception as error:  # noqa: BLE001 - sorted: only user errors are re-told
            from townlet_pipelines.errors import is_user_error, one_line

            if not is_user_error(error):
                raise
            raise Failure(description=one_line(error)) from None
        yield result
        held = [check for check in result.check_results
                if not check.passed and check.severity == AssetCheckSeverity.ERROR]
        if held:
            raise Failure(description="; ".join(f"{check.check_name} held the candidate: {check.description}"
                                                for check in held))

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


def made(context, townlet: TownletResource, record: dict, metadata: dict, data_version: str,
         verdicts=()):
    """An asset's materialization: its record (for its night's downstream steps), metadata with what made it
    (profile, config source and hash, night), and its checks, each reported as the core judged it."""
    checks = []
    for verdict in verdicts:
        if not verdict.passed:
            (context.log.warning if verdict.warning_only else context.log.error)(
                f"{verdict.name} held the candidate: {verdict.sentence}" if not verdict.warning_only
                else f"{verdict.name}: {verdict.sentence}")
        checks.append(AssetCheckResult(
            check_name=verdict.name, passed=verdict.passed, description=verdict.sentence,
            severity=AssetCheckSeverity.WARN if verdict.warning_only else AssetCheckSeverity.ERROR,
            metadata={key: _value(value) for key, value in verdict.measured.items()}))
    provenance = townlet.provenance(context.partition_key)
    tags = {f"townlet/{key}": value for key, value in provenance.items()}
    if any(context.run.tags.get(key) != value for key, value in tags.items()):  # the run says what made it too
        context.instance.add_run_tags(context.run.run_id, tags)
    return MaterializeResult(value=record, metadata={**metadata, **provenance},
                             data_version=DataVersion(data_version), check_results=checks)


def _value(value) -> MetadataValue:
    """Any measured value as metadata; None (no baseline yet, no multiplier) as the text 'none'."""
    if value is None:
        return MetadataValue.text("none")
    if isinstance(value, bool) or isinstance(value, str):
        return MetadataValue.text(str(value))
    if isinstance(value, int):
        return MetadataValue.int(value)
    if isinstance(value, float):
        return MetadataValue.float(value)
    return MetadataValue.json(value)


def _run_dir(townlet: TownletResource, context) -> Path:
    return townlet.run_dir(context.run.run_id)


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
        **dataset_preview(dataset.directory),  # the telemetry table: schema, row count, a few rows
        "observation": f"{manifest.observation.variant} map {manifest.observation.map_shape} "
                       f"features {manifest.observation.feature_dim}",
    }


def _dataset_specs(asset_name: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec("manifest_verified", asset=asset_name, blocking=True,
                       description="Paths, sizes, sha256, array headers and every row agree with the manifest."),
        AssetCheckSpec("no_nan", asset=asset_name, blocking=True,
                       description="Rewards, values, log-probs and features are finite in every shard."),
        AssetCheckSpec("action_distribution_sane", asset=asset_name,
                       description="More than one action is used and none is nearly everything (a warning)."),
    ]


def _dataset_verdicts(dataset, verified_before: bool) -> list:
    from townlet_pipelines.data import quality

    return [quality.manifest_verified(dataset.directory, verified_before), quality.no_nan(dataset),
            quality.action_distribution_sane(dataset.manifest.metrics.action_counts)]


def _dataset_record(dataset) -> dict:
    return {"path": str(dataset.directory), "dataset_identity": dataset.identity}


# ---------------------------------------------------------------------------- datasets
@asset(group_name=GROUP, code_version=CODE_VERSIONS["replay_manifest"],
       owners=OWNERS, tags=catalog_tags("replay_manifest"), kinds={"numpy"}, partitions_def=NIGHTS,
       metadata=DATASET_SCHEMA,
       check_specs=_dataset_specs("replay_manifest"),
       description="Expert demonstrations captured from the scripted policy (the same every night, so reused from "
                   "the content-addressed cache), verified against their manifest.")
@told_in_one_line
def replay_manifest(context: AssetExecutionContext, townlet: TownletResource):
    from townlet_pipelines.training.cache import cached_expert_dataset

    config = townlet.load_config(context.partition_key)
    dataset, reused = cached_expert_dataset(config, townlet.root(), context.log.warning)
    metadata = dataset_metadata(dataset)
    metadata["reused"] = reused
    return made(context, townlet, _dataset_record(dataset), metadata, dataset.identity,
                _dataset_verdicts(dataset, verified_before=reused))


@asset(group_name=GROUP, code_version=CODE_VERSIONS["rollout_dataset"],
       owners=OWNERS, tags=catalog_tags("rollout_dataset"), kinds={"numpy"}, partitions_def=NIGHTS,
       metadata=DATASET_SCHEMA,
       check_specs=_dataset_specs("rollout_dataset"),
       description="Rollouts of the champion (the current release; the expert while nothing is released) on the "
                   "night's own towns; captured only when PPO trains on stored rows (ppo.data_mode replay or mixed).")
@told_in_one_line
def rollout_dataset(context: AssetExecutionContext, townlet: TownletResource):
    from townlet_pipelines.data.quality import skipped
    from townlet_pipelines.data.replay import ReplayDataset
    from townlet_pipelines.training.orchestrator import capture_release_rollouts

    if townlet.load_config(context.partition_key).ppo.data_mode == "rollout":  # nothing captured would be used
        reason = "not captured: ppo.data_mode is rollout (PPO collects on-policy); replay or mixed would train on it"
        context.log.info(reason)
        return made(context, townlet, {"captured": False, "path": None, "dataset_identity": None},
                    {"captured": False, "reason": reason}, "none", skipped(reason))
    training = townlet.training_context(context.run.run_id, context.partition_key)
    out = _fresh(_run_dir(townlet, context), "rollout_dataset")
    result, release = capture_release_rollouts(training, out)
    dataset = ReplayDataset.open(result.path, verify="none")  # verified once, by manifest_verified below
    metadata = dataset_metadata(dataset)
    metadata.update(captured=True, release=release.release_id if release else "none (expert)")
    return made(context, townlet, {**_dataset_record(dataset), "captured": True}, metadata, dataset.identity,
                _dataset_verdicts(dataset, verified_before=False))


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


def _tensorboard(folders: dict[str, Path]) -> dict:
    """Where the step's TensorBoard event files are (the `tensorboard` extra), and the one command that shows
    them beside the night's other training (BC is often reused from the cache, so it lives in another folder)."""
    from townlet_pipelines.training.tensorboard import FOLDER

    found = {name: folder / FOLDER for name, folder in folders.items() if (folder / FOLDER).is_dir()}
    if not found:
        return {}
    own = list(found.values())[-1]
    spec = ",".join(f"{name}:{folder}" for name, folder in found.items())
    return {"tensorboard": MetadataValue.path(str(own)),
            "tensorboard_command": f"tensorboard --logdir_spec {spec}"}


def _trained_in_processes(context, townlet: TownletResource, extras: dict) -> Path:
    """Run a training step as `torchrun --nproc-per-node N` through Dagster Pipes (a subprocess, or with
    `pipes_image` a Kubernetes pod of its own): rank 0's progress lines reach this run's log as they happen,
    and the stages record it wrote comes back. A failed rank fails the step with that rank's one-line reason."""
    import shutil
    import sys

    from townlet_pipelines.pipeline.distributed_step import pod_spec, torchrun_command

    record = Path(extras["record"])
    extras = {**extras, "resource": townlet.settings(), "run_id": context.run.run_id, "night": context.partition_key}
    try:
        if townlet.pipes_image:
            from dagster_k8s import PipesK8sClient  # the `k8s` extra

            command = torchrun_command("torchrun", townlet.processes)
            context.log.info(f"training in {townlet.processes} processes, pod {townlet.pipes_image}: "
                             f"{' '.join(command)}")
            PipesK8sClient().run(context=context, extras=extras, image=townlet.pipes_image, command=command,
                                 base_pod_spec=pod_spec(townlet.processes, townlet.pipes_claim, str(townlet.root())))
        else:
            from dagster import PipesSubprocessClient

            torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
            command = torchrun_command(torchrun, townlet.processes)
            context.log.info(f"training in {townlet.processes} processes: {' '.join(command)}")
            PipesSubprocessClient().run(context=context, command=command, extras=extras)
    except Exception as error:  # noqa: BLE001 - retold with the failing rank's own sentence
        told = [path.read_text() for path in sorted(record.parent.glob(f"{record.name}.rank*.error"))]
        raise Failure(description="; ".join(told) or f"the {townlet.processes}-process step failed: {error}") from None
    return record


def _held(context, townlet, strategy, training, bc, ppo, verdicts) -> None:
    """A guardrail held the candidate: the run stops at the blocking check, so the core records the FAIL or
    HOLD now, and the graph shows it as an observation on `anneal_summary`, with its reason."""
    from townlet_pipelines.training.anneal import verdict_reason
    from townlet_pipelines.training.orchestrator import judge_and_store

    if all(verdict.passed for verdict in verdicts):
        return
    out = _run_dir(townlet, context) / "anneal_summary.json"
    summary = judge_and_store(strategy, training, bc, ppo, out, context.run.run_id)
    reason = verdict_reason(summary, training.config.anneal)
    context.log.warning(f"anneal {summary.status}: {reason}; nothing is promoted")
    summary_key = AssetKey([*context.asset_key.path[:-1], "anneal_summary"])  # the profile's own key
    context.log_event(AssetObservation(asset_key=summary_key, partition=context.partition_key,
                                       metadata={"status": summary.status, "reason": reason,
                                                 "path": MetadataValue.path(str(out)),
                                                 "candidate_id": summary.candidate_id,
                                                 "pass_streak": MetadataValue.float(
                                                     float(summary.promotion_pass_streak)),
                                                 # judged now: the freshness check on anneal_summary counts it
                                                 "dagster/last_updated_timestamp": MetadataValue.timestamp(
                                                     time.time())}))


@asset(group_name=GROUP, code_version=CODE_VERSIONS["bc_checkpoint"],
       owners=OWNERS, tags=catalog_tags("bc_checkpoint"), kinds={"pytorch"}, partitions_def=NIGHTS,
       op_tags=GPU_OP_TAGS, pool=GPU_POOL,
       check_specs=[AssetCheckSpec("bc_accuracy_guardrail", asset="bc_checkpoint", blocking=True,
                                   description="Every BC stage reached bc_accuracy_threshold (validation accuracy on "
                                               "held-out episodes).")],
       description="The anneal schedule's BC stages on the expert demonstrations (reused while they are unchanged).")
@told_in_one_line
def bc_checkpoint(context: AssetExecutionContext, townlet: TownletResource, replay_manifest: dict):
    from townlet_pipelines.pictures import bc_curve_svg
    from townlet_pipelines.training.anneal import AnnealStrategy, StagesOutcome, bc_verdict
    from townlet_pipelines.training.cache import cached_bc_stages

    training = townlet.training_context(context.run.run_id, context.partition_key)
    strategy = AnnealStrategy(replay_manifest["path"])
    if townlet.processes > 1:  # data-parallel under torchrun (not cached: the cache is the one-process path)
        from townlet_pipelines.training.cache import read_stages

        record = _trained_in_processes(context, townlet, {
            "kind": "bc", "dataset": replay_manifest["path"],
            "record": str(_run_dir(townlet, context) / "bc-stages" / "bc_stages.json")})
        outcome, reused = read_stages(record, townlet.root()), False
    else:
        with training_log_to(context):
            outcome, record, reused = cached_bc_stages(strategy, training, replay_manifest["dataset_identity"],
                                                       townlet.root(), context.log.warning)
    verdict = bc_verdict(outcome, training.config.anneal)
    _held(context, townlet, strategy, training, outcome, StagesOutcome([], [], None, None), [verdict])
    last = outcome.results[-1]
    logs = record.parent / "logs"
    return made(context, townlet, {"stages_record": str(record), "checkpoint_id": last.checkpoint_id}, {
        "stages_record": MetadataValue.path(str(record)),
        "path": MetadataValue.path(str(outcome.checkpoint or last.checkpoint_path)),
        "checkpoint_id": last.checkpoint_id,
        "reused": reused,
        "val_accuracy": MetadataValue.float(last.val_accuracy),
        "accuracy": MetadataValue.float(last.accuracy),
        "val_loss": MetadataValue.float(last.val_loss),
        "bc_accuracy_threshold": MetadataValue.float(training.config.anneal.bc_accuracy_threshold),
        "samples_per_sec": MetadataValue.float(last.samples_per_sec),
        "processes": MetadataValue.int(townlet.processes),
        "dataset_identity": last.dataset_identity,
        "device": last.device,
        "duration_sec": MetadataValue.float(sum(r.duration_sec for r in outcome.results)),
        "stages": MetadataValue.md(_stage_table(outcome.stages)),
        "training_curve": MetadataValue.md(_curve(logs, "bc", ("loss", "accuracy", "val_loss", "val_accuracy"))),
        "training_curve_plot": _picture(bc_curve_svg, _log_entries(logs, "bc"), "BC training curve"),
        **_tensorboard({"bc": record.parent}),
    }, last.checkpoint_id, [verdict])


PPO_CHECKS = [
    AssetCheckSpec("ppo_loss_guardrail", asset="ppo_checkpoint", blocking=True,
                   description="Every PPO stage's loss lies within loss_tolerance of the baseline for its dataset."),
    AssetCheckSpec("queue_conflict_guardrail", asset="ppo_checkpoint", blocking=True,
                   description="Queue conflicts and their intensity rose at most queue_tolerance above the baseline."),
    AssetCheckSpec("expert_guardrail", asset="ppo_checkpoint", blocking=True,
                   description="The candidate's reward is no worse than the scripted expert's on the night's "
                               "guardrail towns, within the 95% interval of the paired difference."),
    AssetCheckSpec("champion_guardrail", asset="ppo_checkpoint", blocking=True,
                   description="The challenger's reward is no worse than the champion's on the night's guardrail "
                               "towns, within the 95% interval of the paired difference."),
]


@asset(group_name=GROUP, code_version=CODE_VERSIONS["ppo_checkpoint"],
       owners=OWNERS, tags=catalog_tags("ppo_checkpoint"), kinds={"pytorch"}, partitions_def=NIGHTS,
       op_tags=GPU_OP_TAGS, pool=GPU_POOL, check_specs=PPO_CHECKS,
       description="The anneal schedule's PPO stages on the night's towns, from the champion (the current release) "
                   "when it fits the recipe, else from the BC weights; judged against the champion.")
@told_in_one_line
def ppo_checkpoint(context: AssetExecutionContext, townlet: TownletResource, replay_manifest: dict,
                   rollout_dataset: dict, bc_checkpoint: dict):
    from townlet_pipelines.data.files import atomic_write_text
    from townlet_pipelines.pictures import ppo_curve_svg
    from townlet_pipelines.training.anneal import AnnealStrategy, ppo_verdicts
    from townlet_pipelines.training.cache import read_stages

    bc = read_stages(bc_checkpoint["stages_record"], townlet.root())
    run_dir = _run_dir(townlet, context)
    training = townlet.training_context(context.run.run_id, context.partition_key)
    config = training.config
    strategy = AnnealStrategy(replay_manifest["path"], rollout_dataset=rollout_dataset["path"])
    record = run_dir / "ppo_stages.json"
    if townlet.processes > 1:  # data-parallel under torchrun, each rank on its own towns
        _trained_in_processes(context, townlet, {
            "kind": "ppo", "dataset": replay_manifest["path"], "rollout_dataset": rollout_dataset["path"],
            "bc_stages": bc_checkpoint["stages_record"], "record": str(record)})
        outcome = read_stages(record, townlet.root())
    else:
        with training_log_to(context):
            outcome = strategy.run_ppo_stages(training, bc)
        atomic_write_text(record, outcome.to_json())
    verdicts = ppo_verdicts(outcome, config.anneal)
    _held(context, townlet, strategy, training, bc, outcome, verdicts)
    last = outcome.results[-1]
    evaluation = last.evaluation
    return made(context, townlet, {"stages_record": str(record), "checkpoint_id": outcome.checkpoint_id}, {
        "stages_record": MetadataValue.path(str(record)),
        "path": MetadataValue.path(str(outcome.checkpoint)),
        "checkpoint_id": outcome.checkpoint_id,
        "started_from": str(outcome.started_from),
        "parent_checkpoint_id": str(last.parent_checkpoint_id),
        "loss_total": MetadataValue.float(last.loss_total),
        "loss_policy": MetadataValue.float(last.loss_policy),
        "loss_value": MetadataValue.float(last.loss_value),
        "kl_divergence": MetadataValue.float(last.kl_divergence),
        "clip_fraction": MetadataValue.float(last.clip_fraction),
        "env_steps_per_sec": MetadataValue.float(last.env_steps_per_sec),
        "processes": MetadataValue.int(townlet.processes),
        "baseline_loss": _value(last.baseline_loss),
        "reward_per_agent_day": MetadataValue.float(evaluation["reward_per_agent_day"]),
        "queue_conflicts_per_agent_day": MetadataValue.float(evaluation["queue_conflict_events_per_agent_day"]),
        "evaluation_towns": MetadataValue.int(int(evaluation["towns"])),
        "champion": MetadataValue.json(outcome.champion or {"champion": "none"}),
        "expert": MetadataValue.json(outcome.expert or {"expert": "none"}),
        "lagrange_multiplier": _value(last.lagrange_multiplier),
        "selected_update": MetadataValue.int(int(last.updates if last.selected_update is None else last.selected_update)),
        "validation": MetadataValue.json({"policy": last.validation, "expert": last.validation_expert}),
        "device": last.device,
        "stages": MetadataValue.md(_stage_table(outcome.stages)),
        "training_curve": MetadataValue.md(_curve(run_dir / "logs", "ppo", ("loss_total", "kl", "clip_fraction"))),
        "training_curve_plot": _picture(ppo_curve_svg, _log_entries(run_dir / "logs", "ppo"), "PPO training curve"),
        **_tensorboard({"bc": Path(bc_checkpoint["stages_record"]).parent, "ppo": run_dir}),
    }, outcome.checkpoint_id, verdicts)


@asset(group_name=GROUP, code_version=CODE_VERSIONS["anneal_summary"],
       owners=OWNERS, tags=catalog_tags("anneal_summary"), kinds={"python"}, partitions_def=NIGHTS,
       description="The night's anneal judged (every guardrail passed, or the run stopped before this step) and "
                   "recorded for promotion; on a pass, a held-out report beside the champion, expert and random.")
@told_in_one_line
def anneal_summary(context: AssetExecutionContext, townlet: TownletResource, replay_manifest: dict,
                   bc_checkpoint: dict, ppo_checkpoint: dict):
    from townlet_pipelines.data.files import sha256_file
    from townlet_pipelines.training.anneal import AnnealStrategy, verdict_reason
    from townlet_pipelines.training.cache import read_stages
    from townlet_pipelines.training.orchestrator import judge_and_store

    bc = read_stages(bc_checkpoint["stages_record"], townlet.root())
    ppo = read_stages(ppo_checkpoint["stages_record"], townlet.root())
    training = townlet.training_context(context.run.run_id, context.partition_key)
    path = _run_dir(townlet, context) / "anneal_summary.json"
    summary = judge_and_store(AnnealStrategy(replay_manifest["path"]), training, bc, ppo, path,
                              ppo_checkpoint["run_id"])
    report, town_days, rows, held_out = {}, {}, {}, {}
    if training.config.evaluation.report_towns and summary.final_checkpoint_path:
        from townlet_pipelines.pictures import comparison_svg, markdown_image
        from townlet_pipelines.training.evaluation import held_out_comparison

        champion = training.promotion.status().current_release  # promotion comes after this step
        strips: dict = {}
        rows = held_out_comparison(training.config, summary.final_checkpoint_path,
                                   champion.path if champion is not None else None, training.device,
                                   cache_root=townlet.root(), strips=strips)
        report = {"held_out_comparison": MetadataValue.md(markdown_image(comparison_svg(rows), "held-out comparison")),
                  "held_out_reward": MetadataValue.json({name: round(row["reward_per_agent_day"], 3)
                                                         for name, row in rows.items()})}
        scored = {"candidate": summary.final_checkpoint_id, "champion": champion and champion.checkpoint_id}
        town_days = _keep_town_days(path.parent, strips, scored)
        held_out = {scored[name]: rows[name]["reward_per_agent_day"]
                    for name in scored if scored[name] and name in rows}
    return made(context, townlet, {"path": str(path), "status": summary.status, "town_days": town_days,
                                   "held_out_reward": held_out}, {
        **report,
        **held_out_plots(rows, summary.promotion_pass_streak),
        "path": MetadataValue.path(str(path)),
        "status": summary.status,
        "reason": verdict_reason(summary, training.config.anneal),
        "started_from": str(summary.started_from),
        "champion": MetadataValue.json(summary.champion or {"champion": "none"}),
        "stages": MetadataValue.md(_stage_table(summary.stages)),
        "promotion_candidate_ready": summary.promotion_candidate_ready,
        "candidate_id": summary.candidate_id,
        "final_checkpoint_id": str(summary.final_checkpoint_id),
        "baselines": MetadataValue.json(summary.baselines),
        "evaluation": MetadataValue.json(summary.evaluation),
        "duration_sec": MetadataValue.float(summary.duration_sec),
    }, sha256_file(path)[:16])


def _keep_town_days(folder: Path, strips: dict, checkpoints: dict) -> dict[str, str]:
    """The held-out report's pictures of its first town, one file per checkpoint: `promoted_policy` shows the
    release's without playing that town again."""
    from townlet_pipelines.data.files import atomic_write_text

    kept = {}
    for name, strip in strips.items():
        if checkpoints.get(name):
            out = folder / f"town_day-{checkpoints[name]}.svg"
            atomic_write_text(out, strip.svg())
            kept[checkpoints[name]] = str(out)
    return kept


def _town_day(training, release, town_days: dict[str, str]) -> str:
    """The release over a day in the first held-out town: the night's report drew it when it scored this
    checkpoint; else (a rollback, the report off) the town is played here."""
    from townlet_pipelines.pictures import town_day_svg
    from townlet_pipelines.training.checkpoints import load_checkpoint
    from townlet_pipelines.training.policy import evaluation_policy
    from townlet_pipelines.world.engine import TownWorld

    try:
        return Path(town_days[release.checkpoint_id]).read_text()
    except (KeyError, OSError):
        config = training.config
        model, _ = load_checkpoint(release.path, TownWorld(config, 1).spec, device=training.device.device)
        return town_day_svg(config, evaluation_policy(model, training.device, config).act, config.seeds.test.start)


@asset(group_name=GROUP, code_version=CODE_VERSIONS["promoted_policy"],
       owners=OWNERS, tags=catalog_tags("promoted_policy"), kinds={"python"}, partitions_def=NIGHTS,
       description="The current release after the night's promotion rule (promoted this night or not).")
@told_in_one_line
def promoted_policy(context: AssetExecutionContext, townlet: TownletResource, anneal_summary: dict):
    from townlet_pipelines.results import AnnealSummary
    from townlet_pipelines.training.orchestrator import apply_promotion

    summary = AnnealSummary.model_validate_json(Path(anneal_summary["path"]).read_text())
    training = townlet.training_context(context.run.run_id, context.partition_key)
    outcome = apply_promotion(training.promotion, summary)
    context.log.info(f"promotion: {outcome.reason}")
    status = training.promotion.status()
    release = status.current_release
    pictures = {}
    if release is not None and release.path:  # what the released policy does: one held-out town over a day
        from townlet_pipelines.pictures import markdown_image

        svg = _town_day(training, release, anneal_summary.get("town_days", {}))
        pictures["town_day"] = MetadataValue.md(markdown_image(svg, f"release {release.release_id} over a day"))
    return made(context, townlet, {"release_id": outcome.release_id, "promoted": outcome.promoted}, {
        **pictures,
        "promoted_this_run": outcome.promoted,
        "reason": outcome.reason,
        "release_id": str(outcome.release_id),
        "checkpoint_id": str(outcome.checkpoint_id),
        "path": MetadataValue.path(str(release.path if release else "")),
        "state": status.state,
        "releases": MetadataValue.int(status.releases),
        **release_plots(anneal_summary.get("held_out_reward", {}).get(release.checkpoint_id) if release else None,
                        status.pass_streak),
    }, str(outcome.release_id))


ASSETS = [replay_manifest, rollout_dataset, bc_checkpoint, ppo_checkpoint, anneal_summary, promoted_policy]
