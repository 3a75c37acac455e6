"""Nights as daily partitions, and the IO manager that hands each asset its own night's upstream records.

A record is a small JSON mapping (paths, ids, the run that made it); the data itself stays in the files the
asset wrote. Records live at `<artifacts>/records/<asset>/<night>.json`, so a step reads exactly its own
partition's upstream, never "whatever is latest on the instance"; two runs of one night queue behind each
other (dagster.yaml's run-queue limit on the `dagster/partition` tag), so within a night the record a step
reads is the one its own run wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster import DailyPartitionsDefinition, Failure, InputContext, IOManager, OutputContext, io_manager

# Each night is the day that ends at 02:00: the schedule built from the partitioned job runs night D at
# 02:00 on D+1, in $TOWNLET_TIMEZONE (default UTC). A night's towns come from its date alone
# (townlet_pipelines/training/nights.py), so the first night below only bounds what the UI lists.
TIMEZONE = os.environ.get("TOWNLET_TIMEZONE", "UTC")
FIRST_NIGHT = os.environ.get("TOWNLET_FIRST_NIGHT", "2026-11-01")
NIGHTS = DailyPartitionsDefinition(start_date=FIRST_NIGHT, hour_offset=2, timezone=TIMEZONE)


def record_path(root: Path, asset: str, night: str) -> Path:
    return Path(root) / "records" / asset / f"{night}.json"


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
    if not set(record) - {"run_id", "night"}:
        raise damaged("it holds nothing but its run_id and night")
    if record["night"] != night:
        raise damaged(f"it is night {record['night']}'s")
    return record


class RecordIOManager(IOManager):
    """Stores an asset's returned record under its night; loads an input from the same night's record."""

    def handle_output(self, context: OutputContext, obj: dict | None) -> None:
        if obj is None:
            return
        from townlet_pipelines.data.files import atomic_write_text

        night = context.asset_partition_key if context.has_asset_partitions else "unpartitioned"
        record = {**obj, "run_id": context.run_id, "night": night}
        path = record_path(context.resources.townlet.root(), context.asset_key.to_user_string(), night)
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str))
        context.add_output_metadata({"record": str(path)})

    def load_input(self, context: InputContext) -> dict:
        night = context.asset_partition_key if context.has_asset_partitions else "unpartitioned"
        asset = context.asset_key.to_user_string()
        path = record_path(context.resources.townlet.root(), asset, night)
        if not path.is_file():
            raise Failure(f"{asset} has no record for night {night} ({path}); materialize it for that night first")
        return read_record(path, asset, night)


@io_manager(required_resource_keys={"townlet"},
            description="Small JSON records of each asset, one per night, under the artifacts root.")
def night_records(init_context) -> RecordIOManager:
    # Every step needs this IO manager, so it starts with the run: under the in-process executor the process
    # that starts it runs the whole run (the `dagster job execute` CLI or a run worker), and records itself as
    # the run's worker; runs that a dead worker left STARTED are failed and their pool slots freed
    # (pipeline/launcher.py). Under the k8s executor each step is a pod of its own and the launcher checks the run.
    if os.environ.get("TOWNLET_EXECUTOR", "in_process") == "in_process":
        from townlet_pipelines.pipeline.launcher import claim_run

        claim_run(init_context.instance, init_context.dagster_run)
    return RecordIOManager()
