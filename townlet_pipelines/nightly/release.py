"""The promotion rule applied to the night's verdict, and the release over a day in the first held-out town."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from townlet_pipelines.nightly.context import NightContext
from townlet_pipelines.nightly.outcome import FilePath, Markdown, ReleaseOutcome
from townlet_pipelines.pictures import markdown_image, town_day_svg
from townlet_pipelines.results import AnnealSummary
from townlet_pipelines.training.checkpoints import load_checkpoint
from townlet_pipelines.training.orchestrator import apply_promotion
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.world.engine import TownWorld


def town_day(training, release, town_days: dict[str, str]) -> str:
    """The release over a day in the first held-out town: the night's report drew it when it scored this
    checkpoint; else (a rollback, the report off) the town is played here."""
    try:
        return Path(town_days[release.checkpoint_id]).read_text()
    except (KeyError, OSError):
        config = training.config
        model, _ = load_checkpoint(release.path, TownWorld(config, 1).spec, device=training.device.device)
        return town_day_svg(config, evaluation_policy(model, training.device, config).actions, config.seeds.test.start)


def promote(night: NightContext, summary_record: dict, say: Callable[[str], None]) -> ReleaseOutcome:
    """The current release after the night's promotion rule (promoted this night or not)."""
    summary = AnnealSummary.model_validate_json(Path(summary_record["path"]).read_text())
    training = night.training
    outcome = apply_promotion(training.promotion, summary)
    say(f"promotion: {outcome.reason}")
    status = training.promotion.status()
    release = status.current_release
    scored = summary_record.get("held_out_reward", {})  # checkpoint id -> held-out reward, when the report ran
    pictures = {}
    if release is not None and release.path:  # what the released policy does: one held-out town over a day
        svg = town_day(training, release, summary_record.get("town_days", {}))
        pictures["town_day"] = Markdown(markdown_image(svg, f"release {release.release_id} over a day"))
    return ReleaseOutcome({"release_id": outcome.release_id, "promoted": outcome.promoted}, {
        **pictures,
        "promoted_this_run": outcome.promoted,
        "reason": outcome.reason,
        "release_id": str(outcome.release_id),
        "checkpoint_id": str(outcome.checkpoint_id),
        "path": FilePath(release.path if release else ""),
        "state": status.state,
        "releases": int(status.releases),
    }, str(outcome.release_id),
        release_held_out_reward=scored.get(release.checkpoint_id) if release else None, pass_streak=status.pass_streak)
