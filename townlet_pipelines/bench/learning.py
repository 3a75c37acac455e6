"""Learning on held-out towns: random, expert, BC, the PPO candidate and the promoted policy.

Every policy plays the same `seeds.test` towns (no training, tuning or guardrail touches them), one day
each, as `config.evaluation` plays them (sampled, seeded, by default); per agent-day with 95% intervals over
towns. The BC and PPO rows are the checkpoints of the
latest anneal under the artifacts root (what `bash scripts/run.sh` or `townlet train anneal` made), so the
figures are the shipped pipeline's own; `--run` makes a fresh anneal first (`townlet train anneal`'s code).
The "vs expert" columns are paired over the same towns: candidate − expert, with its 95% interval.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from townlet_pipelines.config import load_config
from townlet_pipelines.data.promotion import PromotionStore
from townlet_pipelines.training import orchestrator
from townlet_pipelines.training.checkpoints import load_checkpoint
from townlet_pipelines.training.device import device_context
from townlet_pipelines.training.evaluation import evaluate, paired_difference
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

KEYS = ("reward_per_agent_day", "faints_per_agent_day", "queue_conflict_events_per_agent_day",
        "queue_conflict_intensity_per_agent_day", "wages_per_agent_day", "late_arrivals_per_agent_day")


def _latest_summary(root: Path, namespace: str) -> Path | None:
    candidates = []
    for path in (root / "runs").glob("*/anneal_summary.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("namespace", namespace) == namespace and data.get("final_checkpoint_path"):
            candidates.append(path)
    return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None


def main(args) -> None:
    config = load_config(args.config)
    root = orchestrator.artifacts_root(args.artifacts)
    if args.run:
        context = orchestrator.make_context(config, orchestrator.new_run_dir(root), root)
        start = time.perf_counter()
        dataset = orchestrator.capture_expert(config, context.artifacts / "expert").path
        summary = orchestrator.run_anneal(context, dataset)
        outcome = orchestrator.apply_promotion(context.promotion, summary)
        print(f"anneal {summary.status} in {time.perf_counter() - start:.0f} s; promotion: {outcome.reason}")
    summary_path = _latest_summary(root, orchestrator.namespace(config))
    if summary_path is None:
        raise SystemExit(f"no anneal summary under {root / 'runs'}: run `bash scripts/run.sh` or pass --run")
    summary = json.loads(summary_path.read_text())
    checkpoints = {}
    bc_stage = next((stage for stage in reversed(summary["stages"]) if stage["mode"] == "bc"), None)
    if bc_stage is not None and bc_stage.get("checkpoint_id"):
        # The BC stages live in the run folder (CLI) or in the content-addressed cache (the graph).
        for directory in [*summary_path.parent.glob("bc-cycle*"), *root.glob("cache/bc-*/bc-cycle*")]:
            record = directory / "checkpoint.json"
            if record.is_file() and json.loads(record.read_text())["checkpoint_id"] == bc_stage["checkpoint_id"]:
                checkpoints["BC (the anneal's start)"] = directory
                break
    checkpoints["PPO candidate"] = Path(summary["final_checkpoint_path"])
    release = PromotionStore(orchestrator.state_dir(root, config)).status().current_release
    if release is not None:
        checkpoints[f"promoted ({release.release_id})"] = Path(release.path)

    seeds = config.seeds.test.seeds()
    print(f"held-out towns: seeds.test {seeds[0]}..{seeds[-1]} ({len(seeds)} towns, {config.evaluation.ticks} "
          f"ticks each, {'greedy' if config.evaluation.greedy else 'sampled'}); summary {summary_path} "
          f"({summary['status']})")
    rows, towns = {}, {}
    for name, act in (("random", RandomPolicy(0).act), ("scripted expert", ScriptedExpert(config.expert).act)):
        towns[name] = {}
        rows[name] = evaluate(config, act, seeds=seeds, per_town=towns[name])
    device = device_context(config.runtime.device, config.runtime.amp, config.runtime.torch_threads)
    for name, path in checkpoints.items():
        model, record = load_checkpoint(path, device=device.device)
        towns[name] = {}
        rows[f"{name}"] = evaluate(config, evaluation_policy(model, device, config).actions, seeds=seeds,
                                   per_town=towns[name])
    header = f"  {'policy':<30}" + "".join(f"{key.removesuffix('_per_agent_day')[:16]:>20}" for key in KEYS)
    print(header)
    for name, report in rows.items():
        print(f"  {name:<30}" + "".join(f"{report[key]:>11.3f} ±{report[key + '_ci95']:<7.3f}" for key in KEYS))
    expert = towns["scripted expert"]
    print("  paired with the expert on the same towns (policy − expert, ± 95%):")
    for name in rows:
        if name in ("random", "scripted expert"):
            continue
        cells = []
        for key in ("reward_per_agent_day", "queue_conflict_events_per_agent_day", "wages_per_agent_day"):
            mean, half = paired_difference(towns[name][key], expert[key])
            cells.append(f"{key.removesuffix('_per_agent_day')} {mean:+.3f} ±{half:.3f}")
        ratio = rows[name]["queue_conflict_events_per_agent_day"] / max(
            rows["scripted expert"]["queue_conflict_events_per_agent_day"], 1e-9)
        cells.append(f"conflicts ×{ratio:.2f} of the expert's")
        cells.append(f"wages {rows[name]['wages_per_agent_day'] / rows['scripted expert']['wages_per_agent_day']:.1%}")
        print(f"  {name:<30}  " + "; ".join(cells))
    if args.json:
        print(json.dumps(rows, indent=2))


def noise_main(args) -> None:
    """The expert's KPIs across disjoint town sets of each size: how many towns a guardrail needs."""
    config = load_config(args.config)
    expert = ScriptedExpert(config.expert)
    keys = ("reward_per_agent_day", "queue_conflict_events_per_agent_day", "queue_conflict_intensity_per_agent_day")
    print(f"scripted expert on {args.sets} disjoint sets of towns per size (seeds from {args.start}); "
          "relative spread = sd across sets / mean")
    print(f"  {'towns':>6}" + "".join(f"{key.removesuffix('_per_agent_day'):>34}" for key in keys))
    start = args.start
    for towns in args.towns:
        values = []
        for _ in range(args.sets):
            report = evaluate(config, expert.act, seeds=tuple(range(start, start + towns)))
            values.append([report[key] for key in keys])
            start += towns
        values = np.asarray(values)
        mean, spread = values.mean(axis=0), values.std(axis=0, ddof=1) / np.abs(values.mean(axis=0))
        low, high = values.min(axis=0) / mean - 1, values.max(axis=0) / mean - 1
        print(f"  {towns:>6}" + "".join(f"{m:>10.3f} ±{s:>6.1%} [{lo:+.0%}, {hi:+.0%}]" for m, s, lo, hi
                                        in zip(mean, spread, low, high)))
