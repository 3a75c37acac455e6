"""Data-parallel scaling: BC samples/s and PPO env agent-steps/s (updates included) for 1 and N processes.

Each measurement is a real `townlet train bc|ppo` run (N > 1: under torchrun, gloo on the CPU), on the same
config and the same expert data, the order of 1 and N alternating by round. Efficiency = rate(N) / (N x
rate(1)). On a 2-core machine the 2 processes also share the cores with the world simulation (PPO) and
with each other, so this measures the plumbing's cost more than a cluster's speed-up.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from townlet_pipelines.config import load_config
from townlet_pipelines.training.orchestrator import capture_expert


def _config(profile: str, folder: Path) -> Path:
    """The profile with a short BC (no DAgger: its capture is rank 0's alone) and its own PPO length."""
    data = load_config(profile).model_dump(mode="json")
    data["bc"].update(epochs=2, dagger_rounds=0)
    data["ppo"].update(updates=8)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(kind: str, processes: int, config: Path, artifacts: Path, dataset: Path | None) -> dict:
    bin_dir = Path(sys.executable).parent
    launcher = ([str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", str(processes), "-m",
                 "townlet_pipelines.cli"] if processes > 1 else [str(bin_dir / "townlet")])
    command = [*launcher, "train", kind, "--config", str(config), "--artifacts", str(artifacts), "--json"]
    if dataset is not None:
        command += ["--dataset", str(dataset)]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="townlet-scaling-"))
    config = _config(args.config, work)
    dataset = capture_expert(load_config(config), work / "expert").path
    rates: dict[tuple[str, int], list[float]] = {}
    for round_index in range(args.rounds):
        order = (1, args.processes) if round_index % 2 == 0 else (args.processes, 1)
        for processes in order:
            bc = _run("bc", processes, config, work / f"bc-{processes}", dataset)
            rates.setdefault(("bc", processes), []).append(bc["samples_per_sec"])
            ppo = _run("ppo", processes, config, work / f"ppo-{processes}", None)
            seconds = ppo["epoch_duration_sec"] * ppo["updates"]
            rates.setdefault(("ppo", processes), []).append(ppo["transitions"] / seconds)
            print(f"  round {round_index + 1}, {processes} process(es): BC {bc['samples_per_sec']:,.0f} samples/s, "
                  f"PPO {ppo['transitions'] / seconds:,.0f} agent-steps/s", flush=True)
    print(f"{args.config}, {args.rounds} rounds, median (min-max):")
    for kind, unit in (("bc", "samples/s"), ("ppo", "env agent-steps/s incl. updates")):
        one, many = rates[(kind, 1)], rates[(kind, args.processes)]
        efficiency = statistics.median(many) / (args.processes * statistics.median(one))
        print(f"  {kind.upper()}: 1 process {statistics.median(one):,.0f} ({min(one):,.0f}-{max(one):,.0f}); "
              f"{args.processes} processes {statistics.median(many):,.0f} ({min(many):,.0f}-{max(many):,.0f}) "
              f"{unit}; scaling efficiency {efficiency:.2f}")
