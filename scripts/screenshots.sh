#!/usr/bin/env bash
# The UI walkthrough's screenshots (docs/ui/*.png, docs/PIPELINE.md): three smoke nights on a fresh instance
# (a pass, a failed BC guardrail, a pass from the champion), then `dagster dev` and headless Chromium
# (Debian's `chromium` package) on each page; then the failed night re-run as it should have been, so that
# `anneal_summary`'s Plots show all three nights. About four minutes on 2 cores (260 s measured, busy).
#   bash scripts/screenshots.sh [NAME...]   only those pictures (e.g. anneal-summary-plots); all without names
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -c "import PIL, websocket" 2> /dev/null ||  # pillow (shrinking), websocket-client (clicks)
  .venv/bin/pip install -q -c constraints.txt -e ".[docs]"
only=" $* "
wanted() { [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; }
command -v chromium > /dev/null || { echo "needs Debian's chromium (apt-get install chromium)"; exit 2; }
work="$(mktemp -d)"
stop() {  # dagster dev and its servers (its own process group) stop on SIGTERM in seconds: wait, then remove
  if [ -n "${dev:-}" ] && kill -- -"$dev" 2> /dev/null; then
    for _ in $(seq 40); do kill -0 -- -"$dev" 2> /dev/null || break; sleep 0.5; done
    kill -KILL -- -"$dev" 2> /dev/null && echo "dagster dev ignored SIGTERM for 20 s: killed" >&2
  fi
  rm -rf "$work"
}
trap stop EXIT
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
  wanted "$1" || return 0
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work/chrome" \
    --window-size=1440,900 --virtual-time-budget=25000 --screenshot="$work/$1.png" \
    "http://127.0.0.1:$port$2" > /dev/null 2>&1
  shrink "$1"
}
shoot_picture() {  # shoot_picture NAME PATH METADATA_KEY: the page with that entry's picture opened
  wanted "$1" || return 0
  .venv/bin/python scripts/ui_markdown_shot.py "http://127.0.0.1:$port$2" "$3" "$work/$1.png"
  shrink "$1" 256  # the picture's colours over the dialog's dimmed page
}
shoot_plots() {  # shoot_plots NAME ASSET: the asset's Overview, its Metadata switched to Plots and scrolled to
  wanted "$1" || return 0  # the top (1.13 has no URL for the Plots: a click over DevTools, like ui_markdown_shot.py)
  .venv/bin/python - "http://127.0.0.1:$port/assets/$2" "$work/$1.png" << 'PLOTS'
import base64, json, os, signal, subprocess, sys, tempfile, time, urllib.request
sys.path.insert(0, "scripts")
from ui_markdown_shot import Page
url, out = sys.argv[1:]
with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--remote-debugging-port=9334", f"--user-data-dir={profile}", "--window-size=1440,1800", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(60):
            try:
                targets = json.load(urllib.request.urlopen("http://127.0.0.1:9334/json", timeout=5))
                break
            except OSError:
                time.sleep(0.5)
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Emulation.setDeviceMetricsOverride", width=1440, height=1800, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        click = "(b => b ? (b.click(), true) : false)([...document.querySelectorAll('button')]" \
                ".find(b => b.textContent.trim() === 'Plots'))"
        for _ in range(120):  # the Table/Plots switch renders once the page's queries answer
            time.sleep(0.5)
            if page.evaluate(click):
                break
        else:
            raise SystemExit(f"{url}: no Plots switch beside the metadata")
        charts, steady = -1, 0
        for _ in range(120):  # one chart per float metadata key: wait until their number holds for 2 s
            time.sleep(0.5)
            now = page.evaluate("document.querySelectorAll('canvas').length")
            steady = steady + 1 if now == charts and now > 0 else 0
            charts = now
            if steady >= 4:
                break
        else:
            raise SystemExit(f"{url}: the Plots drew no charts")
        page.evaluate("[...document.querySelectorAll('span')].find(s => s.textContent.trim() === 'Metadata')"
                      ".scrollIntoView({block: 'start'})")
        time.sleep(2)  # the charts' own animation
        print(f"{charts} charts")
        with open(out, "wb") as file:
            file.write(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        browser.wait(timeout=30)
PLOTS
  shrink "$1" 256  # the lines keep Dagster's violet
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
shoot_picture held-out-picture "/assets/anneal_summary" held_out_comparison
shoot_picture town-day-picture "/assets/promoted_policy" town_day
if wanted anneal-summary-plots; then  # the failed night re-run with the default threshold, after the other pages
  night 2026-11-06
  shoot_plots anneal-summary-plots anneal_summary  # the float metadata across the three nights
fi
