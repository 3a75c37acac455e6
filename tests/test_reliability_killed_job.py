"""A killed main job (`bash scripts/run.sh`, i.e. `dagster job execute`) never stalls the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

dagster = pytest.importorskip("dagster")
pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus  # noqa: E402
from dagster._core.launcher import WorkerStatus  # noqa: E402

from tests.test_training import TINY  # noqa: E402
from townlet_pipelines.pipeline import launcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHORT = {**TINY, "profile": "tiny",
         "bc": {**TINY["bc"], "epochs": 1, "dagger_rounds": 0},
         "anneal": {**TINY["anneal"], "schedule": [{"cycle": 0, "mode": "bc", "epochs": 1},
                                                   {"cycle": 1, "mode": "ppo", "epochs": 1}]}}


def _instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster_home" / "dagster.yaml").read_text())
    return home


def _run_sh(home: Path, config: Path | str, night: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, DAGSTER_HOME=str(home), TOWNLET_ARTIFACTS=str(home / "artifacts"))
    env.pop("TOWNLET_CONFIG", None)
    return subprocess.Popen(["bash", "scripts/run.sh", str(config), night], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _wait(what, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what.__doc__}")


def test_a_main_job_killed_mid_training_does_not_stall_the_next(tmp_path):
    """SIGKILL `bash scripts/run.sh` (its whole process group) while bc_checkpoint holds the `gpu` pool slot; the
    next `bash scripts/run.sh` fails the dead run, frees the slot and completes."""
    home = _instance_home(tmp_path)
    second_config = tmp_path / "short.yaml"
    second_config.write_text(yaml.safe_dump(SHORT))
    launcher.prepare(str(home))  # the instance made before this test's own polling opens it
    first = _run_sh(home, "smoke", "2026-11-05")  # as a user types it
    processes = [first]
    try:
        def training():
            """the first run's bc_checkpoint step to start"""
            assert first.poll() is None, first.communicate()[0]
            with DagsterInstance.from_config(str(home)) as instance:
                runs = instance.get_runs()
                return runs and any(event.step_key == "bc_checkpoint" for event in
                                    instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_START)) \
                    and runs[0].run_id

        run_id = _wait(training, 120)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        with DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # what the kill leaves
            assert run_id in instance.event_log_storage.get_concurrency_run_ids()  # holding the gpu slot

        second = _run_sh(home, second_config, "2026-11-06")
        processes.append(second)
        output, _ = second.communicate(timeout=120)  # before the fix: "Step blocked by limit for pool gpu" for ever
        assert f"run {run_id} (2026-11-05)" in output and "is gone" in output  # said before the new run starts
        with DagsterInstance.from_config(str(home)) as instance:
            killed = instance.get_run_by_id(run_id)
            assert killed.status == DagsterRunStatus.FAILURE
            assert killed.tags[f"{launcher.TAG}.pid"] != str(first.pid)  # the dagster CLI, not bash, recorded itself
            told = " ".join(event.message or "" for event in instance.all_logs(run_id))
            # Dead either way: gone from the process table, or a zombie that init has not reaped yet (the worker was
            # bash's child; killed with it, it is reparented to PID 1, which reaps when it gets to it).
            assert ("is gone (killed, out of memory or its terminal closed)" in told
                    or "is gone (it exited; only its zombie is left)" in told), told
            assert instance.event_log_storage.get_concurrency_run_ids() == set()
            newest = instance.get_runs(limit=1)[0]
            assert newest.run_id != run_id and newest.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
            # Both `gpu` pool steps ran (whether the guardrails then pass is another matter).
            succeeded = {event.step_key for event in instance.all_logs(newest.run_id,
                                                                       of_type=DagsterEventType.STEP_SUCCESS)}
            assert {"bc_checkpoint", "ppo_checkpoint"} <= succeeded, output
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_the_launcher_judges_recorded_workers_and_never_calls_an_unseen_one_dead():
    """Alive, dead (gone, or the pid reused by a newer process), and unknown for another host or PID namespace;
    the verdict covers runs that `dagster job execute` started (no run-worker event, only the recorded tags)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = launcher.worker_tags()
    cases = {
        "alive": here,
        "gone": launcher.worker_tags(gone.pid) | {f"{launcher.TAG}.start": "1"},
        "reused": here | {f"{launcher.TAG}.start": str(int(here[f"{launcher.TAG}.start"]) + 1)},
        "other host": launcher.worker_tags(gone.pid) | {f"{launcher.TAG}.host": "another-host"},
        "other namespace": launcher.worker_tags(gone.pid) | {f"{launcher.TAG}.pidns": "pid:[1]"},
    }
    assert all(here.values()) and here[f"{launcher.TAG}.pidns"].startswith("pid:[")
    verdicts = {}
    with DagsterInstance.ephemeral() as instance:
        run_launcher = launcher.MonitoredRunLauncher()
        run_launcher.register_instance(instance)
        for name, tags in cases.items():
            run = instance.add_run(DagsterRun(job_name="nightly_anneal", run_id=name.replace(" ", "-"), tags=tags,
                                              status=DagsterRunStatus.STARTED))
            verdicts[name] = run_launcher.check_run_worker_health(run)
        assert sorted(launcher.sweep_dead_runs(instance, log=None)) == ["gone", "reused"]
        statuses = {run.run_id: run.status for run in instance.get_runs()}
    assert {name: verdict.status for name, verdict in verdicts.items()} == {
        "alive": WorkerStatus.RUNNING, "gone": WorkerStatus.FAILED, "reused": WorkerStatus.FAILED,
        "other host": WorkerStatus.UNKNOWN, "other namespace": WorkerStatus.UNKNOWN}
    assert "another-host" in verdicts["other host"].msg and "unknown" in verdicts["other namespace"].msg
    assert statuses == {"alive": DagsterRunStatus.STARTED, "gone": DagsterRunStatus.FAILURE,
                        "reused": DagsterRunStatus.FAILURE, "other-host": DagsterRunStatus.STARTED,
                        "other-namespace": DagsterRunStatus.STARTED}
