#!/usr/bin/env bash
# The UI walkthrough's screenshots (docs/ui/*.png, docs/PIPELINE.md): three smoke nights on a fresh instance
# (a pass, a failed BC guardrail, a pass from the champion), then `dagster dev` and headless Chromium
# (Debian's `chromium` package) on each page. Takes about three minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pip install -q -c constraints.txt -e ".[docs]"  # pillow (shrinking), websocket-client (clicks)
command -v chromium > /dev/null || { echo "needs Debian's chromium (apt-get install chromium)"; exit 2; }
work="$(mktemp -d)"
trap 'kill -- -$dev 2> /dev/null || true; rm -rf "$work"' EXIT
export DAGSTER_HOME="$work/home" TOWNLET_ARTIFACTS="$work/artifacts" TOWNLET_CONFIG=smoke
mkdir -p "$DAGSTER_HOME" docs/ui
cp dagster_home/dagster.yaml "$DAGSTER_HOME/"
night() {  # night KEY [overrides]
  printf 'resources: {townlet: {config: {config_path: smoke, overrides: "%s"}}}\n' "${2:-}" > "$work/run.yaml"
  .venv/bin/dagster job execute -m townlet_pipelines.pipeline.definitions -j nightly_anneal \
    --tags "{\"dagster/partition\": \"$1\"}" --config "$work/run.yaml" > "$work/$1.log" 2>&1 || true
}
night 2026-11-05
night 2026-11-06 "anneal: {bc_accuracy_threshold: 0.99}"
night 2026-11-07
failed="$(.venv/bin/python -c '
from dagster import DagsterInstance, RunsFilter, DagsterRunStatus
with DagsterInstance.get() as instance:
    print(instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))[0].run_id)')"
port=3917
set -m
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $port > "$work/dev.log" 2>&1 &
dev=$!
set +m
for _ in $(seq 90); do curl -sf "http://127.0.0.1:$port/server_info" > /dev/null && break; sleep 1; done
shoot() {  # shoot NAME PATH
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work/chrome" \
    --window-size=1440,900 --virtual-time-budget=25000 --screenshot="$work/$1.png" \
    "http://127.0.0.1:$port$2" > /dev/null 2>&1
  shrink "$1"
}
shoot_picture() {  # shoot_picture NAME PATH METADATA_KEY: the page with that entry's picture opened
  .venv/bin/python scripts/ui_markdown_shot.py "http://127.0.0.1:$port$2" "$3" "$work/$1.png"
  shrink "$1" 256  # the picture's colours over the dialog's dimmed page
}
shrink() {  # shrink NAME [COLOURS]: two thirds the size, 64 colours (or COLOURS), into docs/ui/
  .venv/bin/python -c "
from PIL import Image
image = Image.open('$work/$1.png').convert('RGB')
small = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS)
small.quantize(colors=${2:-64}, method=Image.Quantize.MEDIANCUT).save('docs/ui/$1.png', optimize=True)"
  echo "docs/ui/$1.png"
}
location="townlet_pipelines.pipeline.definitions"
shoot asset-graph "/locations/$location/asset-groups/townlet"
shoot partitions "/assets/ppo_checkpoint?view=partitions&partition=2026-11-07"
shoot ppo-checks "/assets/ppo_checkpoint?view=checks"
shoot anneal-summary "/assets/anneal_summary"
shoot failed-run "/runs/$failed?logs=step%3Abc_checkpoint"
shoot promoted-policy "/assets/promoted_policy"
shoot anneal-summary-plots "/assets/anneal_summary?view=plots"  # the float metadata across the three nights
shoot_picture held-out-picture "/assets/anneal_summary" held_out_comparison
shoot_picture town-day-picture "/assets/promoted_policy" town_day
