"""Who runs a run, whether that process still lives, and the sweep that frees what a dead run left behind.

A run whose process is killed (kill -9, the OOM killer, a closed terminal, a reboot) stays STARTED for ever
and keeps its `gpu` pool slot, so every later run waits on the pool ("Step blocked by limit for pool gpu").
Two paths lead there:

- `dagster job execute` (the main job, `scripts/run.sh`) runs the whole run inside the CLI process: there is
  no run launcher and no run-worker pid.
- a run launched from the UI or the schedule runs in a run worker that the code server spawns.

Either way, the process that executes a run's steps in-process records who it is when its resources start
(`claim_run`, called by the `night_records` IO manager): host, PID namespace (the inode of
`/proc/self/ns/pid`), boot id, pid and the process's start time, as run tags (`townlet/worker.*`). From
those, `worker_verdict` tells "alive", "dead" (the pid is gone, a zombie, or now another process; the
machine rebooted) or "unknown" (another host or PID namespace, or no `/proc` to tell a reused pid): a run
is only ever called dead where this process can see its worker's process table.

`sweep_dead_runs` fails every STARTED/STARTING run whose recorded worker is dead and frees the pool slots of
those runs and of runs that already ended; each new run calls it when it starts (in `claim_run`), and so
does `scripts/run.sh` before it starts one. `MonitoredRunLauncher` gives run monitoring (the daemon, under
`dagster dev`) the same verdict, so a killed run is failed there within `poll_interval_seconds` too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, DefaultRunLauncher, RunsFilter
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from townlet_pipelines.config import UsageError
from townlet_pipelines.data.files import pid_exists
from townlet_pipelines.training.nights import check_night, last_ended_night  # light: the config alone

STARTED = "Started process for"
TAG = "townlet/worker"  # run tags townlet/worker.host, .pidns, .boot, .pid, .start
FIELDS = ("host", "pidns", "boot", "pid", "start")
IN_PROGRESS = ("STARTING", "STARTED", "CANCELING")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "none"  # no /proc (not Linux): only existence can be checked


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id") or "none"


def _start_ticks(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, or None when it does not exist here."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(command name)": state is first, starttime the 20th
    return fields[0], fields[19]


def _boot_time() -> float | None:
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def identity(pid: int | None = None) -> dict[str, str]:
    """This machine's view of a process of its own (default: this one), as the run tags record it."""
    pid = os.getpid() if pid is None else pid
    started = _start_ticks(pid)
    return {"host": socket.gethostname(), "pidns": _pid_namespace(), "boot": _boot_id(), "pid": str(pid),
            "start": started[1] if started else "unknown"}


def worker_tags(pid: int | None = None) -> dict[str, str]:
    return {f"{TAG}.{key}": value for key, value in identity(pid).items()}


def recorded_worker(tags) -> dict[str, str] | None:
    recorded = {key: tags.get(f"{TAG}.{key}") for key in FIELDS}
    return recorded if all(recorded.values()) else None


def worker_verdict(worker: dict[str, str]) -> tuple[str, str]:
    """("alive" | "dead" | "unknown", why) for a recorded worker, judged from this process."""
    here = identity()
    name = f"pid {worker['pid']} on host {worker['host']}"
    if worker["host"] != here["host"] or worker["pidns"] != here["pidns"]:
        return "unknown", (f"run worker {name} (PID namespace {worker['pidns']}) is not visible from host "
                           f"{here['host']} (PID namespace {here['pidns']}): its liveness is unknown here")
    if worker["boot"] != "none" and here["boot"] != "none" and worker["boot"] != here["boot"]:
        return "dead", f"run worker {name} is gone: the machine restarted since it started"
    pid = int(worker["pid"])
    seen = _start_ticks(pid)
    if seen is None:
        if here["pidns"] == "none":  # no /proc: existence is all there is
            if pid_exists(pid):
                return "unknown", f"run worker {name} exists, but without /proc a reused pid cannot be told apart"
        return "dead", f"run worker {name} is gone (killed, out of memory or its terminal closed)"
    state, start = seen
    if state in ("Z", "X"):
        return "dead", f"run worker {name} is gone (it exited; only its zombie is left)"
    if worker["start"] != "unknown" and start != worker["start"]:
        return "dead", f"run worker {name} is gone (the pid now belongs to a newer process)"
    return "alive", f"run worker {name} is alive"


def _legacy_verdict(pid: int, started_by: float) -> tuple[str, str]:
    """A worker known only by the pid of its "Started process" event: it has not started its resources yet (the
    first few seconds of a launched run), so it recorded no host; judged on this host's process table."""
    seen, boot = _start_ticks(pid), _boot_time()
    if seen is None and not pid_exists(pid):
        return "dead", f"run worker pid {pid} is gone (killed, out of memory or the machine restarted)"
    if seen is not None and boot is not None:
        if seen[0] in ("Z", "X") or boot + int(seen[1]) / os.sysconf("SC_CLK_TCK") > started_by + 5.0:
            return "dead", f"run worker pid {pid} is gone (a zombie, or the pid now belongs to a newer process)"
        return "alive", f"run worker pid {pid} is alive"
    return "unknown", f"run worker pid {pid} exists, but without /proc a reused pid cannot be told apart"


def claim_run(instance, run, sweep: bool = True) -> None:
    """Record this process as the run's worker (once per run), then sweep the runs dead workers left behind."""
    if instance is None or run is None:
        return
    if recorded_worker(run.tags) is None:
        instance.add_run_tags(run.run_id, worker_tags())
    if sweep:
        try:
            sweep_dead_runs(instance, skip=run.run_id, log=None)
        except Exception:  # noqa: BLE001 - the sweep helps later runs; it never fails this one
            logging.getLogger("townlet").warning("could not sweep the runs dead workers left", exc_info=True)


def sweep_dead_runs(instance, skip: str | None = None, log=print) -> list[str]:
    """Fail each in-progress run whose recorded worker is provably dead, and free the pool slots of those runs
    and of runs that ended; the ids of the runs failed. Runs whose worker is alive or unknown are left alone."""
    failed = []
    statuses = [DagsterRunStatus[name] for name in IN_PROGRESS]
    for run in instance.get_runs(filters=RunsFilter(statuses=statuses)):
        worker = recorded_worker(run.tags)
        if run.run_id == skip or worker is None:
            continue
        verdict, why = worker_verdict(worker)
        if verdict != "dead":
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status not in statuses:
            continue  # another sweeper got there first
        instance.report_run_failed(current, f"{why}: the run is failed and its pool slots freed so later runs "
                                            "proceed")
        failed.append(run.run_id)
        if log:
            log(f"run {run.run_id} ({run.tags.get('dagster/partition', 'no night')}): {why}; marked failed")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holding = set(storage.get_concurrency_run_ids())
        if holding:
            ended = {run.run_id for run in instance.get_runs(filters=RunsFilter(run_ids=list(holding),
                                                                              statuses=list(FINISHED_STATUSES)))}
            for run_id in sorted(ended | (holding & set(failed))):
                storage.free_concurrency_slots_for_run(run_id)
                if log:
                    log(f"freed the pool slots of run {run_id}")
    return failed


class MonitoredRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose runs run monitoring can check (see the module docstring).

    It covers the runs `dagster job execute` started as well as the ones it launched: the verdict comes from the
    worker each run recorded. A worker on another host or PID namespace is "unknown", never "dead".
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        worker = recorded_worker(run.tags)
        if worker is not None:
            verdict, why = worker_verdict(worker)
            pid = worker["pid"]
        else:
            started = [event for event in self._instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
                       if (event.message or "").startswith(STARTED)]
            event = started[-1] if started else None
            metadata = event.dagster_event.engine_event_data.metadata if event and event.dagster_event else {}
            if "pid" not in metadata:  # not started yet: no verdict
                return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker recorded yet")
            pid = str(int(metadata["pid"].value))
            verdict, why = _legacy_verdict(int(pid), event.timestamp)
        if verdict == "alive":
            return CheckRunHealthResult(WorkerStatus.RUNNING, why, run_worker_id=pid)
        if verdict == "unknown":
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, why, run_worker_id=pid)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"{why}; the run is failed and its pool slots freed so "
                                                         "later runs proceed", run_worker_id=pid)


def prepare(home: str | None = None) -> None:
    """Before `scripts/run.sh` starts a run: make the instance's storage (once, under a lock, so two first runs
    at once do not both create its tables) and sweep what dead runs left behind."""
    home = home or os.environ.get("DAGSTER_HOME")
    if not home:
        raise SystemExit("DAGSTER_HOME is not set")
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".townlet-instance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with DagsterInstance.from_config(home) as instance:
            sweep_dead_runs(instance, log=lambda line: print(line, file=sys.stderr))


def main(argv: list[str]) -> int:
    """`python -m townlet_pipelines.pipeline.launcher [NIGHT]`: check the night (none or empty: the last that
    ended, as the schedule runs it), `prepare`, and print the night: `scripts/run.sh` reads it from here rather
    than paying a second process's Dagster import (about 2 s) to ask."""
    try:
        night = check_night(argv[0] if argv and argv[0] else last_ended_night())
    except UsageError as error:
        print(f"townlet: error: {error}", file=sys.stderr)
        return 2
    prepare()
    print(night)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
