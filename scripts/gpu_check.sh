#!/usr/bin/env bash
# The GPU check (issue 22), prepared for a session lent a device machine: BC and PPO on CUDA with AMP, a one-process
# nccl process group, and an evaluation, each printed beside the same run on the CPU. One short run (a few minutes).
#
# Here:   bash scripts/gpu_check.sh                       (.venv's Python; stops at once without a CUDA device)
# Device: PYTHON=python3 PYTHONPATH=$PWD bash scripts/gpu_check.sh
#         (the device image's python3 holds a CUDA torch; pydantic, dagster-free deps it lacks travel as wheels,
#         /work/.library/device/README.md). The figures go to docs/BENCHMARKS.md with the date and the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ "$PYTHON" != .venv/bin/python ] || bash scripts/setup.sh
"$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: torch sees no CUDA device here; run it on the device machine")
free, total = torch.cuda.mem_get_info()
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {free / 2**30:.0f} of {total / 2**30:.0f} GiB free")
PY
for device in cuda cpu; do
  echo "== BC and PPO on $device (AMP on CUDA), then the held-out evaluation"
  "$PYTHON" -m townlet_pipelines.bench training --device "$device" --bc-epochs 2 --ppo-updates 6
done
echo "== a one-process torch.distributed group on the device (nccl): PPO under torchrun"
work=$(mktemp -d)
"$PYTHON" - "$work/config.yaml" <<'PY'
import sys, yaml
from townlet_pipelines.config import load_config
data = load_config("default").model_dump(mode="json")
data["ppo"].update(updates=2, validate_every=0)
data["runtime"]["device"] = "cuda"
open(sys.argv[1], "w").write(yaml.safe_dump(data))
PY
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 -m townlet_pipelines.cli train ppo \
  --config "$work/config.yaml" --artifacts "$work/artifacts" --json \
  | "$PYTHON" -c "import json, sys; r = json.load(sys.stdin); print(f\"PPO under torchrun on {r['device']}: {r['env_steps_per_sec']:,.0f} env agent-steps/s\")"
rm -rf "$work"
