#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the nightly anneal end to end through Dagster, against the
# instance in dagster_home/ (embedded SQLite), and say the night's verdict, where the promoted policy and the summary
# are; Dagster's own output goes to $DAGSTER_HOME/logs/.
# Pass a profile or YAML file as $1 (default: the `default` profile; `smoke` runs in about a minute), and a night
# (a partition key, YYYY-MM-DD) as $2 or $TOWNLET_NIGHT (default: the night that ended last, as the schedule runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"  # an existing instance is honoured
# The code location `dagster job execute` loads serves this config's profile: its asset keys and records carry the
# profile (`smoke/ppo_checkpoint`, records/smoke/...; the default profile's keys are bare), so a smoke night and a
# default night never overwrite each other's records or catalog entries (pipeline/definitions.py).
export TOWNLET_CONFIG="${1:-${TOWNLET_CONFIG:-default}}"
export TOWNLET_ARTIFACTS="${TOWNLET_ARTIFACTS:-$PWD/dagster_home/artifacts}"
# The night checked (a date, not before the first night, ended; none given: the last that ended), the instance's
# storage made once (two first runs at once would both create its tables), and the runs a killed job left STARTED
# failed, with their `gpu` pool slot freed, so this run does not wait on them for ever; the launcher prints the night.
NIGHT="$(.venv/bin/python -m townlet_pipelines.pipeline.launcher "${2:-${TOWNLET_NIGHT:-}}")"
echo "nightly_anneal for night $NIGHT with config $TOWNLET_CONFIG"
# Dagster's own output (every event, and the stack traces of a held candidate's stopped steps) goes to a log file;
# the run is tagged with it, and the console says the verdict and its sentence, where the summary and the promoted
# policy are, and exits as `townlet train anneal` does: 0 PASS, 3 FAIL, 4 HOLD (1: failed before judging).
mkdir -p "$DAGSTER_HOME/logs"
log="$DAGSTER_HOME/logs/nightly_anneal-$NIGHT-$(date -u +%Y%m%dT%H%M%SZ)-$$.log"
echo "log: $log"
status=0
.venv/bin/dagster job execute -m townlet_pipelines.pipeline.definitions -j nightly_anneal \
  --tags "{\"dagster/partition\": \"$NIGHT\", \"townlet/console_log\": \"$log\"}" \
  --config <(printf 'resources: {townlet: {config: {config_path: "%s"}}}\n' "$TOWNLET_CONFIG") > "$log" 2>&1 \
  || status=$?
verdict=0
.venv/bin/python -m townlet_pipelines.pipeline.console "$log" "$status" || verdict=$?
.venv/bin/townlet report --config "$TOWNLET_CONFIG" --artifacts "$TOWNLET_ARTIFACTS"
exit $verdict
