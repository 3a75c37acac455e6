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


def main(args) -> None:
    bin_dir = Path(sys.executable).parent
    for profile in args.profiles:
        work = Path(tempfile.mkdtemp(prefix="townlet-overhead-"))
        try:
            env = dict(os.environ, TOWNLET_CONFIG=profile, DAGSTER_HOME=str(work / "home"),
                       TOWNLET_ARTIFACTS=str(work / "dagster-artifacts"))
            (work / "home").mkdir()
            shutil.copy(ROOT / "dagster_home" / "dagster.yaml", work / "home" / "dagster.yaml")
            cli, _ = _timed([str(bin_dir / "townlet"), "train", "anneal", "--config", profile, "--json",
                             "--artifacts", str(work / "cli-artifacts")], env)
            dagster, log = _timed([str(bin_dir / "dagster"), "job", "execute", "-m",
                                   "townlet_pipelines.pipeline.definitions", "-j", "nightly_anneal"], env)
            steps = {}
            pattern = r'Finished execution of step "([a-z_]+)" in (?:(\d+)m ?)?([0-9.]+)(ms|s)'
            for name, minutes, value, unit in re.findall(pattern, log):
                seconds = float(value) / (1000 if unit == "ms" else 1) + 60 * int(minutes or 0)
                steps[name] = steps.get(name, 0.0) + seconds
            extra = steps.get("rollout_dataset", 0.0) + sum(v for k, v in steps.items() if k.startswith(
                ("replay_manifest_", "rollout_dataset_")))
            print(f"profile {profile}: CLI `townlet train anneal` {cli:.1f} s; Dagster `nightly_anneal` {dagster:.1f} s "
                  f"(overhead {100 * (dagster - cli) / cli:+.1f}%); of which extra work not in the CLI run "
                  f"(rollout_dataset + data checks) {extra:.1f} s -> orchestration alone "
                  f"{100 * (dagster - extra - cli) / cli:+.1f}%")
            print("  steps (s): " + ", ".join(f"{name} {value:.1f}" for name, value in steps.items() if value >= 0.05))
        finally:
            shutil.rmtree(work, ignore_errors=True)
