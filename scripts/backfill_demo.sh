#!/usr/bin/env bash
# A backfill of nights through the real queue: a fresh instance in a temporary folder, `dagster dev` (the daemon
# runs the queue), `dagster job backfill` of three nights, then each run's order and times, each night's
# verdict, where its PPO started and what it promoted. Pass a profile as $1 (default smoke: about 100 s on 2
# cores) and the nights as $2 (comma-separated, default 2026-11-05,2026-11-06,2026-11-07).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh > /dev/null
work="$(mktemp -d)"
export DAGSTER_HOME="$work/home" TOWNLET_ARTIFACTS="$work/artifacts" TOWNLET_CONFIG="${1:-smoke}"
nights="${2:-2026-11-05,2026-11-06,2026-11-07}"
mkdir -p "$DAGSTER_HOME"
cp dagster_home/dagster.yaml "$DAGSTER_HOME/"
set -m
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3931 > "$work/dev.log" 2>&1 &
dev=$!
set +m
trap 'kill -- -$dev 2> /dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 90); do curl -sf http://127.0.0.1:3931/server_info > /dev/null && break; sleep 1; done
.venv/bin/dagster job backfill -w workspace.yaml -j nightly_anneal --partitions "$nights" --noprompt > "$work/backfill.log"
NIGHTS="$nights" .venv/bin/python - <<'PY'
import json, os, time
from pathlib import Path
from dagster import DagsterInstance, DagsterRunStatus

nights = os.environ["NIGHTS"].split(",")
done = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
records = Path(os.environ["TOWNLET_ARTIFACTS"]) / "records"
with DagsterInstance.get() as instance:
    while not (len(instance.get_runs()) == len(nights) and all(r.status in done for r in instance.get_runs())):
        time.sleep(2)
    runs = sorted(instance.get_runs(), key=lambda r: instance.get_run_stats(r.run_id).start_time)
    first = instance.get_run_stats(runs[0].run_id).start_time
    print("night       run       status   start  end  verdict  candidate         started from                   "
          "promoted  (times: s from the first start)")
    for run in runs:
        night, stats = run.tags["dagster/partition"], instance.get_run_stats(run.run_id)
        summary_record = records / "anneal_summary" / f"{night}.json"
        summary = (json.loads(Path(json.loads(summary_record.read_text())["path"]).read_text())
                   if summary_record.is_file() else {})
        promoted = records / "promoted_policy" / f"{night}.json"
        release = json.loads(promoted.read_text()) if promoted.is_file() else {}
        start_id, _, why = (summary.get("started_from") or "-: -").partition(": ")
        start = f"{start_id} ({'champion ' + why.split('release ')[1].split(' ')[0] if 'champion' in why else 'BC'})"
        print(f"{night}  {run.run_id[:8]}  {run.status.value:7}  {stats.start_time - first:5.0f}  "
              f"{stats.end_time - first:3.0f}  {summary.get('status', '-'):7}  "
              f"{summary.get('final_checkpoint_id') or '-':16}  {start:29}  "
              f"{release.get('release_id') if release.get('promoted') else '-'}")
PY
