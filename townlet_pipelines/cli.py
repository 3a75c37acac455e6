"""The `townlet` command: thin over the world, data and training services."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from townlet_pipelines.config import AnnealStage, UsageError, config_from_mapping, load_config
from townlet_pipelines.data.capture import acting_policy, capture
from townlet_pipelines.data.files import atomic_write_bytes
from townlet_pipelines.data.promotion import PromotionStore
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.errors import is_user_error, one_line
from townlet_pipelines.nightly.night import run_night
from townlet_pipelines.pictures import TownStrip
from townlet_pipelines.training import distributed, orchestrator, tensorboard
from townlet_pipelines.training.anneal import check_judgeable
from townlet_pipelines.training.checkpoints import RECORD, load_checkpoint, read_record, verify_checkpoint
from townlet_pipelines.training.device import device_context
from townlet_pipelines.training.evaluation import evaluate, reference_scores
from townlet_pipelines.training.namespaces import artifacts_root, namespace
from townlet_pipelines.training.nights import check_night
from townlet_pipelines.training.orchestrator import make_context, new_run_dir, state_dir
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.training.ppo import PPOStrategy
from townlet_pipelines.training.registry import RESERVED, StageInputs, build, known, strategy
from townlet_pipelines.world import simulate  # the module: simulate.simulate is looked up when a run starts
from townlet_pipelines.world.engine import TownWorld
from townlet_pipelines.world.render import render_town


# `townlet train anneal` exits with the verdict, so scripts can gate on it (2 is any usage or input error).
ANNEAL_EXIT_CODES = {"PASS": 0, "FAIL": 3, "HOLD": 4}


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config file or profile name (default, smoke)")


def _simulate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.variant:
        config = config.model_copy(
            update={"observations": config.observations.model_copy(update={"variant": args.variant})}
        )
    ticks = args.ticks if args.ticks is not None else args.days * config.world.day_ticks
    on_tick, strip = None, None
    if args.render or args.render_svg:
        every = args.render_every

        def on_tick(world) -> None:
            nonlocal strip
            if world.state.tick % every == 0:
                if args.render:
                    print(render_town(world, 0), end="\n\n", flush=True)
                if args.render_svg:
                    strip = strip or TownStrip(world, 0, frames=6)
                    strip.capture()

    report = simulate.simulate(config, args.towns, ticks, simulate.make_policy(args.policy, config, args.seed),
                               args.seed, observe=not args.no_observe, on_tick=on_tick)
    if args.render_svg:
        if strip is None:
            raise UsageError(f"--render-svg: no frame was captured in {ticks} ticks (--render-every {every})")
        atomic_write_bytes(args.render_svg, strip.svg().encode())
        print(f"wrote {args.render_svg}", file=sys.stderr)
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
        ("queue conflicts per agent-day", f"{report.queue_conflict_events_per_agent_day:.3f}  "
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
    config = load_config(args.config)
    ticks = args.ticks if args.ticks is not None else args.days * config.world.day_ticks
    result = capture(config, acting_policy(args.policy, config, args.seed, args.noise), args.towns, ticks, args.seed,
                     args.out, shard_rows=args.shard_rows)
    if args.json:
        print(json.dumps({"path": str(result.path), "identity": result.identity, "rows": result.manifest.rows,
                          "seconds": result.seconds, "agent_ticks_per_sec": result.agent_ticks_per_sec}))
    else:
        print(f"captured {result.manifest.rows:,} agent-ticks into {result.path} "
              f"({len(result.manifest.shards)} shards, {result.agent_ticks_per_sec:,.0f} agent-ticks/s)")
        print(f"identity {result.identity}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
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


def _print_record(record, as_json: bool, keys: tuple[str, ...]) -> None:
    if as_json:
        print(record.model_dump_json(indent=2))
        return
    data = record.model_dump()
    width = max(len(key) for key in keys)
    for key in keys:
        value = data.get(key)
        print(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


def _night(args: argparse.Namespace) -> int:
    """`townlet train anneal --night D`: night D through the core functions the nightly graph's steps call, in
    their order (the cached expert data and BC stages, PPO from the champion, the guardrails, the recorded
    verdict, the promotion rule), without the steps' descriptions and data checks."""
    if args.dataset is not None or args.no_promote:
        raise UsageError("--night runs the nightly's own steps: it captures (or reuses) the expert data itself and "
                         "applies the promotion rule; drop --dataset and --no-promote")
    check_night(args.night)  # the nights run.sh and the schedule may run: a date, ended, not before the first
    outcome = run_night(load_config(args.config), args.night, artifacts_root(args.artifacts),
                        say=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(dataclasses.asdict(outcome), indent=2, default=str))
    else:
        print(f"night {outcome.night}: {outcome.status}: {outcome.reason}")
        print(f"  started from {outcome.started_from}")
        print(f"  promotion: {outcome.promotion}; current release {outcome.release_id}")
        print(f"  run folder {outcome.run_dir}  ({outcome.seconds:.0f} s)")
    return ANNEAL_EXIT_CODES[outcome.status]


def _checked_config(args: argparse.Namespace):
    """The run's config, and what the run is given checked against it before its run folder is made (a refused
    run leaves none): the schedule's strategies, and a `--dataset` or `--init` made for this config's world
    (another profile's data or checkpoint would train a network for the wrong towns)."""
    config = load_config(args.config)
    if getattr(args, "kind", None) == "anneal":
        check_judgeable(config)  # every stage's strategy known, both phases there, before the expert data is captured
    if getattr(args, "dataset", None) is not None:
        manifest = ReplayDataset.open(args.dataset, verify="none").manifest  # names a path that is not a dataset
        if manifest.world_config_hash != config.world_hash():
            raise UsageError(f"--dataset {args.dataset}: captured in another world (world "
                             f"{manifest.world_config_hash[:12]}) than --config {args.config or 'default'}'s (world "
                             f"{config.world_hash()[:12]}); capture one with this config, or pass the config it used")
    if getattr(args, "init", None) is not None:
        _trained_for(read_record(args.init), args.init, config, args.config,
                     "start from a checkpoint of this world, or pass the config it was trained with")
    return config


def _training_context(args: argparse.Namespace):
    """The run's checked config and context; under torchrun, every rank joins the group and uses rank 0's
    folder."""
    config = _checked_config(args)
    ranks = distributed.from_environment(config.runtime.device)
    run_dir = distributed.broadcast(new_run_dir(args.artifacts) if ranks.main else None, ranks)
    if not ranks.main:
        logging.getLogger("townlet").setLevel(logging.WARNING)  # one rank tells the story
    return config, make_context(config, run_dir, args.artifacts, progress=not args.json, ranks=ranks)


BC_KEYS = ("accuracy", "val_accuracy", "loss", "val_loss", "samples_per_sec", "device", "checkpoint_id",
           "checkpoint_path")
PPO_KEYS = ("data_mode", "updates", "loss_total", "loss_policy", "loss_value", "kl_divergence", "clip_fraction",
            "env_steps_per_sec", "checkpoint_id", "checkpoint_path")


def _resume(args: argparse.Namespace) -> int:
    given = [flag for flag, value in (("--init", args.init), ("--dataset", args.dataset), ("--config", args.config),
                                      ("--artifacts", args.artifacts)) if value is not None]
    if given:
        raise UsageError(f"--resume continues a run with its own settings; drop {', '.join(given)}")
    result = orchestrator.resume_training(args.resume, args.kind, progress=not args.json)
    _print_record(result, args.json, BC_KEYS if args.kind == "bc" else PPO_KEYS)
    return 0


def _run_strategy(args: argparse.Namespace, context, dataset):
    """`townlet train NAME` for a registered strategy other than bc and ppo: one stage of `--epochs`, built by
    its factory as the anneal builds it (training/registry.py)."""
    if args.epochs < 1:
        raise UsageError(f"--epochs: a stage trains at least 1 epoch, got {args.epochs}")
    inputs = StageInputs(dataset=dataset, replay_dataset=dataset, init_checkpoint=args.init,
                         out=context.artifacts / args.kind, name=args.kind)
    return build(args.kind, AnnealStage(cycle=0, mode=args.kind, epochs=args.epochs), inputs).run(context)


def _train(args: argparse.Namespace) -> int:
    if getattr(args, "tensorboard", None) is not None:
        tensorboard.switch(args.tensorboard)
        if args.tensorboard and not tensorboard.enabled():
            raise UsageError("--tensorboard: the tensorboard package is not installed "
                             "(pip install -e '.[tensorboard]')")
    if getattr(args, "resume", None):
        return _resume(args)
    if getattr(args, "night", None):
        return _night(args)
    config, context = _training_context(args)
    if not args.json and context.ranks.main:
        print(f"run folder {context.artifacts}  (device {context.device.name})", file=sys.stderr)
    ranks = context.ranks
    dataset = args.dataset
    mode = (getattr(args, "mode", None) or config.ppo.data_mode) if args.kind == "ppo" else None
    if dataset is None and (args.kind != "ppo" or mode in ("replay", "mixed")):
        made = orchestrator.capture_expert(config, context.artifacts / "expert").path if ranks.main else None
        dataset = distributed.broadcast(made, ranks)
    if ranks.active and args.kind == "anneal":
        raise UsageError("train anneal runs in one process; launch `townlet train bc|ppo` under torchrun")
    if args.kind in ("bc", "ppo") and ranks.main:
        absolute = lambda path: None if path is None else str(Path(path).absolute())  # noqa: E731
        orchestrator.record_invocation(context.artifacts, args.kind, config, dataset=absolute(dataset),
                                       init=absolute(args.init),
                                       mode=getattr(args, "mode", None), continue_optimizer=args.continue_optimizer)
    if args.kind == "bc":
        result = orchestrator.run_bc(context, dataset, args.init, args.continue_optimizer)
        if ranks.main:
            _print_record(result, args.json, BC_KEYS)
    elif args.kind == "ppo":
        result = orchestrator.run_ppo(context, args.init, dataset, args.mode, args.continue_optimizer)
        if ranks.main:
            _print_record(result, args.json, PPO_KEYS)
    elif args.kind != "anneal":
        result = _run_strategy(args, context, dataset)
        if ranks.main:
            _print_record(result, args.json, BC_KEYS if strategy(args.kind).phase == "bc" else PPO_KEYS)
    else:
        summary = orchestrator.run_anneal(context, dataset)
        outcome = orchestrator.apply_promotion(context.promotion, summary) if not args.no_promote else None
        if args.json:
            print(summary.model_dump_json(indent=2))
        else:
            print(f"anneal {summary.status}  ({summary.duration_sec:.0f}s, dataset {summary.dataset_label})")
            for stage in summary.stages:
                flags = [name for name in ("loss_flag", "queue_flag", "intensity_flag") if getattr(stage, name)]
                detail = (f"val accuracy {stage.accuracy:.3f} (threshold {stage.threshold})" if stage.mode == "bc"
                          else f"loss {stage.loss_total:.4f}  conflicts/agent-day {stage.queue_conflict_events:.3f}")
                print(f"  cycle {stage.cycle} {stage.mode:<3} {'pass' if stage.passed else 'FAIL'}  {detail}"
                      f"{'  flags: ' + ', '.join(flags) if flags else ''}")
            print(f"  pass streak {summary.promotion_pass_streak}, candidate ready: {summary.promotion_candidate_ready}")
            if outcome is not None:
                print(f"  promotion: {'promoted' if outcome.promoted else 'not promoted'} ({outcome.reason}); "
                      f"current release {outcome.release_id}")
            print(f"  final checkpoint {summary.final_checkpoint_path}")
        return ANNEAL_EXIT_CODES[summary.status]
    return 0


# `evaluate` plays all its towns at once in one batched world, so its memory grows with their number; 4,096 is
# 16 times the guardrail's 256 towns (whose interval on the conflict rate is already 4%, config.py SeedsConfig).
MAX_EVALUATION_TOWNS = 4096


def parse_seeds(text: str, config) -> tuple[int, ...]:
    """`test` (the held-out towns), `guardrail`, or a half-open range `START:STOP` of town seeds."""
    if text in ("test", "guardrail"):
        return getattr(config.seeds, text).seeds()
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"--seeds: expected test, guardrail or START:STOP, got {text!r}") from None
    if not 0 <= start < stop:
        raise UsageError(f"--seeds: {text!r} is an empty or negative range")
    if stop - start > MAX_EVALUATION_TOWNS:
        raise UsageError(f"--seeds {text}: {stop - start:,} towns; at most {MAX_EVALUATION_TOWNS:,} are scored at "
                         "once (all of them share one batched world in memory): choose a shorter range")
    return tuple(range(start, stop))


def _evaluate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _trained_for(read_record(args.checkpoint), args.checkpoint, config, args.config,
                 "evaluate it with the config it was trained with")
    seeds = parse_seeds(args.seeds, config)
    device = device_context(config.runtime.device, config.runtime.amp, config.runtime.torch_threads)
    # A checkpoint for another map size or action set is named here, before torch multiplies mismatched shapes.
    model, record = load_checkpoint(args.checkpoint, TownWorld(config, 1).spec, device=device.device)
    rows = {
        f"checkpoint {record.checkpoint_id}": evaluate(
            config, evaluation_policy(model, device, config).actions, seeds=seeds),
        **reference_scores(config, seeds),
    }
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    keys = ("reward_per_agent_day", "faints_per_agent_day", "late_arrivals_per_agent_day",
            "queue_conflict_events_per_agent_day", "queue_conflict_intensity_per_agent_day",
            "chat_success_events_per_agent_day", "shared_meal_events_per_agent_day", "wages_per_agent_day")
    print(f"{len(seeds)} towns (seeds {seeds[0]}..{seeds[-1]}), {config.evaluation.ticks} ticks each; "
          "per agent-day, ± the 95% interval over towns")
    print(f"  {'policy':<28}" + "".join(f"{key.removesuffix('_per_agent_day')[:14]:>18}" for key in keys))
    for name, report in rows.items():
        print(f"  {name:<28}" + "".join(f"{report[key]:>10.3f} ±{report[key + '_ci95']:<6.3f}" for key in keys))
    return 0


def _trained_for(record, checkpoint, config, config_name: str | None, remedy: str) -> None:
    """Refuse a checkpoint whose training config names another world than `config`'s."""
    trained = config_from_mapping(record.config, f"{checkpoint} (its training config)")
    if trained.world_hash() != config.world_hash():
        raise UsageError(
            f"{checkpoint}: trained for the world of profile {trained.profile!r} (world {trained.world_hash()[:12]}), "
            f"not the world of --config {config_name or 'default'} (world {config.world_hash()[:12]}); {remedy}")


def checkpoint_folder(path: str) -> Path:
    """A checkpoint named by its folder or by a file inside it (`checkpoint.json`, `weights.safetensors`)."""
    given = Path(path)
    folder = given.parent if given.is_file() else given
    if not (folder / RECORD).is_file():
        raise UsageError(f"--checkpoint {path}: not a checkpoint (no {RECORD} in {folder})")
    return folder


def _manual_promotion(args: argparse.Namespace, config, store) -> None:
    """`promotion promote`: an operator's release is a copy of a named checkpoint, exactly like a nightly one, so
    the next night starts from it and judges against it."""
    if not (args.candidate and args.checkpoint):
        raise UsageError("promotion promote: --candidate and --checkpoint CHECKPOINT_FOLDER are required (the release "
                         "is a copy of that checkpoint)")
    if args.override is not None and not args.override.strip():
        raise UsageError("promotion promote: --override needs a reason (it was blank); the reason is recorded")
    folder = checkpoint_folder(args.checkpoint)
    record = verify_checkpoint(folder)
    if args.checkpoint_id and args.checkpoint_id != record.checkpoint_id:
        raise UsageError(f"--checkpoint-id {args.checkpoint_id}: {folder} holds checkpoint {record.checkpoint_id}")
    _trained_for(record, folder, config, args.config, "promote it under the profile it was trained for")
    spec = TownWorld(config, 1).spec
    if record.observation != spec:
        raise UsageError(f"{folder}: its observations ({record.observation.variant}, {record.observation.feature_dim} "
                         f"features) are not this profile's ({spec.variant}, {spec.feature_dim} features)")
    store.promote(args.candidate, record.checkpoint_id,
                  {"checkpoint_id": record.checkpoint_id, "weights_sha256": record.weights_sha256,
                   "dataset_identity": record.dataset_identity or ""}, record.metrics,
                  path=folder, override=args.override)


def _promotion(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = PromotionStore.for_config(state_dir(args.artifacts, config), config)
    if args.action == "rollback":
        if not args.release:
            raise UsageError("promotion rollback: --release RELEASE_ID is required")
        store.rollback(args.release)
    elif args.action == "promote":
        _manual_promotion(args, config, store)
    status = store.status()
    if args.json:
        print(status.model_dump_json(indent=2))
        return 0
    current = status.current_release
    print(f"state {status.state}  candidate {status.candidate_id}  pass streak {status.pass_streak}/"
          f"{status.required_passes}")
    print(f"current release {current.release_id if current else None}"
          + (f" (checkpoint {current.checkpoint_id})" if current else ""))
    print(f"releases {status.releases}")
    return 0


def _soak(args: argparse.Namespace) -> int:
    config, context = _training_context(args)
    dataset = args.dataset or orchestrator.capture_expert(config, context.artifacts / "expert").path
    checkpoint = args.init
    records = []
    if not args.json:
        print(f"{'cycle':>5} {'mode':>7} {'loss':>9} {'kl':>8} {'clip':>6} {'entropy':>8} {'conflicts/ad':>13} "
              f"{'reward/ad':>10}")
    for cycle in range(args.cycles):
        mode = "replay" if cycle % 2 == 0 else "rollout"
        result = PPOStrategy(init_checkpoint=checkpoint, replay_dataset=dataset, data_mode=mode, cycle=cycle,
                             out=context.artifacts / f"soak-{cycle}", name=f"soak-{cycle}").run(context)
        checkpoint = result.checkpoint_path
        records.append(result.model_dump(mode="json"))
        if args.json:
            continue
        print(f"{cycle:>5} {mode:>7} {result.loss_total:>9.4f} {result.kl_divergence:>8.4f} {result.clip_fraction:>6.3f} "
              f"{result.batch_entropy_mean:>8.3f} {result.evaluation['queue_conflict_events_per_agent_day']:>13.3f} "
              f"{result.evaluation['reward_per_agent_day']:>10.3f}", flush=True)
    if args.json:
        print(json.dumps(records, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    """Where the latest run's summary and the promoted policy are."""
    config = load_config(args.config)
    root = artifacts_root(args.artifacts)
    own = namespace(config)

    def mine(path) -> bool:  # readable summaries of this profile's namespace (older ones carry none)
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            summary = None
        if not (isinstance(summary, dict) and {"status", "promotion_pass_streak"} <= set(summary)):
            print(f"skipping {path}: not a readable anneal summary", file=sys.stderr)
            return False
        return summary.get("namespace", own) == own

    runs = sorted((path for path in (root / "runs").glob("*/anneal_summary.json") if mine(path)),
                  key=lambda path: path.stat().st_mtime)
    if runs:
        summary = json.loads(runs[-1].read_text())
        print(f"latest anneal summary: {runs[-1]}  status {summary['status']}, pass streak "
              f"{summary['promotion_pass_streak']}")
    else:
        print(f"no anneal summary under {root / 'runs'} yet")
    status = PromotionStore.for_config(state_dir(root, config), config).status()
    release = status.current_release
    if release is None:
        print(f"promoted policy: none yet (state {status.state})")
    else:
        print(f"promoted policy: release {release.release_id}, checkpoint {release.checkpoint_id} at {release.path}")
    return 0


def count(text: str) -> int:
    """An argument that counts something (towns, ticks, days, rows, cycles): a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="townlet", description="Townlet Pipelines: simulate, capture, train.")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="run a policy in the batched world and print its KPIs")
    _add_config(sim)
    sim.add_argument("--towns", type=count, default=16)
    length = sim.add_mutually_exclusive_group()
    length.add_argument("--ticks", type=count, default=None)
    length.add_argument("--days", type=count, default=1)
    sim.add_argument("--policy", choices=("scripted", "random"), default="scripted")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--variant", choices=("hybrid", "compact", "full"), default=None,
                     help="observation variant (default: the config's)")
    sim.add_argument("--no-observe", action="store_true", help="skip building observations")
    sim.add_argument("--render", action="store_true", help="print town 0 as text frames")
    sim.add_argument("--render-every", type=count, default=60, help="ticks between rendered frames")
    sim.add_argument("--render-svg", default=None, metavar="FILE",
                     help="also draw town 0 over the run as a strip of pictures (SVG) into FILE")
    sim.add_argument("--json", action="store_true", help="print the report as JSON")
    sim.set_defaults(handler=_simulate)

    cap = commands.add_parser("capture", help="record a policy's rollouts as a replay dataset")
    _add_config(cap)
    cap.add_argument("--policy", choices=("scripted", "random"), default="scripted")
    cap.add_argument("--towns", type=count, default=16)
    cap_length = cap.add_mutually_exclusive_group()
    cap_length.add_argument("--ticks", type=count, default=None)
    cap_length.add_argument("--days", type=count, default=1)
    cap.add_argument("--seed", type=int, default=0)
    cap.add_argument("--out", required=True, help="new directory for the dataset (must not exist)")
    cap.add_argument("--shard-rows", type=count, default=16384, help="agent-ticks per shard (about)")
    cap.add_argument("--noise", type=float, default=0.0, help="scripted only: share of ticks played at random (DART)")
    cap.add_argument("--json", action="store_true")
    cap.set_defaults(handler=_capture)

    dataset = commands.add_parser("dataset", help="work with replay datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    inspect = dataset_commands.add_parser("inspect", help="verify a dataset and print its manifest summary")
    inspect.add_argument("path", help="dataset directory or its manifest.json")
    inspect.add_argument("--quick", action="store_true", help="check files and headers, not every row")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_inspect)

    train = commands.add_parser("train", help="train a policy: bc, ppo, anneal or a registered strategy")
    train_kinds = train.add_subparsers(dest="kind", required=True)
    plugins = [(name, f"the registered strategy {name!r} as one stage of --epochs (training/registry.py)")
               for name in known() if name not in ("bc", "ppo", *RESERVED)]
    for kind, text in (("bc", "behaviour cloning on expert demonstrations"),
                       ("ppo", "PPO fine-tuning (from --init when given)"),
                       ("anneal", "the BC/PPO schedule with guardrails, then the promotion rule; exits 0 on PASS, "
                                 "3 on FAIL, 4 on HOLD"), *plugins):
        sub = train_kinds.add_parser(kind, help=text, description=text)
        _add_config(sub)
        sub.add_argument("--dataset", default=None, help="replay dataset (default: capture the expert per config)")
        sub.add_argument("--artifacts", default=None, help="artifacts root (default $TOWNLET_ARTIFACTS or "
                                                           "dagster_home/artifacts)")
        sub.add_argument("--json", action="store_true", help="print the result record as JSON")
        sub.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                         help="write TensorBoard event files beside the JSONL logs (default: when the tensorboard "
                              "extra is installed; `tensorboard --logdir <run folder>/tensorboard` shows them)")
        if kind != "anneal":
            sub.add_argument("--init", default=None, help="checkpoint to start from")
        if kind not in ("bc", "ppo", "anneal"):
            sub.add_argument("--epochs", type=int, default=1, help="the stage's epochs (its AnnealStage.epochs)")
        if kind in ("bc", "ppo"):
            sub.add_argument("--continue-optimizer", action="store_true",
                             help="also restore --init's optimizer moments (continue its training, not fine-tune)")
            sub.add_argument("--resume", default=None, metavar="RUN_FOLDER",
                             help="continue a killed run from its newest progress checkpoint, with its own settings")
        if kind == "ppo":
            sub.add_argument("--mode", choices=("rollout", "replay", "mixed"), default=None)
        if kind == "anneal":
            sub.add_argument("--no-promote", action="store_true", help="judge and record, but never promote")
            sub.add_argument("--night", default=None, metavar="YYYY-MM-DD",
                             help="run that night as the nightly graph does (its towns, the cache, the champion)")
        sub.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="score a checkpoint against the expert and a random policy (held-out towns by default)")
    _add_config(evaluate)
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--seeds", default="test",
                          help="towns to score on: test (held out, the default), guardrail, or START:STOP")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=_evaluate)

    promotion = commands.add_parser("promotion", help="the promotion state: status, promote, rollback")
    _add_config(promotion)
    promotion.add_argument("action", choices=("status", "promote", "rollback"))
    promotion.add_argument("--release", default=None, help="release id to roll back to")
    promotion.add_argument("--candidate", default=None)
    promotion.add_argument("--checkpoint", default=None, metavar="CHECKPOINT_FOLDER",
                           help="promote: the checkpoint to release (its folder, or a file in it); it is copied "
                                "into the release")
    promotion.add_argument("--checkpoint-id", default=None, help="promote: checked against --checkpoint's id")
    promotion.add_argument("--override", default=None, metavar="REASON",
                           help="promote even a checkpoint that was rolled back (or not ready); the reason is recorded")
    promotion.add_argument("--artifacts", default=None)
    promotion.add_argument("--json", action="store_true")
    promotion.set_defaults(handler=_promotion)

    soak = commands.add_parser("soak", help="alternate replay and rollout PPO for N cycles, printing each")
    _add_config(soak)
    soak.add_argument("--cycles", type=count, default=4)
    soak.add_argument("--dataset", default=None)
    soak.add_argument("--init", default=None)
    soak.add_argument("--artifacts", default=None)
    soak.add_argument("--json", action="store_true")
    soak.set_defaults(handler=_soak)

    report = commands.add_parser("report", help="where the latest anneal summary and the promoted policy are")
    _add_config(report)
    report.add_argument("--artifacts", default=None)
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as error:  # noqa: BLE001 - sorted below: user errors become one line, the rest re-raise
        if not is_user_error(error):
            raise
        print(f"townlet: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
