"""Content-addressed reuse: a re-run with unchanged inputs skips the expensive deterministic steps.

The expert dataset is keyed by everything that makes it (world, rewards, observations, expert, rollout
and the code version); the BC stages by the dataset's identity, the model and BC settings, the schedule's
BC stages and threshold, and the code version; the held-out report's reference rows (the expert's and a
random policy's scores) by world, rewards, observations, expert, evaluation, the towns and the code version.
Capture, BC and scoring are deterministic for a given key, so a hit is the same result a re-run would
produce. Entries are immutable once complete; an incomplete one (no completion record) or a damaged one (a
file whose sha256 no longer matches; for the small reference rows, one that does not parse) is rebuilt,
never trusted.
Paths inside an entry's record are stored relative to the artifacts root, so the root can move.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from townlet_pipelines.config import TownletConfig
from townlet_pipelines.data.files import atomic_write_text, sweep_leftovers, temporary_sibling
from townlet_pipelines.data.manifest import DatasetError
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.training.anneal import StagesOutcome
from townlet_pipelines.training.checkpoints import code_version, verify_checkpoint
from townlet_pipelines.training.orchestrator import capture_expert
from townlet_pipelines.training.torch_support import TrainingError

ROOT_MARK = "$ARTIFACTS"


def content_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _code_version() -> str:
    return code_version()


def expert_dataset_key(config: TownletConfig) -> str:
    """Everything the expert's capture reads: the world and its rewards and observations, the expert, the
    capture's size and noise, and its towns (`seeds.expert`)."""
    data = config.model_dump(mode="json")
    return content_key("expert", {key: data[key] for key in ("world", "rewards", "observations", "expert",
                                                             "rollout")}, data["seeds"]["expert"], _code_version())


def bc_stages_key(config: TownletConfig, dataset_identity: str) -> str:
    """Everything BC's stages read beside their dataset: the model, BC's settings and stages, and the DAgger
    rounds' captures (their length and shards, `rollout`, and their towns, `seeds.dagger`)."""
    data = config.model_dump(mode="json")
    stages = [stage.model_dump(mode="json") for stage in config.anneal.ordered() if stage.mode == "bc"]
    return content_key("bc", dataset_identity, data["model"], data["bc"], stages, data["rollout"],
                       data["seeds"]["dagger"], config.anneal.bc_accuracy_threshold, config.runtime.device,
                       _code_version())


def cached_expert_dataset(config: TownletConfig, root: Path, say: Callable[[str], None] = print):
    """(the expert dataset of this config, reused?): the cached entry when it verifies, else a fresh capture."""
    path = Path(root) / "datasets" / f"expert-{expert_dataset_key(config)}"
    if path.exists():
        try:
            return ReplayDataset.open(path, verify="full"), True
        except (DatasetError, OSError) as error:
            say(f"cached expert dataset {path} is damaged ({error}); rebuilding it")
            shutil.rmtree(path, ignore_errors=True)
    try:
        capture_expert(config, path)
    except FileExistsError:  # another run built the same entry meanwhile: the same bytes
        pass
    return ReplayDataset.open(path, verify="none"), False


def read_stages(record: str | Path, root: Path):
    """A stages record (a cache entry's or a run's), its paths resolved against the artifacts root."""
    return StagesOutcome.from_json(Path(record).read_text().replace(ROOT_MARK, str(root)))


def cached_bc_stages(strategy, context, dataset_identity: str, root: Path, say: Callable[[str], None] = print):
    """(the anneal's BC stages, the entry's record path, reused?): a verified cache hit, or a fresh training."""
    root = Path(root)
    entry = root / "cache" / f"bc-{bc_stages_key(context.config, dataset_identity)}"
    record = entry / "bc_stages.json"  # written last: its presence marks a complete entry
    if record.exists():
        try:
            outcome = read_stages(record, root)
            for result in outcome.results:
                verify_checkpoint(result.checkpoint_path)
            return outcome, record, True
        except (TrainingError, OSError, ValueError, KeyError) as error:
            say(f"cached BC stages {entry} are damaged ({' '.join(str(error).split())[:300]}); retraining")
    shutil.rmtree(entry, ignore_errors=True)  # damaged, or an interrupted earlier attempt
    # Train in a folder of our own and move it into place whole: two runs that miss the same entry at once
    # (two nights started together) each train, the first to finish publishes, the other's copy is dropped.
    # Its name carries this host and pid: the work folder of a run that was killed is swept by the next one.
    sweep_leftovers(entry.parent)
    work = temporary_sibling(entry)
    outcome = strategy.run_bc_stages(dataclasses.replace(context, artifacts=work))
    text = outcome.to_json().replace(json.dumps(str(work))[1:-1], json.dumps(str(entry))[1:-1])
    atomic_write_text(work / record.name, text.replace(json.dumps(str(root))[1:-1], ROOT_MARK))
    try:
        work.rename(entry)
    except OSError:  # another run published the same entry meanwhile: the same bytes, keep theirs
        shutil.rmtree(work, ignore_errors=True)
    return read_stages(record, root), record, False


def reference_scores_key(config: TownletConfig, seeds) -> str:
    data = config.model_dump(mode="json")
    return content_key("reference", {key: data[key] for key in ("world", "rewards", "observations", "expert",
                                                                "evaluation")},
                       [int(seed) for seed in seeds], _code_version())


def cached_reference_scores(config: TownletConfig, seeds, names: tuple[str, ...], score: Callable[[], dict],
                            root: Path | None) -> dict:
    """The held-out rows of the policies no training changes (the expert, a random policy): `score()` once per
    config and towns, then read back. Without a root nothing is kept; an entry that is unreadable or lacks one
    of `names` is scored again."""
    if root is None:
        return score()
    path = Path(root) / "cache" / f"reference-{reference_scores_key(config, seeds)}.json"
    try:
        rows = json.loads(path.read_text())
        if set(rows) == set(names) and all(isinstance(row, dict) and isinstance(row.get("reward_per_agent_day"), float)
                                           for row in rows.values()):
            return rows
    except (OSError, ValueError, AttributeError):
        pass
    rows = score()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rows, indent=2, sort_keys=True))
    return rows
