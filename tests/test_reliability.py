"""Crash safety: a killed training run resumes to the checkpoint an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from tests.test_training import TINY  # noqa: E402
from townlet_pipelines.config import config_from_mapping  # noqa: E402
from townlet_pipelines.training import orchestrator  # noqa: E402

SLOWER = {  # enough epochs and updates that a kill lands mid-run
    "bc": {**TINY["bc"], "epochs": 8},
    "ppo": {**TINY["ppo"], "updates": 8},
    "runtime": {"device": "cpu", "progress_every_epochs": 1, "progress_every_updates": 2},
}


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **SLOWER}))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    config = config_from_mapping({**TINY, **SLOWER}, "tiny")
    return orchestrator.capture_expert(config, tmp_path_factory.mktemp("expert") / "data").path


def _townlet(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "townlet_pipelines.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _kill_when(process: subprocess.Popen, pattern: str, root: Path, timeout: float = 120.0) -> Path:
    """SIGKILL the process as soon as a file matching `pattern` exists under root; the matching path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return found[0]
        assert process.poll() is None, f"finished before the kill: {process.communicate()}"
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"no {pattern} under {root} within {timeout}s")


@pytest.mark.parametrize("kind, step", [("bc", "step-000002"), ("ppo", "step-000004")])
def test_a_killed_run_resumes_to_the_uninterrupted_result(kind, step, tmp_path, dataset):
    config_file = _config_file(tmp_path)
    root = tmp_path / "artifacts"
    extra = ["--dataset", str(dataset)] if kind == "bc" else []
    process = _townlet("train", kind, "--config", str(config_file), "--artifacts", str(root), "--json", *extra)
    progress = _kill_when(process, f"runs/*/{kind}.progress/{step}", root)
    assert process.returncode == -signal.SIGKILL
    run_dir = progress.parent.parent
    assert not (run_dir / kind / "checkpoint.json").exists()  # the kill came before the end

    resumed = _townlet("train", kind, "--resume", str(run_dir), "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    result = json.loads(out)
    assert not (run_dir / f"{kind}.progress").exists()  # a finished stage keeps no progress folder

    config = config_from_mapping({**TINY, **SLOWER}, "tiny")
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path / "reference"),
                                        tmp_path / "reference")
    reference = (orchestrator.run_bc(context, dataset) if kind == "bc" else orchestrator.run_ppo(context))
    assert result["checkpoint_id"] == reference.checkpoint_id  # bit-identical weights
    log = [json.loads(line) for path in sorted((run_dir / "logs").glob(f"{kind}.*.jsonl"))
           for line in path.read_text().splitlines()]
    key = "epoch" if kind == "bc" else "update"
    steps = [entry[key] for entry in log if entry.get("validation") is None]
    assert steps == sorted(set(steps))  # the resumed run re-logged nothing twice


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    from townlet_pipelines.cli import main

    empty = tmp_path / "runs" / "x"
    empty.mkdir(parents=True)
    assert main(["train", "bc", "--resume", str(empty)]) == 2
    assert "not a training run folder to resume" in capsys.readouterr().err
    orchestrator.record_invocation(empty, "bc", config_from_mapping(TINY, "tiny"), dataset="d")
    assert main(["train", "bc", "--resume", str(empty)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "ppo", "--resume", str(empty)]) == 2
    assert "holds a bc run, not ppo" in capsys.readouterr().err


# ------------------------------------------------------------------------- leftovers, caches, full disks
def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_writers_temporaries_are_swept_by_the_next_write(tmp_path):
    from townlet_pipelines.data.files import _HOST, atomic_directory

    dead = tmp_path / f".expert-x.{_HOST}-{_dead_pid()}.abc123.tmp"
    (dead / "shard").mkdir(parents=True)
    dead_file = tmp_path / f".promotion.json.{_HOST}-{_dead_pid()}.zz9.tmp"
    dead_file.write_text("half")
    live = tmp_path / f".other.{_HOST}-{os.getpid()}.def456.tmp"  # a writer still at work
    live.mkdir()
    foreign = tmp_path / f".other.another_host-{_dead_pid()}.ghi789.tmp"  # not ours to judge
    foreign.mkdir()
    with atomic_directory(tmp_path / "new") as folder:
        (folder / "file").write_text("x")
    assert not dead.exists() and not dead_file.exists()
    assert live.exists() and foreign.exists() and (tmp_path / "new" / "file").exists()


def test_a_capture_killed_midway_leaves_nothing_after_the_next_one(tmp_path):
    process = _townlet("capture", "--config", "smoke", "--towns", "64", "--days", "3", "--out", str(tmp_path / "a"))
    leftover = _kill_when(process, ".a.*.tmp/*.npz", tmp_path).parent
    assert leftover.exists() and not (tmp_path / "a").exists()
    done = _townlet("capture", "--config", "smoke", "--towns", "1", "--ticks", "10", "--out", str(tmp_path / "b"))
    assert done.wait(timeout=120) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b"]


def test_a_full_disk_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import errno

    from townlet_pipelines.cli import main
    from townlet_pipelines.data import capture

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(capture, "npz_bytes", full)
    assert main(["capture", "--config", "smoke", "--towns", "1", "--ticks", "10", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "the disk is full" in err
    assert list(tmp_path.iterdir()) == []


def test_a_promotion_that_runs_out_of_disk_keeps_the_previous_release(tmp_path, monkeypatch):
    import errno
    import shutil

    from townlet_pipelines.data import promotion
    from townlet_pipelines.data.promotion import PromotionStore

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.safetensors").write_bytes(b"w" * 1000)
    store = PromotionStore(tmp_path / "state", required_passes=1)
    first = store.promote("c", "aaa", path=checkpoint, first_release=True)
    state_before = store.path.read_bytes()

    real_copytree = shutil.copytree

    def copy_then_fail(source, target, **kwargs):
        real_copytree(source, target)  # part of the copy lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    store.record_evaluation("c", "PASS", run_id="n1")
    monkeypatch.setattr(promotion.shutil, "copytree", copy_then_fail)
    with pytest.raises(OSError):
        store.promote("c", "bbb", path=checkpoint)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "state" / "releases").iterdir()) == [first.release_id]
    assert store.status().current_release.release_id == first.release_id
    assert json.loads(store.path.read_bytes())["releases"] == json.loads(state_before)["releases"]


def test_cache_keys_follow_the_towns_the_cached_work_played_and_stay_the_same_across_nights():
    """An expert dataset captured on other towns (seeds.expert) or BC stages whose DAgger rounds played other
    towns (seeds.dagger) are other entries, never a stale hit; a night's own towns (PPO, validation, guardrail)
    are not in either key, so every night of a recipe reuses the same entries."""
    from townlet_pipelines.training.cache import bc_stages_key, expert_dataset_key
    from townlet_pipelines.training.nights import night_config

    base = config_from_mapping(TINY, "tiny")

    def moved(name: str):
        data = base.model_dump(mode="json")
        seeds = data["seeds"][name]
        data["seeds"][name] = {"start": seeds["start"] + 7, "count": seeds["count"] - 7}  # within its own range
        return config_from_mapping(data, f"tiny, seeds.{name} moved")

    assert expert_dataset_key(moved("expert")) != expert_dataset_key(base)
    assert bc_stages_key(moved("dagger"), "d") != bc_stages_key(base, "d")
    assert expert_dataset_key(moved("dagger")) == expert_dataset_key(base)
    nights = [night_config(base, night) for night in ("2026-11-25", "2026-11-26")]
    assert nights[0].seeds.ppo != nights[1].seeds.ppo
    assert {expert_dataset_key(config) for config in nights} == {expert_dataset_key(base)}
    assert {bc_stages_key(config, "d") for config in nights} == {bc_stages_key(base, "d")}


def test_damaged_cache_entries_are_rebuilt_not_trusted(tmp_path, dataset):
    import shutil

    from townlet_pipelines.training.anneal import AnnealStrategy
    from townlet_pipelines.training.cache import cached_bc_stages, cached_expert_dataset, expert_dataset_key

    config = config_from_mapping({**TINY, "rollout": {**TINY["rollout"], "towns": 2, "ticks": 120},
                                  "bc": {**TINY["bc"], "epochs": 1, "dagger_rounds": 0},
                                  "anneal": {**TINY["anneal"], "schedule": [{"cycle": 0, "mode": "bc", "epochs": 1}],
                                             "bc_accuracy_threshold": 0.0}}, "tiny")
    said = []
    first, reused = cached_expert_dataset(config, tmp_path, said.append)
    assert not reused and cached_expert_dataset(config, tmp_path, said.append)[1]
    shard = sorted(first.directory.glob("*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated on disk
    again, reused = cached_expert_dataset(config, tmp_path, said.append)
    assert not reused and "damaged" in said[-1] and again.identity == first.identity
    assert again.directory.name == f"expert-{expert_dataset_key(config)}"

    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    strategy = AnnealStrategy(again.directory)
    outcome, record, reused = cached_bc_stages(strategy, context, again.identity, tmp_path, said.append)
    assert not reused and "$ARTIFACTS" in record.read_text()  # stored relative to the artifacts root
    weights = Path(outcome.checkpoint) / "weights.safetensors"
    weights.write_bytes(b"garbage")
    rebuilt, _, reused = cached_bc_stages(strategy, context, again.identity, tmp_path, said.append)
    assert not reused and "retraining" in said[-1] and rebuilt.checkpoint_id == outcome.checkpoint_id
    moved = tmp_path.parent / (tmp_path.name + "-moved")  # the artifacts root moves: the entry still verifies
    shutil.move(str(tmp_path), str(moved))
    _, _, reused = cached_bc_stages(strategy, context, again.identity, moved, said.append)
    assert reused


def test_a_checkpoint_with_non_finite_metrics_is_never_written(tmp_path):
    from townlet_pipelines.training.checkpoints import save_checkpoint
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.engine import TownWorld

    config = config_from_mapping(TINY, "tiny")
    model = PolicyNetwork(TownWorld(config, 1).spec, config.model)
    with pytest.raises(ValueError, match="metrics"):
        save_checkpoint(tmp_path / "ckpt", model, "bc", {}, None, None, {"val_accuracy": float("nan")})
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor a temporary


def test_a_killed_runs_bc_cache_work_folder_is_swept_by_the_next(tmp_path, dataset):
    """SIGKILL a run while it trains a BC cache entry in its work folder; the next run that builds an entry there
    removes that folder (its writer is gone) and publishes its own."""
    from townlet_pipelines.data.replay import ReplayDataset
    from townlet_pipelines.training.anneal import AnnealStrategy
    from townlet_pipelines.training.cache import cached_bc_stages

    config_file, root = _config_file(tmp_path), tmp_path / "artifacts"
    code = ("import sys\nfrom pathlib import Path\nfrom townlet_pipelines.config import load_config\n"
            "from townlet_pipelines.data.replay import ReplayDataset\n"
            "from townlet_pipelines.training import orchestrator\n"
            "from townlet_pipelines.training.anneal import AnnealStrategy\n"
            "from townlet_pipelines.training.cache import cached_bc_stages\n"
            "config, root, data = load_config(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]\n"
            "context = orchestrator.make_context(config, orchestrator.new_run_dir(root), root)\n"
            "cached_bc_stages(AnnealStrategy(data), context, ReplayDataset.open(data, verify='none').identity, root)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(config_file), str(root), str(dataset)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = _kill_when(process, "cache/.bc-*/**/step-000001", root)
    work = root / "cache" / progress.relative_to(root / "cache").parts[0]
    assert work.is_dir() and process.returncode == -signal.SIGKILL

    config = config_from_mapping(yaml.safe_load(config_file.read_text()), "tiny")
    context = orchestrator.make_context(config, orchestrator.new_run_dir(root), root)
    identity = ReplayDataset.open(dataset, verify="none").identity
    _, record, reused = cached_bc_stages(AnnealStrategy(dataset), context, identity, root, print)
    assert not reused and record.is_file()
    assert not work.exists() and [path.name for path in (root / "cache").iterdir()] == [record.parent.name]


def test_a_progress_step_is_only_resumed_under_the_recipe_that_wrote_it(tmp_path, dataset, capsys):
    """A killed `townlet train bc`, whose run folder then names another bc.learning_rate: `--resume` refuses in one
    line naming the step, instead of continuing the old recipe's weights and recording them as the new one's."""
    from townlet_pipelines.cli import main

    config_file, root = _config_file(tmp_path), tmp_path / "artifacts"
    process = _townlet("train", "bc", "--config", str(config_file), "--artifacts", str(root), "--json",
                       "--dataset", str(dataset))
    step = _kill_when(process, "runs/*/bc.progress/step-000002", root)
    run_dir = step.parent.parent
    invocation = json.loads((run_dir / "invocation.json").read_text())
    invocation["config"]["bc"]["learning_rate"] = 0.001  # another recipe than the one the step was written under
    (run_dir / "invocation.json").write_text(json.dumps(invocation))
    assert main(["train", "bc", "--resume", str(run_dir), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"townlet: error: {step}: written under another recipe (")
    assert "lr 0.002 in the step, 0.001 in this run" in err
    assert not (run_dir / "bc" / "checkpoint.json").exists()  # nothing was written as this run's

    # The training config alone (same optimizer settings, another dagger_rounds) is part of the recipe too.
    import torch

    from tests.test_training import tiny
    from townlet_pipelines.training.resume import load_progress, recipe, save_progress

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    folder = tmp_path / "progress"
    save_progress(folder, 1, model, optimizer, {"next": 1}, {}, config=tiny())
    other = tiny(bc={"dagger_rounds": 3})
    with pytest.raises(Exception, match="written under another recipe \\(training config [0-9a-f]+ in the step"):
        load_progress(folder, model, torch.optim.Adam(model.parameters(), lr=0.002), "cpu", config=other)
    state, _ = load_progress(folder, model, torch.optim.Adam(model.parameters(), lr=0.002), "cpu", config=tiny())
    assert state == {"next": 1, "step": 1} and recipe(folder, optimizer, tiny())["config"]


def test_files_and_folders_written_atomically_get_the_modes_of_any_new_ones(tmp_path):
    """mkstemp and mkdtemp make 0600 and 0700: the promotion state, records and datasets are written through
    them and must be as readable as any file this process makes (another user, a reader in another container)."""
    from townlet_pipelines.data.files import atomic_directory, atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "state.json", "{}")
        with atomic_directory(tmp_path / "dataset") as folder:
            (folder / "shard").write_text("x")
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "dataset").stat().st_mode & 0o777 == 0o750
