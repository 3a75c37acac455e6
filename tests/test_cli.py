"""The `townlet` command end to end on small configs: what a user types, what it prints."""

from __future__ import annotations

import json

import pytest

from townlet_pipelines.cli import main


def test_anneal_exit_codes_are_distinct_and_documented():
    from townlet_pipelines.cli import ANNEAL_EXIT_CODES, build_parser

    assert ANNEAL_EXIT_CODES == {"PASS": 0, "FAIL": 3, "HOLD": 4}
    train = next(action for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if action.dest == "kind")
    assert "3 on FAIL, 4 on HOLD" in train.choices["anneal"].format_help()


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
    from townlet_pipelines.cli import ANNEAL_EXIT_CODES

    root = str(tmp_path / "artifacts")
    code = main(["train", "anneal", "--config", "smoke", "--artifacts", root, "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == ANNEAL_EXIT_CODES[summary["status"]] and summary["final_checkpoint_path"]
    assert summary["namespace"].startswith("smoke-")
    status = json.loads(run(capsys, "promotion", "status", "--config", "smoke", "--artifacts", root, "--json"))
    assert status["releases"] == (1 if summary["status"] == "PASS" else 0)
    default_status = json.loads(run(capsys, "promotion", "status", "--artifacts", root, "--json"))
    assert default_status["releases"] == 0  # the default profile's state is its own: smoke never touches it
    table = run(capsys, "evaluate", summary["final_checkpoint_path"], "--config", "smoke", "--seeds", "50:52")
    assert "scripted expert" in table and "random" in table and "checkpoint" in table and "2 towns" in table
    assert main(["evaluate", summary["final_checkpoint_path"]]) == 2  # trained for smoke's world, not default's
    assert "evaluate it with the config it was trained with" in capsys.readouterr().err
    assert main(["evaluate", summary["final_checkpoint_path"], "--config", "smoke", "--seeds", "9:3"]) == 2
    assert "--seeds" in capsys.readouterr().err
    report = run(capsys, "report", "--config", "smoke", "--artifacts", root)
    assert "latest anneal summary" in report
    assert "no anneal summary" in run(capsys, "report", "--artifacts", root)  # smoke's run is not default's
    records = json.loads(run(capsys, "soak", "--config", "smoke", "--cycles", "2", "--artifacts", root, "--json"))
    assert [record["data_mode"] for record in records] == ["replay", "rollout"]  # alternating, each a checkpoint
    assert all(record["checkpoint_id"] for record in records)


def test_a_users_mistake_is_one_line_and_exit_two(tmp_path, capsys):
    from townlet_pipelines.config import load_config
    from townlet_pipelines.training.orchestrator import state_dir

    root = str(tmp_path / "artifacts")
    assert main(["promotion", "rollback", "--release", "nope", "--artifacts", root]) == 2
    assert capsys.readouterr().err == "townlet: error: no release 'nope' to roll back to (releases: none)\n"
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    (state_dir(root, load_config("default")) / "promotion.json").write_text("{bad")
    assert main(["promotion", "status", "--artifacts", root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "promotion.json" in err and "Traceback" not in err


def test_simulate_draws_the_town_into_an_svg(tmp_path, capsys):
    import re
    import xml.etree.ElementTree as ET

    out = tmp_path / "town.svg"
    assert main(["simulate", "--config", "smoke", "--towns", "1", "--days", "1", "--render-svg", str(out)]) == 0
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and 2_000 < out.stat().st_size < 50_000
    titles = [e.text for e in root.iter("{http://www.w3.org/2000/svg}text") if e.get("class") == "frame-title"]
    assert len(titles) == 6 and titles[0].startswith("01:00  pantry ")  # a frame after every 60th tick
    assert all(re.fullmatch(r"\d\d:\d\d  pantry \d+", title) for title in titles)
    assert f"wrote {out}" in capsys.readouterr().err


def test_the_removed_render_png_flag_is_refused_and_render_svg_is_offered(tmp_path, capsys):
    out = tmp_path / "town.png"
    with pytest.raises(SystemExit) as stopped:  # argparse: an unknown flag, exit 2, nothing written
        main(["simulate", "--config", "smoke", "--towns", "1", "--ticks", "60", "--render-png", str(out)])
    assert stopped.value.code == 2 and "--render-png" in capsys.readouterr().err
    assert not out.exists()
    from townlet_pipelines.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["simulate"].format_help()
    assert "--render-svg FILE" in help_text and "--render-png" not in help_text


@pytest.mark.parametrize("argv", [
    ["simulate", "--config", "smoke", "--towns", "1", "--ticks", "0"],
    ["simulate", "--config", "smoke", "--towns", "1", "--ticks", "5", "--render", "--render-every", "0"],
    ["capture", "--config", "smoke", "--towns", "1", "--ticks", "5", "--out", "/proc/unused", "--shard-rows", "-5"],
    ["soak", "--cycles", "0"],
])
def test_a_count_below_one_is_refused_by_name(argv, capsys):
    """Before: a traceback (no ticks, a modulo by zero), or exit 0 with nothing done (no cycles, a shard a tick)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"argument {argv[-2]}: at least 1, got {argv[-1]}")


def test_training_refuses_another_worlds_data_and_checkpoint_before_making_its_run_folder(tmp_path, capsys):
    """Smoke data and a smoke checkpoint with the default config would train a network for the wrong towns; each
    is refused in one line, and no run folder is left behind."""
    from townlet_pipelines.config import load_config
    from townlet_pipelines.training.checkpoints import new_network, save_checkpoint
    from townlet_pipelines.world.engine import TownWorld

    smoke = load_config("smoke")
    run(capsys, "capture", "--config", "smoke", "--towns", "1", "--ticks", "5", "--out", str(tmp_path / "smoke-data"))
    save_checkpoint(tmp_path / "smoke-bc", new_network(TownWorld(smoke, 1).spec, smoke.model), "bc",
                    smoke.model_dump(mode="json"), None, None, {})
    root = str(tmp_path / "artifacts")
    assert main(["train", "bc", "--dataset", str(tmp_path / "smoke-data"), "--artifacts", root]) == 2
    assert "captured in another world" in capsys.readouterr().err
    assert main(["train", "ppo", "--init", str(tmp_path / "smoke-bc"), "--mode", "rollout", "--artifacts", root]) == 2
    assert "trained for the world of profile 'smoke'" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("night, told", [("2999-01-01", "it has not ended yet"), ("20261130", "not a date"),
                                         ("2001-01-01", "before the first night")])
def test_train_anneal_night_refuses_the_nights_run_sh_refuses(night, told, tmp_path, capsys):
    """Before: a future night, one before the first and a date without dashes each ran, and could promote."""
    assert main(["train", "anneal", "--config", "smoke", "--night", night, "--artifacts", str(tmp_path)]) == 2
    assert told in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_report_skips_a_summary_it_cannot_read(tmp_path, capsys):
    for run_id, text in (("r1", "[1]"), ("r2", "{}")):
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        (tmp_path / "runs" / run_id / "anneal_summary.json").write_text(text)
    assert main(["report", "--config", "smoke", "--artifacts", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("not a readable anneal summary") == 2 and "no anneal summary" in captured.out


@pytest.mark.parametrize("text, told", [("", "the config file is empty"),
                                        ("profile: ../../etc\n", "profile: String should match pattern"),
                                        ("model: {conv_channels: [0]}\n", "model.conv_channels.0")])
def test_a_config_that_would_misplace_or_break_a_run_is_refused_by_field(text, told, tmp_path):
    from townlet_pipelines.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=told.replace(".", r"\.")):
        load_config(path)
