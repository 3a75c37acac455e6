"""The strategy registry: a strategy defined outside the package runs as an anneal stage by its name."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import make_config
from townlet_pipelines.config import AnnealStage, ConfigError, UsageError
from townlet_pipelines.results import BCTrainingResult
from townlet_pipelines.training import orchestrator, registry
from townlet_pipelines.training.anneal import AnnealStrategy, check_schedule

ROOT = Path(__file__).resolve().parents[1]
BUILT = []  # every ToyStrategy a factory built, in order


@dataclass
class ToyStrategy:
    """A stage of the BC phase that trains nothing: it keeps what it was built from and reports a fixed record."""

    stage: AnnealStage
    inputs: registry.StageInputs
    name: str = "toy"
    phase: ClassVar[str] = "bc"

    @classmethod
    def for_stage(cls, stage: AnnealStage, inputs: registry.StageInputs) -> "ToyStrategy":
        built = cls(stage, inputs, name=inputs.name)
        BUILT.append(built)
        return built

    def run(self, context) -> BCTrainingResult:
        return BCTrainingResult(
            accuracy=1.0, loss=0.0, val_accuracy=0.95, val_loss=0.25, learning_rate=0.0, batch_size=1,
            epochs=self.stage.epochs, weight_decay=0.0, device=context.device.name, manifest=str(self.inputs.dataset),
            dataset_identity="toy", duration_sec=0.0, samples_per_sec=0.0, train_rows=0, val_rows=0, seed=0)


def small(*stages: dict):
    """A small config (two guardrail towns of an hour) whose anneal runs `stages`."""
    return make_config(rollout={"towns": 1, "ticks": 60}, evaluation={"ticks": 60}, runtime={"device": "cpu"},
                       seeds={"guardrail": {"start": 50_000_000, "count": 2}},
                       anneal={"schedule": list(stages)})


@pytest.fixture
def toy():
    BUILT.clear()
    registry.register_strategy("toy", ToyStrategy)
    yield "toy"
    registry.unregister_strategy("toy")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return orchestrator.capture_expert(small({"cycle": 0, "mode": "bc"}), tmp_path_factory.mktemp("expert") / "d").path


def test_a_registered_strategy_runs_as_an_anneal_stage_and_the_anneal_records_its_result(toy, dataset, tmp_path):
    config = small({"cycle": 0, "mode": toy, "epochs": 3})
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    strategy = AnnealStrategy(dataset)
    bc = strategy.run_bc_stages(context)
    ppo = strategy.run_ppo_stages(context, bc)
    summary = strategy.summarize(context, bc, ppo, 0.0)

    [built] = BUILT  # built once, from the stage and the night's inputs
    assert built.stage.epochs == 3 and built.name == "toy-cycle0"
    assert built.inputs == registry.StageInputs(dataset=dataset, replay_dataset=dataset, init_checkpoint=None,
                                                out=context.artifacts / "toy-cycle0-stage0", name="toy-cycle0")
    assert [type(result) for result in bc.results] == [BCTrainingResult] and bc.results[0].epochs == 3
    assert not ppo.results  # a stage of the BC phase: the PPO step ran nothing
    [stage] = summary.stages
    assert (stage.mode, stage.cycle, stage.accuracy, stage.loss, stage.passed) == ("bc", 0, 0.95, 0.25, True)
    assert summary.status == "PASS"
    assert context.promotion.status().candidate_id == summary.candidate_id  # recorded as an evaluation


def test_an_entry_point_is_discovered_by_name_and_imported_on_first_use(monkeypatch):
    point = EntryPoint(name="toy-entry", value=f"{__name__}:ToyStrategy", group=registry.GROUP)
    asked = []

    def entry_points(**selection):
        asked.append(selection)
        return [point]

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    monkeypatch.setattr(registry, "_discovered", None)
    monkeypatch.setattr(registry, "_loaded", {})
    assert registry.known() == ["bc", "ppo", "toy-entry"]  # the built-ins stay known without their entry points
    assert registry.strategy("toy-entry") is ToyStrategy
    registry.known()  # asked again: answered from what was discovered
    assert asked == [{"group": registry.GROUP}]  # discovered once
    check_schedule(small({"cycle": 0, "mode": "bc"}, {"cycle": 1, "mode": "toy-entry"}))


def test_the_package_declares_bc_and_ppo_as_entry_points():
    from townlet_pipelines.training.bc import BCStrategy
    from townlet_pipelines.training.ppo import PPOStrategy

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][registry.GROUP]
    assert declared == registry.BUILT_IN
    assert registry.strategy("bc") is BCStrategy and registry.strategy("bc").phase == "bc"
    ppo = registry.strategy("ppo")
    assert ppo is PPOStrategy and ppo.phase == "ppo"


def test_the_built_in_factories_build_what_the_anneal_always_built(tmp_path):
    from townlet_pipelines.training.bc import BCStrategy
    from townlet_pipelines.training.ppo import PPOStrategy

    stage = AnnealStage(cycle=2, mode="bc", epochs=4, bc_weight=0.5)
    inputs = registry.StageInputs("expert", "rollouts", "init", tmp_path / "bc-cycle2-stage1", "bc-cycle2")
    assert registry.build("bc", stage, inputs) == BCStrategy("expert", "init", 4, 0.5, out=tmp_path / "bc-cycle2-stage1",
                                                            name="bc-cycle2")
    stage = AnnealStage(cycle=3, mode="ppo", epochs=5, bc_weight=0.1)
    assert registry.build("ppo", stage, inputs) == PPOStrategy(
        init_checkpoint="init", updates=5, replay_dataset="rollouts", anchor_dataset="expert", bc_weight=0.1, cycle=3,
        out=tmp_path / "bc-cycle2-stage1", name="bc-cycle2")


def test_an_unknown_strategy_is_a_usage_error_and_in_a_schedule_names_its_field():
    with pytest.raises(UsageError, match=r"unknown training strategy 'nope' \(known: bc, ppo;"):
        registry.strategy("nope")
    with pytest.raises(ConfigError) as raised:
        check_schedule(small({"cycle": 0, "mode": "bc"}, {"cycle": 1, "mode": "nope"}))
    assert str(raised.value).startswith("anneal.schedule.1.mode: unknown training strategy 'nope' (known: bc, ppo;")


def test_a_bc_phase_strategy_may_not_follow_a_ppo_stage(toy):
    with pytest.raises(ConfigError, match=r"anneal.schedule.0: the toy stage \(BC phase\) may not follow the ppo "):
        check_schedule(small({"cycle": 1, "mode": toy}, {"cycle": 0, "mode": "ppo"}))
    check_schedule(small({"cycle": 0, "mode": toy}, {"cycle": 1, "mode": "ppo"}))


def test_registration_refuses_reserved_and_taken_names_and_what_is_no_factory(toy):
    with pytest.raises(UsageError, match="reserved"):
        registry.register_strategy("anneal", ToyStrategy)
    for name in (toy, "bc"):
        with pytest.raises(UsageError, match="registered already"):
            registry.register_strategy(name, ToyStrategy)
    with pytest.raises(TypeError, match="needs `phase`"):
        registry.register_strategy("other", object())


def test_train_runs_a_registered_strategy_by_name_and_anneal_refuses_an_unknown_one(toy, dataset, tmp_path, capsys):
    from townlet_pipelines.cli import main

    assert main(["train", toy, "--dataset", str(dataset), "--epochs", "2", "--artifacts", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2 and BUILT[0].inputs.out.name == toy
    config = tmp_path / "unknown.yaml"
    config.write_text("anneal:\n  schedule: [{cycle: 0, mode: bc}, {cycle: 1, mode: nope}]\n")
    assert main(["train", "anneal", "--config", str(config), "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("townlet: error: anneal.schedule.1.mode: unknown training strategy 'nope'")
    assert err.count("\n") == 1 and not list(tmp_path.glob("runs/*/expert"))  # refused before capturing


def test_the_registry_imports_no_torch_until_a_strategy_runs():
    pytest.importorskip("torch")  # without torch installed the answer would be trivially False
    code = ("import sys\nfrom townlet_pipelines.training import registry\n"
            "registry.known(); registry.strategy('bc'); registry.strategy('ppo')\n"
            "from townlet_pipelines.cli import build_parser\nbuild_parser()\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False"
