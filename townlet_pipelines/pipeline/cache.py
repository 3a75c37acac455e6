"""Content-addressed reuse: a re-run with unchanged inputs skips the expensive deterministic steps.

The expert dataset is keyed by everything that makes it (world, rewards, observations, expert, rollout
and the code version); the BC stages by the dataset's identity, the model and BC settings, the schedule's
BC stages and threshold, and the code version. Capture and BC are deterministic for a given key, so a hit
is the same bytes a re-run would produce. Entries are immutable once complete; an incomplete one (no
completion record) is rebuilt.
"""

import hashlib
import json

from townlet_pipelines.config import TownletConfig


def content_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _code_version() -> str:
    from townlet_pipelines.training.checkpoints import code_version

    return code_version()


def expert_dataset_key(config: TownletConfig) -> str:
    data = config.model_dump(mode="json")
    return content_key("expert", {key: data[key] for key in ("world", "rewards", "observations", "expert",
                                                             "rollout")}, _code_version())


def bc_stages_key(config: TownletConfig, dataset_identity: str) -> str:
    data = config.model_dump(mode="json")
    stages = [stage.model_dump(mode="json") for stage in config.anneal.ordered() if stage.mode == "bc"]
    return content_key("bc", dataset_identity, data["model"], data["bc"], stages,
                       config.anneal.bc_accuracy_threshold, config.runtime.device, _code_version())
