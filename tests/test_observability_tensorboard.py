"""TensorBoard event files beside the JSONL training log (the optional `tensorboard` extra), read back with
TensorBoard's own EventAccumulator. Skipped where the extra is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("torch")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from townlet_pipelines.training import tensorboard  # noqa: E402
from townlet_pipelines.training.logs import JsonlLog, NullLog  # noqa: E402


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_each_logged_number_becomes_a_scalar_at_its_update_and_validation_has_its_own_tags(tmp_path, monkeypatch):
    monkeypatch.delenv(tensorboard.ENV, raising=False)
    log = tensorboard.mirror(JsonlLog(tmp_path / "logs", "ppo-cycle1"), tmp_path / "tensorboard", "ppo-cycle1")
    for update in range(3):
        log.write({"update": update, "cycle": 1, "mode": "rollout", "rows": 256, "kl": 0.01 * update,
                   "loss_total": 1.0 - update / 10, "lagrange_multiplier": 0.5, "conflict_budget": 0.1})
    log.write({"update": 2, "cycle": 1, "validation": "policy", "chosen": True, "reward_per_agent_day": 3.5,
               "queue_conflict_events_per_agent_day": 0.25})
    assert len((tmp_path / "logs" / "ppo-cycle1.0000.jsonl").read_text().splitlines()) == 4  # the record stays
    scalars = _scalars(tmp_path / "tensorboard" / "ppo-cycle1")
    assert scalars["ppo-cycle1/kl"] == [(0, 0.0), (1, pytest.approx(0.01)), (2, pytest.approx(0.02))]
    assert [step for step, _ in scalars["ppo-cycle1/loss_total"]] == [0, 1, 2]
    assert scalars["ppo-cycle1/validation_policy/reward_per_agent_day"] == [(2, 3.5)]
    assert "ppo-cycle1/validation_policy/chosen" not in scalars  # a flag, not a curve
    assert {"ppo-cycle1/lagrange_multiplier", "ppo-cycle1/conflict_budget", "ppo-cycle1/rows_per_sec"} <= set(scalars)
    assert len(scalars["ppo-cycle1/rows_per_sec"]) == 2  # a rate between two training entries


def test_it_is_off_when_switched_off_and_on_ranks_that_write_no_log(tmp_path, monkeypatch):
    monkeypatch.setenv(tensorboard.ENV, "0")
    plain = JsonlLog(tmp_path / "logs", "bc")
    assert tensorboard.mirror(plain, tmp_path / "tensorboard", "bc") is plain
    monkeypatch.setenv(tensorboard.ENV, "1")
    silent = NullLog()
    assert tensorboard.mirror(silent, tmp_path / "tensorboard", "bc") is silent


def test_bc_and_ppo_write_event_files_into_their_run_folder(tmp_path, monkeypatch):
    from tests.test_training import tiny
    from townlet_pipelines.training import orchestrator

    monkeypatch.delenv(tensorboard.ENV, raising=False)
    config = tiny(bc={"epochs": 2, "dagger_rounds": 0}, ppo={"updates": 2})
    dataset = orchestrator.capture_expert(config, tmp_path / "data").path
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    bc = orchestrator.run_bc(context, dataset)
    orchestrator.run_ppo(context, init_checkpoint=bc.checkpoint_path, dataset=dataset)
    bc_scalars = _scalars(context.artifacts / "tensorboard" / "bc")
    assert {"bc/loss", "bc/accuracy", "bc/val_loss", "bc/val_accuracy", "bc/rows_per_sec"} <= set(bc_scalars)
    assert [step for step, _ in bc_scalars["bc/loss"]] == [0, 1]
    ppo_scalars = _scalars(context.artifacts / "tensorboard" / "ppo")
    assert {"ppo/loss_total", "ppo/loss_policy", "ppo/loss_value", "ppo/loss_entropy", "ppo/kl", "ppo/clip_fraction",
            "ppo/validation_policy/reward_per_agent_day",
            "ppo/validation_policy/queue_conflict_events_per_agent_day"} <= set(ppo_scalars)
    assert [step for step, _ in ppo_scalars["ppo/kl"]] == [0, 1]
