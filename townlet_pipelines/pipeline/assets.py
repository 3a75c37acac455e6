"""Software-defined assets of the nightly anneal: each one a call to a step of the night (townlet_pipelines/nightly/)
plus what only Dagster shows (previews, plots), reported by pipeline/reporting.py with its checks.

Every asset is daily-partitioned (a partition is a night: its own towns, training/nights.py). A step writes its
files under the run's folder and returns a small record (paths, ids) that the `night_records` IO manager keeps per
night; a downstream asset receives its own night's records as inputs. The checks are the asset's check specs: the
core computes each verdict, the asset reports it, and a blocking failure stops the run before promotion (the step
that held the candidate records the FAIL or HOLD first). The core is imported inside asset bodies, so loading the
code location stays light and never imports torch.
"""

import hashlib
from pathlib import Path

from dagster import AssetCheckSpec, AssetExecutionContext, asset

from townlet_pipelines.pipeline.observability import (
    DATASET_SCHEMA, OWNERS, catalog_tags, dataset_preview, held_out_plots, release_plots,
)
from townlet_pipelines.pipeline.pipes import trained_in_processes
from townlet_pipelines.pipeline.records import NIGHTS
from townlet_pipelines.pipeline.reporting import made, told_in_one_line, training_log_to
from townlet_pipelines.pipeline.resources import TownletResource

GROUP = "townlet"
PACKAGE = Path(__file__).resolve().parents[1]
WORLD = ("world/*.py", "config.py", "data/capture.py", "data/manifest.py", "data/files.py", "data/quality.py",
         "results.py", "training/nights.py", "pipeline/records.py", "pipeline/reporting.py", "nightly/context.py",
         "nightly/outcome.py")
TRAINING = (*WORLD, "data/replay.py", "training/*.py", "pictures.py", "svg.py", "pipeline/pipes.py",
            "pipeline/distributed_step.py", "nightly/candidate.py", "nightly/describe.py", "nightly/verdict.py",
            "nightly/report.py")
MAKERS = {  # the source files whose code makes each asset (and the pipeline's own, this file)
    "replay_manifest": (*WORLD, "data/replay.py", "training/cache.py", "training/orchestrator.py",
                        "nightly/datasets.py"),
    "rollout_dataset": (*WORLD, "data/replay.py", "training/orchestrator.py", "training/checkpoints.py",
                        "training/policy.py", "training/model.py", "nightly/datasets.py"),
    "bc_checkpoint": TRAINING,
    "ppo_checkpoint": TRAINING,
    "anneal_summary": ("config.py", "results.py", "training/anneal.py", "training/evaluation.py", "training/cache.py",
                       "pictures.py", "svg.py", "training/guardrails.py", "data/baselines.py", "data/promotion.py",
                       "data/state_file.py", "pipeline/reporting.py", "nightly/context.py", "nightly/outcome.py",
                       "nightly/verdict.py", "nightly/report.py", "nightly/describe.py"),
    "promoted_policy": ("config.py", "training/orchestrator.py", "data/promotion.py", "data/state_file.py",
                        "pictures.py", "svg.py", "pipeline/reporting.py", "nightly/context.py", "nightly/outcome.py",
                        "nightly/release.py"),
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


def _in_processes(context, townlet: TownletResource):
    """The data-parallel path (torchrun through Pipes) when the resource asks for more than one process."""
    return (lambda extras: trained_in_processes(context, townlet, extras)) if townlet.processes > 1 else None


def _dataset_specs(asset_name: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec("manifest_verified", asset=asset_name, blocking=True,
                       description="Paths, sizes, sha256, array headers and every row agree with the manifest."),
        AssetCheckSpec("no_nan", asset=asset_name, blocking=True,
                       description="Rewards, values, log-probs and features are finite in every shard."),
        AssetCheckSpec("action_distribution_sane", asset=asset_name,
                       description="More than one action is used and none is nearly everything (a warning)."),
    ]


def _with_preview(outcome) -> dict:
    """The telemetry table's preview (schema, row count, a few rows) of a dataset that was captured."""
    return dataset_preview(Path(outcome.record["path"])) if outcome.record.get("path") else {}


# ---------------------------------------------------------------------------- datasets
@asset(group_name=GROUP, code_version=CODE_VERSIONS["replay_manifest"],
       owners=OWNERS, tags=catalog_tags("replay_manifest"), kinds={"numpy"}, partitions_def=NIGHTS,
       metadata=DATASET_SCHEMA, check_specs=_dataset_specs("replay_manifest"),
       description="Expert demonstrations captured from the scripted policy (the same every night, so reused from "
                   "the content-addressed cache), verified against their manifest.")
@told_in_one_line
def replay_manifest(context: AssetExecutionContext, townlet: TownletResource):
    # the core loads with the step (0.7 s), not the location
    from townlet_pipelines.nightly.datasets import expert_dataset

    night = townlet.night(context)
    outcome = expert_dataset(night, context.log.warning)
    return made(context, night, outcome, _with_preview(outcome))


@asset(group_name=GROUP, code_version=CODE_VERSIONS["rollout_dataset"],
       owners=OWNERS, tags=catalog_tags("rollout_dataset"), kinds={"numpy"}, partitions_def=NIGHTS,
       metadata=DATASET_SCHEMA, check_specs=_dataset_specs("rollout_dataset"),
       description="Rollouts of the champion (the current release; the expert while nothing is released) on the "
                   "night's own towns; captured only when PPO trains on stored rows (ppo.data_mode replay or mixed).")
@told_in_one_line
def rollout_dataset(context: AssetExecutionContext, townlet: TownletResource):
    from townlet_pipelines.nightly.datasets import champion_rollouts  # the core loads with the step, not the location

    night = townlet.night(context)
    outcome = champion_rollouts(night, context.log.info)
    return made(context, night, outcome, _with_preview(outcome))


# ---------------------------------------------------------------------------- training
@asset(group_name=GROUP, code_version=CODE_VERSIONS["bc_checkpoint"],
       owners=OWNERS, tags=catalog_tags("bc_checkpoint"), kinds={"pytorch"}, partitions_def=NIGHTS,
       op_tags=GPU_OP_TAGS, pool=GPU_POOL,
       check_specs=[AssetCheckSpec("bc_accuracy_guardrail", asset="bc_checkpoint", blocking=True,
                                   description="Every BC stage reached bc_accuracy_threshold (validation accuracy on "
                                               "held-out episodes).")],
       description="The anneal schedule's BC stages on the expert demonstrations (reused while they are unchanged).")
@told_in_one_line
def bc_checkpoint(context: AssetExecutionContext, townlet: TownletResource, replay_manifest: dict):
    from townlet_pipelines.nightly.candidate import bc_stages  # the core loads with the step, not the location

    night = townlet.night(context)
    with training_log_to(context):
        outcome = bc_stages(night, replay_manifest, townlet.processes, context.log.warning,
                            _in_processes(context, townlet))
    return made(context, night, outcome)


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
    from townlet_pipelines.nightly.candidate import ppo_stages  # the core loads with the step, not the location

    night = townlet.night(context)
    with training_log_to(context):
        outcome = ppo_stages(night, replay_manifest, rollout_dataset, bc_checkpoint, townlet.processes,
                             _in_processes(context, townlet))
    return made(context, night, outcome)


# ---------------------------------------------------------------------------- the verdict and the release
@asset(group_name=GROUP, code_version=CODE_VERSIONS["anneal_summary"],
       owners=OWNERS, tags=catalog_tags("anneal_summary"), kinds={"python"}, partitions_def=NIGHTS,
       description="The night's anneal judged (every guardrail passed, or the run stopped before this step) and "
                   "recorded for promotion; on a pass, a held-out report beside the champion, expert and random.")
@told_in_one_line
def anneal_summary(context: AssetExecutionContext, townlet: TownletResource, replay_manifest: dict,
                   bc_checkpoint: dict, ppo_checkpoint: dict):
    from townlet_pipelines.nightly.verdict import judge_night  # the core loads with the step, not the location

    night = townlet.night(context)
    outcome = judge_night(night, replay_manifest, bc_checkpoint, ppo_checkpoint)
    return made(context, night, outcome, held_out_plots(outcome.held_out_rows, outcome.pass_streak))


@asset(group_name=GROUP, code_version=CODE_VERSIONS["promoted_policy"],
       owners=OWNERS, tags=catalog_tags("promoted_policy"), kinds={"python"}, partitions_def=NIGHTS,
       description="The current release after the night's promotion rule (promoted this night or not).")
@told_in_one_line
def promoted_policy(context: AssetExecutionContext, townlet: TownletResource, anneal_summary: dict):
    from townlet_pipelines.nightly.release import promote  # the core loads with the step, not the location

    night = townlet.night(context)
    outcome = promote(night, anneal_summary, context.log.info)
    return made(context, night, outcome, release_plots(outcome.release_held_out_reward, outcome.pass_streak))


ASSETS = [replay_manifest, rollout_dataset, bc_checkpoint, ppo_checkpoint, anneal_summary, promoted_policy]
