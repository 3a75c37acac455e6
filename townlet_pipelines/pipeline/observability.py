"""What Dagster's own UI shows of a night without code of ours: the owners and tags its catalog search filters
on. Torch-free: loading the code location imports this."""

from __future__ import annotations

OWNERS = ["team:townlet"]
# Each asset's stage in the night: the catalog filters on these tags (`stage:training`).
STAGES = {"replay_manifest": "data", "rollout_dataset": "data", "bc_checkpoint": "training",
          "ppo_checkpoint": "training", "anneal_summary": "judging", "promoted_policy": "release"}


def catalog_tags(asset_name: str) -> dict[str, str]:
    """The asset's definition tags: its stage in the night, and the team that owns it. (The profile is a
    property of a run, not of the definition: one code location runs any profile, so it is on each
    materialization's metadata and each run's tags, `townlet/profile`.)"""
    return {"stage": STAGES[asset_name], "team": "townlet"}
