"""The `townlet` command: thin over the world, data and training services."""

from __future__ import annotations

import argparse
import json
import sys

from townlet_pipelines.config import ConfigError, load_config


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config file or profile name (default, smoke)")


def _simulate(args: argparse.Namespace) -> int:
    from townlet_pipelines.world.memory import retain_freed_memory
    from townlet_pipelines.world.render import render_town
    from townlet_pipelines.world.simulate import make_policy, simulate

    retain_freed_memory()
    config = load_config(args.config)
    if args.variant:
        config = config.model_copy(
            update={"observations": config.observations.model_copy(update={"variant": args.variant})}
        )
    ticks = args.ticks if args.ticks is not None else args.days * config.world.day_ticks
    on_tick = None
    if args.render:
        every = args.render_every

        def on_tick(world) -> None:
            if world.state.tick % every == 0:
                print(render_town(world, 0), end="\n\n", flush=True)

    report = simulate(config, args.towns, ticks, make_policy(args.policy, config, args.seed), args.seed,
                      observe=not args.no_observe, on_tick=on_tick)
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    print(f"policy {report.policy}: {report.towns} towns x {report.agents_per_town} agents, "
          f"{report.ticks} ticks ({report.ticks / config.world.day_ticks:.2f} days), seed {report.seed}")
    rows = [
        ("ticks/s", f"{report.ticks_per_sec:,.0f}"),
        ("agent-ticks/s", f"{report.agent_ticks_per_sec:,.0f}"),
        ("faints (deaths)", f"{report.faints}  ({report.faints_per_agent_day:.3f} per agent-day)"),
        ("mean needs", f"hunger {report.mean_hunger:.2f}  hygiene {report.mean_hygiene:.2f}  "
                       f"energy {report.mean_energy:.2f}"),
        ("wages per agent-day", f"{report.wages_per_agent_day:.2f}  (mean wallet {report.mean_wallet:.2f})"),
        ("late arrivals per agent-day", f"{report.late_arrivals_per_agent_day:.3f}"),
        ("absences per agent-day", f"{report.absences_per_agent_day:.3f}"),
        ("queue conflicts per agent-day", f"{report.queue_conflicts_per_agent_day:.3f}  "
                                          f"(intensity {report.queue_conflict_intensity_per_agent_day:.3f})"),
    ]
    rows += [(f"{key.removesuffix('_events')} per agent-day", f"{value:.3f}")
             for key, value in report.social_events_per_agent_day.items()]
    rows += [("chat quality (mean)", f"{report.chat_quality_mean:.3f}"),
             ("reward per agent-day", f"{report.reward_per_agent_day:.3f}"),
             ("per-tick reward p1/p50/p99", "/".join(f"{report.reward_percentiles[k]:+.4f}"
                                                     for k in ("p1", "p50", "p99")))]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


def _capture(args: argparse.Namespace) -> int:
    from townlet_pipelines.data.capture import acting_policy, capture
    from townlet_pipelines.world.memory import retain_freed_memory

    retain_freed_memory()
    config = load_config(args.config)
    ticks = args.ticks if args.ticks is not None else args.days * config.world.day_ticks
    result = capture(config, acting_policy(args.policy, config, args.seed), args.towns, ticks, args.seed, args.out,
                     shard_rows=args.shard_rows)
    if args.json:
        print(json.dumps({"path": str(result.path), "identity": result.identity, "rows": result.manifest.rows,
                          "seconds": result.seconds, "agent_ticks_per_sec": result.agent_ticks_per_sec}))
    else:
        print(f"captured {result.manifest.rows:,} agent-ticks into {result.path} "
              f"({len(result.manifest.shards)} shards, {result.agent_ticks_per_sec:,.0f} agent-ticks/s)")
        print(f"identity {result.identity}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from townlet_pipelines.data.replay import ReplayDataset

    dataset = ReplayDataset.open(args.path, verify="files" if args.quick else "full")
    manifest = dataset.manifest
    if args.json:
        print(json.dumps({"identity": dataset.identity, "verified": "files" if args.quick else "full",
                          "manifest": manifest.model_dump(mode="json")}, indent=2))
        return 0
    metrics = manifest.metrics
    spec = manifest.observation
    print(f"dataset {dataset.directory}")
    print(f"  identity        {dataset.identity}")
    print(f"  verified        {'paths, sizes, sha256, headers' if args.quick else 'paths, sizes, sha256, headers, every row'}")
    print(f"  generator       {manifest.generator.kind}"
          + (f" ({manifest.generator.checkpoint_id})" if manifest.generator.checkpoint_id else ""))
    print(f"  observation     {spec.variant} map {spec.map_shape} features {spec.feature_dim}; "
          f"{len(spec.action_names)} actions (schema v{spec.action_schema_version})")
    print(f"  world config    {manifest.world_config_hash[:16]}...  seed {manifest.seed}  "
          f"{manifest.towns} towns x {manifest.agents_per_town} agents x {manifest.ticks} ticks")
    print(f"  rows            {manifest.rows:,} in {len(manifest.shards)} shards, {manifest.episodes} episodes")
    print(f"  reward          mean {metrics.reward_mean:+.4f}  sum {metrics.reward_sum:+.1f}  "
          f"values: {manifest.value_source}")
    per_day = max(metrics.agent_days, 1e-9)
    print(f"  per agent-day   faints {metrics.faints / per_day:.3f}  conflicts {metrics.queue_conflict_events / per_day:.3f}"
          f"  intensity {metrics.queue_conflict_intensity / per_day:.3f}  chats {metrics.chat_success_events / per_day:.2f}"
          f"  shared meals {metrics.shared_meal_events / per_day:.3f}")
    print("  actions         " + "  ".join(f"{name} {count}" for name, count in metrics.action_counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="townlet", description="Townlet Pipelines: simulate, capture, train.")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="run a policy in the batched world and print its KPIs")
    _add_config(sim)
    sim.add_argument("--towns", type=int, default=16)
    length = sim.add_mutually_exclusive_group()
    length.add_argument("--ticks", type=int, default=None)
    length.add_argument("--days", type=int, default=1)
    sim.add_argument("--policy", choices=("scripted", "random"), default="scripted")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--variant", choices=("hybrid", "compact", "full"), default=None,
                     help="observation variant (default: the config's)")
    sim.add_argument("--no-observe", action="store_true", help="skip building observations")
    sim.add_argument("--render", action="store_true", help="print town 0 as text frames")
    sim.add_argument("--render-every", type=int, default=60, help="ticks between rendered frames")
    sim.add_argument("--json", action="store_true", help="print the report as JSON")
    sim.set_defaults(handler=_simulate)

    cap = commands.add_parser("capture", help="record a policy's rollouts as a replay dataset")
    _add_config(cap)
    cap.add_argument("--policy", choices=("scripted", "random"), default="scripted")
    cap.add_argument("--towns", type=int, default=16)
    cap_length = cap.add_mutually_exclusive_group()
    cap_length.add_argument("--ticks", type=int, default=None)
    cap_length.add_argument("--days", type=int, default=1)
    cap.add_argument("--seed", type=int, default=0)
    cap.add_argument("--out", required=True, help="new directory for the dataset (must not exist)")
    cap.add_argument("--shard-rows", type=int, default=16384, help="agent-ticks per shard (about)")
    cap.add_argument("--json", action="store_true")
    cap.set_defaults(handler=_capture)

    dataset = commands.add_parser("dataset", help="work with replay datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    inspect = dataset_commands.add_parser("inspect", help="verify a dataset and print its manifest summary")
    inspect.add_argument("path", help="dataset directory or its manifest.json")
    inspect.add_argument("--quick", action="store_true", help="check files and headers, not every row")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, ValueError, FileExistsError) as error:
        print(f"townlet: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
