#!/usr/bin/env bash
# Start the Dagster UI (and the daemon that runs schedules) on http://127.0.0.1:3000 against dagster_home/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"  # an existing instance is honoured
export TOWNLET_ARTIFACTS="${TOWNLET_ARTIFACTS:-$PWD/dagster_home/artifacts}"
exec .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "${PORT:-3000}"
