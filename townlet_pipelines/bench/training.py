"""Training throughput and learning: BC samples/s and accuracy, PPO env-steps/s, and PPO-from-BC versus
the expert and a random policy on the held-out towns (reward per agent-day)."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from townlet_pipelines.config import config_from_mapping, load_config
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.training import orchestrator
from townlet_pipelines.training.bc import BATCH_KEYS, _EpochTrainer, bc_losses, option_columns
from townlet_pipelines.training.checkpoints import load_checkpoint, new_network
from townlet_pipelines.training.evaluation import evaluate
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert


def main(args) -> None:
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
            rows[name] = evaluate(config, evaluation_policy(model, context.device, config).actions, seeds=seeds)
        rows["scripted expert"] = evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds)
        rows["random"] = evaluate(config, RandomPolicy(0).act, seeds=seeds)
        print(f"held-out towns seeds.test ({len(seeds)} towns), {config.evaluation.ticks} ticks, "
              f"{'greedy' if config.evaluation.greedy else 'sampled'}:")
        keys = ("reward_per_agent_day", "faints_per_agent_day", "wages_per_agent_day",
                "queue_conflict_events_per_agent_day", "late_arrivals_per_agent_day")
        print(f"  {'policy':<18}" + "".join(f"{key.removesuffix('_per_agent_day'):>24}" for key in keys))
        for name, report in rows.items():
            print(f"  {name:<18}" + "".join(f"{report[key]:>24.3f}" for key in keys))
        if args.json:
            print(json.dumps({"bc": bc.model_dump(), "ppo": ppo.model_dump(), "evaluation": rows}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bare_bc_epoch(model, optimizer, tensors: dict, batch_size: int, value_coef: float, decision_weight: float,
                  columns, seed: int) -> int:
    """The reference: one BC epoch of the same loss over in-memory tensors, no data pipeline at all."""
    torch = require_torch()
    rows = len(tensors["expert_actions"])
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    model.train()
    for begin in range(0, rows, batch_size):
        index = order[begin:begin + batch_size]
        batch = {key: value[index] for key, value in tensors.items()}
        loss, _, _, _ = bc_losses(model, batch, value_coef, decision_weight, columns)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return rows


def bc_overhead_main(args) -> None:
    """BC's samples/s through the project's trainer (shards, episodes, batching, tensors) against a bare
    loop on in-memory tensors, same model, batch size, loss and optimizer; rounds alternate the order. Each
    round is a fresh trainer on a freshly opened dataset, so the first epoch's shard decoding counts."""
    torch = require_torch()
    config = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="townlet-bench-bc-"))
    try:
        context = orchestrator.make_context(config, orchestrator.new_run_dir(work), work)
        dataset = ReplayDataset.open(orchestrator.capture_expert(config, work / "expert").path, verify="none")
        train, _ = dataset.split(config.bc.val_fraction, seed=config.bc.seed)
        bc, columns = config.bc, option_columns(dataset.spec)
        parts = [batch for batch in dataset.iter_batches(1 << 16, shuffle=False, episodes=train)]
        tensors = {key: torch.from_numpy(np.concatenate([part[key] for part in parts])) for key in BATCH_KEYS
                   if key in parts[0]}
        print(f"BC on {len(tensors['expert_actions']):,} rows ({args.config}), batch {bc.batch_size}, "
              f"{torch.get_num_threads()} torch thread(s), {args.rounds} rounds x {args.epochs} epochs")
        rates: dict[str, list[float]] = {"project": [], "bare": []}
        for round_index in range(args.rounds):
            for name in (("project", "bare") if round_index % 2 == 0 else ("bare", "project")):
                torch.manual_seed(bc.seed)
                model = new_network(dataset.spec, config.model)
                optimizer = torch.optim.Adam(model.parameters(), lr=bc.learning_rate, weight_decay=bc.weight_decay)
                start, rows = time.perf_counter(), 0
                fresh = ReplayDataset.open(dataset.directory, verify="none").keep_in_memory(BATCH_KEYS)  # as BC opens it
                trainer = _EpochTrainer(model, optimizer, context, 1.0)
                for epoch in range(args.epochs):
                    if name == "project":
                        rows += trainer.epoch(fresh, train, seed=epoch)[2]
                    else:
                        rows += bare_bc_epoch(model, optimizer, tensors, bc.batch_size, bc.value_coef,
                                              bc.decision_weight, columns, seed=epoch)
                rates[name].append(rows / (time.perf_counter() - start))
            print(f"  round {round_index + 1}: project {rates['project'][-1]:,.0f}  bare {rates['bare'][-1]:,.0f} "
                  f"samples/s  ratio {rates['project'][-1] / rates['bare'][-1]:.3f}")
        ratios = [p / b for p, b in zip(rates["project"], rates["bare"])]
        print(f"project {statistics.median(rates['project']):,.0f} samples/s, bare loop "
              f"{statistics.median(rates['bare']):,.0f}; ratio median {statistics.median(ratios):.3f}, "
              f"min {min(ratios):.3f}, max {max(ratios):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
