"""The console and CI around the code location: `scripts/run.sh` says a night's verdict in a few lines and exits
with it, and `scripts/test.sh` runs Dagster's own check of the code location before pytest. (A file of its own:
both start real processes, so pytest-xdist runs them beside tests/test_observability.py.)"""

from __future__ import annotations

import pytest

dagster = pytest.importorskip("dagster")

from townlet_pipelines.pipeline.definitions import defs  # noqa: E402


# ---------------------------------------------------------------------------- Dagster's own check, in CI
def test_the_test_command_validates_the_code_location_first_and_stops_on_a_broken_one(tmp_path):
    """scripts/test.sh runs `dagster definitions validate` on workspace.yaml before pytest: here on a copy of the
    repository whose location raises on import, so it must stop there, non-zero, without starting pytest."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "scripts").mkdir()
    for script in ("test.sh", "setup.sh"):
        shutil.copy(root / "scripts" / script, tmp_path / "scripts" / script)
    (tmp_path / ".venv").symlink_to(root / ".venv")
    for name in ("pyproject.toml", "constraints.txt"):  # as old as the install stamp: setup.sh installs nothing
        shutil.copy2(root / name, tmp_path / name)
        os.utime(tmp_path / name, (0, 0))
    (tmp_path / "broken_location.py").write_text("raise RuntimeError('a code location that does not load')\n")
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: broken_location\n      working_directory: .\n")
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "test.sh"), "-p", "no:xdist"], capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"})
    told = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Validation failed for code location broken_location" in told and "does not load" in told
    assert "passed" not in told and "no tests ran" not in told  # pytest never started


# ---------------------------------------------------------------------------- a calm console
def test_run_sh_on_a_night_that_holds_prints_the_verdict_and_exits_4_without_a_traceback(tmp_path):
    """scripts/run.sh on the smoke profile, shrunk and forced to HOLD (two PPO stages, loss_tolerance 0: the
    second stage's loss differs from the first's at all): the verdict and its sentence, where the summary is, exit
    4; Dagster's own output only in the log file, and the instance keeps every event."""
    pytest.importorskip("torch")
    import os
    import subprocess
    from pathlib import Path

    import yaml
    from dagster import DagsterInstance

    from townlet_pipelines.config import load_config
    from townlet_pipelines.pipeline.console import verdict_of_run

    root = Path(__file__).resolve().parents[1]
    smoke = load_config("smoke").model_dump(mode="json")
    smoke["profile"] = "held"
    smoke["rollout"].update(towns=2)
    smoke["bc"].update(epochs=1, dagger_rounds=0)
    smoke["ppo"].update(rollout_towns=2, rollout_ticks=32, updates=1)
    smoke["evaluation"].update(ticks=120, report_towns=0)
    smoke["anneal"].update(loss_tolerance=0.0, bc_accuracy_threshold=0.0, schedule=[
        {"cycle": 0, "mode": "bc", "epochs": 1}, {"cycle": 1, "mode": "ppo", "epochs": 1, "bc_weight": 0.1},
        {"cycle": 2, "mode": "ppo", "epochs": 1, "bc_weight": 0.1}])
    config = tmp_path / "held.yaml"
    config.write_text(yaml.safe_dump(smoke))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((root / "dagster_home" / "dagster.yaml").read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home), TOWNLET_ARTIFACTS=str(tmp_path / "artifacts"))
    done = subprocess.run(["bash", str(root / "scripts" / "run.sh"), str(config), "2026-11-05"], capture_output=True,
                          text=True, timeout=300, env=env)
    told = done.stdout + done.stderr
    assert done.returncode == 4, told
    assert "Traceback" not in told and "Stack Trace" not in told and "dagster - " not in told, told
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        verdict = verdict_of_run(instance, run.run_id)
        assert any(record.dagster_event is not None and record.dagster_event.event_type_value == "STEP_FAILURE"
                   for record in instance.all_logs(run.run_id))  # the full event log stays in the instance
    assert verdict["status"] == "HOLD" and verdict["reason"]
    assert f"night 2026-11-05: HOLD: {verdict['reason']}" in done.stdout.splitlines()
    assert "latest anneal summary: " in done.stdout and verdict["path"] in done.stdout  # where the report is
    log = Path(run.tags["townlet/console_log"])
    assert log.parent == home / "logs" and "Stack Trace" in log.read_text()  # Dagster's own output, kept


def test_the_console_tells_a_run_that_failed_before_judging_in_one_line_and_a_run_that_never_started(tmp_path):
    from dagster import DagsterInstance

    from townlet_pipelines.pipeline.console import LOG_TAG, tell

    log = tmp_path / "night.log"
    log.write_text("Traceback (most recent call last):\n...\nyaml.scanner.ScannerError: mapping values not allowed\n")
    with DagsterInstance.ephemeral() as instance:
        lines: list[str] = []
        assert tell(log, 1, instance, lines.append) == 2  # dagster exited before a run existed
        assert lines[0].startswith("no run started (dagster exited 1)") and "ScannerError" in lines[-1]
        result = defs.resolve_job_def("capture_only").execute_in_process(
            run_config={"resources": {"townlet": {"config": {"config_path": "smoke", "artifacts_root": str(tmp_path),
                                                             "overrides": "bc: {val_fraction: 0}"}}}},
            instance=instance, partition_key="2026-11-05", tags={LOG_TAG: str(log)}, raise_on_error=False)
        assert not result.success
        lines.clear()
        assert tell(log, 1, instance, lines.append) == 1
    assert lines[0] == "night 2026-11-05: not judged; the run failure"
    assert lines[1].startswith("  replay_manifest: ") and "bc.val_fraction: Input should be greater than 0" in lines[1]
    assert "Traceback" not in "\n".join(lines) and str(log) in lines[-1]
