"""`defs`: the Townlet code location (workspace.yaml loads this module) for one profile.

A profile is part of an asset's identity. The location serves the profile of the config `$TOWNLET_CONFIG`
names when it loads (default: the packaged `default` profile), and its asset keys carry that profile as a
prefix: `ppo_checkpoint` for the default profile (the keys, records and catalog history it always had),
`smoke/ppo_checkpoint` for smoke, `<profile>/<asset>` for any other. The `night_records` IO manager files a
record under its asset key (`<artifacts>/records/smoke/ppo_checkpoint/<night>.json`), so records, the
catalog and lineage of two profiles never meet, and a run whose config names another profile is refused
before any step makes anything (`assets.told_in_one_line`). `definitions_for(source)` builds the
location of any config (the tests use it for their tiny profile); `bash scripts/run.sh smoke` gets smoke's
by exporting TOWNLET_CONFIG before `dagster job execute`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

from dagster import (
    AssetCheckSeverity, AssetKey, AssetSelection, AssetsDefinition, DefaultSensorStatus, Definitions,
    RunFailureSensorContext, build_last_update_freshness_checks, build_schedule_from_partitioned_job,
    build_sensor_for_freshness_checks, define_asset_job, in_process_executor, run_failure_sensor,
)

from townlet_pipelines.config import UsageError, load_config
from townlet_pipelines.pipeline.assets import ASSETS
from townlet_pipelines.pipeline.distributed_step import k8s_execution_config
from townlet_pipelines.pipeline.records import DEFAULT_PROFILE, key_prefix, night_records
from townlet_pipelines.pipeline.resources import TownletResource

# In-process on purpose: the graph is a chain (each step waits for the previous), so parallel processes buy
# nothing, while each subprocess step would re-import the code location and torch (measured in
# ../shared/DAGSTER_NOTES.md: a 5-step torch chain 20 s multiprocess vs 7 s in-process). On Kubernetes
# (TOWNLET_EXECUTOR=k8s, deploy/helm/values.yaml) each step is its own pod instead, so the training steps'
# op tags request a GPU for those pods alone (the run launcher reads run tags only, never op tags).
EXECUTOR = os.environ.get("TOWNLET_EXECUTOR", "in_process")


def _executor():
    if EXECUTOR == "k8s":
        from dagster_k8s import k8s_job_executor  # the `k8s` extra

        return k8s_job_executor
    if EXECUTOR != "in_process":
        raise UsageError(f"TOWNLET_EXECUTOR={EXECUTOR!r}: choose in_process (the default) or k8s")
    return in_process_executor


def profile_of(source: str) -> str:
    """The profile a config names. A config that does not load makes the default profile's location: every run
    of it then fails at its first step with the config's own sentence, and nothing is recorded under its name."""
    try:
        return load_config(source).profile
    except (ValueError, OSError):
        return DEFAULT_PROFILE


def profile_assets(profile: str) -> list[AssetsDefinition]:
    """The six assets under the profile's keys, inputs and checks included; their ops (the run's step keys,
    the k8s per-step config, the log's step names) keep their plain names."""
    prefix = key_prefix(profile)
    if not prefix:
        return list(ASSETS)
    keys = {key: AssetKey([*prefix, *key.path]) for asset_def in ASSETS for key in asset_def.keys}
    return [asset_def.with_attributes(asset_key_replacements=keys) for asset_def in ASSETS]


# Freshness: a night is judged when `anneal_summary` is materialized (a PASS) or observed (a FAIL or HOLD records
# its verdict there, with `dagster/last_updated_timestamp`), so "no night judged for 26 hours" is the last update
# of anneal_summary older than that: the 02:00 schedule plus a long night's run, and a missed night fails it.
# `build_last_update_freshness_checks` is marked superseded in 1.13 by `FreshnessPolicy`, but a FreshnessPolicy
# counts materializations only (a HOLD night would read as a missed one) and is evaluated by the daemon alone,
# while this is an asset check: shown beside the guardrails, alertable, and testable with a frozen clock.
JUDGED_WITHIN = timedelta(hours=26)


def resource_of_run(run_config: dict) -> TownletResource:
    """The `townlet` resource exactly as the run configured it (its artifacts root, config and overrides)."""
    settings = ((run_config or {}).get("resources") or {}).get("townlet") or {}
    return TownletResource(**(settings.get("config") or {}))


@dataclass(frozen=True)
class Location:
    """One profile's code location: its assets, jobs, schedule, sensors and checks, and their Definitions."""

    profile: str
    config_source: str
    run_config: dict
    night_judged_checks: list
    night_judged_sensor: object
    record_failed_runs: object
    defs: Definitions


def build_location(source: str) -> Location:
    """The code location of the config `source` (a profile name or a YAML file) and of its profile."""
    profile = profile_of(source)
    assets = profile_assets(profile)
    by_name = {asset_def.key.path[-1]: asset_def for asset_def in assets}
    with warnings.catch_warnings():  # the two factories' "superseded" warnings, said above
        warnings.filterwarnings("ignore", message="Function `build_.*freshness_checks` is superseded")
        judged_checks = build_last_update_freshness_checks(
            assets=[by_name["anneal_summary"]], lower_bound_delta=JUDGED_WITHIN, severity=AssetCheckSeverity.ERROR)
        judged_sensor = build_sensor_for_freshness_checks(  # evaluates the check while the daemon runs
            freshness_checks=judged_checks, name="night_judged_sensor", minimum_interval_seconds=600,
            default_status=DefaultSensorStatus.RUNNING)
    run_config = {"resources": {"townlet": {"config": {"config_path": source}}}}  # named in every run, not implied
    if EXECUTOR == "k8s":  # each training pod's GPUs and the GPU nodes' toleration, matching the townlet settings
        run_config["execution"] = k8s_execution_config(run_config["resources"]["townlet"]["config"])
    tags = {"townlet/config_source": source}
    nightly_anneal = define_asset_job(
        "nightly_anneal", selection=AssetSelection.assets(*assets) - AssetSelection.checks(*judged_checks),
        executor_def=_executor(), config=run_config, tags=tags,
        description="One night: capture, BC, PPO from the champion, the guardrails, the verdict and the promotion "
                    "rule.",
    )
    capture_only = define_asset_job(
        "capture_only", selection=AssetSelection.assets(by_name["replay_manifest"], by_name["rollout_dataset"]),
        executor_def=_executor(), config=run_config,
        description="Refresh a night's expert and champion datasets only.",
    )
    schedule = build_schedule_from_partitioned_job(
        nightly_anneal, name="nightly_anneal_schedule", hour_of_day=2, minute_of_hour=0, tags=tags,
        description="At 02:00 in $TOWNLET_TIMEZONE (default UTC), the night that just ended, with the config named "
                    "in the job's run config ($TOWNLET_CONFIG when the code location loaded, else the default "
                    "profile).",
    )

    @run_failure_sensor(monitored_jobs=[nightly_anneal], default_status=DefaultSensorStatus.RUNNING,
                        description="Records failed nightly runs in the promotion history of the run's own store.")
    def record_failed_runs(context: RunFailureSensorContext) -> None:
        from townlet_pipelines.data.promotion import PromotionStore  # the core: when the sensor runs
        from townlet_pipelines.training.orchestrator import state_dir  # the core: when the sensor runs

        townlet = resource_of_run(context.dagster_run.run_config)
        config = townlet.load_config()
        store = PromotionStore.for_config(state_dir(townlet.root(), config), config)
        store.record_failure(context.dagster_run.run_id, context.failure_event.message or "run failed")

    defs = Definitions(
        assets=assets,
        asset_checks=judged_checks,
        jobs=[nightly_anneal, capture_only],
        schedules=[schedule],
        sensors=[record_failed_runs, judged_sensor],
        resources={"townlet": TownletResource(), "io_manager": night_records},
    )
    return Location(profile, source, run_config, judged_checks, judged_sensor, record_failed_runs, defs)


def definitions_for(source: str) -> Definitions:
    """The Definitions of the code location of the config `source` (its profile's asset keys)."""
    return build_location(source).defs


SCHEDULED_CONFIG = os.environ.get("TOWNLET_CONFIG") or "default"
LOCATION = build_location(SCHEDULED_CONFIG)
PROFILE = LOCATION.profile
RUN_CONFIG = LOCATION.run_config
night_judged_checks = LOCATION.night_judged_checks
night_judged_sensor = LOCATION.night_judged_sensor
record_failed_runs = LOCATION.record_failed_runs
defs = LOCATION.defs
