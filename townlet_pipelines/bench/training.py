"""Training throughput and learning: BC samples/s and accuracy, PPO env-steps/s, and PPO-from-BC versus
the expert and a random policy on the held-out towns (reward per agent-day)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path


def main(args) -> None:
    from townlet_pipelines.config import config_from_mapping, load_config
    from townlet_pipelines.training import orchestrator
    from townlet_pipelines.training.checkpoints import load_checkpoint
    from townlet_pipelines.training.evaluation import evaluate
    from townlet_pipelines.training.policy import TorchPolicy
    from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

    base = load_config(args.config).model_dump(mode="json")
    base["bc"]["epochs"] = args.bc_epochs
    base["ppo"]["updates"] = args.ppo_updates
    base["runtime"]["device"] = args.device
    config = config_from_mapping(base, f"{args.config} (bench)")
    work = Path(tempfile.mkdtemp(prefix="townlet-bench-"))
    try:
        context = orchestrator.make_context(config, orchestrator.new_run_dir(work), work)
        start = time.perf_counter()
        data = orchestrator.capture_expert(config, work / "expert")
        print(f"expert capture: {data.manifest.rows:,} rows in {time.perf_counter() - start:.1f} s")
        bc = orchestrator.run_bc(context, data.path)
        print(f"BC: {bc.epochs} epochs, {bc.train_rows:,} train rows/epoch on {bc.device}: "
              f"{bc.samples_per_sec:,.0f} samples/s; train accuracy {bc.accuracy:.4f}, "
              f"validation accuracy {bc.val_accuracy:.4f} ({bc.val_rows:,} held-out rows)")
        ppo = orchestrator.run_ppo(context, bc.checkpoint_path, data.path, "rollout")
        print(f"PPO: {ppo.updates} updates x {ppo.rollout_ticks} ticks x {config.ppo.rollout_towns} towns: "
              f"{ppo.env_steps_per_sec:,.0f} env agent-steps/s while collecting; "
              f"{ppo.epoch_duration_sec:.2f} s per update; final loss {ppo.loss_total:.4f}, kl {ppo.kl_divergence:.4f}")
        rows = {}
        seeds = config.seeds.test.seeds()
        for name, checkpoint in (("bc", bc.checkpoint_path), ("ppo (from bc)", ppo.checkpoint_path)):
            model, _ = load_checkpoint(checkpoint, device=context.device.device)
            rows[name] = evaluate(config, TorchPolicy(model, context.device, greedy=True).act, seeds=seeds)
        rows["scripted expert"] = evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds)
        rows["random"] = evaluate(config, RandomPolicy(0).act, seeds=seeds)
        print(f"held-out towns seeds.test ({len(seeds)} towns), {config.evaluation.ticks} ticks, greedy:")
        keys = ("reward_per_agent_day", "faints_per_agent_day", "wages_per_agent_day",
                "queue_conflict_events_per_agent_day", "late_arrivals_per_agent_day")
        print(f"  {'policy':<18}" + "".join(f"{key.removesuffix('_per_agent_day'):>24}" for key in keys))
        for name, report in rows.items():
            print(f"  {name:<18}" + "".join(f"{report[key]:>24.3f}" for key in keys))
        if args.json:
            print(json.dumps({"bc": bc.model_dump(), "ppo": ppo.model_dump(), "evaluation": rows}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
