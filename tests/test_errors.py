"""What is the user's to fix is told in one line; a bare ValueError is a programming error and keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from townlet_pipelines.cli import main
from townlet_pipelines.config import ConfigError, UsageError, load_config
from townlet_pipelines.errors import is_user_error

ROOT = Path(__file__).resolve().parents[1]


def test_a_usage_error_is_the_users_and_a_bare_value_error_is_not():
    assert is_user_error(UsageError("--seeds: '9:3' is an empty or negative range"))
    assert is_user_error(ConfigError("x.yaml: invalid configuration"))
    assert not is_user_error(ValueError("operands could not be broadcast together with shapes (3,) (4,)"))
    assert issubclass(UsageError, ValueError)  # callers that catch ValueError still catch it


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory) -> Path:
    """An untrained checkpoint of the smoke profile's world: `evaluate` reads it before it reads --seeds."""
    pytest.importorskip("torch")
    from townlet_pipelines.training.checkpoints import save_checkpoint
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.engine import TownWorld

    smoke = load_config("smoke")
    folder = tmp_path_factory.mktemp("checkpoint") / "bc"
    save_checkpoint(folder, PolicyNetwork(TownWorld(smoke, 1).spec, smoke.model), "bc", smoke.model_dump(mode="json"),
                    None, None, {}, optimizer=None)
    return folder


@pytest.mark.parametrize("seeds, told", [
    ("9:3", "--seeds: '9:3' is an empty or negative range"),
    ("many", "--seeds: expected test, guardrail or START:STOP, got 'many'"),
])
def test_bad_seeds_on_the_command_line_are_one_line_and_exit_two(smoke_checkpoint, capsys, seeds, told):
    assert main(["evaluate", str(smoke_checkpoint), "--config", "smoke", "--seeds", seeds]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"townlet: error: {told}\n" and captured.out == ""


def test_bad_seeds_print_no_traceback_from_the_installed_command(smoke_checkpoint):
    done = subprocess.run([sys.executable, "-m", "townlet_pipelines.cli", "evaluate", str(smoke_checkpoint),
                           "--config", "smoke", "--seeds", "9:3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr == "townlet: error: --seeds: '9:3' is an empty or negative range\n"


def test_a_refusal_below_the_cli_is_one_line_too(capsys, tmp_path):
    """The command line refuses a count below 1 first (tests/test_cli.py); the layers below refuse it as well,
    for every caller that is not the CLI, with a UsageError the CLI would tell in one line."""
    from townlet_pipelines.data.capture import acting_policy, capture
    from townlet_pipelines.errors import one_line
    from townlet_pipelines.world.engine import TownWorld

    config = load_config("smoke")
    with pytest.raises(UsageError) as world:
        TownWorld(config, 0)
    assert one_line(world.value) == "towns must be at least 1, got 0"
    with pytest.raises(UsageError) as captured:
        capture(config, acting_policy("scripted", config, 0, 0.0), 1, 0, 0, tmp_path / "d")
    assert one_line(captured.value) == "towns and ticks must be positive, got towns=1 ticks=0"
    assert not (tmp_path / "d").exists()


def test_an_internal_value_error_keeps_its_traceback(monkeypatch, capsys):
    from townlet_pipelines.world import simulate

    def broken(*args, **kwargs):
        raise ValueError("shape mismatch")

    monkeypatch.setattr(simulate, "simulate", broken)
    with pytest.raises(ValueError, match="shape mismatch"):  # re-raised: Python prints its traceback
        main(["simulate", "--towns", "1", "--ticks", "1"])
    assert "townlet: error" not in capsys.readouterr().err


def test_an_internal_value_error_exits_with_its_traceback_from_the_installed_command(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import sys\nfrom townlet_pipelines import cli\nfrom townlet_pipelines.world import simulate\n"
                      "def broken(*args, **kwargs):\n    raise ValueError('shape mismatch')\n"
                      "simulate.simulate = broken\nsys.exit(cli.main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, str(script), "simulate", "--towns", "1", "--ticks", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ValueError: shape mismatch" in done.stderr
    assert "townlet: error" not in done.stderr
