"""What Dagster's own UI shows without code of ours: owners and tags for the catalog, float metadata for the
Plots tab, dataset previews, a freshness check, and Dagster's own check of the code location."""

from __future__ import annotations

import pytest

dagster = pytest.importorskip("dagster")

from townlet_pipelines.pipeline.definitions import defs  # noqa: E402

STAGES = {"replay_manifest": "data", "rollout_dataset": "data", "bc_checkpoint": "training",
          "ppo_checkpoint": "training", "anneal_summary": "judging", "promoted_policy": "release"}
KINDS = {"replay_manifest": "numpy", "rollout_dataset": "numpy", "bc_checkpoint": "pytorch",
         "ppo_checkpoint": "pytorch", "anneal_summary": "python", "promoted_policy": "python"}


def test_every_asset_has_an_owner_a_stage_and_a_kind_in_the_asset_graph():
    graph = defs.resolve_asset_graph()
    seen = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:townlet"], key
        name = key.to_user_string()
        seen[name] = (node.tags["stage"], node.tags["team"], node.tags[f"dagster/kind/{KINDS[name]}"])
    assert seen == {name: (stage, "townlet", "") for name, stage in STAGES.items()}
