"""What Dagster's own UI shows of a night without code of ours: float metadata with the same names every night
(the Plots tab draws them across partitions), and the owners and tags its catalog search filters on.
Torch-free: loading the code location imports this."""

from __future__ import annotations

import math

from dagster import MetadataValue

OWNERS = ["team:townlet"]
# Each asset's stage in the night: the catalog filters on these tags (`stage:training`).
STAGES = {"replay_manifest": "data", "rollout_dataset": "data", "bc_checkpoint": "training",
          "ppo_checkpoint": "training", "anneal_summary": "judging", "promoted_policy": "release"}


def catalog_tags(asset_name: str) -> dict[str, str]:
    """The asset's definition tags: its stage in the night, and the team that owns it. (The profile is a
    property of a run, not of the definition: one code location runs any profile, so it is on each
    materialization's metadata and each run's tags, `townlet/profile`.)"""
    return {"stage": STAGES[asset_name], "team": "townlet"}


# ---------------------------------------------------------------------------- plots across nights
# The held-out report's rows under the short names the metadata keys use; a row missing this night (no
# champion yet, the report off) is NaN, so every night carries every key and the Plots tab lines stay aligned.
HELD_OUT_ROWS = {"candidate": "candidate", "champion": "champion", "scripted expert": "expert", "random": "random"}
HELD_OUT_MEASURES = {"reward": "reward_per_agent_day", "conflicts": "queue_conflict_events_per_agent_day"}


def held_out_plot_keys() -> list[str]:
    keys = [f"held_out_{short}_{measure}" for short in HELD_OUT_ROWS.values() for measure in HELD_OUT_MEASURES]
    return [*keys, "held_out_margin_over_expert", "held_out_margin_over_expert_pct", "pass_streak"]


def held_out_plots(rows: dict[str, dict[str, float]], pass_streak: int) -> dict[str, MetadataValue]:
    """`anneal_summary`'s float metadata: candidate, champion, expert and random held-out reward and queue
    conflicts (per agent-day), the candidate's margin over the expert (reward, and as a percentage of the
    expert's), and the pass streak. NaN where this night has no such row."""
    def value(row: str, measure: str) -> float:
        return float(rows.get(row, {}).get(HELD_OUT_MEASURES[measure], math.nan))

    plots = {f"held_out_{short}_{measure}": MetadataValue.float(value(row, measure))
             for row, short in HELD_OUT_ROWS.items() for measure in HELD_OUT_MEASURES}
    candidate, expert = value("candidate", "reward"), value("scripted expert", "reward")
    margin = candidate - expert
    plots["held_out_margin_over_expert"] = MetadataValue.float(margin)
    plots["held_out_margin_over_expert_pct"] = MetadataValue.float(
        100.0 * margin / abs(expert) if expert and not math.isnan(expert) else math.nan)
    plots["pass_streak"] = MetadataValue.float(float(pass_streak))
    return plots


def release_plots(held_out_reward: float | None, pass_streak: int) -> dict[str, MetadataValue]:
    """`promoted_policy`'s float metadata: the release's held-out reward when the night's report scored its
    checkpoint (NaN otherwise: a release kept from an earlier night, the report off), and the pass streak."""
    return {"release_held_out_reward": MetadataValue.float(math.nan if held_out_reward is None else held_out_reward),
            "pass_streak": MetadataValue.float(float(pass_streak))}
