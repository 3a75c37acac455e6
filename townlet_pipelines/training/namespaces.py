"""Where artifacts live, and whose state this is: the profile and the world it trains for.

Baselines, the promotion history, releases and the promoted policy live under `state/<namespace>/`, so the
state of one namespace never judges or feeds another: a smoke run cannot change what the default profile is
judged against or rolls out.
"""

from __future__ import annotations

import os
from pathlib import Path

from townlet_pipelines.config import TownletConfig

DEFAULT_ARTIFACTS = Path("dagster_home") / "artifacts"


def artifacts_root(root: str | Path | None = None) -> Path:
    """The artifacts root: `root`, else $TOWNLET_ARTIFACTS, else dagster_home/artifacts (absolute)."""
    return Path(root or os.environ.get("TOWNLET_ARTIFACTS") or DEFAULT_ARTIFACTS).absolute()


def namespace(config: TownletConfig) -> str:
    return f"{config.profile}-{config.world_hash()[:12]}"
