"""Crash safety: a killed training run resumes to the checkpoint an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from tests.test_training import TINY  # noqa: E402
from townlet_pipelines.config import config_from_mapping  # noqa: E402
from townlet_pipelines.training import orchestrator  # noqa: E402

SLOWER = {  # enough epochs and updates that a kill lands mid-run
    "bc": {**TINY["bc"], "epochs": 10},
    "ppo": {**TINY["ppo"], "updates": 10},
    "runtime": {"device": "cpu", "progress_every_epochs": 1, "progress_every_updates": 2},
}


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **SLOWER}))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    config = config_from_mapping({**TINY, **SLOWER}, "tiny")
    return orchestrator.capture_expert(config, tmp_path_factory.mktemp("expert") / "data").path


def _townlet(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "townlet_pipelines.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _kill_when(process: subprocess.Popen, pattern: str, root: Path, timeout: float = 120.0) -> Path:
    """SIGKILL the process as soon as a file matching `pattern` exists under root; the matching path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return found[0]
        assert process.poll() is None, f"finished before the kill: {process.communicate()}"
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"no {pattern} under {root} within {timeout}s")


@pytest.mark.parametrize("kind, step", [("bc", "step-000002"), ("ppo", "step-000004")])
def test_a_killed_run_resumes_to_the_uninterrupted_result(kind, step, tmp_path, dataset):
    config_file = _config_file(tmp_path)
    root = tmp_path / "artifacts"
    extra = ["--dataset", str(dataset)] if kind == "bc" else []
    process = _townlet("train", kind, "--config", str(config_file), "--artifacts", str(root), "--json", *extra)
    progress = _kill_when(process, f"runs/*/{kind}.progress/{step}", root)
    assert process.returncode == -signal.SIGKILL
    run_dir = progress.parent.parent
    assert not (run_dir / kind / "checkpoint.json").exists()  # the kill came before the end

    resumed = _townlet("train", kind, "--resume", str(run_dir), "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    result = json.loads(out)
    assert not (run_dir / f"{kind}.progress").exists()  # a finished stage keeps no progress folder

    config = config_from_mapping({**TINY, **SLOWER}, "tiny")
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path / "reference"),
                                        tmp_path / "reference")
    reference = (orchestrator.run_bc(context, dataset) if kind == "bc" else orchestrator.run_ppo(context))
    assert result["checkpoint_id"] == reference.checkpoint_id  # bit-identical weights
    log = [json.loads(line) for path in sorted((run_dir / "logs").glob(f"{kind}.*.jsonl"))
           for line in path.read_text().splitlines()]
    key = "epoch" if kind == "bc" else "update"
    steps = [entry[key] for entry in log if entry.get("validation") is None]
    assert steps == sorted(set(steps))  # the resumed run re-logged nothing twice


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    from townlet_pipelines.cli import main

    empty = tmp_path / "runs" / "x"
    empty.mkdir(parents=True)
    assert main(["train", "bc", "--resume", str(empty)]) == 2
    assert "not a training run folder to resume" in capsys.readouterr().err
    orchestrator.record_invocation(empty, "bc", config_from_mapping(TINY, "tiny"), dataset="d")
    assert main(["train", "bc", "--resume", str(empty)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "ppo", "--resume", str(empty)]) == 2
    assert "holds a bc run, not ppo" in capsys.readouterr().err
