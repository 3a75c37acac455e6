"""One evaluation's towns played in several processes at once: the idle cores of a night put to work.

A night's evaluations (validation snapshots, the guardrail towns, the champion) run one after another in one
process, and each plays its towns in one batched world on one core; on the project's 2-core machine the other
core waited. A policy whose towns play the same alone or batched (`towns_independent`: a network played greedy
or with its seeded counter-based draws, the scripted expert) can instead have its towns cut into contiguous
shares: this process plays the first share while worker processes play the others, and the per-town totals
come back in town order, so the KPIs are the same numbers, bit for bit, as one batched world gives (a test).

Workers are started once per process and kept for later evaluations; each runs torch on one thread. On Linux
they are forked, as PyTorch's DataLoader forks its workers: no second import of torch, and a script that calls
`evaluate` needs no `if __name__ == "__main__"` guard; elsewhere they are spawned. A policy that depends on the batch (the uniform random policy, a
network sampling from torch's generator) or lives on a GPU always plays in this process.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

LOG = logging.getLogger(__name__)
MIN_TOWNS_PER_PROCESS = 16  # below this a share's fixed cost per tick outweighs the second core
_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def auto_processes() -> int:
    """`evaluation.processes` 0: one per core, at most 8 (each worker a fork of this process: its pages shared
    until written, its world and batch its own)."""
    return max(1, min(os.cpu_count() or 1, 8))


def splittable(act) -> bool:
    """Whether `act` (a policy's bound `act`/`actions`) plays each town the same alone or batched."""
    return bool(getattr(getattr(act, "__self__", None), "towns_independent", False))


def shares(seeds: tuple[int, ...], processes: int) -> list[tuple[int, ...]]:
    """Contiguous shares of `seeds`, at most `processes` and none under MIN_TOWNS_PER_PROCESS towns."""
    count = max(1, min(processes, len(seeds) // MIN_TOWNS_PER_PROCESS))
    return [tuple(int(seed) for seed in part) for part in np.array_split(np.asarray(seeds), count)]


def _exit_with_parent(parent: int) -> None:
    """A forked worker outlives a killed parent (its pipes stay open in the worker itself): leave when the
    parent is gone, so a killed night leaves no idle worker behind."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_start(parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="townlet-parent-watch").start()
    try:
        from townlet_pipelines.training.device import configure_threads  # torch, when the policy is a network

        configure_threads(1)
    except ImportError:  # pragma: no cover - a torch-free install evaluates the expert only
        pass


def _workers(count: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size < count:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        _pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context(method), initializer=_worker_start,
                                    initargs=(os.getpid(),))
        _pool_size = count
    return _pool


def _forget_workers() -> None:
    global _pool, _pool_size
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
    _pool, _pool_size = None, 0


atexit.register(_forget_workers)


def play_split(play, config, act, seeds: tuple[int, ...], ticks: int, processes: int,
               on_tick=None) -> dict[str, np.ndarray]:
    """`play(config, act, seeds, ticks, on_tick) -> {key: per-town array}` over shares of `seeds` played at
    once, this process taking the first (the share `on_tick` watches: town 0 is in it); the arrays joined in
    town order. A worker pool that broke (a worker killed) is replaced by playing its shares here, with a
    warning: the evaluation is slower, never different."""
    parts = shares(seeds, processes)
    if len(parts) == 1:
        return play(config, act, seeds, ticks, on_tick)
    try:
        futures = [_workers(len(parts) - 1).submit(play, config, act, part, ticks) for part in parts[1:]]
    except BrokenProcessPool:
        _forget_workers()
        futures = []
    results = [play(config, act, parts[0], ticks, on_tick)]
    for part, future in zip(parts[1:], futures):
        try:
            results.append(future.result())
        except BrokenProcessPool:
            LOG.warning("an evaluation worker process died; playing its %d towns in this process", len(part))
            _forget_workers()
            results.append(play(config, act, part, ticks))
    if len(results) < len(parts):  # the pool could not even take the work
        results += [play(config, act, part, ticks) for part in parts[len(results):]]
    return {key: np.concatenate([result[key] for result in results]) for key in results[0]}
