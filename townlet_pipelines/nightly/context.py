"""The night a step works on: the recipe, the night's config (its own towns, derived once per step), the artifacts
root and the run's folder, and the training context, made when a step first needs it."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.training.anneal import check_judgeable
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.nights import night_config
from townlet_pipelines.training.orchestrator import make_context


@dataclass
class NightContext:
    recipe: TownletConfig  # the configured recipe (its profile, overrides merged): the same every night
    night: str  # the partition key, YYYY-MM-DD
    root: Path  # the artifacts root
    run_id: str  # the run's folder is <root>/runs/<run_id>
    source: str  # where the recipe came from (a profile, a file, "+ overrides"), as the run names it

    @functools.cached_property
    def config(self) -> TownletConfig:
        """The night's config: the recipe with the night's own towns; refused when its schedule lacks a phase the
        guardrails judge."""
        config = night_config(self.recipe, self.night)
        check_judgeable(config)
        return config

    @functools.cached_property
    def run_dir(self) -> Path:
        """This run's folder; each step writes its own new subfolder or file inside it."""
        path = self.root / "runs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @functools.cached_property
    def training(self) -> TrainingContext:
        """The night's training context: its device, and the profile's promotion and baseline stores."""
        return make_context(self.config, self.run_dir, self.root)

    def provenance(self) -> dict[str, str]:
        """What made the step: the profile, where the recipe came from, a hash of the whole recipe, the night."""
        digest = hashlib.sha256(json.dumps(self.recipe.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        return {"profile": self.recipe.profile, "config_source": self.source, "config_hash": digest[:12],
                "night": self.night}
