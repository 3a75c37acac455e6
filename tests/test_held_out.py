"""The held-out report's shortcut: the town-day picture taken while scoring (its reference rows are kept per
config: tests/test_expert_scores.py)."""

from __future__ import annotations

import pytest

from townlet_pipelines.config import load_config
from townlet_pipelines.pictures import FirstDay
from townlet_pipelines.training.evaluation import evaluate
from townlet_pipelines.world.policies import ScriptedExpert


def test_the_town_day_taken_while_scoring_is_the_day_a_replay_of_that_town_draws():
    from townlet_pipelines.pictures import town_day_svg

    config = load_config("smoke")
    seeds = config.seeds.test.seeds()[:3]
    watch = FirstDay(config.world.day_ticks)
    evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds, ticks=2 * config.world.day_ticks, on_tick=watch)
    assert len(watch.strip.frames) == 6, "the first day only, six evenly spaced frames"
    assert watch.strip.svg() == town_day_svg(config, ScriptedExpert(config.expert).act, seeds[0])


def test_the_report_keeps_a_town_day_per_scored_checkpoint_and_the_release_reads_its_own(tmp_path):
    pytest.importorskip("dagster")
    from types import SimpleNamespace

    from townlet_pipelines.nightly.release import town_day as _town_day
    from townlet_pipelines.nightly.report import keep_town_days as _keep_town_days

    config = load_config("smoke")
    watch = FirstDay(config.world.day_ticks)
    evaluate(config, ScriptedExpert(config.expert).act, seeds=config.seeds.test.seeds()[:2], on_tick=watch)
    strips = {"candidate": watch.strip}
    kept = _keep_town_days(tmp_path, strips, {"candidate": "c0ffee", "champion": None})
    assert kept == {"c0ffee": str(tmp_path / "town_day-c0ffee.svg")}
    drawn = strips["candidate"].svg()
    assert (tmp_path / "town_day-c0ffee.svg").read_text() == drawn
    assert _town_day(None, SimpleNamespace(checkpoint_id="c0ffee"), kept) == drawn  # read back, nothing played
