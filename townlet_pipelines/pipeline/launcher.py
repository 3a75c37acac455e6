"""Dagster's default run launcher, plus a health check that notices a run worker that died.

With the default launcher a run whose process is killed (kill -9, the OOM killer, a reboot) stays STARTED
for ever and keeps its `gpu` pool slot, so every later run waits on the pool. Run monitoring (enabled in
`dagster_home/dagster.yaml`) asks the launcher about each started run; the default launcher cannot answer,
this one can: the run worker logs its pid when it starts ("Started process for run (pid: N)"), and a pid
that no longer exists, is a zombie or now belongs to a newer process means the worker is gone. Monitoring
then fails the run and frees its pool slots (`free_slots_after_run_end_seconds`), and the next run goes on.

The check reads this machine's process table, so it holds where the daemon and the run workers share a
machine (`dagster dev`, one host); a cluster uses its own launcher (Kubernetes, Docker, ECS), which checks
its workers itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterEventType, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

from townlet_pipelines.data.files import pid_exists

STARTED = "Started process for"


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def process_alive(pid: int, started_by: float) -> bool:
    """Whether `pid` is a live process that already existed at `started_by` (a Unix timestamp).

    On Linux a zombie counts as dead, and so does a newer process that reused the pid; elsewhere only
    existence is checked.
    """
    boot = _boot_time()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        stat = None
    if stat is not None and boot is not None:
        fields = stat.rsplit(")", 1)[1].split()  # after "(command name)": state is first, starttime 20th
        if fields[0] in ("Z", "X"):
            return False
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") <= started_by + 5.0
    return pid_exists(pid)


class MonitoredRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers run monitoring can check (see the module docstring)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        started = [event for event in self._instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
                   if (event.message or "").startswith(STARTED)]
        if not started:  # not started yet, or executed without a run worker (in a CLI process): no verdict
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker pid recorded yet")
        event = started[-1]
        metadata = event.dagster_event.engine_event_data.metadata if event.dagster_event else {}
        pid = int(metadata["pid"].value) if "pid" in metadata else None
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker did not record its pid")
        if process_alive(pid, event.timestamp):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is alive", run_worker_id=str(pid))
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker pid {pid} is gone (killed, out of memory or the machine restarted); "
            "the run is failed and its pool slots freed so later runs proceed", run_worker_id=str(pid))
