"""A manual promotion (`townlet promotion promote`) makes a release a night can start from, and only a fitting one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from townlet_pipelines.cli import main
from townlet_pipelines.config import load_config
from townlet_pipelines.data.promotion import PromotionError, PromotionStore

torch = pytest.importorskip("torch")


def _checkpoint(folder: Path, config) -> Path:
    """An untrained policy for `config`'s world, saved as a checkpoint folder (no training needed)."""
    from townlet_pipelines.training.checkpoints import save_checkpoint
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.engine import TownWorld

    model = PolicyNetwork(TownWorld(config, 1).spec, config.model)
    save_checkpoint(folder, model, "bc", config.model_dump(mode="json"), "dataset-x", None, {"val_accuracy": 0.5})
    return folder


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("checkpoints") / "smoke-bc", load_config("smoke"))


def test_a_manual_promotion_copies_the_named_checkpoint_and_the_next_night_starts_from_it(
        tmp_path, capsys, smoke_checkpoint):
    from townlet_pipelines.training.champion import current_champion
    from townlet_pipelines.training.checkpoints import read_record
    from townlet_pipelines.training.orchestrator import make_context, new_run_dir

    root = tmp_path / "artifacts"
    record = read_record(smoke_checkpoint)
    argv = ["promotion", "promote", "--config", "smoke", "--artifacts", str(root), "--candidate", "by-hand",
            "--checkpoint", str(smoke_checkpoint / "weights.safetensors"), "--override", "first release by hand"]
    assert main(argv + ["--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    release = status["current_release"]
    assert release["checkpoint_id"] == record.checkpoint_id
    assert Path(release["path"]).is_dir() and not Path(release["path"]).is_relative_to(smoke_checkpoint)
    assert (Path(release["path"]) / "weights.safetensors").read_bytes() == \
        (smoke_checkpoint / "weights.safetensors").read_bytes()  # a copy: the release never depends on the source
    assert release["metrics"] == {"val_accuracy": 0.5}
    context = make_context(load_config("smoke"), new_run_dir(root), root)
    champion, why = current_champion(context)  # what the next night's PPO starts from
    assert champion is not None and champion.checkpoint_id == record.checkpoint_id, why
    assert why.startswith("starting from the champion")


def test_a_manual_promotion_refuses_what_no_night_could_use(tmp_path, capsys, smoke_checkpoint):
    root = tmp_path / "artifacts"
    base = ["promotion", "promote", "--artifacts", str(root), "--candidate", "c"]
    cases = [  # (argv, the one line it must say)
        (["--config", "smoke", "--checkpoint-id", "abc", "--override", "why"],
         "--checkpoint CHECKPOINT_FOLDER are required"),
        (["--checkpoint", str(smoke_checkpoint), "--override", "why"],  # smoke's checkpoint, the default profile
         "trained for the world of profile 'smoke'"),
        (["--config", "smoke", "--checkpoint", str(smoke_checkpoint), "--override", "   "],
         "--override needs a reason (it was blank)"),
        (["--config", "smoke", "--checkpoint", str(smoke_checkpoint), "--checkpoint-id", "0123", "--override", "x"],
         "--checkpoint-id 0123: "),
        (["--config", "smoke", "--checkpoint", str(tmp_path), "--override", "x"], "not a checkpoint"),
    ]
    for extra, expected in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (extra, err)
    for profile in ("smoke", "default"):
        assert main(["promotion", "status", "--config", profile, "--artifacts", str(root), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["releases"] == 0  # nothing was released by any refusal


def test_the_store_refuses_a_blank_override(tmp_path):
    store = PromotionStore(tmp_path, required_passes=1)
    with pytest.raises(PromotionError, match="needs a reason"):
        store.promote("c", "k", override=" \t ")
    assert store.releases() == []


def test_a_rollback_that_lands_while_a_promotion_waits_for_the_lock_is_honoured(tmp_path, monkeypatch):
    """The withdrawn-checkpoint test runs under the store's lock: a rollback that withdraws the checkpoint after
    `promote` was called, but before it holds the lock, stops the promotion."""
    from townlet_pipelines.data import promotion

    store = PromotionStore(tmp_path, required_passes=1)
    store.promote("c", "good", first_release=True)
    store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": "bad"}, run_id="n1")
    store.promote("c", "bad")
    store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": "bad"}, run_id="n2")  # ready again
    real, raced = promotion.locked_state, []

    def rollback_first(path, model):  # the operator's rollback wins the race for the lock
        if not raced:
            raced.append(store.releases()[0].release_id)
            PromotionStore(tmp_path, required_passes=1).rollback(raced[0])
        return real(path, model)

    monkeypatch.setattr(promotion, "locked_state", rollback_first)
    with pytest.raises(PromotionError, match="was rolled back"):
        store.promote("c", "bad")
    assert raced and store.status().current_release.checkpoint_id == "good"
    assert [release.checkpoint_id for release in store.releases()] == ["good", "bad"]
