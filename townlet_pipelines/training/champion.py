"""The champion (the current release) as a night's starting point and as the bar its challenger must clear.

A night's PPO starts from the champion's weights when its checkpoint fits the recipe (same observations and
network), so each night keeps improving on the release it has; otherwise from the night's BC clone, and the
reason is said. The challenger's per-town scores from its PPO stage and the champion's, on the same
guardrail towns, give the paired difference of rewards that decides `champion_guardrail`
(training/guardrails.py).
"""

from __future__ import annotations

import logging

import numpy as np

from townlet_pipelines.training.checkpoints import load_checkpoint, read_record
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.evaluation import evaluate, paired_difference
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.training.torch_support import TrainingError
from townlet_pipelines.world.engine import TownWorld

log = logging.getLogger("townlet.training")


def current_champion(context: TrainingContext):
    """(the current release or None, why it is or is not the starting point)."""
    if context.promotion is None:
        return None, "no promotion store: starting from the BC clone"
    release = context.promotion.status().current_release
    if release is None or not release.path:
        return None, "no release yet: starting from the BC clone"
    try:
        record = read_record(release.path)
    except TrainingError as error:
        return None, f"release {release.release_id} is unreadable ({error}): starting from the BC clone"
    if record.observation != TownWorld(context.config, 1).spec or record.model != context.config.model:
        return None, (f"release {release.release_id} was trained with another network or observation: starting "
                      "from the BC clone (it is still the champion to beat)")
    return release, f"starting from the champion, release {release.release_id} (checkpoint {release.checkpoint_id})"


def compare_with_champion(context: TrainingContext, candidate, release) -> dict:
    """Challenger and champion on the same guardrail towns: the challenger's scores as its PPO stage measured
    them (`candidate`: its PPOTrainingResult), the champion scored the same way; their paired difference."""
    config, device = context.config, context.device
    model, _ = load_checkpoint(release.path, TownWorld(config, 1).spec, device=device.device)
    per_town: dict = {}
    champion = evaluate(config, evaluation_policy(model, device, config).actions, per_town=per_town)
    rewards = np.asarray(candidate.evaluation_town_rewards)
    if len(rewards) != len(per_town["reward_per_agent_day"]):
        raise ValueError(f"champion comparison: the candidate was scored on {len(rewards)} towns, the champion on "
                         f"{len(per_town['reward_per_agent_day'])}")
    difference, half = paired_difference(rewards, per_town["reward_per_agent_day"])
    comparison = {
        "release_id": release.release_id, "champion_checkpoint_id": release.checkpoint_id,
        "candidate_reward": float(candidate.evaluation["reward_per_agent_day"]),
        "champion_reward": champion["reward_per_agent_day"],
        "difference": difference, "difference_ci95": half, "towns": int(champion["towns"]),
    }
    log.info("challenger %.3f vs champion %.3f reward per agent-day (%+.3f ± %.3f, %d towns)",
             comparison["candidate_reward"], comparison["champion_reward"], difference, half, comparison["towns"])
    return comparison
