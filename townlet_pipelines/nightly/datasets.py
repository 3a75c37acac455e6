"""The night's two datasets: the expert's demonstrations (the same every night, so from the content-addressed
cache) and the champion's rollouts on the night's own towns (captured only when PPO trains on stored rows)."""

from __future__ import annotations

from typing import Callable

from townlet_pipelines.data import quality
from townlet_pipelines.data.files import sha256_file
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.nightly.context import NightContext
from townlet_pipelines.nightly.outcome import FilePath, StepOutcome
from townlet_pipelines.training.cache import cached_expert_dataset
from townlet_pipelines.training.orchestrator import capture_release_rollouts

NOT_CAPTURED = "not captured: ppo.data_mode is rollout (PPO collects on-policy); replay or mixed would train on it"


def dataset_metadata(dataset: ReplayDataset) -> dict:
    """What a dataset's materialization shows: where it is, its identity, its size and its key metrics."""
    manifest = dataset.manifest
    metrics = manifest.metrics
    days = max(metrics.agent_days, 1e-9)
    manifest_path = dataset.directory / "manifest.json"
    return {
        "path": FilePath(dataset.directory),
        "manifest": FilePath(manifest_path),
        "dataset_identity": dataset.identity,
        "manifest_sha256": sha256_file(manifest_path),
        "generator": manifest.generator.kind + (f" {manifest.generator.checkpoint_id}"
                                                if manifest.generator.checkpoint_id else ""),
        "rows": int(manifest.rows),
        "shards": len(manifest.shards),
        "episodes": int(manifest.episodes),
        "reward_mean": float(metrics.reward_mean),
        "faints_per_agent_day": float(metrics.faints / days),
        "queue_conflict_events_per_agent_day": float(metrics.queue_conflict_events / days),
        "queue_intensity_per_agent_day": float(metrics.queue_conflict_intensity / days),
        "chat_successes_per_agent_day": float(metrics.chat_success_events / days),
        "action_counts": dict(metrics.action_counts),
        "observation": f"{manifest.observation.variant} map {manifest.observation.map_shape} "
                       f"features {manifest.observation.feature_dim}",
    }


def _verdicts(dataset: ReplayDataset, verified_before: bool) -> list:
    return [quality.manifest_verified(dataset.directory, verified_before), quality.no_nan(dataset),
            quality.action_distribution_sane(dataset.manifest.metrics.action_counts)]


def _record(dataset: ReplayDataset) -> dict:
    return {"path": str(dataset.directory), "dataset_identity": dataset.identity}


def expert_dataset(night: NightContext, say: Callable[[str], None]) -> StepOutcome:
    """The expert's demonstrations of the night's recipe: a verified cache entry, else a fresh capture."""
    dataset, reused = cached_expert_dataset(night.config, night.root, say)
    return StepOutcome(_record(dataset), {**dataset_metadata(dataset), "reused": reused}, dataset.identity,
                       _verdicts(dataset, verified_before=reused))


def champion_rollouts(night: NightContext, say: Callable[[str], None]) -> StepOutcome:
    """Rollouts of the champion (the current release; the expert while nothing is released) on the night's towns,
    or, when PPO collects on-policy, a record that says why nothing was captured (its checks pass as skipped)."""
    if night.config.ppo.data_mode == "rollout":  # nothing captured would be used
        say(NOT_CAPTURED)
        return StepOutcome({"captured": False, "path": None, "dataset_identity": None},
                           {"captured": False, "reason": NOT_CAPTURED}, "none", quality.skipped(NOT_CAPTURED))
    training = night.training
    out = night.run_dir / "rollout_dataset"
    if out.exists():
        raise FileExistsError(f"{out} already exists: a run folder is never overwritten (re-execute as a new run)")
    result, release = capture_release_rollouts(training, out)
    dataset = ReplayDataset.open(result.path, verify="none")  # verified once, by manifest_verified
    metadata = {**dataset_metadata(dataset), "captured": True,
                "release": release.release_id if release else "none (expert)"}
    return StepOutcome({**_record(dataset), "captured": True}, metadata, dataset.identity,
                       _verdicts(dataset, verified_before=False))
