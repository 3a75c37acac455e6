"""What Dagster's own UI shows of a night without code of ours: float metadata with the same names every night
(the Plots tab draws them across partitions), dataset previews (a column schema and a few telemetry rows), and
the owners and tags its catalog search filters on. Torch-free: loading the code location imports this."""

from __future__ import annotations

import math

import numpy as np

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from townlet_pipelines.data.capture import read_telemetry  # pandas loads when a table is read, not here

OWNERS = ["team:townlet"]
# Each asset's stage in the night: the catalog filters on these tags (`stage:training`).
STAGES = {"replay_manifest": "data", "rollout_dataset": "data", "bc_checkpoint": "training",
          "ppo_checkpoint": "training", "anneal_summary": "judging", "promoted_policy": "release"}


def catalog_tags(asset_name: str) -> dict[str, str]:
    """The asset's definition tags: its stage in the night, and the team that owns it. (The profile is in the
    asset's key instead, `smoke/ppo_checkpoint`: one code location per profile, pipeline/definitions.py.)"""
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


# ---------------------------------------------------------------------------- dataset previews
TELEMETRY_COLUMNS = {  # one row per (tick, town): what each column counts over that tick
    "tick": ("int", "tick of the capture (0 = the first)"),
    "town": ("int", "town index within the capture's batch"),
    "episode": ("int", "episode index (towns x episodes so far + town)"),
    "queue_conflict_events": ("float", "agents that pushed into an occupied queue"),
    "queue_conflict_intensity": ("float", "how hard they pushed (summed conflict strength)"),
    "queued_politely_events": ("float", "agents that waited their turn in a queue"),
    "shared_meal_events": ("float", "meals eaten together"),
    "late_help_events": ("float", "agents that helped a late colleague"),
    "shift_takeover_events": ("float", "shifts taken over from an absent colleague"),
    "chat_success_events": ("float", "chats that went well"),
    "chat_failure_events": ("float", "chats that went badly"),
    "chat_quality_sum": ("float", "summed chat quality"),
    "late_arrivals": ("float", "agents late for their shift"),
    "on_time_arrivals": ("float", "agents on time for their shift"),
    "absences": ("float", "shifts missed"),
    "faints": ("float", "agents that fainted (a need ran out)"),
    "wages": ("float", "wages paid"),
    "meals_eaten": ("float", "meals eaten"),
    "meals_cooked": ("float", "meals cooked"),
    "showers": ("float", "showers taken"),
    "sleeps": ("float", "sleeps begun"),
    "failed_actions": ("float", "actions that could not complete"),
    "invalid_actions": ("float", "masked actions chosen"),
}
PREVIEW_ROWS = 6
UNDESCRIBED = ("float", "a world telemetry counter (not described here yet)")


def telemetry_schema(columns=tuple(TELEMETRY_COLUMNS)) -> TableSchema:
    """The telemetry table's columns, types and meanings (the dataset's `telemetry.parquet`)."""
    return TableSchema(columns=[TableColumn(name, kind, description=meaning) for name in columns
                                for kind, meaning in [TELEMETRY_COLUMNS.get(name, UNDESCRIBED)]])


# The definitions' own schema: the catalog shows the columns before anything is materialized.
DATASET_SCHEMA = {"dagster/column_schema": telemetry_schema()}


def dataset_preview(directory) -> dict[str, MetadataValue]:
    """A dataset's telemetry table for the catalog: its schema as `dagster/column_schema` (the columns the file
    has), its row count as `dagster/row_count` (and as a float, for the Plots tab), and a few rows of it (town 0,
    spread over the capture) as a Dagster table."""
    table = read_telemetry(directory)
    schema = telemetry_schema(tuple(table.columns))
    town = table[table["town"] == 0]
    picked = town.iloc[np.unique(np.linspace(0, len(town) - 1, PREVIEW_ROWS).astype(int))] if len(town) else town
    records = [TableRecord({column.name: int(row[column.name]) if column.type == "int" else float(row[column.name])
                            for column in schema.columns}) for row in picked.to_dict("records")]
    return {"dagster/column_schema": MetadataValue.table_schema(schema),
            "dagster/row_count": MetadataValue.int(len(table)),
            "telemetry_rows": MetadataValue.float(float(len(table))),
            "telemetry_preview": MetadataValue.table(records, schema=schema)}
