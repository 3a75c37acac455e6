"""Whose state this is: the profile and the world it trains for.

Baselines, the promotion history, releases and the promoted policy live under `state/<namespace>/`, so the
state of one namespace never judges or feeds another: a smoke run cannot change what the default profile is
judged against or rolls out.
"""

from __future__ import annotations

from townlet_pipelines.config import TownletConfig


def namespace(config: TownletConfig) -> str:
    return f"{config.profile}-{config.world_hash()[:12]}"
