"""Nights as daily partitions, and the IO manager that hands each asset its own night's upstream records.

A record is a small JSON mapping (paths, ids, the run and profile that made it); the data itself stays in the
files the asset wrote. Each run writes its own, `<artifacts>/records/<asset key>/<night>/<run id>.json`, and
also the night's latest, `<artifacts>/records/<asset key>/<night>.json`. The asset key carries the profile
(`smoke/ppo_checkpoint`; the default profile's keys are bare, pipeline/definitions.py), so each profile's
records live apart. A step reads the record its own run wrote when its run materialized that upstream (two
runs of one night at once, from `dagster job execute` which no run queue limits, never read each other's);
only an upstream its run did not materialize (a partial re-run) comes from the night's latest record, and the
step's log names the run that wrote it. A latest record another profile's run wrote (one written at a bare key
before keys carried the profile) is refused, never read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from dagster import (
    DagsterEventType, DailyPartitionsDefinition, Failure, InputContext, IOManager, OutputContext, io_manager,
)

from townlet_pipelines.config import ConfigError
from townlet_pipelines.data.files import atomic_write_text
from townlet_pipelines.training.nights import FIRST_NIGHT, NIGHT_ENDS_AT_HOUR, TIMEZONE  # light: config only

# Each night is the day that ends at 02:00 in $TOWNLET_TIMEZONE (training/nights.py, which `run.sh` and `townlet
# train anneal --night` check a night against): the schedule built from the partitioned job runs night D at 02:00
# on D+1. A night's towns come from its date alone, so the first night below only bounds what the UI lists.
NIGHTS = DailyPartitionsDefinition(start_date=FIRST_NIGHT, hour_offset=NIGHT_ENDS_AT_HOUR, timezone=TIMEZONE)


DEFAULT_PROFILE = "default"  # its assets keep the bare keys they always had


def key_prefix(profile: str) -> list[str]:
    """The asset keys' prefix of a profile's code location: none for the default profile, else its name (made a
    valid key part). A record lives under its asset's key, so under its profile too."""
    return [] if profile == DEFAULT_PROFILE else [re.sub(r"[^A-Za-z0-9_]", "_", profile)]


def served_profile(asset_key) -> str:
    """The profile whose code location an asset key belongs to (from its prefix)."""
    return asset_key.path[0] if len(asset_key.path) > 1 else DEFAULT_PROFILE


def refuse_another_profile(asset_key, config, source: str) -> None:
    """A code location serves one profile: a config of another would file its data under the wrong keys."""
    if key_prefix(config.profile) != list(asset_key.path[:-1]):
        raise ConfigError(f"{source}: profile '{config.profile}', but this code location serves profile "
                          f"'{served_profile(asset_key)}' (a profile's runs are recorded under its own asset keys and "
                          f"records): run it where its profile is served, `bash scripts/run.sh {source}` or "
                          f"TOWNLET_CONFIG={source}")


def record_path(root: Path, asset: str, night: str, run_id: str | None = None) -> Path:
    """The night's latest record of an asset (its key as a user string: `smoke/ppo_checkpoint`), or (with
    `run_id`) the one that run wrote."""
    folder = Path(root) / "records" / asset
    return folder / night / f"{run_id}.json" if run_id else folder / f"{night}.json"


def planned_in_run(instance, run_id: str, asset: str, night: str) -> bool:
    """Whether the run set out to materialize `asset` for `night` (Dagster records the plan when it creates a run)."""
    for event in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED):
        planned = event.dagster_event
        if planned is not None and planned.asset_key is not None and planned.asset_key.to_user_string() == asset:
            partition = getattr(planned.event_specific_data, "partition", None)
            subset = getattr(planned.event_specific_data, "partitions_subset", None)
            if (partition is None and subset is None) or partition == night or (subset is not None and night in subset):
                return True
    return False


def read_record(path: Path, asset: str, night: str) -> dict:
    """A night's record of an asset, or a Failure naming the file: empty, not JSON, not a record, another night's."""
    def damaged(why: str) -> Failure:
        return Failure(f"{path}: damaged record ({why}); re-materialize {asset} for night {night}")

    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise damaged(" ".join(str(error).split()) if path.stat().st_size else "the file is empty") from None
    if not isinstance(record, dict) or not record.get("run_id") or "night" not in record:
        raise damaged("not a record written by a run: no run_id or night")
    if not set(record) - {"run_id", "night", "profile"}:
        raise damaged("it holds nothing but its run_id and night")
    if record["night"] != night:
        raise damaged(f"it is night {record['night']}'s")
    return record


def profile_of_record(instance, record: dict) -> str | None:
    """The profile of the run that wrote a record: the record's own field, else (a record written before records
    named it) the `townlet/profile` tag of its run on this instance; None when neither says."""
    if record.get("profile"):
        return record["profile"]
    run = instance.get_run_by_id(record["run_id"])
    return run.tags.get("townlet/profile") if run is not None else None


class RecordIOManager(IOManager):
    """Stores an asset's returned record under its night; loads an input from the same night's record."""

    def handle_output(self, context: OutputContext, obj: dict | None) -> None:
        if obj is None:
            return
        night = context.asset_partition_key if context.has_asset_partitions else "unpartitioned"
        record = json.dumps({**obj, "profile": served_profile(context.asset_key), "run_id": context.run_id,
                             "night": night}, indent=2, sort_keys=True, default=str)
        root, asset = context.resources.townlet.root(), context.asset_key.to_user_string()
        own = record_path(root, asset, night, context.run_id)
        atomic_write_text(own, record)  # this run's, for this run's downstream steps
        atomic_write_text(record_path(root, asset, night), record)  # the night's latest, for partial re-runs
        context.add_output_metadata({"record": str(own)})

    def load_input(self, context: InputContext) -> dict:
        night = context.asset_partition_key if context.has_asset_partitions else "unpartitioned"
        asset = context.asset_key.to_user_string()
        root, run_id = context.resources.townlet.root(), context.step_context.run_id
        own = record_path(root, asset, night, run_id)
        if own.is_file():
            record = read_record(own, asset, night)
            if record["run_id"] != run_id:
                raise Failure(f"{own}: damaged record (written by run {record['run_id']}, not {run_id}); "
                              f"re-materialize {asset} for night {night}")
            return record
        if planned_in_run(context.instance, run_id, asset, night):
            raise Failure(f"{asset} for night {night}: this run ({run_id}) materialized it but its record {own} is "
                          "missing; re-run the night")
        path = record_path(root, asset, night)
        if not path.is_file():
            raise Failure(f"{asset} has no record for night {night} ({path}); materialize it for that night first")
        record = read_record(path, asset, night)
        serves, wrote = served_profile(context.asset_key), profile_of_record(context.instance, record)
        if wrote is not None and key_prefix(wrote) != list(context.asset_key.path[:-1]):
            raise Failure(f"{path}: the night's latest record of {asset} was written by run {record['run_id']} of "
                          f"profile '{wrote}', not '{serves}' (before asset keys carried the profile); "
                          f"re-materialize {asset} for night {night} with profile '{serves}'")
        context.log.info(f"{asset} for night {night} was not materialized in this run: reading the night's latest "
                         f"record, written by run {record['run_id']} ({path})")
        return record


@io_manager(required_resource_keys={"townlet"},
            description="Small JSON records of each asset, one per night, under the artifacts root.")
def night_records(init_context) -> RecordIOManager:
    # Every step needs this IO manager, so it starts with the run: under the in-process executor the process
    # that starts it runs the whole run (the `dagster job execute` CLI or a run worker), and records itself as
    # the run's worker; runs that a dead worker left STARTED are failed and their pool slots freed
    # (pipeline/launcher.py). Under the k8s executor each step is a pod of its own and the launcher checks the run.
    if os.environ.get("TOWNLET_EXECUTOR", "in_process") == "in_process":
        from townlet_pipelines.pipeline.launcher import claim_run  # launcher imports this module

        claim_run(init_context.instance, init_context.run)
    return RecordIOManager()
