"""The night judged and its verdict recorded for promotion: on a PASS by `anneal_summary` (with the held-out
report beside it), on a FAIL or HOLD by the training step whose guardrail held the candidate, since the run stops
at that blocking check and no later step is left to record it."""

from __future__ import annotations

from pathlib import Path

from townlet_pipelines.data.files import sha256_file
from townlet_pipelines.nightly.context import NightContext
from townlet_pipelines.nightly.describe import stage_table
from townlet_pipelines.nightly.outcome import FilePath, Judged, SummaryOutcome
from townlet_pipelines.nightly.report import held_out_report
from townlet_pipelines.results import Verdict
from townlet_pipelines.training.anneal import AnnealStrategy, StagesOutcome, verdict_reason
from townlet_pipelines.training.cache import read_stages
from townlet_pipelines.training.orchestrator import judge_and_store


def summary_path(night: NightContext) -> Path:
    return night.run_dir / "anneal_summary.json"


def record_held(night: NightContext, strategy: AnnealStrategy, bc: StagesOutcome, ppo: StagesOutcome,
                verdicts: list[Verdict]) -> Judged | None:
    """When a guardrail held the candidate, the night's FAIL or HOLD, judged and recorded now; else None."""
    if all(verdict.passed for verdict in verdicts):
        return None
    out = summary_path(night)
    summary = judge_and_store(strategy, night.training, bc, ppo, out, night.run_id)
    return Judged(summary.status, verdict_reason(summary, night.config.anneal), out, summary.candidate_id,
                  summary.promotion_pass_streak)


def judge_night(night: NightContext, replay: dict, bc_record: dict, ppo_record: dict) -> SummaryOutcome:
    """Every guardrail passed (or the run stopped before this step): the night's verdict, recorded for promotion,
    and on a pass the held-out report beside the champion, the expert and random."""
    bc = read_stages(bc_record["stages_record"], night.root)
    ppo = read_stages(ppo_record["stages_record"], night.root)
    path = summary_path(night)
    summary = judge_and_store(AnnealStrategy(replay["path"]), night.training, bc, ppo, path, ppo_record["run_id"])
    report = held_out_report(night, summary, path.parent)
    return SummaryOutcome(
        record={"path": str(path), "status": summary.status, "town_days": report.town_days,
                "held_out_reward": report.held_out},
        metadata={
            **report.metadata,
            "path": FilePath(path),
            "status": summary.status,
            "reason": verdict_reason(summary, night.config.anneal),
            "started_from": str(summary.started_from),
            "champion": summary.champion or {"champion": "none"},
            "stages": stage_table(summary.stages),
            "promotion_candidate_ready": summary.promotion_candidate_ready,
            "candidate_id": summary.candidate_id,
            "final_checkpoint_id": str(summary.final_checkpoint_id),
            "baselines": summary.baselines,
            "evaluation": summary.evaluation,
            "duration_sec": float(summary.duration_sec),
        },
        data_version=sha256_file(path)[:16], held_out_rows=report.rows, pass_streak=summary.promotion_pass_streak)
