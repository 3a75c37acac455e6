"""The scripted expert's scores: kept per config and towns, rescored when damaged, and played ahead of need in a
forked process whose numbers are the ones a reader would have played (training/expert_scores.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from townlet_pipelines.config import load_config
from townlet_pipelines.training import expert_scores
from townlet_pipelines.training.constraint import validation_scores
from townlet_pipelines.training.evaluation import evaluate
from townlet_pipelines.world.policies import ScriptedExpert
from tests.processes import gone_within


def _counting(monkeypatch) -> list[str]:
    """Stand-in scorers that record each call (what is under test is the keeping, not the playing)."""
    calls: list[str] = []

    def validation(config):
        calls.append("validation")
        return {"reward_per_agent_day": -9.5, "queue_conflict_events_per_agent_day": 0.25}

    def guardrail(config):
        calls.append("guardrail")
        return {"report": {"reward_per_agent_day": -9.75}, "towns": {"reward_per_agent_day": [-9.5, -10.0]}}

    def references(config, seeds):
        calls.append("references")
        return {"scripted expert": {"reward_per_agent_day": -9.5}, "random": {"reward_per_agent_day": -30.25}}

    monkeypatch.setattr(expert_scores, "_score_validation", validation)
    monkeypatch.setattr(expert_scores, "_score_guardrail", guardrail)
    monkeypatch.setattr(expert_scores, "reference_scores", references)
    return calls


def _read_all(config, cache):
    return (expert_scores.expert_validation(config, cache), expert_scores.expert_guardrail(config, cache)[0],
            expert_scores.held_out_references(config, cache))


def test_the_experts_scores_are_kept_per_config_and_towns_and_rescored_when_damaged(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    config = load_config("smoke")
    first = _read_all(config, tmp_path)
    assert _read_all(config, tmp_path) == first and len(calls) == 3, "read back, not scored again"
    report, towns = expert_scores.expert_guardrail(config, tmp_path)
    assert towns["reward_per_agent_day"].dtype == np.float64 and towns["reward_per_agent_day"].tolist() == [-9.5, -10.0]
    longer = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"ticks": 720})})
    _read_all(longer, tmp_path)  # another evaluation length: other entries
    more = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"report_towns": 3})})
    expert_scores.held_out_references(more, tmp_path)  # other held-out towns: another entry
    expert_scores.expert_validation(more, tmp_path)  # the same validation towns: read back
    assert len(calls) == 7 and len(list(tmp_path.glob("*.json"))) == 7
    for entry in sorted(tmp_path.glob("*.json")):
        for damage in ("{not json", "{}", json.dumps({"random": {"reward_per_agent_day": "high"}})):
            entry.write_text(damage)
            _read_all(config, tmp_path)
    assert len(calls) == 7 + 3 * 3 and _read_all(config, tmp_path) == first, "each damaged entry scored again, once"
    assert expert_scores.missing(config, tmp_path) == []
    assert _read_all(config, None) == first and len(calls) == 7 + 3 * 3 + 3, "no cache folder: scored every time"


def test_scores_played_ahead_are_the_numbers_a_reader_would_have_played(tmp_path):
    config = load_config("smoke")
    ahead = expert_scores.score_ahead(config, tmp_path)
    assert ahead is not None
    validation = expert_scores.expert_validation(config, tmp_path)  # waits for the process where it is scoring
    report, towns = expert_scores.expert_guardrail(config, tmp_path)
    references = expert_scores.held_out_references(config, tmp_path)
    ahead.join(60)
    assert ahead.exitcode == 0 and expert_scores.missing(config, tmp_path) == []
    assert expert_scores.score_ahead(config, tmp_path) is None, "nothing missing: no process"
    expert = ScriptedExpert(config.expert).act
    assert validation == validation_scores(config, expert)
    played: dict = {}
    assert report == evaluate(config, expert, per_town=played)
    assert set(towns) == set(played)
    for key, values in played.items():
        np.testing.assert_array_equal(towns[key], values, err_msg=key)
    assert references == expert_scores.reference_scores(config, expert_scores.held_out_seeds(config))


def _hold(path, ready):
    with expert_scores._locked(path):
        ready.set()
        time.sleep(120)


def test_an_entry_whose_scorer_was_killed_is_scored_by_its_reader(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    config = load_config("smoke")
    path = expert_scores.validation_path(config, tmp_path)
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold, args=(path, ready), daemon=True)
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)  # killed while it held the entry's lock, before writing it
    holder.join(30)
    assert expert_scores.expert_validation(config, tmp_path)["reward_per_agent_day"] == -9.5
    assert calls == ["validation"] and path.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_scoring_process_leaves_when_its_parent_is_killed(tmp_path):
    """A killed night leaves no scoring process behind (its scorers here sleep instead of playing)."""
    script = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from townlet_pipelines.config import load_config\n"
        "from townlet_pipelines.training import expert_scores\n"
        "expert_scores._score_validation = lambda config: time.sleep(600)\n"
        "print(expert_scores.score_ahead(load_config('smoke'), Path(sys.argv[1])).pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    scorer = int(run.stdout.split()[0])

    assert gone_within(scorer, 15), f"scoring process {scorer} outlived its killed parent"
