"""The held-out report's shortcuts: reference rows kept per config, the town-day picture taken while scoring."""

from __future__ import annotations

import json

import pytest

from townlet_pipelines.config import load_config
from townlet_pipelines.training.cache import cached_reference_scores
from townlet_pipelines.pictures import FirstDay
from townlet_pipelines.training.evaluation import evaluate
from townlet_pipelines.world.policies import ScriptedExpert

NAMES = ("scripted expert", "random")


def test_reference_rows_are_scored_once_per_config_and_rescored_when_damaged(tmp_path):
    config, calls = load_config("smoke"), []

    def score():
        calls.append(1)
        return {"scripted expert": {"reward_per_agent_day": -9.5}, "random": {"reward_per_agent_day": -30.25}}

    first = cached_reference_scores(config, (1, 2), NAMES, score, tmp_path)
    assert cached_reference_scores(config, (1, 2), NAMES, score, tmp_path) == first and len(calls) == 1
    cached_reference_scores(config, (1, 3), NAMES, score, tmp_path)  # other towns: another entry
    longer = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"ticks": 720})})
    cached_reference_scores(longer, (1, 2), NAMES, score, tmp_path)  # another evaluation: another entry
    assert len(calls) == 3 and len(list((tmp_path / "cache").glob("reference-*.json"))) == 3
    entry = sorted((tmp_path / "cache").glob("reference-*.json"))[0]
    for damage in ("{not json", "{}", json.dumps({"random": {"reward_per_agent_day": "high"}}),
                   json.dumps({"random": {"reward_per_agent_day": -30.25}})):  # the expert's row missing
        entry.write_text(damage)
        cached_reference_scores(config, (1, 2), NAMES, score, tmp_path)
        cached_reference_scores(config, (1, 3), NAMES, score, tmp_path)
        cached_reference_scores(longer, (1, 2), NAMES, score, tmp_path)
    assert len(calls) == 7, "each damaged entry is scored again, once, and the others are read back"
    assert cached_reference_scores(config, (1, 2), NAMES, score, None) == first and len(calls) == 8  # no root: no cache


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
