#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/townlet simulate --towns 10 --days 7 --policy scripted "$@"
