"""Checkpoint ids of PPO on the tests' tiny config, one per data mode and constraint setting: run it at two
commits on one machine to show a refactor changed no result (docs/BENCHMARKS.md, "The PPO split").

    .venv/bin/python scripts/ppo_checkpoint_ids.py [--set section.key=value ...]

Ids are deterministic on one machine, not across machines.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_training import tiny  # noqa: E402

from townlet_pipelines.training import orchestrator  # noqa: E402
from townlet_pipelines.training.ppo import PPOStrategy  # noqa: E402

VARIANTS = {
    "rollout_constrained": ({"updates": 3, "validate_every": 1, "select_keep_start": True, "conflict_budget": 0.3}, {}),
    "rollout_priced": ({"updates": 3, "validate_every": 2, "conflict_budget": 0.01, "lagrange_init": 5.0}, {}),
    "rollout_plain": ({"updates": 3, "validate_every": 0, "conflict_budget": 0.0}, {}),
    "mixed_anchor": ({"updates": 2, "validate_every": 2}, {"data_mode": "mixed", "bc_weight": 0.1}),
    "replay": ({"updates": 2, "validate_every": 0, "conflict_budget": 0.0}, {"data_mode": "replay"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[],
                        help="ppo.key=value for every variant that does not set the key itself")
    extra = {}
    for item in parser.parse_args().set:
        key, value = item.split("=", 1)
        extra[key.removeprefix("ppo.")] = {"true": True, "false": False}.get(value.lower(), value)
    root = Path(tempfile.mkdtemp())
    data = orchestrator.capture_expert(tiny(), root / "expert").path
    bc = orchestrator.run_bc(orchestrator.make_context(tiny(), orchestrator.new_run_dir(root), root), data)
    print("bc", bc.checkpoint_id)
    for name, (ppo, arguments) in VARIANTS.items():
        config = tiny(ppo={**extra, **ppo})  # a variant's own settings win
        context = orchestrator.make_context(config, orchestrator.new_run_dir(root / name), root / name)
        datasets = {"replay_dataset": data} if "data_mode" in arguments else {}
        result = PPOStrategy(init_checkpoint=bc.checkpoint_path, out=root / name / "ppo", **arguments,
                             **datasets).run(context)
        print(name, result.checkpoint_id, "selected update", result.selected_update)


if __name__ == "__main__":
    main()
