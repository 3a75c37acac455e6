"""World throughput: agent-ticks/s of the scripted expert with observations, and peak memory.

Each batch size runs in a fresh subprocess pinned to one core, so its peak RSS is its own and the
figure is a one-core figure. Phases (policy, rules, mask, maps, features) are timed inside the loop.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from shutil import which

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.world.engine import TownWorld
from townlet_pipelines.world.policies import ScriptedExpert


def measure(towns: int, ticks: int, warmup: int, variant: str) -> dict:
    config = TownletConfig()
    config = config.model_copy(update={"observations": config.observations.model_copy(update={"variant": variant})})
    world = TownWorld(config, towns)
    world.reset(0)
    policy = ScriptedExpert(config.expert)
    observer = world.observer
    phases = {"policy": 0.0, "maps": 0.0, "features": 0.0, "mask": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            phases[name] += time.perf_counter() - start
            return out
        return wrapper

    for _ in range(warmup):
        world.step(policy.act(world))
    observer.maps = timed("maps", observer.maps)
    observer.features = timed("features", observer.features)
    observer.action_mask = timed("mask", observer.action_mask)
    act = timed("policy", policy.act)
    start = time.perf_counter()
    for _ in range(ticks):
        world.step(act(world))
    wall = time.perf_counter() - start
    agent_ticks = towns * config.world.agents_per_town * ticks
    phases["rules"] = wall - sum(phases.values())
    return {
        "towns": towns,
        "agents": towns * config.world.agents_per_town,
        "variant": variant,
        "ticks": ticks,
        "agent_ticks_per_sec": agent_ticks / wall,
        "ms_per_tick": 1e3 * wall / ticks,
        "phase_ms_per_tick": {name: round(1e3 * value / ticks, 3) for name, value in phases.items()},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(args) -> None:
    rows = []
    for towns in args.towns:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        command = [sys.executable, "-m", "townlet_pipelines.bench", "world-one", "--towns", str(towns),
                   "--ticks", str(args.ticks), "--warmup", str(args.warmup), "--variant", args.variant]
        if hasattr(os, "sched_setaffinity"):
            command = ["taskset", "-c", "0", *command] if _has_taskset() else command
        runs = []
        for _ in range(args.repeat):
            output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
        runs.sort(key=lambda run: run["agent_ticks_per_sec"])
        row = runs[len(runs) // 2]  # the median run, with the spread across repeats
        row["agent_ticks_per_sec_range"] = [runs[0]["agent_ticks_per_sec"], runs[-1]["agent_ticks_per_sec"]]
        rows.append(row)
    print(f"world benchmark: scripted expert, {args.variant} observations, one core")
    print(f"median of {args.repeat} runs of {args.ticks} ticks after {args.warmup} warm-up ticks")
    print(f"{'towns':>6} {'agents':>7} {'agent-ticks/s':>14} {'(min-max)':>21} {'ms/tick':>8} {'peak RSS MiB':>13}"
          "  phases ms/tick")
    for row in rows:
        phases = "  ".join(f"{k} {v:.2f}" for k, v in row["phase_ms_per_tick"].items())
        low, high = row["agent_ticks_per_sec_range"]
        spread = f"({low:,.0f}-{high:,.0f})"
        print(f"{row['towns']:>6} {row['agents']:>7} {row['agent_ticks_per_sec']:>14,.0f} {spread:>21} "
              f"{row['ms_per_tick']:>8.2f} {row['peak_rss_mib']:>13.0f}  {phases}")
    if args.json:
        print(json.dumps(rows, indent=2))


def _has_taskset() -> bool:
    return which("taskset") is not None
