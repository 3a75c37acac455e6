"""How a step of the night reports to Dagster: its outcome (nightly/outcome.py) as a materialization with
metadata and check results, a held candidate's verdict as an observation on `anneal_summary`, the core's training
log lines in the run's log as they happen, and a user's error told in one line. Torch-free."""

from __future__ import annotations

import contextlib
import functools
import logging
import time

from dagster import (
    AssetCheckResult, AssetCheckSeverity, AssetKey, AssetObservation, DataVersion, Failure, MaterializeResult,
    MetadataValue,
)

from townlet_pipelines.errors import is_user_error, one_line
from townlet_pipelines.nightly.outcome import FilePath, Markdown


def told_in_one_line(function):
    """The step's outcome in one line, never a traceback a user has to read: a user's or the environment's
    error (bad config, damaged data, a full disk) fails the step with the sentence the CLI prints
    (programming errors keep their traceback), and a guardrail that holds the candidate fails it with the
    guardrail's own verdict ("bc_accuracy_guardrail held the candidate: BC validation accuracy 0.900 < ...")
    once the materialization and its checks are recorded, which stops the run before promotion."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except Failure:
            raise
        except Exception as error:  # noqa: BLE001 - sorted: only user errors are re-told
            if not is_user_error(error):
                raise
            raise Failure(description=one_line(error)) from None
        yield result
        held = [check for check in result.check_results
                if not check.passed and check.severity == AssetCheckSeverity.ERROR]
        if held:
            raise Failure(description="; ".join(f"{check.check_name} held the candidate: {check.description}"
                                                for check in held))

    return wrapper


@contextlib.contextmanager
def training_log_to(context):
    """While a step trains, the core's `townlet` log lines (BC epochs, DAgger rounds, PPO updates and
    validation scores) go to the run's log as they happen, not only as tables when the step ends."""

    class ToRunLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            (context.log.warning if record.levelno >= logging.WARNING else context.log.info)(record.getMessage())

    logger, handler = logging.getLogger("townlet"), ToRunLog(logging.INFO)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def metadata_value(value):
    """The core's metadata values as Dagster's: `FilePath` a path, `Markdown` Markdown, a dict or list JSON; plain
    numbers, text, booleans and Dagster values as they are."""
    if isinstance(value, FilePath):
        return MetadataValue.path(str(value))
    if isinstance(value, Markdown):
        return MetadataValue.md(str(value))
    if isinstance(value, (dict, list)):
        return MetadataValue.json(value)
    return value


def measured_value(value) -> MetadataValue:
    """A check's measured value; None (no baseline yet, no multiplier) as the text 'none'."""
    if value is None:
        return MetadataValue.text("none")
    if isinstance(value, bool) or isinstance(value, str):
        return MetadataValue.text(str(value))
    if isinstance(value, int):
        return MetadataValue.int(value)
    if isinstance(value, float):
        return MetadataValue.float(value)
    return MetadataValue.json(value)


def observe_held(context, held) -> None:
    """A guardrail held the candidate: the run stops at the blocking check, so the step recorded the FAIL or HOLD
    (nightly/verdict.py) and the graph shows it as an observation on the profile's `anneal_summary`."""
    context.log.warning(f"anneal {held.status}: {held.reason}; nothing is promoted")
    context.log_event(AssetObservation(
        asset_key=AssetKey([*context.asset_key.path[:-1], "anneal_summary"]), partition=context.partition_key,
        metadata={"status": held.status, "reason": held.reason, "path": MetadataValue.path(str(held.path)),
                  "candidate_id": held.candidate_id, "pass_streak": MetadataValue.float(float(held.pass_streak)),
                  # judged now: the freshness check on anneal_summary counts it
                  "dagster/last_updated_timestamp": MetadataValue.timestamp(time.time())}))


def made(context, night, outcome, extra: dict | None = None) -> MaterializeResult:
    """A step's materialization: its record (for its night's downstream steps), its metadata with what made it
    (profile, config source and hash, night) and `extra` (Dagster's own: previews, plots), and its checks, each
    reported as the core judged it."""
    if outcome.held is not None:
        observe_held(context, outcome.held)
    checks = []
    for verdict in outcome.verdicts:
        if not verdict.passed:
            (context.log.warning if verdict.warning_only else context.log.error)(
                f"{verdict.name} held the candidate: {verdict.sentence}" if not verdict.warning_only
                else f"{verdict.name}: {verdict.sentence}")
        checks.append(AssetCheckResult(
            check_name=verdict.name, passed=verdict.passed, description=verdict.sentence,
            severity=AssetCheckSeverity.WARN if verdict.warning_only else AssetCheckSeverity.ERROR,
            metadata={key: measured_value(value) for key, value in verdict.measured.items()}))
    provenance = night.provenance()
    tags = {f"townlet/{key}": value for key, value in provenance.items()}
    if any(context.run.tags.get(key) != value for key, value in tags.items()):  # the run says what made it too
        context.instance.add_run_tags(context.run.run_id, tags)
    metadata = {**{key: metadata_value(value) for key, value in outcome.metadata.items()}, **(extra or {}),
                **provenance}
    return MaterializeResult(value=outcome.record, metadata=metadata, data_version=DataVersion(outcome.data_version),
                             check_results=checks)
