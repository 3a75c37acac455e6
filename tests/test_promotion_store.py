"""Promotion state and guardrail baselines: durable, append-only, and strict about the rules."""

from __future__ import annotations

import pytest

from townlet_pipelines.data.baselines import BaselineStore
from townlet_pipelines.data.promotion import PromotionError, PromotionStore
from townlet_pipelines.data.state_file import StateFileError


def test_ready_after_two_passes_and_reset_by_hold_or_fail(tmp_path):
    store = PromotionStore(tmp_path, required_passes=2)
    assert store.record_evaluation("c1", "PASS").state == "monitoring"
    assert store.record_evaluation("c1", "HOLD").pass_streak == 0
    store.record_evaluation("c1", "PASS")
    status = store.record_evaluation("c1", "PASS")
    assert status.ready and status.state == "ready" and status.pass_streak == 2
    assert store.record_evaluation("c1", "FAIL").state == "monitoring"
    store.record_evaluation("c1", "PASS")
    assert store.record_evaluation("c2", "PASS").pass_streak == 1  # a new candidate starts its own streak


def test_promotion_needs_readiness_and_records_the_release(tmp_path):
    store = PromotionStore(tmp_path, required_passes=2)
    store.record_evaluation("c1", "PASS")
    with pytest.raises(PromotionError, match="not ready"):
        store.promote("c1", "abc123", {"weights": "f" * 64}, {"reward": 1.0})
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.safetensors").write_bytes(b"weights")
    first = store.promote("c1", "abc123", path=checkpoint, first_release=True)  # nothing released yet
    assert first.first_release and first.previous_release_id is None
    assert (tmp_path / "releases" / first.release_id / "weights.safetensors").read_bytes() == b"weights"
    with pytest.raises(PromotionError, match="first release exists"):
        store.promote("c1", "def456", first_release=True)
    store.record_evaluation("c1", "PASS")
    store.record_evaluation("c1", "PASS")
    second = store.promote("c1", "def456", {"weights": "e" * 64}, {"reward": 2.0})
    assert second.previous_release_id == first.release_id
    status = store.status()
    assert status.state == "promoted" and status.pass_streak == 0 and status.current_release == second


def test_rollback_to_a_named_release_keeps_everything(tmp_path):
    store = PromotionStore(tmp_path, required_passes=1)
    store.record_evaluation("c", "PASS")
    first = store.promote("c", "aaa")
    store.record_evaluation("c", "PASS")
    second = store.promote("c", "bbb")
    assert store.rollback(first.release_id) == first
    assert store.status().current_release == first
    with pytest.raises(PromotionError, match="no release 'r9999'"):
        store.rollback("r9999")
    reopened = PromotionStore(tmp_path, required_passes=1)  # everything is on disk
    assert [r.release_id for r in reopened.releases()] == [first.release_id, second.release_id]
    assert [event.kind for event in reopened.history()] == ["evaluation", "promotion", "evaluation", "promotion",
                                                            "rollback"]
    reopened.record_failure("run-7", "ppo step crashed")
    assert reopened.history()[-1].run_id == "run-7" and reopened.status().current_release == first


def test_a_corrupt_state_file_is_reported_and_left_untouched(tmp_path):
    store = PromotionStore(tmp_path)
    store.record_evaluation("c", "PASS")
    store.path.write_text('{"schema_version": 1, "pass_streak": "many"')
    before = store.path.read_bytes()
    with pytest.raises(StateFileError, match="promotion.json: unreadable state file"):
        store.record_evaluation("c", "PASS")
    with pytest.raises(StateFileError):
        store.status()
    assert store.path.read_bytes() == before


def test_baselines_persist_per_label_with_history(tmp_path):
    store = BaselineStore(tmp_path)
    assert store.get("expert") is None
    store.accept("expert", 0.5, 0.4, 0.6, source="ckpt-1")
    store.accept("expert", 0.45, 0.35, 0.5, source="ckpt-2")
    store.accept("other", 1.0, 1.0, 1.0, source="ckpt-3")
    again = BaselineStore(tmp_path)
    assert again.get("expert").source == "ckpt-2" and again.get("expert").loss_total == 0.45
    assert [b.source for b in again.history("expert")] == ["ckpt-1", "ckpt-2"]
    assert set(again.all()) == {"expert", "other"}
    again.path.write_text("not json")
    with pytest.raises(StateFileError, match="baselines.json"):
        again.accept("expert", 0.1, 0.1, 0.1, source="x")
    assert again.path.read_text() == "not json"


def test_non_finite_metrics_unknown_fields_and_versions_are_refused(tmp_path):
    import json

    store = PromotionStore(tmp_path)
    with pytest.raises(ValueError, match="not finite"):
        store.record_evaluation("c", "PASS", {"x": float("nan")})
    with pytest.raises(ValueError, match="not finite"):
        BaselineStore(tmp_path).accept("expert", float("inf"), 0.1, 0.1, source="x")
    store.record_evaluation("c", "PASS", {"x": 1.0})
    assert store.status().pass_streak == 1  # the refused calls wrote nothing
    data = json.loads(store.path.read_text())
    data["future_field"] = 1
    store.path.write_text(json.dumps(data))
    with pytest.raises(StateFileError, match="promotion.json"):
        store.status()
    del data["future_field"]
    data["schema_version"] = 2
    store.path.write_text(json.dumps(data))
    with pytest.raises(StateFileError, match="schema_version 2 is not supported"):
        store.status()


def test_readiness_follows_the_required_passes_of_the_store_that_reads_it(tmp_path):
    PromotionStore(tmp_path, required_passes=2).record_evaluation("c", "PASS")
    PromotionStore(tmp_path, required_passes=2).record_evaluation("c", "PASS")
    assert PromotionStore(tmp_path, required_passes=2).status().ready
    stricter = PromotionStore(tmp_path, required_passes=3)
    assert not stricter.status().ready and stricter.status().state == "monitoring"
    with pytest.raises(PromotionError):
        stricter.promote("c", "abc")


def test_an_orphaned_release_copy_is_replaced(tmp_path):
    store = PromotionStore(tmp_path, required_passes=1)
    store.record_evaluation("c", "PASS")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.safetensors").write_bytes(b"new")
    orphan = tmp_path / "releases" / "r0001-abc"
    orphan.mkdir(parents=True)
    (orphan / "stale").write_text("left by a failed write")
    release = store.promote("c", "abc", path=checkpoint)
    assert release.release_id == "r0001-abc"
    assert sorted(p.name for p in orphan.iterdir()) == ["weights.safetensors"]


def test_an_evaluation_is_recorded_once_per_run_and_checkpoint(tmp_path):
    store = PromotionStore(tmp_path, required_passes=2)
    checkpoint = {"checkpoint_id": "abc"}
    store.record_evaluation("c", "PASS", checkpoint=checkpoint, run_id="night-1")
    again = store.record_evaluation("c", "PASS", checkpoint=checkpoint, run_id="night-1")  # judged twice
    assert again.pass_streak == 1 and not again.ready
    assert [event.run_id for event in store.history()] == ["night-1"]
    assert store.record_evaluation("c", "PASS", checkpoint=checkpoint, run_id="night-2").ready


def test_a_rolled_back_checkpoint_is_only_repromoted_by_an_operator_override(tmp_path):
    from townlet_pipelines.results import AnnealSummary
    from townlet_pipelines.training.orchestrator import apply_promotion

    store = PromotionStore(tmp_path, required_passes=1)
    store.promote("c", "good", first_release=True)
    store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": "bad"}, run_id="n1")
    bad = store.promote("c", "bad")
    store.rollback(store.releases()[0].release_id)  # the operator withdraws "bad"
    assert store.withdrawn("bad").release_id == store.releases()[0].release_id
    summary = AnnealSummary(stages=[], status="PASS", dataset_label="x", dataset_identity="d", baselines={},
                            promotion_pass_streak=1, promotion_candidate_ready=True, candidate_id="c",
                            final_checkpoint_id="bad", final_checkpoint_path=None, evaluation={}, duration_sec=1.0)
    store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": "bad"}, run_id="n2")
    outcome = apply_promotion(store, summary)  # the same recipe passes again the next night
    assert not outcome.promoted and "rolled back" in outcome.reason
    assert store.status().current_release.checkpoint_id == "good"
    with pytest.raises(PromotionError, match="rolled back .* --override"):
        store.promote("c", "bad")
    again = store.promote("c", "bad", override="fixed the eval towns; re-release")
    assert again.release_id != bad.release_id and store.status().current_release.checkpoint_id == "bad"
    assert store.history()[-1].note == "operator override: fixed the eval towns; re-release"
    assert store.withdrawn("bad") is None


def test_a_nan_in_the_history_is_reported_with_the_repair_and_never_rewritten(tmp_path):
    store = PromotionStore(tmp_path, required_passes=2)
    store.record_evaluation("c", "PASS", {"reward": 1.0}, run_id="n1")
    store.record_evaluation("c", "HOLD", {"reward": 2.0}, run_id="n2")
    damaged = store.path.read_text().replace('"reward": 2.0', '"reward": NaN')
    store.path.write_text(damaged)
    with pytest.raises(StateFileError, match=r"history\.1\.metrics\.reward.*cp .*promotion\.json\.prev"):
        store.status()
    with pytest.raises(StateFileError):
        store.record_evaluation("c", "PASS", run_id="n3")
    assert store.path.read_text() == damaged  # nothing rewrote it (no "null" written back)
    store.path.write_bytes(store.path.with_name("promotion.json.prev").read_bytes())  # the documented repair
    assert [event.run_id for event in store.history()] == ["n1"]


def test_release_paths_are_relative_so_the_artifacts_root_can_move(tmp_path):
    import json
    import shutil

    old = tmp_path / "old" / "state"
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.safetensors").write_bytes(b"w")
    release = PromotionStore(old).promote("c", "abc", path=checkpoint, first_release=True)
    assert release.path == str(old / "releases" / release.release_id)
    assert json.loads((old / "promotion.json").read_text())["releases"][0]["path"] == f"releases/{release.release_id}"
    shutil.move(str(tmp_path / "old"), str(tmp_path / "new"))
    moved = PromotionStore(tmp_path / "new" / "state").status().current_release
    assert moved.path == str(tmp_path / "new" / "state" / "releases" / release.release_id)
    assert (tmp_path / "new" / "state" / "releases" / release.release_id / "weights.safetensors").exists()


def test_a_streak_counts_each_night_once_across_reruns_and_rollbacks(tmp_path):
    """Re-runs of counted nights never lengthen the streak, however many come between, and an operator's
    rollback (which leaves the streak as it is) does not make it forget the nights it counted."""
    store = PromotionStore(tmp_path / "reruns", required_passes=3)
    for run, night in enumerate(("2026-11-01", "2026-11-02", "2026-11-02", "2026-11-01")):
        status = store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": f"k{run}"}, run_id=f"r{run}",
                                         night=night)
    assert status.pass_streak == 2 and not status.ready  # two nights, four runs
    assert store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": "k9"}, run_id="r9",
                                   night="2026-11-03").ready

    store = PromotionStore(tmp_path / "rollback", required_passes=2)
    store.promote("old", "k-old", first_release=True)
    store.promote("older", "k-older", override="a second release to roll back from")
    store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": "k1"}, run_id="r1", night="2026-11-01")
    store.rollback(store.releases()[0].release_id)
    status = store.record_evaluation("c", "PASS", checkpoint={"checkpoint_id": "k2"}, run_id="r2", night="2026-11-01")
    assert status.pass_streak == 1 and not status.ready
