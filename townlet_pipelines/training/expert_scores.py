"""The scripted expert's scores: what no training changes, scored once per config and towns, and ahead of need.

A night measures the scripted expert three times: on the validation towns (the base of PPO's conflict budget
and snapshot choice), town by town on the guardrail towns (the expert guardrail, a first run's queue
baselines), and beside a random policy on the held-out towns (the report's fixed rows). Each depends on the
world's config, the towns and the code alone, so each is an entry of `<artifacts>/cache` keyed like the other
cache entries (training/cache.py), and a later night reads it back.

A fresh night used to play them in a row after BC, about 27 s of a 2-core machine's wall time. BC trains on
one core, so `score_ahead` plays the missing entries in a forked process on the other while it trains. Each
entry is written under an flock of its own: a reader that needs an entry the process is still playing waits
for it instead of playing it twice, and an entry a killed process left unwritten is played by the reader.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.data.files import atomic_write_text
from townlet_pipelines.training.checkpoints import code_version, content_key
from townlet_pipelines.training.constraint import validation_scores
from townlet_pipelines.training.evaluation import REFERENCES, evaluate
from townlet_pipelines.training.town_processes import exit_with_parent
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock, so nothing is scored ahead
    fcntl = None

PLAY_KEYS = ("world", "rewards", "observations", "expert")  # the config sections an expert's town plays by


# ------------------------------------------------------------------------------------------- entries
def validation_path(config: TownletConfig, cache: Path) -> Path:
    data = config.model_dump(mode="json")
    return cache / "expert-validation-{}.json".format(content_key(
        "expert-validation", {key: data[key] for key in PLAY_KEYS}, config.evaluation.ticks,
        [int(seed) for seed in config.seeds.validation.seeds()], code_version()))


def guardrail_path(config: TownletConfig, cache: Path) -> Path:
    data = config.model_dump(mode="json")
    return cache / "expert-guardrail-{}.json".format(content_key(
        "expert-guardrail", {key: data[key] for key in PLAY_KEYS}, config.evaluation.ticks,
        [int(seed) for seed in config.seeds.guardrail.seeds()], code_version()))


def held_out_seeds(config: TownletConfig) -> tuple[int, ...]:
    return tuple(config.seeds.test.seeds()[:config.evaluation.report_towns])


def references_path(config: TownletConfig, cache: Path) -> Path:
    data = config.model_dump(mode="json")
    return cache / "reference-{}.json".format(content_key(
        "reference", {key: data[key] for key in (*PLAY_KEYS, "evaluation")},
        [int(seed) for seed in held_out_seeds(config)], code_version()))


def _score_validation(config: TownletConfig) -> dict[str, float]:
    return validation_scores(config, ScriptedExpert(config.expert).act)


def _score_guardrail(config: TownletConfig) -> dict:
    towns: dict = {}
    report = evaluate(config, ScriptedExpert(config.expert).act, per_town=towns)
    return {"report": report, "towns": {key: values.tolist() for key, values in towns.items()}}


def reference_scores(config: TownletConfig, seeds) -> dict[str, dict[str, float]]:
    """The scripted expert and a random policy (seed 0) on `seeds`: the fixed ends of the held-out scale."""
    return {"scripted expert": evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds),
            "random": evaluate(config, RandomPolicy(0).act, seeds=seeds)}


def _valid_validation(rows) -> bool:
    return isinstance(rows, dict) and isinstance(rows.get("reward_per_agent_day"), float)


def _valid_guardrail(rows) -> bool:
    return (isinstance(rows, dict) and _valid_validation(rows.get("report"))
            and isinstance(rows.get("towns"), dict) and isinstance(rows["towns"].get("reward_per_agent_day"), list))


def _valid_references(rows) -> bool:
    return isinstance(rows, dict) and set(rows) == set(REFERENCES) and all(map(_valid_validation, rows.values()))


def _entries(config: TownletConfig, cache: Path) -> list[tuple[Path, Callable[[TownletConfig], dict], Callable]]:
    """Every entry in the order a night reads them: (path, how it is scored, what a sound entry looks like)."""
    return [(validation_path(config, cache), _score_validation, _valid_validation),
            (guardrail_path(config, cache), _score_guardrail, _valid_guardrail),
            (references_path(config, cache), lambda c: reference_scores(c, held_out_seeds(c)), _valid_references)]


@contextlib.contextmanager
def _locked(path: Path):
    """Hold `<entry>.lock` exclusively (waiting while another process holds it). Unlocked explicitly: an
    evaluation's forked workers share the open file, and closing it here alone would keep the lock held."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path, valid: Callable) -> dict | None:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rows if valid(rows) else None


def _cached(config: TownletConfig, path: Path | None, score: Callable[[TownletConfig], dict], valid: Callable) -> dict:
    """The entry at `path`, scored and written (atomically) when it is missing or unsound; without a cache
    folder, scored."""
    if path is None:
        return score(config)
    with _locked(path):
        rows = _read(path, valid)
        if rows is None:
            rows = score(config)
            atomic_write_text(path, json.dumps(rows, indent=2, sort_keys=True))
        return rows


# ------------------------------------------------------------------------------------------- readers
def expert_validation(config: TownletConfig, cache: Path | None) -> dict[str, float]:
    """The expert's KPIs on the seeds.validation towns (`constraint.validation_scores`)."""
    path = validation_path(config, cache) if cache is not None else None
    return _cached(config, path, _score_validation, _valid_validation)


def expert_guardrail(config: TownletConfig, cache: Path | None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The expert's report on the guardrail towns, and its per-town values (float64, as `evaluate` gives them)."""
    path = guardrail_path(config, cache) if cache is not None else None
    rows = _cached(config, path, _score_guardrail, _valid_guardrail)
    return rows["report"], {key: np.asarray(values, dtype=np.float64) for key, values in rows["towns"].items()}


def held_out_references(config: TownletConfig, cache: Path | None) -> dict[str, dict[str, float]]:
    """The expert's and a random policy's rows on the held-out report's towns."""
    path = references_path(config, cache) if cache is not None else None
    return _cached(config, path, lambda c: reference_scores(c, held_out_seeds(c)), _valid_references)


# ------------------------------------------------------------------------------------------ ahead of need
def _score_missing(config: TownletConfig, play: TownletConfig, cache: Path, parent: int) -> None:
    """Every entry of `config` that is missing, played with `play` (the same config on one core)."""
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True, name="townlet-parent-watch").start()
    for path, score, valid in _entries(config, cache):
        _cached(play, path, score, valid)


def missing(config: TownletConfig, cache: Path) -> list[Path]:
    """The entries of `config` that `cache` does not hold (sound) yet."""
    return [path for path, _, valid in _entries(config, cache) if _read(path, valid) is None]


def score_ahead(config: TownletConfig, cache: Path | None) -> multiprocessing.Process | None:
    """Play the entries `cache` lacks in a forked process, on one core (its evaluations are not split again),
    and return it; None when nothing is missing, there is no cache, or the platform cannot fork and lock."""
    if cache is None or fcntl is None or "fork" not in multiprocessing.get_all_start_methods():
        return None
    if not missing(config, cache):
        return None
    one_core = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"processes": 1})})
    process = multiprocessing.get_context("fork").Process(
        target=_score_missing, args=(config, one_core, Path(cache), os.getpid()), daemon=True, name="townlet-expert-scores")
    process.start()
    return process
