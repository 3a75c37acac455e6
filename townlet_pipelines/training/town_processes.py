"""One evaluation's towns played in several processes at once: the idle cores of a night put to work.

A night's evaluations (validation snapshots, the guardrail towns, the champion) run one after another in one
process, and each plays its towns in one batched world on one core; on the project's 2-core machine the other
core waited. A policy whose towns play the same alone or batched (`towns_independent`: a network played greedy
or with its seeded counter-based draws, the scripted expert) can instead have its towns cut into contiguous
shares: this process plays the first share while worker processes play the others, and the per-town totals
come back in town order, so the KPIs are the same numbers, bit for bit, as one batched world gives (a test).

Each evaluation forks its own workers, as PyTorch's DataLoader forks its workers, and ends them before it
returns (a fork costs about 20 ms more than a kept worker; a kept one held whatever memory its parent had when it
was forked, inherited a pool a later fork could not use, and kept running a failed evaluation's other shares).
A fork inherits the policy, so nothing is pickled on the way in (pickling a network through multiprocessing
moves its weights into shared memory) and only the per-town totals come back. Where processes cannot be forked,
and for a policy that depends on the batch (the uniform random policy, a network sampling from torch's generator)
or lives on a GPU, the towns play in this process.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)
MIN_TOWNS_PER_PROCESS = 16  # below this a share's fixed cost per tick outweighs the second core


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (a container's CPU limit; cgroup v2's `cpu.max`, else v1's
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`), or None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def auto_processes(root: Path = Path("/sys/fs/cgroup")) -> int:
    """`evaluation.processes` 0: one per core this process may run on (its CPU affinity, within its container's
    CPU limit: a pod limited to 2 CPUs on a 64-core node gets 2), at most 8 (each worker a fork of this process:
    its pages shared until written, its world and batch its own)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, min(cores, 8))


def splittable(act) -> bool:
    """Whether `act` (a policy's bound `act`/`actions`) plays each town the same alone or batched."""
    return bool(getattr(getattr(act, "__self__", None), "towns_independent", False))


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def shares(seeds: tuple[int, ...], processes: int) -> list[tuple[int, ...]]:
    """Contiguous shares of `seeds`, at most `processes` and none under MIN_TOWNS_PER_PROCESS towns."""
    count = max(1, min(processes, len(seeds) // MIN_TOWNS_PER_PROCESS))
    return [tuple(int(seed) for seed in part) for part in np.array_split(np.asarray(seeds), count)]


def _exit_with_parent(parent: int) -> None:
    """A forked worker outlives a killed parent (its pipes stay open in the worker itself): leave when the
    parent is gone, so a killed night leaves no worker behind. Run it on a daemon thread of the worker."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _play_share(send, play, config, act, seeds, ticks, parent: int) -> None:
    """A worker: its share's totals, or the error that stopped it, sent back through `send`."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="townlet-parent-watch").start()
    if "torch" in sys.modules:  # a network's evaluation: one thread per process, as the parent runs
        from townlet_pipelines.training.device import configure_threads

        configure_threads(1)
    try:
        outcome = ("done", play(config, act, seeds, ticks))
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        error.add_note(f"in the evaluation worker that played towns {seeds[0]}..{seeds[-1]}:\n"
                       + "".join(traceback.format_exception(error)))
        outcome = ("failed", error)
    try:
        send.send(outcome)
    except Exception as unpicklable:  # noqa: BLE001 - an error that does not pickle goes back as its text
        send.send(("failed", RuntimeError(f"{outcome[1]!r} ({unpicklable})")))
    send.close()


def play_split(play, config, act, seeds: tuple[int, ...], ticks: int, processes: int,
               on_tick=None) -> dict[str, np.ndarray]:
    """`play(config, act, seeds, ticks, on_tick) -> {key: per-town array}` over shares of `seeds` played at
    once, this process taking the first (the share `on_tick` watches: town 0 is in it); the arrays joined in
    town order. A worker that died (killed) has its share played here, with a warning: the evaluation is slower,
    never different. A share that failed fails the evaluation with its error, and the other workers are ended
    at once."""
    parts = shares(seeds, processes)
    if len(parts) == 1 or not can_fork() or multiprocessing.current_process().daemon:  # a daemon may not fork
        return play(config, act, seeds, ticks, on_tick)
    context = multiprocessing.get_context("fork")
    workers = []
    try:
        for part in parts[1:]:
            receive, send = context.Pipe(duplex=False)
            worker = context.Process(target=_play_share, args=(send, play, config, act, part, ticks, os.getpid()),
                                     daemon=True, name="townlet-evaluation")
            worker.start()
            send.close()  # the worker's end: a worker that dies leaves the pipe at end of file
            workers.append((part, worker, receive))
        results = [play(config, act, parts[0], ticks, on_tick)]
        for part, worker, receive in workers:
            try:
                status, value = receive.recv()
            except EOFError:
                LOG.warning("an evaluation worker process died; playing its %d towns in this process", len(part))
                status, value = "done", play(config, act, part, ticks)
            if status == "failed":
                raise value
            results.append(value)
    finally:
        for _, worker, receive in workers:
            if worker.is_alive():  # a failed evaluation: its other shares are not needed
                worker.terminate()
            worker.join()
            receive.close()
    return {key: np.concatenate([result[key] for result in results]) for key in results[0]}
