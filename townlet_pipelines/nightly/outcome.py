"""What a step of the night returns: a typed outcome that the Dagster layer reports as it is and the CLI reads.

Metadata values are plain Python (str, bool, int, float, dict, list, None) or one of the two markers below, so
the core never imports Dagster; `pipeline/reporting.py` turns them into Dagster metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from townlet_pipelines.results import Verdict


class Markdown(str):
    """Metadata shown as Markdown: a table, or a picture embedded as SVG."""


class FilePath(str):
    """Metadata shown as a path the user opens."""


@dataclass(frozen=True)
class Judged:
    """The night's FAIL or HOLD, already recorded for promotion (`anneal_summary.json`, the ledger's evaluation),
    by the training step whose guardrail held the candidate: the run stops at that blocking check."""

    status: str
    reason: str
    path: Path
    candidate_id: str
    pass_streak: int


@dataclass
class StepOutcome:
    """One step of the night: the record its night's downstream steps receive (paths, ids), the metadata its
    materialization shows, its data version (from content), the verdicts its checks report, and the verdict it
    recorded when a guardrail held the candidate."""

    record: dict
    metadata: dict
    data_version: str
    verdicts: list[Verdict] = field(default_factory=list)
    held: Judged | None = None


@dataclass
class SummaryOutcome(StepOutcome):
    """`anneal_summary`'s outcome, with the held-out report's rows and the pass streak (the Plots tab's floats)."""

    held_out_rows: dict[str, dict[str, float]] = field(default_factory=dict)
    pass_streak: int = 0


@dataclass
class ReleaseOutcome(StepOutcome):
    """`promoted_policy`'s outcome, with the release's held-out reward (when the night's report scored it) and the
    pass streak after the promotion rule."""

    release_held_out_reward: float | None = None
    pass_streak: int = 0
