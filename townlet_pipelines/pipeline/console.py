"""What `scripts/run.sh` prints once `dagster job execute` has run a night with its output in a log file: the
night's verdict and its sentence, or the one-line reason a step failed, then the run and its log; never a
stack trace (the full event log stays in the instance, for the UI). Exits as `townlet train anneal` does:
0 PASS, 3 FAIL, 4 HOLD; 1 when the run failed before judging the night, 2 when its run cannot be found.

    python -m townlet_pipelines.pipeline.console LOG DAGSTER_EXIT_STATUS

The run is the one tagged `townlet/console_log: LOG` (run.sh tags it so). Torch-free.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, RunsFilter

EXIT_CODES = {"PASS": 0, "FAIL": 3, "HOLD": 4}  # as `townlet train anneal` (cli.ANNEAL_EXIT_CODES)
LOG_TAG = "townlet/console_log"
JUDGED = "anneal_summary"


def _metadata(entry) -> dict:
    record = entry.asset_materialization or entry.asset_observation
    return {key: value.value for key, value in record.metadata.items()}


def _of(entry, asset: str) -> bool:
    """Whether the event is about `asset` under any profile's key (`anneal_summary`, `smoke/anneal_summary`)."""
    return entry.dagster_event is not None and entry.dagster_event.asset_key is not None and \
        entry.dagster_event.asset_key.path[-1] == asset


def verdict_of_run(instance: DagsterInstance, run_id: str) -> dict | None:
    """The night's verdict as the run recorded it on anneal_summary: its materialization (a PASS) or the
    observation a guardrail that held the candidate left (a FAIL or HOLD); None if the run judged nothing."""
    events = [record.event_log_entry for kind in (DagsterEventType.ASSET_MATERIALIZATION,
                                                  DagsterEventType.ASSET_OBSERVATION)
              for record in instance.get_records_for_run(run_id, of_type=kind).records]
    judged = [entry for entry in events if _of(entry, JUDGED)]
    if not judged:
        return None
    latest = max(judged, key=lambda entry: entry.timestamp)
    return _metadata(latest)


def _promotion(instance: DagsterInstance, run_id: str) -> str | None:
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        entry = record.event_log_entry
        if _of(entry, "promoted_policy"):
            return str(_metadata(entry).get("reason", ""))
    return None


def _failures(instance: DagsterInstance, run_id: str) -> list[str]:
    """Each failed step's reason in one line: a Failure's own description, else the error's first line."""
    told = []
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            reason = data.user_failure_data.description
        else:
            error = data.error.cause if data.error is not None and data.error.cause is not None else data.error
            reason = (error.message if error is not None else "failed").strip().splitlines()[0]
        told.append(f"{event.step_key}: {' '.join(reason.split())}")
    return told


def tell(log: Path, dagster_status: int, instance: DagsterInstance, out=print) -> int:
    runs = instance.get_runs(RunsFilter(tags={LOG_TAG: str(log)}), limit=1)
    if not runs:
        out(f"no run started (dagster exited {dagster_status}); its output: {log}")
        text = log.read_text(errors="replace") if log.exists() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        for line in lines[-5:]:  # the reason is at the end (a config error, a code location that does not load)
            out(f"  {line}")
        return 2
    run = runs[0]
    verdict = verdict_of_run(instance, run.run_id)
    night = run.tags.get("dagster/partition", "?")
    if verdict is not None:
        status = str(verdict.get("status"))
        out(f"night {night}: {status}: {verdict.get('reason', '')}")
        promotion = _promotion(instance, run.run_id)
        out(f"promotion: {promotion}" if promotion is not None else "promotion: not reached (nothing is promoted)")
        code = EXIT_CODES.get(status, 1)
    else:
        out(f"night {night}: not judged; the run {run.status.value.lower()}")
        for line in _failures(instance, run.run_id):
            out(f"  {line}")
        code = 0 if dagster_status == 0 else 1
    out(f"run {run.run_id} ({run.status.value}); its full log: {log} (every event is in the instance too: "
        f"bash scripts/ui.sh, then Runs)")
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].lstrip("-").isdigit():
        print("usage: python -m townlet_pipelines.pipeline.console LOG DAGSTER_EXIT_STATUS", file=sys.stderr)
        return 2
    with DagsterInstance.get() as instance:
        return tell(Path(argv[0]), int(argv[1]), instance)


if __name__ == "__main__":
    sys.exit(main())
