"""A whole night end to end, through the core functions the nightly graph's steps call (datasets.py,
candidate.py, verdict.py, release.py), in their order, without the steps' descriptions and data checks: the
cached expert dataset (`replay_manifest`), the champion's rollouts when PPO trains on stored rows
(`rollout_dataset`), the cached BC stages (`bc_checkpoint`), the PPO stages from the champion and their
verdicts (`ppo_checkpoint`), the judged and recorded summary (`anneal_summary`) and the promotion rule
(`promoted_policy`). `townlet train anneal --night` and `python -m townlet_pipelines.bench nights` run nights
with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.training.anneal import (
    AnnealStrategy, bc_verdict, check_judgeable, ppo_verdicts, verdict_reason,
)
from townlet_pipelines.training.cache import cached_bc_stages, cached_expert_dataset
from townlet_pipelines.training.nights import night_config
from townlet_pipelines.training.orchestrator import (
    apply_promotion, capture_release_rollouts, judge_and_store, make_context, new_run_dir,
)


@dataclass
class NightOutcome:
    night: str
    status: str  # PASS, FAIL or HOLD
    reason: str  # why, in one line
    started_from: str | None
    champion_before: str | None  # the release the night started with (its checkpoint folder), if any
    champion_before_id: str | None
    candidate_id: str | None  # the night's final checkpoint id
    candidate_path: str | None
    expert: dict | None  # candidate vs the scripted expert on the guardrail towns
    champion: dict | None  # challenger vs champion on the guardrail towns
    promoted: bool
    promotion: str  # the promotion rule's sentence
    release_id: str | None  # the current release after the night
    release_path: str | None
    failed_checks: list[str]
    validation: dict  # the chosen snapshot's scores on the night's validation towns (empty: none chosen)
    guardrail: dict  # the candidate's scores on the night's guardrail towns
    seconds: float
    run_dir: str


def run_night(base: TownletConfig, night: str, root: Path, say: Callable[[str], None] = print) -> NightOutcome:
    """Run night `night` of recipe `base` against the artifacts root `root` (its state: releases, baselines)."""
    start = time.perf_counter()
    config = night_config(base, night)
    check_judgeable(config)  # before a run folder or any data is made
    run_dir = new_run_dir(root)
    context = make_context(config, run_dir, root)
    before = context.promotion.status().current_release
    dataset, _ = cached_expert_dataset(config, root, say)
    rollouts = None
    if config.ppo.data_mode != "rollout":
        rollouts = capture_release_rollouts(context, run_dir / "rollout_dataset")[0].path
    strategy = AnnealStrategy(dataset.directory, rollout_dataset=rollouts)
    bc, _, _ = cached_bc_stages(strategy, context, dataset.identity, root, say)
    verdicts = [bc_verdict(bc, config.anneal)]
    ppo = strategy.run_ppo_stages(context, bc)
    if not bc.failed:
        verdicts += ppo_verdicts(ppo, config.anneal)
    summary = judge_and_store(strategy, context, bc, ppo, run_dir / "anneal_summary.json")
    promotion = apply_promotion(context.promotion, summary)
    release = context.promotion.status().current_release
    return NightOutcome(
        night=str(night), status=summary.status, reason=verdict_reason(summary, config.anneal),
        started_from=summary.started_from, champion_before=before.path if before is not None else None,
        champion_before_id=before.release_id if before is not None else None,
        candidate_id=summary.final_checkpoint_id, candidate_path=summary.final_checkpoint_path,
        expert=summary.expert, champion=summary.champion, promoted=promotion.promoted, promotion=promotion.reason,
        release_id=release.release_id if release is not None else None,
        release_path=release.path if release is not None else None,
        failed_checks=[verdict.name for verdict in verdicts if not verdict.passed],
        validation=dict(ppo.results[-1].validation) if ppo.results else {},
        guardrail=dict(ppo.results[-1].evaluation) if ppo.results else {},
        seconds=time.perf_counter() - start, run_dir=str(run_dir),
    )
