"""The architecture's import rules (.importlinter), checked with import-linter on every run of the suite."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> int:
    from importlinter.cli import lint_imports

    return lint_imports(config_filename=str(config), no_cache=True)


def test_the_layers_hold_and_the_core_imports_neither_torch_where_it_must_not_nor_dagster():
    assert _lint(ROOT / ".importlinter") == 0


def test_the_contract_fails_on_an_upward_import(tmp_path, monkeypatch):
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
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _lint(config) == 1
