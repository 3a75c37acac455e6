"""Capture and replay throughput: agent-ticks/s written to disk, samples/s served as batches."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from townlet_pipelines.config import load_config
from townlet_pipelines.data.capture import acting_policy, capture
from townlet_pipelines.data.replay import ReplayDataset


def main(args) -> None:
    config = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="townlet-bench-"))
    try:
        result = capture(config, acting_policy("scripted", config), args.towns, args.ticks, 0, work / "data")
        size = sum(path.stat().st_size for path in (work / "data").iterdir())
        print(f"capture: {args.towns} towns x {config.world.agents_per_town} agents x {args.ticks} ticks "
              f"({config.observations.variant}): {result.manifest.rows:,} rows in {result.seconds:.1f} s = "
              f"{result.agent_ticks_per_sec:,.0f} agent-ticks/s; {size / 2**20:.1f} MiB on disk "
              f"({size / result.manifest.rows:.0f} B/row), {len(result.manifest.shards)} shards")
        start = time.perf_counter()
        dataset = ReplayDataset.open(work / "data", verify="full")
        print(f"verify (full): {time.perf_counter() - start:.2f} s")
        for batch_size in (256, 1024):
            start = time.perf_counter()
            rows = sum(len(batch["actions"]) for batch in dataset.iter_batches(batch_size, seed=0))
            seconds = time.perf_counter() - start
            print(f"replay read: batch {batch_size}: {rows:,} rows in {seconds:.2f} s = {rows / seconds:,.0f} samples/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
