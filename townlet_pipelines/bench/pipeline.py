"""Orchestration overhead: `nightly_anneal` through Dagster against the same anneal through the CLI.

Both run as fresh subprocesses on fresh artifact roots, so both pay interpreter start-up and imports. The
Dagster run does a little more work on top (the `rollout_dataset` capture and six data-quality checks);
its per-step timings are read from the run's event log and reported, so the pure orchestration cost is
visible too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _timed(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{command[0]} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def _one_pair(profile: str, order: tuple[str, str]) -> tuple[float, float, float, dict]:
    """(CLI seconds, Dagster seconds, Dagster's extra work seconds, Dagster step seconds) on fresh roots."""
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="townlet-overhead-"))
    try:
        env = dict(os.environ, TOWNLET_CONFIG=profile, DAGSTER_HOME=str(work / "home"),
                   TOWNLET_ARTIFACTS=str(work / "dagster-artifacts"))
        (work / "home").mkdir()
        shutil.copy(ROOT / "dagster_home" / "dagster.yaml", work / "home" / "dagster.yaml")
        commands = {
            "cli": [str(bin_dir / "townlet"), "train", "anneal", "--config", profile, "--json", "--artifacts",
                    str(work / "cli-artifacts")],
            "dagster": [str(bin_dir / "dagster"), "job", "execute", "-m", "townlet_pipelines.pipeline.definitions",
                        "-j", "nightly_anneal", "--tags", '{"dagster/partition": "2026-11-05"}'],
        }
        timed = {name: _timed(commands[name], env) for name in order}
        steps = {}
        pattern = r'Finished execution of step "([a-z_]+)" in (?:(\d+)m ?)?([0-9.]+)(ms|s)'
        for name, minutes, value, unit in re.findall(pattern, timed["dagster"][1]):
            seconds = float(value) / (1000 if unit == "ms" else 1) + 60 * int(minutes or 0)
            steps[name] = steps.get(name, 0.0) + seconds
        extra = steps.get("rollout_dataset", 0.0) + sum(v for k, v in steps.items() if k.startswith(
            ("replay_manifest_", "rollout_dataset_")))
        return timed["cli"][0], timed["dagster"][0], extra, steps
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(args) -> None:
    import statistics

    for profile in args.profiles:
        ratios, pure = [], []
        for index in range(args.rounds):
            order = ("cli", "dagster") if index % 2 == 0 else ("dagster", "cli")
            cli, dagster, extra, steps = _one_pair(profile, order)
            ratios.append(dagster / cli)
            pure.append((dagster - extra) / cli)
            print(f"  {profile} round {index + 1}: CLI `townlet train anneal` {cli:.1f} s; Dagster `nightly_anneal` "
                  f"{dagster:.1f} s ({dagster / cli:.2f}x); extra work not in the CLI run (rollout_dataset + data "
                  f"checks) {extra:.1f} s", flush=True)
        print(f"profile {profile}: Dagster / CLI median {statistics.median(ratios):.2f}x "
              f"[{min(ratios):.2f}, {max(ratios):.2f}] over {args.rounds} alternating rounds; without the extra "
              f"work {statistics.median(pure):.2f}x")
        print("  last run's steps (s): " + ", ".join(f"{name} {value:.1f}" for name, value in steps.items()
                                                     if value >= 0.05))
