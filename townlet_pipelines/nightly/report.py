"""The held-out report: the night's candidate beside the champion, the scripted expert and random on the held-out
towns (a picture for people, never an input to a guardrail), and the first town's day kept per checkpoint, so the
release's picture is drawn without playing that town again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from townlet_pipelines.data.files import atomic_write_text
from townlet_pipelines.nightly.context import NightContext
from townlet_pipelines.nightly.outcome import Markdown
from townlet_pipelines.pictures import comparison_svg, markdown_image
from townlet_pipelines.results import AnnealSummary
from townlet_pipelines.training.evaluation import held_out_comparison


@dataclass
class HeldOutReport:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> its held-out scores
    town_days: dict[str, str] = field(default_factory=dict)  # checkpoint id -> its town-day picture's file
    held_out: dict[str, float] = field(default_factory=dict)  # checkpoint id -> its held-out reward
    metadata: dict = field(default_factory=dict)


def held_out_report(night: NightContext, summary: AnnealSummary, folder: Path) -> HeldOutReport:
    """The report of a night that made a candidate (`evaluation.report_towns` > 0), else an empty one."""
    if not (night.config.evaluation.report_towns and summary.final_checkpoint_path):
        return HeldOutReport()
    champion = night.training.promotion.status().current_release  # promotion comes after this step
    strips: dict = {}
    rows = held_out_comparison(night.config, summary.final_checkpoint_path,
                               champion.path if champion is not None else None, night.training.device,
                               cache_root=night.root, strips=strips)
    metadata = {"held_out_comparison": Markdown(markdown_image(comparison_svg(rows), "held-out comparison")),
                "held_out_reward": {name: round(row["reward_per_agent_day"], 3) for name, row in rows.items()}}
    scored = {"candidate": summary.final_checkpoint_id, "champion": champion and champion.checkpoint_id}
    held_out = {scored[name]: rows[name]["reward_per_agent_day"] for name in scored if scored[name] and name in rows}
    return HeldOutReport(rows, keep_town_days(folder, strips, scored), held_out, metadata)


def keep_town_days(folder: Path, strips: dict, checkpoints: dict) -> dict[str, str]:
    """The held-out report's pictures of its first town, one file per checkpoint: `promoted_policy` shows the
    release's without playing that town again."""
    kept = {}
    for name, strip in strips.items():
        if checkpoints.get(name):
            out = folder / f"town_day-{checkpoints[name]}.svg"
            atomic_write_text(out, strip.svg())
            kept[checkpoints[name]] = str(out)
    return kept
