"""The `townlet` command end to end on small configs: what a user types, what it prints."""

from __future__ import annotations

import json

import pytest

from townlet_pipelines.cli import main


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_simulate_prints_the_kpis_and_renders(capsys):
    out = run(capsys, "simulate", "--towns", "2", "--ticks", "120", "--render", "--render-every", "60")
    assert "agent-ticks/s" in out and "queue conflicts per agent-day" in out
    assert out.count("town 0  day 0") == 2  # two frames
    report = json.loads(run(capsys, "simulate", "--towns", "2", "--ticks", "60", "--json", "--policy", "random"))
    assert report["policy"] == "random" and report["ticks"] == 60


def test_capture_and_inspect(tmp_path, capsys):
    out = run(capsys, "capture", "--config", "smoke", "--towns", "2", "--ticks", "90", "--out", str(tmp_path / "d"))
    assert "captured 720 agent-ticks" in out
    summary = run(capsys, "dataset", "inspect", str(tmp_path / "d"))
    assert "every row" in summary and "rows            720" in summary
    assert main(["capture", "--config", "smoke", "--towns", "2", "--ticks", "90", "--out", str(tmp_path / "d")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_train_evaluate_promotion_and_soak(tmp_path, capsys):
    pytest.importorskip("torch")
    root = str(tmp_path / "artifacts")
    summary = json.loads(run(capsys, "train", "anneal", "--config", "smoke", "--artifacts", root, "--json"))
    assert summary["status"] in ("PASS", "HOLD") and summary["final_checkpoint_path"]
    status = json.loads(run(capsys, "promotion", "status", "--config", "smoke", "--artifacts", root, "--json"))
    assert status["releases"] == (1 if summary["status"] == "PASS" else 0)
    table = run(capsys, "evaluate", summary["final_checkpoint_path"], "--config", "smoke")
    assert "scripted expert" in table and "random" in table and "checkpoint" in table
    report = run(capsys, "report", "--config", "smoke", "--artifacts", root)
    assert "latest anneal summary" in report
    soak = run(capsys, "soak", "--config", "smoke", "--cycles", "2", "--artifacts", root)
    lines = [line.split() for line in soak.splitlines()[1:]]
    assert [line[1] for line in lines] == ["replay", "rollout"]
