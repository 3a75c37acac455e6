#!/usr/bin/env bash
# Sets up .venv if needed, then runs Dagster's own check of the code location (workspace.yaml: it must load, and
# its definitions must validate; about 5 s on 2 cores) and, when it passes, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Quiet unless it fails (its "superseded by dg check defs" notice is a FutureWarning); exits 1 on a broken location.
PYTHONWARNINGS=ignore::FutureWarning .venv/bin/dagster definitions validate -w workspace.yaml --log-level warning
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
