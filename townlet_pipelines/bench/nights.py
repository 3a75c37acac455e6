"""`python -m townlet_pipelines.bench nights`: a learning figure as a distribution over nights, never one draw.

Each night runs through the nightly's own functions (`townlet_pipelines/nightly/night.py`: the steps the
Dagster assets call), then the candidate, the champion it started from, the scripted expert and a random
policy are scored on the held-out towns (`seeds.test`: no training, tuning or guardrail uses them), as
`config.evaluation` plays them. `--chain` runs consecutive nights against one artifacts root, so each starts
from the champion the last one left; `--independent` gives every night a root of its own (first nights,
from the BC clone). The content-addressed cache (expert data, BC stages) is shared by every night and every
bench run of the same code: its entries are the same whichever night builds them.

Writes `nights.md` (the table), `nights.json` (every figure) and `nights.svg` (the champion's held-out
reward and conflicts across nights beside the expert's) into `--out`.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from pathlib import Path

from townlet_pipelines.config import load_config
from townlet_pipelines.data.files import atomic_write_text
from townlet_pipelines.nightly.night import run_night
from townlet_pipelines.svg import Axis, Canvas, Scale, axis_margin
from townlet_pipelines.training.checkpoints import load_checkpoint, read_record
from townlet_pipelines.training.device import device_context
from townlet_pipelines.training.evaluation import evaluate, paired_difference
from townlet_pipelines.training.namespaces import artifacts_root
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

KPIS = ("reward_per_agent_day", "queue_conflict_events_per_agent_day", "queue_conflict_intensity_per_agent_day",
        "wages_per_agent_day", "faints_per_agent_day")


class HeldOut:
    """Held-out scores per checkpoint (scored once), with per-town values for paired differences."""

    def __init__(self, config) -> None:
        self.config, self.seeds = config, config.seeds.test.seeds()
        self.device = device_context(config.runtime.device, config.runtime.amp, config.runtime.torch_threads)
        self.towns: dict[str, dict] = {}
        self.rows: dict[str, dict] = {}

    def score(self, name: str, act) -> dict:
        if name not in self.rows:
            towns: dict = {}
            self.rows[name] = evaluate(self.config, act, seeds=self.seeds, per_town=towns)
            self.towns[name] = towns
        return self.rows[name]

    def checkpoint(self, path: str) -> dict:
        key = read_record(path).checkpoint_id
        if key not in self.rows:
            model, _ = load_checkpoint(path, device=self.device.device)
            self.score(key, evaluation_policy(model, self.device, self.config).actions)
        return self.rows[key] | {"name": key}

    def versus(self, name: str, reference: str, key: str = "reward_per_agent_day") -> tuple[float, float]:
        return paired_difference(self.towns[name][key], self.towns[reference][key])


def _row(held: HeldOut, outcome, expert: dict) -> dict:
    candidate = held.checkpoint(outcome.candidate_path) if outcome.candidate_path else None
    before = held.checkpoint(outcome.champion_before) if outcome.champion_before else None
    after = held.checkpoint(outcome.release_path) if outcome.release_path else None
    row = {"night": outcome.night, "status": outcome.status, "reason": outcome.reason,
           "started_from": outcome.started_from, "promoted": outcome.promoted, "promotion": outcome.promotion,
           "release_after": outcome.release_id, "seconds": round(outcome.seconds, 1),
           "guardrail_expert": outcome.expert, "guardrail_champion": outcome.champion,
           # the chosen snapshot's conflicts on the 64 validation towns beside the candidate's on the 256 guardrail
           # towns: how far the snapshot choice's reading is from the gate's
           "validation_conflicts": outcome.validation.get("queue_conflict_events_per_agent_day"),
           "guardrail_conflicts": outcome.guardrail.get("queue_conflict_events_per_agent_day"),
           "guardrail_conflicts_ci95": outcome.guardrail.get("queue_conflict_events_per_agent_day_ci95"),
           "expert": {key: expert[key] for key in KPIS} | {"reward_ci95": expert["reward_per_agent_day_ci95"]}}
    for label, scored in (("candidate", candidate), ("champion_before", before), ("champion_after", after)):
        if scored is None:
            row[label] = None
            continue
        difference, half = held.versus(scored["name"], "expert")
        row[label] = {"checkpoint_id": scored["name"], **{key: scored[key] for key in KPIS},
                      "reward_ci95": scored["reward_per_agent_day_ci95"],
                      "vs_expert": difference, "vs_expert_ci95": half,
                      "vs_expert_pct": 100 * difference / abs(expert["reward_per_agent_day"]),
                      "conflicts_x_expert": scored["queue_conflict_events_per_agent_day"]
                      / expert["queue_conflict_events_per_agent_day"]
                      if expert["queue_conflict_events_per_agent_day"] > 0 else float("nan"),
                      "wages_x_expert": scored["wages_per_agent_day"] / max(expert["wages_per_agent_day"], 1e-9)}
    if candidate is not None and before is not None:
        row["candidate_vs_champion_before"] = held.versus(candidate["name"], before["name"])
    if after is not None and before is not None and after["name"] != before["name"]:
        row["release_vs_previous"] = held.versus(after["name"], before["name"])
    return row


def _cell(scored: dict | None) -> str:
    if scored is None:
        return "-"
    return (f"{scored['reward_per_agent_day']:.2f} ({scored['vs_expert_pct']:+.1f}% ± "
            f"{100 * scored['vs_expert_ci95'] / abs(scored['reward_per_agent_day'] - scored['vs_expert']):.1f}), "
            f"conflicts {scored['queue_conflict_events_per_agent_day']:.3f} (×{scored['conflicts_x_expert']:.2f}), "
            f"wages {scored['wages_x_expert']:.1%}, "
            f"faints {scored['faints_per_agent_day']:.3f}")


def table(rows: list[dict], expert: dict, random: dict, header: str) -> str:
    lines = [header, "",
             f"Held-out towns: seeds.test, {int(expert['towns'])} towns. Scripted expert "
             f"{expert['reward_per_agent_day']:.2f} ± {expert['reward_per_agent_day_ci95']:.2f} reward per agent-day, "
             f"{expert['queue_conflict_events_per_agent_day']:.3f} conflicts; random "
             f"{random['reward_per_agent_day']:.2f}. Percentages: reward over the expert's, paired on the same "
             "towns, ± the 95% interval.", "",
             "| night | verdict | started from | challenger vs champion (guardrail towns) | conflicts: validation / "
             "guardrail | promoted | candidate (held out) | champion after the night (held out) | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        champion = row.get("guardrail_champion")
        versus = (f"{champion['difference']:+.2f} ± {champion['difference_ci95']:.2f}" if champion else "no champion")
        start = (row["started_from"] or "-").split(":")[0]
        readings = "-"
        if row.get("validation_conflicts") is not None and row.get("guardrail_conflicts") is not None:
            readings = (f"{row['validation_conflicts']:.3f} / {row['guardrail_conflicts']:.3f} ± "
                        f"{row['guardrail_conflicts_ci95']:.3f}")
        lines.append(f"| {row['night']} | {row['status']} | {start} | {versus} | {readings} | "
                     f"{'yes: ' + str(row['release_after']) if row['promoted'] else 'no'} | {_cell(row['candidate'])} | "
                     f"{_cell(row['champion_after'])} | {row['seconds']:.0f} |")
    held = [row for row in rows if row["status"] != "PASS"]
    for row in held:
        lines.append(f"\n{row['night']} {row['status']}: {row['reason']}")
    return "\n".join(lines)


def summary_line(rows: list[dict], key: str = "candidate") -> str:
    values = [row[key]["vs_expert_pct"] for row in rows if row.get(key)]
    if not values:
        return f"{key}: none"
    return (f"{key} over the expert on held-out reward: median {statistics.median(values):+.1f}%, worst "
            f"{min(values):+.1f}%, best {max(values):+.1f}% over {len(values)} nights")


def picture(rows: list[dict], expert: dict) -> str:
    """The champion after each night: held-out reward and conflicts, beside the expert's (dotted)."""
    xs = list(range(1, len(rows) + 1))
    reward = [row["champion_after"]["reward_per_agent_day"] if row.get("champion_after") else None for row in rows]
    conflicts = [row["champion_after"]["queue_conflict_events_per_agent_day"] if row.get("champion_after") else None
                 for row in rows]
    candidate = [row["candidate"]["reward_per_agent_day"] if row.get("candidate") else None for row in rows]
    reward_scale = Scale.fit([v for v in reward + candidate if v is not None] + [expert["reward_per_agent_day"]])
    conflict_scale = Scale.fit([v for v in conflicts if v is not None]
                               + [expert["queue_conflict_events_per_agent_day"]], zero=True)
    canvas = Canvas(560, 270)
    left, right = axis_margin(reward_scale, "reward"), axis_margin(conflict_scale, "conflicts")
    axis = Axis(canvas, (left, 50, canvas.width - left - right, 170), Scale.fit(xs or [1], integer=True),
                reward_scale, conflict_scale)
    axis.series(xs, reward, "#1e8449", marker="o", class_="series", data_key="champion_reward")
    axis.series(xs, candidate, "#1e8449", dash="2,3", class_="series", data_key="candidate_reward")
    axis.series(xs, conflicts, "#ca6f1e", "right", marker="s", class_="series", data_key="champion_conflicts")
    axis.hline(expert["reward_per_agent_day"], "#1e8449", class_="expert")
    axis.hline(expert["queue_conflict_events_per_agent_day"], "#ca6f1e", "right", class_="expert")
    first, last = (rows[0]["night"], rows[-1]["night"]) if rows else ("", "")
    axis.frame("labels", xlabel=f"night ({first} … {last})", ylabel="held-out reward / agent-day",
               ylabel_right="conflicts / agent-day")
    canvas.text(axis.x0, 16, "the champion after each night (dotted: the scripted expert)", 12, font_weight="bold",
                class_="title")
    axis.legend([("champion reward", "#1e8449", None, "o"), ("candidate reward", "#1e8449", "2,3", None),
                 ("champion conflicts", "#ca6f1e", None, "s")])
    return canvas.svg()


def main(args) -> None:
    base = load_config(args.config)
    first = datetime.date.fromisoformat(args.first)
    nights = [(first + datetime.timedelta(days=index * args.step)).isoformat() for index in range(args.nights)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held = HeldOut(base)
    expert = held.score("expert", ScriptedExpert(base.expert).act)
    random = held.score("random", RandomPolicy(0).act)
    mode = "independent" if args.independent else "chain"
    # Two benches started in the same second (a chain and independent nights side by side) get roots of their own.
    stamp = f"{datetime.datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}"
    root = artifacts_root(args.artifacts) / f"bench-nights-{mode}-{stamp}"
    print(f"{len(nights)} {mode} nights of {args.config} from {nights[0]}; artifacts {root}", flush=True)
    rows = []
    for index, night in enumerate(nights):
        night_root = root / f"night-{index + 1}" if args.independent else root
        if not night_root.exists():  # content-addressed entries (expert data, BC stages, reference rows) are the
            night_root.mkdir(parents=True)  # same for every night and every bench run of this code: shared
            for name in ("cache", "datasets"):
                shared = artifacts_root(args.artifacts) / "bench-nights-shared" / name
                shared.mkdir(parents=True, exist_ok=True)
                (night_root / name).symlink_to(shared)
        started = time.perf_counter()
        outcome = run_night(base, night, night_root, say=print)
        row = _row(held, outcome, expert)
        rows.append(row)
        print(f"night {night}: {outcome.status} ({outcome.reason}); {outcome.promotion}; candidate "
              f"{_cell(row['candidate'])}; champion {_cell(row['champion_after'])}; "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        header = (f"`python -m townlet_pipelines.bench nights --config {args.config} --nights {args.nights} "
                  f"--first {args.first}{f' --step {args.step}' if args.step != 1 else ''} --{mode}` "
                  f"({datetime.date.today().isoformat()})")
        atomic_write_text(out / "nights.json", json.dumps({"mode": mode, "config": args.config, "rows": rows,
                                                           "expert": expert, "random": random}, indent=2))
        atomic_write_text(out / "nights.md", table(rows, expert, random, header) + "\n\n"
                          + summary_line(rows) + "\n\n" + summary_line(rows, "champion_after") + "\n")
        atomic_write_text(out / "nights.svg", picture(rows, expert))
    print((out / "nights.md").read_text())
