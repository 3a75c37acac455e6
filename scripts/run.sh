#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the nightly anneal end to end through Dagster, against the
# instance in dagster_home/ (embedded SQLite), and say where the promoted policy and the summary are.
# Pass a profile or YAML file as $1 (default: the `default` profile; `smoke` runs in about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"  # an existing instance is honoured
export TOWNLET_CONFIG="${1:-${TOWNLET_CONFIG:-default}}"
export TOWNLET_ARTIFACTS="${TOWNLET_ARTIFACTS:-$PWD/dagster_home/artifacts}"
status=0
.venv/bin/dagster job execute -m townlet_pipelines.pipeline.definitions -j nightly_anneal || status=$?
.venv/bin/townlet report --config "$TOWNLET_CONFIG" --artifacts "$TOWNLET_ARTIFACTS"
exit $status
