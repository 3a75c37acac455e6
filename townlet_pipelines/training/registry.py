"""Training strategies by name: the anneal's stages (`anneal.schedule[].mode`) and `townlet train <name>`.

A name is registered in one of two ways:
- an entry point of the group `townlet_pipelines.strategies` (pyproject.toml declares `bc` and `ppo`; a plugin
  package declares its own, `toy = "my_package.toy:ToyStrategy"`, and is found once it is installed);
- `register_strategy(name, factory)`, for tests and notebooks.

Entry points are discovered once, by name only (nothing is imported), and a strategy's module is imported when
its name is first looked up; the strategies import torch only when they run. So importing this module, listing
the names, the CLI's parser and the code location import no torch.

What a name resolves to is a *stage factory* (`StageFactory`), usually the strategy class itself:
- `phase`, "bc" or "ppo": the half of the anneal it runs in, and so how it is judged. A "bc" stage runs before
  PPO (in the `bc_checkpoint` step), from the checkpoint carried forward, and returns a `BCTrainingResult`, judged
  by its `val_accuracy` against `anneal.bc_accuracy_threshold`. A "ppo" stage runs from the champion (or the BC
  clone) in the `ppo_checkpoint` step and returns a `PPOTrainingResult`, judged by the PPO guardrails. The
  guardrails, the records and the graph's two training steps are defined over these two records, so a new
  strategy says which half it joins rather than bringing a judgement of its own.
- `for_stage(stage, inputs)`: the `TrainingStrategy` (training/context.py: `name`, `run(context)`) that trains
  one `AnnealStage` (its cycle, epochs and bc_weight) with the night's `StageInputs` (the datasets, the
  checkpoint to start from, the stage's folder and log name). Every stage is built this one way.

`BCStrategy` and `PPOStrategy` are their own factories. `bc` and `ppo` are known even where the installed metadata predates their
entry points (an editable install not yet reinstalled): `BUILT_IN` names the same targets as pyproject.toml.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from townlet_pipelines.config import UsageError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from townlet_pipelines.config import AnnealStage
    from townlet_pipelines.training.context import TrainingStrategy

GROUP = "townlet_pipelines.strategies"
BUILT_IN = {"bc": "townlet_pipelines.training.bc:BCStrategy", "ppo": "townlet_pipelines.training.ppo:PPOStrategy"}
PHASES = ("bc", "ppo")
RESERVED = ("anneal",)  # `townlet train anneal` runs the whole schedule


@dataclass(frozen=True)
class StageInputs:
    """What the anneal hands every stage besides the stage itself."""

    dataset: str | Path  # the expert replay dataset: BC's demonstrations, PPO's bc_weight anchor
    replay_dataset: str | Path | None  # PPO's stored rows for replay/mixed (the rollout dataset, else the expert's)
    init_checkpoint: str | Path | None  # the checkpoint carried forward (None: fresh weights)
    out: Path  # the stage's own checkpoint folder
    name: str  # its log name, `<mode>-cycle<cycle>`


class StageFactory(Protocol):
    phase: str  # "bc" or "ppo"

    def for_stage(self, stage: "AnnealStage", inputs: StageInputs) -> "TrainingStrategy": ...


_registered: dict[str, StageFactory] = {}  # register_strategy's
_loaded: dict[str, StageFactory] = {}  # entry points (and built-ins) already imported
_discovered: dict[str, "EntryPoint | str"] | None = None  # name -> entry point, or a built-in's target


def _entry_points() -> dict[str, "EntryPoint | str"]:
    global _discovered
    if _discovered is None:
        _discovered = {**BUILT_IN, **{point.name: point for point in importlib.metadata.entry_points(group=GROUP)}}
    return _discovered


def known() -> list[str]:
    """Every strategy name: the built-ins, the installed entry points and the registered ones."""
    return sorted({*_entry_points(), *_registered})


def _checked(name: str, factory, target: str) -> StageFactory:
    if not callable(getattr(factory, "for_stage", None)) or getattr(factory, "phase", None) not in PHASES:
        raise TypeError(f"strategy {name!r} ({target}): a stage factory needs `phase` (one of {PHASES}) and "
                        "`for_stage(stage, inputs)` (training/registry.py)")
    return factory


def _load(point: "EntryPoint | str"):
    if isinstance(point, str):
        module, _, attribute = point.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return point.load()


def strategy(name: str) -> StageFactory:
    """The stage factory registered as `name` (imported on first use); an unknown name is a `UsageError`."""
    if name in _registered:
        return _registered[name]
    if name not in _loaded:
        point = _entry_points().get(name)
        if point is None:
            raise UsageError(f"unknown training strategy {name!r} (known: {', '.join(known())}; a strategy is "
                             f"registered by a {GROUP} entry point or register_strategy)")
        target = point if isinstance(point, str) else point.value
        _loaded[name] = _checked(name, _load(point), target)
    return _loaded[name]


def register_strategy(name: str, factory: StageFactory, *, replace: bool = False) -> None:
    """Register `factory` (see the module's docstring) as `name`; a name already known is refused unless
    `replace`."""
    if not name or name in RESERVED:
        raise UsageError(f"strategy name {name!r} is reserved or empty")
    if not replace and (name in _registered or name in _entry_points()):
        raise UsageError(f"strategy {name!r} is registered already (register_strategy(..., replace=True))")
    named = factory if hasattr(factory, "__qualname__") else type(factory)
    _registered[name] = _checked(name, factory, f"{named.__module__}:{named.__qualname__}")


def unregister_strategy(name: str) -> None:
    """Forget a `register_strategy` registration (entry points stay)."""
    _registered.pop(name, None)


def build(name: str, stage: "AnnealStage", inputs: StageInputs) -> "TrainingStrategy":
    """The strategy that runs `stage` (`stage.mode` is normally `name`)."""
    built = strategy(name).for_stage(stage, inputs)
    if not callable(getattr(built, "run", None)) or not isinstance(getattr(built, "name", None), str):
        raise TypeError(f"strategy {name!r}: for_stage returned {type(built).__name__}, which is no TrainingStrategy "
                        "(a `name` and `run(context)`)")
    return built
