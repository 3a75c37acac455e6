"""`python -m townlet_pipelines.bench ppo-vs-sb3`: the project's PPO against Stable-Baselines3's PPO, side by side.

Both learners train the same network (the project's `PolicyNetwork`: map CNN + feature MLP + masked logits,
from the same initial weights) on the same rollout towns (`seeds.ppo`, cycle 0, episodes restarting after
`ppo.episode_ticks or evaluation.ticks`) with the same hyperparameters, on one torch thread each:

- project: `PPOStrategy.run` itself (collect, GAE, update), with validation snapshots and the guardrail
  evaluation turned off (`ppo.validate_every = 0`, `evaluate_towns=False`): only the PPO loop is timed.
- SB3 (bench/sb3_side.py): `stable_baselines3.PPO` on `TownletSB3VecEnv` (one sub-environment per agent of every rollout town, as
  the project's PPO sees them), with `MaskedTownletPolicy`, an `ActorCriticPolicy` whose forward,
  evaluate_actions, get_distribution and predict_values call `PolicyNetwork`. The action mask travels inside
  the observation (a third `Dict` key), so SB3's rollout buffer stores it and the update re-applies it, as
  the project's PPO does with its stored masks.

The rate of each is env agent-steps per second of wall time *including* the updates (rollout ticks x
agents x updates / the whole training call). Rounds alternate which learner goes first, so slow phases of a
shared machine hit both; the median, min and max over rounds and the ratio project / SB3 are printed, then
both final networks are scored greedily with `evaluate()` on the same held-out towns (`seeds.test`).

What still differs (deliberately kept as SB3 does it; none changes the work per step):
- value loss: SB3 uses MSE against the *clipped* value only, CleanRL/the project the max of clipped and
  unclipped, times 0.5; SB3's `vf_coef` is set to `value_coef / 2` so both weigh the value loss alike.
- a minibatch whose advantages all tie: the project only centres them, SB3 divides by (0 + 1e-8).
- SB3 stores observations as float32 in its buffer (the map too), the project keeps the map as uint8.
- the project also collects the world's telemetry, conflict costs and rollout entropies each tick
  (needed by its records and the conflict constraint); SB3 only what PPO needs, plus a per-agent info dict.
- the episode restart is a done without bootstrap on both sides (the project's semantics): the VecEnv
  does not mark it `TimeLimit.truncated`, so SB3 does not bootstrap it either.

Needs the optional extra `pip install 'townlet-pipelines[bench]'` (stable-baselines3 and gymnasium).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from townlet_pipelines.config import TownletConfig, config_from_mapping, load_config
from townlet_pipelines.training.checkpoints import load_checkpoint, new_network
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.device import device_context
from townlet_pipelines.training.evaluation import evaluate
from townlet_pipelines.training.policy import TorchPolicy
from townlet_pipelines.training.ppo import PPOStrategy
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.world.engine import TownWorld

DEFAULT_STEPS = 46_080  # agent-steps per learner and round: 4 updates of the default 8 towns x 8 agents x 180 ticks
DEFAULT_EVAL_TOWNS = 16


def _require_sb3():
    """The SB3 learner (bench/sb3_side.py), or an exit that names the extra it needs."""
    try:
        from townlet_pipelines.bench import sb3_side  # stable-baselines3 and gymnasium: the optional `bench` extra
    except ImportError as error:  # pragma: no cover - depends on the optional extra
        raise SystemExit("ppo-vs-sb3 needs stable-baselines3 and gymnasium: "
                         "pip install 'townlet-pipelines[bench]'") from error
    return sb3_side


# ------------------------------------------------------------------------------------------ config
def bench_config(config: TownletConfig) -> TownletConfig:
    """The config both learners run: CPU, one torch thread, no validation snapshots, no conflict budget."""
    data = config.model_dump(mode="json")
    data["runtime"].update(device="cpu", torch_threads=1, amp=False)
    data["ppo"].update(validate_every=0, conflict_budget=0.0, data_mode="rollout")
    return config_from_mapping(data, f"{config.profile} (ppo-vs-sb3)")


def warmup_config(config: TownletConfig) -> TownletConfig:
    """A few ticks of the same learners, run once untimed before the rounds."""
    data = config.model_dump(mode="json")
    data["ppo"]["rollout_ticks"] = 4
    return config_from_mapping(data, f"{config.profile} (ppo-vs-sb3 warm-up)")


def updates_for(config: TownletConfig, steps: int) -> tuple[int, int]:
    """Whole PPO updates covering about `steps` env agent-steps (at least one); (updates, steps per update)."""
    per_update = config.ppo.rollout_ticks * config.ppo.rollout_towns * config.world.agents_per_town
    return max(1, round(steps / per_update)), per_update


def initial_network(config: TownletConfig, init_checkpoint: str | Path | None = None):
    """The network both learners start from: `init_checkpoint`'s, or a fresh one built right after
    `torch.manual_seed(ppo.seed)`, as `PPOStrategy.run` builds its own (cycle 0): the same first weights."""
    require_torch().manual_seed(config.ppo.seed)
    if init_checkpoint is not None:
        return load_checkpoint(init_checkpoint, TownWorld(config, 1).spec, "cpu")[0]
    spec = TownWorld(config, 1).spec
    return new_network(spec, config.model)


# ------------------------------------------------------------------------------------ project side
def run_project(config: TownletConfig, updates: int, work: Path, init_checkpoint: str | Path | None = None):
    """The project's own PPO (`PPOStrategy.run`); (the trained PolicyNetwork, wall seconds, collect seconds)."""
    require_torch().set_num_threads(1)
    run_dir = Path(tempfile.mkdtemp(prefix="project-", dir=work))
    start = time.perf_counter()
    context = TrainingContext(config=config, artifacts=run_dir, device=device_context("cpu", False, 1))
    result = PPOStrategy(init_checkpoint=init_checkpoint, updates=updates, evaluate_towns=False,
                         out=run_dir / "ppo").run(context)
    seconds = time.perf_counter() - start
    collect = result.steps * config.ppo.rollout_towns * config.world.agents_per_town / result.env_steps_per_sec
    model, _ = load_checkpoint(result.checkpoint_path, device=context.device.device)
    return model, seconds, collect


# --------------------------------------------------------------------------------------- measuring
def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def score(config: TownletConfig, network, seeds: tuple[int, ...]) -> dict[str, float]:
    """A network's greedy reward (and faints, wages, conflicts) per agent-day on the given towns."""
    report = evaluate(config, TorchPolicy(network, device_context("cpu", False, 1), greedy=True).actions, seeds=seeds)
    keys = ("reward_per_agent_day", "faints_per_agent_day", "wages_per_agent_day",
            "queue_conflict_events_per_agent_day")
    return {key: report[key] for key in keys} | {"reward_per_agent_day_ci95": report["reward_per_agent_day_ci95"]}


SB3_NETWORK = (16, 32)  # the conv layers of the network SB3 was measured with when the speed issue was filed


def learner_configs(config: TownletConfig, sb3_conv_channels: tuple[int, ...] = SB3_NETWORK) -> dict:
    """The learners: the project with its own network; SB3 with the network of the issue's measurement; and
    SB3 with the project's network (what the training loop alone is worth)."""
    data = config.model_dump(mode="json")
    data["model"]["conv_channels"] = list(sb3_conv_channels)
    peer = config_from_mapping(data, f"{config.profile} (SB3's network)")
    learners = {"project": config, "sb3": peer}
    if tuple(sb3_conv_channels) != tuple(config.model.conv_channels):
        learners["sb3-same-net"] = config
    return learners


def measure(config: TownletConfig, rounds: int = 3, steps: int = DEFAULT_STEPS,
            eval_towns: int = DEFAULT_EVAL_TOWNS, init_checkpoint: str | Path | None = None,
            sb3_conv_channels: tuple[int, ...] = SB3_NETWORK, sb3_init_checkpoint: str | Path | None = None,
            log=print) -> dict:
    """Every learner of `learner_configs`, `rounds` times each in rotating order, then the final networks
    scored greedily on the first `eval_towns` towns of `seeds.test`. Returns every figure (rates in env
    agent-steps/s).

    The project and SB3 with its network start from `init_checkpoint`, SB3 with the issue's network from
    `sb3_init_checkpoint` (e.g. the BC clone of each network, as the anneal's PPO stage starts), else each
    from a fresh network: a few updates from scratch move the greedy reward little, so those rewards check
    that the learners run the same algorithm more than they rank them."""
    sb3_side = _require_sb3()
    torch = require_torch()
    config = bench_config(config)
    learners = {name: bench_config(value) for name, value in learner_configs(config, sb3_conv_channels).items()}
    torch.set_num_threads(1)
    updates, per_update = updates_for(config, steps)
    agent_steps = updates * per_update
    runs: dict[str, list[dict]] = {name: [] for name in learners}
    networks = {}

    def start(learner: TownletConfig):
        return init_checkpoint if learner.model == config.model else sb3_init_checkpoint

    def train(name: str, learner: TownletConfig, count: int):
        if name == "project":
            return run_project(learner, count, work, init_checkpoint)
        return sb3_side.run_sb3(learner, count, start(learner))

    work = Path(tempfile.mkdtemp(prefix="townlet-ppo-vs-sb3-"))
    try:
        for name, learner in learners.items():  # untimed: the first call of each pays imports and set-up
            train(name, warmup_config(learner), 1)
        names = list(learners)
        for index in range(rounds):
            for name in names[index % len(names):] + names[:index % len(names)]:
                network, seconds, collect = train(name, learners[name], updates)
                networks[name] = network
                runs[name].append({"seconds": seconds, "rate": agent_steps / seconds,
                                   "collect_rate": agent_steps / collect if collect else 0.0})
                log(f"  round {index + 1}/{rounds} {name:<12}: {agent_steps / seconds:8,.0f} agent-steps/s "
                    f"({seconds:.1f} s; collecting alone {agent_steps / collect:,.0f}/s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {name: _spread([run["rate"] for run in values]) for name, values in runs.items()}
    collect = {name: _spread([run["collect_rate"] for run in values]) for name, values in runs.items()}
    ratios = {name: rates["project"]["median"] / rates[name]["median"] for name in runs if name != "project"}
    paired = {name: _spread([p["rate"] / s["rate"] for p, s in zip(runs["project"], runs[name])])
              for name in ratios}
    seeds = config.seeds.test.seeds()[:eval_towns]
    log(f"  scoring on {len(seeds)} held-out towns ...")
    scores = {"initial": score(config, initial_network(config, init_checkpoint), seeds)}
    if "sb3" in learners and learners["sb3"].model != config.model:
        scores["initial (sb3)"] = score(config, initial_network(learners["sb3"], start(learners["sb3"])), seeds)
    scores.update({name: score(config, network, seeds) for name, network in networks.items()})
    ppo = config.ppo
    return {
        "sb3_version": sb3_side.SB3_VERSION, "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "config": config.profile,
        "networks": {name: list(learner.model.conv_channels) for name, learner in learners.items()},
        "rounds": rounds, "updates": updates, "agent_steps": agent_steps,
        "envs": ppo.rollout_towns * config.world.agents_per_town, "rollout_towns": ppo.rollout_towns,
        "rollout_ticks": ppo.rollout_ticks, "minibatches": ppo.minibatches, "update_epochs": ppo.update_epochs,
        "learning_rate": ppo.learning_rate, "init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
        "sb3_init_checkpoint": str(sb3_init_checkpoint) if sb3_init_checkpoint else None, "rate": rates, "collect_rate": collect, "runs": runs,
        "ratio": ratios["sb3"], "ratios": ratios, "ratio_paired": paired,
        "eval_towns": len(seeds), "eval_ticks": config.evaluation.ticks, "scores": scores,
    }


PROFILE_PHASES = (  # (label, file suffix, function): the phases of the project's PPO, by cumulative time
    ("PPOStrategy.run (the whole loop)", "training/ppo.py", "run"),
    ("  collect_rollout", "training/rollouts.py", "collect_rollout"),
    ("    TownWorld.step (incl. observations)", "world/engine.py", "step"),
    ("      ObservationBuilder.mask_and_observe", "world/observations.py", "mask_and_observe"),
    ("    observation_batch", "training/policy.py", "observation_batch"),
    ("    to_tensors", "training/device.py", "to_tensors"),
    ("  gae", "training/rollouts.py", "gae"),
    ("  ppo_losses (update forward + loss)", "training/ppo.py", "ppo_losses"),
    ("  backward", "torch/_tensor.py", "backward"),
    ("  clip_grad_norm_", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
    ("  Adam.step", "torch/optim/adam.py", "step"),
    ("  zero_grad", "torch/optim/optimizer.py", "zero_grad"),
    ("PolicyNetwork.forward (collect + update)", "training/model.py", "forward"),
    ("  conv2d (forward)", "~", "<built-in method torch.conv2d>"),
    ("  linear (forward)", "~", "<built-in method torch._C._nn.linear>"),
    ("  shield_mask", "training/model.py", "shield_mask"),
    ("save_checkpoint", "training/checkpoints.py", "save_checkpoint"),
)


def profile_project(config: TownletConfig, steps: int = DEFAULT_STEPS, top: int = 30,
                    init_checkpoint: str | Path | None = None) -> str:
    """cProfile of the project's PPO on the same budget, after the same untimed warm-up as `measure`: the
    phases of `PROFILE_PHASES`, then the top functions by cumulative and by own time."""
    config = bench_config(config)
    updates, _ = updates_for(config, steps)
    work = Path(tempfile.mkdtemp(prefix="townlet-ppo-profile-"))
    profiler = cProfile.Profile()
    try:
        run_project(warmup_config(config), 1, work, init_checkpoint)
        start = time.perf_counter()
        profiler.enable()
        run_project(config, updates, work, init_checkpoint)
        profiler.disable()
        wall = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    total = max(ct for (_, _, _, ct, _) in stats.stats.values())
    out.write(f"project PPO, {updates} updates, {wall:.1f} s wall under the profiler; phases by cumulative time:\n")
    for label, suffix, name in PROFILE_PHASES:
        found = [(nc, tt, ct) for (file, _, func), (_, nc, tt, ct, _) in stats.stats.items()
                 if func == name and file.endswith(suffix)]
        if found:
            calls, own, cumulative = (sum(values) for values in zip(*found))
            out.write(f"  {label:<44} {cumulative:8.2f} s {100 * cumulative / total:5.1f}%  "
                      f"({calls} calls, own {own:.2f} s)\n")
    out.write("\n")
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ------------------------------------------------------------------------------------------- entry
def main(args) -> None:
    config = load_config(args.config)
    if getattr(args, "profile", False):
        print(profile_project(config, args.steps, init_checkpoint=getattr(args, "init_checkpoint", None)))
        return
    prepared = bench_config(config)
    updates, per_update = updates_for(prepared, args.steps)
    ppo = prepared.ppo
    print(f"ppo-vs-sb3 ({args.config}): {ppo.rollout_towns} towns x {prepared.world.agents_per_town} agents = "
          f"{ppo.rollout_towns * prepared.world.agents_per_town} envs, {ppo.rollout_ticks} ticks/rollout, "
          f"{ppo.minibatches} minibatches x {ppo.update_epochs} epochs, lr {ppo.learning_rate:g}; "
          f"{updates} updates = {updates * per_update:,} agent-steps per learner and round, {args.rounds} rounds; "
          f"from {getattr(args, 'init_checkpoint', None) or 'a fresh network'}")
    sb3_net = tuple(int(v) for v in args.sb3_conv_channels.split(",") if v) if getattr(
        args, "sb3_conv_channels", None) is not None else SB3_NETWORK
    if getattr(args, "same_network", False):
        sb3_net = tuple(prepared.model.conv_channels)
    report = measure(config, args.rounds, args.steps, args.eval_towns, getattr(args, "init_checkpoint", None),
                     sb3_net, getattr(args, "sb3_init_checkpoint", None))
    rate, collect = report["rate"], report["collect_rate"]
    print(f"stable-baselines3 {report['sb3_version']}, torch {report['torch_version']}, "
          f"{report['torch_threads']} torch thread(s); map encoders (conv channels): "
          + ", ".join(f"{name} {list(value) or 'none (linear)'}" for name, value in report["networks"].items()))
    print("env agent-steps/s including updates (median [min, max] over rounds):")
    for name in rate:
        print(f"  {name:<12} {rate[name]['median']:8,.0f}  [{rate[name]['min']:,.0f}, {rate[name]['max']:,.0f}]"
              f"   collecting alone {collect[name]['median']:,.0f}")
    for name, ratio in report["ratios"].items():
        paired = report["ratio_paired"][name]
        print(f"  ratio project/{name}: {ratio:.2f}x (per round {paired['median']:.2f}x "
              f"[{paired['min']:.2f}, {paired['max']:.2f}])")
    print(f"greedy reward per agent-day on {report['eval_towns']} held-out towns (seeds.test), "
          f"{report['eval_ticks']} ticks:")
    for name, values in report["scores"].items():
        label = {"initial": "initial net", "initial (sb3)": "initial sb3"}.get(name, name)
        print(f"  {label:<12} reward {values['reward_per_agent_day']:8.3f} +- {values['reward_per_agent_day_ci95']:.3f}"
              f"   faints {values['faints_per_agent_day']:.3f}  wages {values['wages_per_agent_day']:.3f}"
              f"  conflicts {values['queue_conflict_events_per_agent_day']:.3f}")
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))


if __name__ == "__main__":  # standalone use until the subcommand is wired into bench/__main__.py
    import argparse

    parser = argparse.ArgumentParser(prog="python -m townlet_pipelines.bench.sb3")
    parser.add_argument("--config", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--eval-towns", type=int, default=DEFAULT_EVAL_TOWNS)
    parser.add_argument("--init-checkpoint", default=None)
    parser.add_argument("--sb3-conv-channels", default=None)
    parser.add_argument("--sb3-init-checkpoint", default=None)
    parser.add_argument("--same-network", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", action="store_true")
    main(parser.parse_args())
