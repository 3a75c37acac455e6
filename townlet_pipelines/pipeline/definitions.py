"""`defs`: the Townlet code location (workspace.yaml loads this module)."""

from __future__ import annotations

import os
import warnings
from datetime import timedelta

from dagster import (
    AssetCheckSeverity, AssetSelection, DefaultSensorStatus, Definitions, RunFailureSensorContext,
    build_last_update_freshness_checks, build_schedule_from_partitioned_job, build_sensor_for_freshness_checks,
    define_asset_job, in_process_executor, run_failure_sensor,
)

from townlet_pipelines.pipeline.assets import ASSETS, anneal_summary, replay_manifest, rollout_dataset
from townlet_pipelines.pipeline.distributed_step import k8s_execution_config
from townlet_pipelines.pipeline.records import night_records
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
        raise ValueError(f"TOWNLET_EXECUTOR={EXECUTOR!r}: choose in_process (the default) or k8s")
    return in_process_executor


# Freshness: a night is judged when `anneal_summary` is materialized (a PASS) or observed (a FAIL or HOLD records
# its verdict there, with `dagster/last_updated_timestamp`), so "no night judged for 26 hours" is the last update
# of anneal_summary older than that: the 02:00 schedule plus a long night's run, and a missed night fails it.
# `build_last_update_freshness_checks` is marked superseded in 1.13 by `FreshnessPolicy`, but a FreshnessPolicy
# counts materializations only (a HOLD night would read as a missed one) and is evaluated by the daemon alone,
# while this is an asset check: shown beside the guardrails, alertable, and testable with a frozen clock.
JUDGED_WITHIN = timedelta(hours=26)
with warnings.catch_warnings():  # the two factories' "superseded" warnings, said above
    warnings.filterwarnings("ignore", message="Function `build_.*freshness_checks` is superseded")
    night_judged_checks = build_last_update_freshness_checks(
        assets=[anneal_summary], lower_bound_delta=JUDGED_WITHIN, severity=AssetCheckSeverity.ERROR)
    night_judged_sensor = build_sensor_for_freshness_checks(  # evaluates the check while the daemon runs
        freshness_checks=night_judged_checks, name="night_judged_sensor", minimum_interval_seconds=600,
        default_status=DefaultSensorStatus.RUNNING)

SCHEDULED_CONFIG = os.environ.get("TOWNLET_CONFIG") or "default"  # named in every run's config, not implied
RUN_CONFIG = {"resources": {"townlet": {"config": {"config_path": SCHEDULED_CONFIG}}}}
if EXECUTOR == "k8s":  # each training pod's GPUs and the GPU nodes' toleration, matching the townlet settings above
    RUN_CONFIG["execution"] = k8s_execution_config(RUN_CONFIG["resources"]["townlet"]["config"])
nightly_anneal = define_asset_job(
    "nightly_anneal", selection=AssetSelection.assets(*ASSETS) - AssetSelection.checks(*night_judged_checks),
    executor_def=_executor(),
    config=RUN_CONFIG, tags={"townlet/config_source": SCHEDULED_CONFIG},
    description="One night: capture, BC, PPO from the champion, the guardrails, the verdict and the promotion rule.",
)
capture_only = define_asset_job(
    "capture_only", selection=AssetSelection.assets(replay_manifest, rollout_dataset),
    executor_def=_executor(), config=RUN_CONFIG,
    description="Refresh a night's expert and champion datasets only.",
)
nightly_anneal_schedule = build_schedule_from_partitioned_job(
    nightly_anneal, name="nightly_anneal_schedule", hour_of_day=2, minute_of_hour=0,
    tags={"townlet/config_source": SCHEDULED_CONFIG},
    description="At 02:00 in $TOWNLET_TIMEZONE (default UTC), the night that just ended, with the config named in "
                "the job's run config ($TOWNLET_CONFIG when the code location loaded, else the default profile).",
)


def resource_of_run(run_config: dict) -> TownletResource:
    """The `townlet` resource exactly as the run configured it (its artifacts root, config and overrides)."""
    settings = ((run_config or {}).get("resources") or {}).get("townlet") or {}
    return TownletResource(**(settings.get("config") or {}))


@run_failure_sensor(monitored_jobs=[nightly_anneal], default_status=DefaultSensorStatus.RUNNING,
                    description="Records failed nightly runs in the promotion history of the run's own store.")
def record_failed_runs(context: RunFailureSensorContext) -> None:
    from townlet_pipelines.data.promotion import PromotionStore
    from townlet_pipelines.training.orchestrator import state_dir

    townlet = resource_of_run(context.dagster_run.run_config)
    config = townlet.load_config()
    store = PromotionStore(state_dir(townlet.root(), config), required_passes=config.promotion.required_passes)
    store.record_failure(context.dagster_run.run_id, context.failure_event.message or "run failed")


defs = Definitions(
    assets=ASSETS,
    asset_checks=night_judged_checks,
    jobs=[nightly_anneal, capture_only],
    schedules=[nightly_anneal_schedule],
    sensors=[record_failed_runs, night_judged_sensor],
    resources={"townlet": TownletResource(), "io_manager": night_records},
)
