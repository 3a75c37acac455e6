"""The architecture's import rules (.importlinter), checked with import-linter on every run of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path, path: Path = ROOT) -> int:
    """import-linter in a process of its own: its CLI reconfigures logging, which silenced the project's
    loggers for the tests that ran after it in the same worker (the training progress in a step's log)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], cwd=path, env=env, capture_output=True).returncode


def test_the_layers_hold_and_the_core_imports_neither_torch_where_it_must_not_nor_dagster():
    assert _lint(ROOT / ".importlinter") == 0


def test_the_contract_fails_on_an_upward_import(tmp_path):
    """The same contract type over a package where the lower layer imports the upper one is broken."""
    package = tmp_path / "layered"
    (package / "low").mkdir(parents=True)
    (package / "high").mkdir()
    (package / "__init__.py").write_text("")
    (package / "high" / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("def f():\n    from layered import high  # a lazy upward import\n")
    config = tmp_path / ".importlinter"
    config.write_text(textwrap.dedent("""
        [importlinter]
        root_package = layered

        [importlinter:contract:layers]
        name = layers
        type = layers
        layers =
            layered.high
            layered.low
    """))
    assert _lint(config, tmp_path) == 1
