"""`python -m townlet_pipelines.bench world` prints the world's throughput figures."""

from __future__ import annotations

import argparse
import json

from townlet_pipelines.bench import world as world_bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m townlet_pipelines.bench")
    commands = parser.add_subparsers(dest="command", required=True)
    world = commands.add_parser("world", help="agent-ticks/s and peak memory at several batch sizes")
    world.add_argument("--towns", type=lambda text: [int(v) for v in text.split(",")], default=[1, 64, 1024])
    world.add_argument("--ticks", type=int, default=300)
    world.add_argument("--warmup", type=int, default=200)
    world.add_argument("--variant", choices=("hybrid", "compact", "full"), default="hybrid")
    world.add_argument("--repeat", type=int, default=3, help="runs per batch size; the median is shown")
    world.add_argument("--json", action="store_true")
    data = commands.add_parser("data", help="capture agent-ticks/s and replay samples/s")
    data.add_argument("--config", default="default")
    data.add_argument("--towns", type=int, default=64)
    data.add_argument("--ticks", type=int, default=720)
    training = commands.add_parser("training", help="BC samples/s and accuracy, PPO steps/s, PPO vs expert vs random")
    training.add_argument("--config", default="default")
    training.add_argument("--bc-epochs", type=int, default=5)
    training.add_argument("--ppo-updates", type=int, default=20)
    training.add_argument("--device", default="auto")
    training.add_argument("--json", action="store_true")
    overhead = commands.add_parser("bc-overhead", help="BC samples/s of the project's trainer against a bare loop "
                                   "on in-memory tensors (same model, batch, loss, optimizer)")
    overhead.add_argument("--config", default="default")
    overhead.add_argument("--rounds", type=int, default=5)
    overhead.add_argument("--epochs", type=int, default=3, help="epochs per round (a BC run: 5 on the expert)")
    learning = commands.add_parser("learning", help="random, expert, BC, PPO candidate and promoted policy on the "
                                   "held-out towns (seeds.test), with 95% intervals")
    learning.add_argument("--config", default="default")
    learning.add_argument("--artifacts", default=None, help="artifacts root holding the anneal to score "
                          "(default $TOWNLET_ARTIFACTS or dagster_home/artifacts)")
    learning.add_argument("--run", action="store_true", help="run `townlet train anneal`'s code first")
    learning.add_argument("--json", action="store_true")
    noise = commands.add_parser("guardrail-noise", help="the expert's spread across disjoint town sets, by size")
    noise.add_argument("--config", default="default")
    noise.add_argument("--towns", type=lambda text: [int(v) for v in text.split(",")], default=[8, 32, 128])
    noise.add_argument("--sets", type=int, default=5)
    noise.add_argument("--start", type=int, default=60_000_000, help="first seed (outside every training range)")
    nights = commands.add_parser("nights", help="nights through the nightly's own code: verdicts, releases and "
                                 "held-out reward against the expert, as a distribution over nights")
    nights.add_argument("--config", default="default")
    nights.add_argument("--nights", type=int, default=5)
    nights.add_argument("--first", default="2026-11-25", help="the first night (YYYY-MM-DD)")
    nights.add_argument("--step", type=int, default=1, help="days between nights")
    together = nights.add_mutually_exclusive_group()
    together.add_argument("--chain", action="store_true", help="consecutive nights on one artifacts root (default)")
    together.add_argument("--independent", action="store_true", help="every night a first night on a root of its own")
    nights.add_argument("--artifacts", default=None, help="where the nights' roots go (default $TOWNLET_ARTIFACTS "
                        "or dagster_home/artifacts)")
    nights.add_argument("--out", default="bench-nights", help="folder for nights.md, nights.json and nights.svg")
    scoring = commands.add_parser("evaluation", help="seconds per 64 towns of a network's evaluation: the full "
                                  "policy path against the shipped fast path, in 1 and N processes (same KPIs)")
    scoring.add_argument("--config", default="default")
    scoring.add_argument("--checkpoint", default=None, help="the network to score (default: a fresh one)")
    scoring.add_argument("--towns", type=int, default=64)
    scoring.add_argument("--first-seed", type=int, default=60_000_000, help="first town (outside every training range)")
    scoring.add_argument("--processes", type=int, default=0, help="processes of the split run (0: one per core)")
    scoring.add_argument("--rounds", type=int, default=3)
    pipeline = commands.add_parser("pipeline", help="nightly_anneal through Dagster against the CLI")
    pipeline.add_argument("--profiles", type=lambda text: text.split(","), default=["smoke", "default"])
    pipeline.add_argument("--rounds", type=int, default=5, help="CLI/Dagster pairs per profile, order alternating")
    versus = commands.add_parser("ppo-vs-sb3", help="the project's PPO against Stable-Baselines3's PPO on the same "
                                 "towns and hyperparameters: agent-steps/s with updates, ratio, held-out reward "
                                 "(needs the `bench` extra)")
    versus.add_argument("--config", default="default")
    versus.add_argument("--rounds", type=int, default=3, help="runs per learner, alternating which goes first")
    versus.add_argument("--steps", type=int, default=46_080, help="env agent-steps per learner and round "
                        "(rounded to whole PPO updates)")
    versus.add_argument("--eval-towns", type=int, default=16, help="score both on the first N towns of seeds.test")
    versus.add_argument("--init-checkpoint", default=None, help="start both learners from this checkpoint "
                        "(default: the same fresh network)")
    versus.add_argument("--sb3-conv-channels", default=None, help="SB3's map encoder, e.g. 16,32 (default: the "
                        "network SB3 was measured with when the speed issue was filed); the project's own network "
                        "inside SB3 is measured too")
    versus.add_argument("--same-network", action="store_true", help="the headline: SB3 with the project's own "
                        "network only (engine against engine; the same as --sb3-conv-channels '')")
    versus.add_argument("--sb3-init-checkpoint", default=None, help="SB3's start when its network differs from "
                        "the project's (e.g. the BC clone of that network)")
    versus.add_argument("--profile", action="store_true", help="instead: cProfile the project's PPO on the same budget")
    versus.add_argument("--json", action="store_true")
    scaling = commands.add_parser("scaling", help="BC samples/s and PPO agent-steps/s for 1 and N data-parallel "
                                  "processes (torchrun), and the scaling efficiency")
    scaling.add_argument("--config", default="default")
    scaling.add_argument("--processes", type=int, default=2)
    scaling.add_argument("--rounds", type=int, default=3)
    one = commands.add_parser("world-one", help=argparse.SUPPRESS)
    one.add_argument("--towns", type=int, required=True)
    one.add_argument("--ticks", type=int, required=True)
    one.add_argument("--warmup", type=int, required=True)
    one.add_argument("--variant", default="hybrid")
    args = parser.parse_args(argv)
    if args.command == "world-one":
        print(json.dumps(world_bench.measure(args.towns, args.ticks, args.warmup, args.variant)))
        return
    if args.command == "world":
        world_bench.main(args)
        return
    # Loaded here: world-one's peak memory is the world's own, without the training stack and the nightly.
    from townlet_pipelines.bench import data, evaluation, learning, nights, pipeline, sb3, scaling, training

    if args.command == "data":
        data.main(args)
    elif args.command == "evaluation":
        evaluation.main(args)
    elif args.command == "training":
        training.main(args)
    elif args.command == "bc-overhead":
        training.bc_overhead_main(args)
    elif args.command == "learning":
        learning.main(args)
    elif args.command == "guardrail-noise":
        learning.noise_main(args)
    elif args.command == "nights":
        nights.main(args)
    elif args.command == "pipeline":
        pipeline.main(args)
    elif args.command == "ppo-vs-sb3":
        sb3.main(args)
    elif args.command == "scaling":
        scaling.main(args)


if __name__ == "__main__":
    main()
