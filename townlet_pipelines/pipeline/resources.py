"""The one resource the assets share: where the config comes from and where artifacts go."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from dagster import ConfigurableResource
from pydantic import Field

from townlet_pipelines.config import TownletConfig, UsageError, config_from_mapping, load_config
from townlet_pipelines.pipeline.records import refuse_another_profile


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


class TownletResource(ConfigurableResource):
    """Config file (`TOWNLET_CONFIG`, default: the packaged default profile), artifacts root
    (`TOWNLET_ARTIFACTS`, default `dagster_home/artifacts`), and optional YAML overrides for one run."""

    config_path: str | None = Field(None, description="YAML config file or profile; default $TOWNLET_CONFIG or 'default'")
    artifacts_root: str | None = Field(None, description="default $TOWNLET_ARTIFACTS or dagster_home/artifacts")
    overrides: str = Field("", description="YAML mapping merged over the config, e.g. 'anneal: {loss_tolerance: 0.2}'")
    processes: int = Field(1, ge=1, description="training processes per BC/PPO step: more than 1 runs the step "
                           "data-parallel under torchrun through Dagster Pipes (gloo on CPU, nccl on GPUs)")

    tensorboard: bool = Field(True, description="write TensorBoard event files beside the training logs (BC and "
                              "PPO, <run folder>/tensorboard/) when the `tensorboard` extra is installed")

    pipes_image: str | None = Field(None, description="on Kubernetes: run a multi-process training step as a pod "
                                    "of its own with this image (Dagster Pipes on Kubernetes, dagster-k8s) that "
                                    "requests `processes` GPUs, instead of a subprocess of the step")
    pipes_claim: str = Field("townlet-artifacts", description="the PersistentVolumeClaim holding the artifacts "
                             "root, mounted in that pod at the root's own path (deploy/k8s/artifacts-pvc.yaml)")

    def settings(self) -> dict:
        """This resource's settings, resolved, for a process that rebuilds it (the torchrun ranks)."""
        return {"config_path": self.config_source(),
                "artifacts_root": str(self.root()), "overrides": self.overrides, "tensorboard": self.tensorboard}

    def config_source(self) -> str:
        """Where the config comes from: `config_path`, else $TOWNLET_CONFIG, else the default profile."""
        return self.config_path or os.environ.get("TOWNLET_CONFIG") or "default"

    def load_config(self, night: str | None = None) -> TownletConfig:
        """The configured recipe; with `night` (a partition key), that night's config: its own towns."""
        source = self.config_source()
        config = load_config(source)
        if self.overrides.strip():
            extra = yaml.safe_load(self.overrides)
            if not isinstance(extra, dict):
                raise UsageError("townlet resource: overrides must be a YAML mapping of config sections")
            config = config_from_mapping(_merge(config.model_dump(mode="json"), extra), f"{source} + overrides")
        if night is None:
            return config
        from townlet_pipelines.training.nights import night_config  # the core: when a step asks, not with the location

        return night_config(config, night)

    def named_source(self) -> str:
        """The config's source as runs and materializations name it: a profile or file, "+ overrides" when set."""
        return self.config_source() + (" + overrides" if self.overrides.strip() else "")

    def night(self, context):
        """The night an asset's step works on (nightly/context.py): the recipe loaded once, refused when its profile
        is not the code location's (the step's asset key), the night's config derived from it once, the run's
        folder. Each step starts here, so a config of another profile is refused before anything is made."""
        from townlet_pipelines.nightly.context import NightContext  # the core: loaded by steps, not by the location
        from townlet_pipelines.training import tensorboard

        recipe = self.load_config()
        refuse_another_profile(context.asset_key, recipe, self.config_source())
        tensorboard.switch(self.tensorboard)
        night = NightContext(recipe, context.partition_key, self.root(), context.run.run_id, self.named_source())
        night.config  # noqa: B018 - derived now, once: a night that cannot run is refused before anything is made
        return night

    def root(self) -> Path:
        from townlet_pipelines.training.namespaces import artifacts_root  # light: no training modules

        return artifacts_root(self.artifacts_root)

    def run_dir(self, run_id: str) -> Path:
        """This Dagster run's folder; each asset writes its own new subfolder inside it."""
        path = self.root() / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def training_context(self, run_id: str, night: str | None = None):
        from townlet_pipelines.training import tensorboard  # the core: when a step asks
        from townlet_pipelines.training.orchestrator import make_context

        tensorboard.switch(self.tensorboard)
        config = self.load_config(night)
        return make_context(config, self.run_dir(run_id), self.root())
