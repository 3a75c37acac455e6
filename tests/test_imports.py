"""The layers import in one direction: the world and data services stay light (no torch, no dagster)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "dagster", "gymnasium", "pettingzoo")


@pytest.mark.parametrize(
    "module",
    ["townlet_pipelines", "townlet_pipelines.config", "townlet_pipelines.world.engine",
     "townlet_pipelines.world.policies", "townlet_pipelines.world.simulate", "townlet_pipelines.cli",
     "townlet_pipelines.data.capture", "townlet_pipelines.data.replay", "townlet_pipelines.data.manifest"],
)
def test_core_modules_import_without_heavy_dependencies(module):
    code = (
        f"import sys, {module}\n"
        f"heavy = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "", f"{module} imported {output.strip()}"
