"""`python -m townlet_pipelines.bench evaluation`: seconds per 64 towns of one network's evaluation, the path
every evaluation took before issue 22 against the shipped one, on the same towns, with the KPIs compared.

Three ways to score one checkpoint (sampled with its seed, as `config.evaluation` says) on the same towns, in
rotating order each round:

- `full path`: as every evaluation played a network before: `TorchPolicy.act` under `no_grad`, the world's uint8
  map scaled in torch, a checked `Categorical`, log-probabilities and values reported each tick, one process;
- `fast, 1 process`: `TorchPolicy.actions` (inference mode, the map scaled in numpy, actions only);
- `fast, N processes`: the same with the towns shared among `evaluation.processes` (auto: one per core).

Every KPI must be the same number on all three; the figures are medians over rounds with their ranges.
"""

from __future__ import annotations

import statistics
import time

from townlet_pipelines.config import TownletConfig, load_config
from townlet_pipelines.training.checkpoints import load_checkpoint, model_for
from townlet_pipelines.training.device import device_context, to_tensors
from townlet_pipelines.training.evaluation import evaluate
from townlet_pipelines.training.policy import TorchPolicy, evaluation_policy, observation_batch
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.training.town_processes import auto_processes, shares
from townlet_pipelines.world.engine import TownWorld


def full_path(model, device, config: TownletConfig):
    """The evaluation's acting as it was: the whole `act` (log-probabilities, values) on uint8 maps, checked."""
    torch = require_torch()
    policy = TorchPolicy(model, device, greedy=config.evaluation.greedy, seed=config.evaluation.sample_seed)

    def act(world: TownWorld):
        with torch.no_grad():
            batch = to_tensors(observation_batch(world), device, ("map", "features", "action_mask"))
            logits, values = model(batch["features"], batch["action_mask"], batch.get("map"))
            distribution = torch.distributions.Categorical(logits=logits, validate_args=True)
            actions = policy._choose(world, distribution)
            distribution.log_prob(actions), values.numpy()
        return actions.numpy().reshape(world.towns, world.agents)
    return act


def with_processes(config: TownletConfig, processes: int) -> TownletConfig:
    return config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"processes": processes})})


def main(args) -> None:
    torch = require_torch()
    config = load_config(args.config)
    device = device_context("cpu", False, 1)
    spec = TownWorld(config, 1).spec
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, spec, device=device.device)
    else:
        torch.manual_seed(0)
        model, _ = model_for(spec, config.model, "cpu")
    seeds = tuple(range(args.first_seed, args.first_seed + args.towns))
    processes = len(shares(seeds, args.processes or auto_processes()))  # what a split really uses (16 towns a share)
    ways = {
        "full path": (with_processes(config, 1), full_path(model, device, config)),
        "fast, 1 process": (with_processes(config, 1), evaluation_policy(model, device, config).actions),
    }
    if processes > 1:
        ways[f"fast, {processes} processes"] = (with_processes(config, processes),
                                                evaluation_policy(model, device, config).actions)
    print(f"evaluation ({args.config}): {args.towns} towns x {config.evaluation.ticks} ticks x "
          f"{config.world.agents_per_town} agents, {'greedy' if config.evaluation.greedy else 'sampled'}, "
          f"torch {torch.__version__} on 1 thread per process; checkpoint {args.checkpoint or 'a fresh network'}")
    evaluate(config, ways["fast, 1 process"][1], seeds=seeds[:2], ticks=10)  # untimed: first-call costs
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    reports = {}
    names = list(ways)
    for index in range(args.rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            way_config, act = ways[name]
            start = time.perf_counter()
            reports[name] = evaluate(way_config, act, seeds=seeds)
            seconds[name].append(time.perf_counter() - start)
            print(f"  round {index + 1}/{args.rounds} {name:<20}: {seconds[name][-1]:6.2f} s "
                  f"({seconds[name][-1] * 64 / len(seeds):.2f} s per 64 towns)")
    reference = reports["full path"]
    print(f"seconds per 64 towns (median [min, max] over {args.rounds} rounds), and the speed-up over the full path:")
    base = statistics.median(seconds["full path"])
    for name, values in seconds.items():
        per64 = [value * 64 / len(seeds) for value in values]
        same = "identical KPIs" if reports[name] == reference else "KPIs DIFFER"
        print(f"  {name:<20} {statistics.median(per64):6.2f} [{min(per64):.2f}, {max(per64):.2f}]   "
              f"{base / statistics.median(values):5.2f}x   {same}")
    print(f"reward per agent-day {reference['reward_per_agent_day']:.4f}, conflicts "
          f"{reference['queue_conflict_events_per_agent_day']:.4f} per agent-day")
    if any(report != reference for report in reports.values()):
        raise SystemExit("the evaluation paths disagree")
