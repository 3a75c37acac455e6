"""Orchestration overhead: `nightly_anneal` through Dagster against the same anneal through the CLI.

Both run as fresh subprocesses on fresh artifact roots, so both pay interpreter start-up and imports; the
Dagster instance exists before the timing starts, as a nightly's does (its SQLite schema is created once).
The Dagster run does a little more work on top (the held-out report and the pictures); its per-step timings
are read from the run's event log and reported. Each round also runs `hollow_nightly`, the job's twin whose
steps do nothing, the same way: its time less the CLI's bare start (`townlet --help`) is what Dagster itself
costs for a job of this shape, the floor under the ratio.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _timed(command: list[str], env: dict, allowed: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Wall seconds and output of one command; a failed run is an error, never a figure."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode not in allowed or ("dagster" in Path(command[0]).name and "RUN_SUCCESS" not in output):
        raise RuntimeError(f"{' '.join(command[:4])} failed (exit {done.returncode}):\n{output[-3000:]}")
    return seconds, output


def _one_pair(profile: str, order: tuple[str, str]) -> tuple[float, float, float, dict]:
    """(CLI seconds, Dagster seconds, Dagster's own cost in seconds, Dagster step seconds) on fresh roots."""
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="townlet-overhead-"))
    try:
        env = dict(os.environ, TOWNLET_CONFIG=profile, DAGSTER_HOME=str(work / "home"),
                   TOWNLET_ARTIFACTS=str(work / "dagster-artifacts"))
        (work / "home").mkdir()
        shutil.copy(ROOT / "dagster_home" / "dagster.yaml", work / "home" / "dagster.yaml")
        subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; DagsterInstance.get()"], env=env,
                       check=True, capture_output=True)  # the instance a nightly finds: created once, not per run
        commands = {
            "cli": [str(bin_dir / "townlet"), "train", "anneal", "--config", profile, "--json", "--artifacts",
                    str(work / "cli-artifacts")],
            "dagster": [str(bin_dir / "dagster"), "job", "execute", "-m", "townlet_pipelines.pipeline.definitions",
                        "-j", "nightly_anneal", "--tags", '{"dagster/partition": "2026-11-05"}'],
            "hollow": [str(bin_dir / "dagster"), "job", "execute", "-m", "townlet_pipelines.bench.hollow_nightly",
                       "-j", "nightly_anneal", "--tags", '{"dagster/partition": "2026-11-06"}'],
            "start": [str(bin_dir / "townlet"), "--help"],
        }
        # The CLI anneal exits with its verdict (3 FAIL, 4 HOLD: still a whole night); the Dagster runs must succeed.
        timed = {name: _timed(commands[name], env, (0, 3, 4) if name == "cli" else (0,))
                 for name in (*order, "hollow", "start")}
        steps = {}
        pattern = r'Finished execution of step "([a-z_]+)" in (?:(\d+)m ?)?([0-9.]+)(ms|s)'
        for name, minutes, value, unit in re.findall(pattern, timed["dagster"][1]):
            seconds = float(value) / (1000 if unit == "ms" else 1) + 60 * int(minutes or 0)
            steps[name] = steps.get(name, 0.0) + seconds
        return timed["cli"][0], timed["dagster"][0], timed["hollow"][0] - timed["start"][0], steps
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(args) -> None:
    for profile in args.profiles:
        ratios, floors, own = [], [], []
        for index in range(args.rounds):
            order = ("cli", "dagster") if index % 2 == 0 else ("dagster", "cli")
            cli, dagster, dagster_own, steps = _one_pair(profile, order)
            ratios.append(dagster / cli)
            floors.append((cli + dagster_own) / cli)
            own.append(dagster_own)
            print(f"  {profile} round {index + 1}: CLI `townlet train anneal` {cli:.1f} s; Dagster `nightly_anneal` "
                  f"{dagster:.1f} s ({dagster / cli:.2f}x); Dagster's own cost (hollow twin less the CLI's bare "
                  f"start) {dagster_own:.1f} s, so the floor is {floors[-1]:.2f}x", flush=True)
        print(f"profile {profile}: Dagster / CLI median {statistics.median(ratios):.2f}x "
              f"[{min(ratios):.2f}, {max(ratios):.2f}] over {args.rounds} alternating rounds; Dagster's own cost "
              f"median {statistics.median(own):.1f} s, floor {statistics.median(floors):.2f}x")
        print("  last run's steps (s): " + ", ".join(f"{name} {value:.1f}" for name, value in steps.items()
                                                     if value >= 0.05))
