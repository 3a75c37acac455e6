"""Messages that name the cause: each fault below is told in one line that names its file or field."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from townlet_pipelines.cli import MAX_EVALUATION_TOWNS, parse_seeds
from townlet_pipelines.config import load_config
from townlet_pipelines.errors import one_line

torch = pytest.importorskip("torch")

from townlet_pipelines.training.checkpoints import load_checkpoint, read_record, save_checkpoint  # noqa: E402
from townlet_pipelines.training.torch_support import TrainingError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_config("smoke")


def _model():
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.engine import TownWorld

    return PolicyNetwork(TownWorld(SMOKE, 1).spec, SMOKE.model)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints") / "bc"
    save_checkpoint(folder, _model(), "bc", SMOKE.model_dump(mode="json"), None, None, {}, optimizer=None)
    return folder


def test_a_damaged_safetensors_file_names_its_path(tmp_path, checkpoint):
    import hashlib
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    garbage = b"garbage" * 4
    (damaged / "weights.safetensors").write_bytes(garbage)
    record = json.loads((damaged / "checkpoint.json").read_text())  # the record agrees with the garbage, so only
    record["weights_sha256"] = hashlib.sha256(garbage).hexdigest()  # safetensors itself can notice
    (damaged / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(TrainingError) as raised:
        load_checkpoint(damaged)
    told = one_line(raised.value)
    assert told.startswith(f"{damaged / 'weights.safetensors'}: damaged checkpoint file (")


def test_a_full_disk_while_saving_is_a_full_disk_not_a_damaged_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):  # safetensors' own words when the disk fills (measured on a 64 KiB tmpfs)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as raised:
        save_checkpoint(tmp_path / "bc", _model(), "bc", {}, None, None, {})
    told = one_line(raised.value)
    assert raised.value.errno == errno.ENOSPC and "weights.safetensors" in told
    assert "the disk is full" in told and "damaged" not in told
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temporary
    unnamed = one_line(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert "the disk is full" in unnamed and "damaged" not in unnamed  # one no caller named


def test_a_checkpoint_for_another_action_set_says_what_differs(checkpoint):
    spec = read_record(checkpoint).observation
    fewer = spec.model_copy(update={"action_names": spec.action_names[:-1]})
    with pytest.raises(TrainingError) as raised:
        load_checkpoint(checkpoint, fewer)
    told = one_line(raised.value)
    assert f"action_names: only in the checkpoint [{spec.action_names[-1]!r}], only in the data []" in told
    assert "map_shape" not in told and "feature" not in told  # only what differs


def test_a_truncated_progress_archive_is_one_line_naming_the_file(tmp_path):
    from townlet_pipelines.training.resume import ARRAYS, load_progress, save_progress

    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    step = save_progress(tmp_path, 1, model, optimizer, {"epoch": 1}, {"x": torch.zeros(50).numpy()})
    archive = step / ARRAYS
    archive.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(TrainingError) as raised:  # before: zipfile.BadZipFile and its traceback
        load_progress(tmp_path, model, optimizer, "cpu")
    told = one_line(raised.value)
    assert told.startswith(f"{archive}: damaged progress checkpoint (") and "the run must start again" in told
    assert [path.name for path in tmp_path.iterdir()] == [step.name]  # no step before it to fall back on


def test_a_progress_step_without_its_optimizer_is_refused_not_resumed_with_fresh_moments(tmp_path):
    from townlet_pipelines.training.resume import OPTIMIZER, load_progress, save_progress

    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    step = save_progress(tmp_path, 1, model, optimizer, {"epoch": 1}, {"x": torch.zeros(5).numpy()})
    (step / OPTIMIZER).unlink()
    with pytest.raises(TrainingError, match=f"{step / OPTIMIZER}: damaged progress checkpoint \\(.*missing"):
        load_progress(tmp_path, model, optimizer, "cpu")


def _trained_checkpoint(folder: Path, learning_rate: float, hidden: int = 64):
    """A checkpoint with Adam moments after one step, saved at `learning_rate`."""
    from townlet_pipelines.training.model import PolicyNetwork
    from townlet_pipelines.world.engine import TownWorld

    model = PolicyNetwork(TownWorld(SMOKE, 1).spec, SMOKE.model.model_copy(update={"hidden": hidden}))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    sum(parameter.sum() for parameter in model.parameters()).backward()
    optimizer.step()
    save_checkpoint(folder, model, "bc", {}, None, None, {}, optimizer=optimizer)
    return model, optimizer


def test_continuing_an_optimizer_keeps_this_runs_settings_and_refuses_foreign_or_changed_moments(tmp_path):
    """--continue-optimizer takes the moments alone: PPO continued from BC trains at PPO's rate, not BC's. Moments
    of another model, or bytes changed since the record was written, are refused in one line naming the file."""
    from townlet_pipelines.training.checkpoints import OPTIMIZER, restore_optimizer

    saved, old = _trained_checkpoint(tmp_path / "bc", 2e-3)
    optimizer = torch.optim.Adam(saved.parameters(), lr=1e-4, eps=1e-5, weight_decay=0.01)
    assert restore_optimizer(tmp_path / "bc", optimizer)
    assert {key: optimizer.param_groups[0][key] for key in ("lr", "eps", "weight_decay")} == {
        "lr": 1e-4, "eps": 1e-5, "weight_decay": 0.01}  # before: 2e-3, 1e-8 and 0.0, the checkpoint's
    first = next(iter(saved.parameters()))
    assert torch.equal(optimizer.state[first]["exp_avg"], old.state[first]["exp_avg"])

    _trained_checkpoint(tmp_path / "small", 2e-3, hidden=32)
    with pytest.raises(TrainingError, match=f"{tmp_path / 'small' / OPTIMIZER}: optimizer moments for another "
                                            "model"):  # before: a RuntimeError's traceback, mid-step
        restore_optimizer(tmp_path / "small", torch.optim.Adam(saved.parameters()))

    path = tmp_path / "bc" / OPTIMIZER
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a moment's bytes changed: the file still reads, and once trained on silently
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="sha256 does not match the checkpoint record"):
        restore_optimizer(tmp_path / "bc", torch.optim.Adam(saved.parameters()))


@pytest.mark.parametrize("content, why", [("", "the file is empty"), ("{}", "no run_id or night"),
                                          ("[1]", "no run_id or night"),
                                          ('{"run_id": "r", "night": "2026-11-05"}', "nothing but"),
                                          ('{"run_id": "r", "night": "2026-11-04", "x": 1}', "night 2026-11-04's")])
def test_a_damaged_record_names_its_file(tmp_path, content, why):
    from dagster import Failure

    from townlet_pipelines.pipeline.records import read_record as read_night_record

    path = tmp_path / "2026-11-05.json"
    path.write_text(content)
    with pytest.raises(Failure) as raised:  # before: KeyError: 'stages_record' in the next asset
        read_night_record(path, "bc_checkpoint", "2026-11-05")
    assert raised.value.description.startswith(f"{path}: damaged record (") and why in raised.value.description


def test_run_sh_refuses_a_night_that_is_not_a_date_or_before_the_first_in_one_line(tmp_path):
    from townlet_pipelines.pipeline.records import FIRST_NIGHT

    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), TOWNLET_ARTIFACTS=str(tmp_path / "artifacts"))
    for night, expected in (("2026-13-01", "night '2026-13-01': not a date"),
                            ("yesterday", "night 'yesterday': not a date"),
                            ("2020-01-01", f"night 2020-01-01: before the first night, {FIRST_NIGHT}"),
                            ("2999-01-01", "night 2999-01-01: it has not ended yet")):
        done = subprocess.run(["bash", "scripts/run.sh", "smoke", night], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith(f"townlet: error: {expected}") and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "history").exists()  # no run was made


def test_a_seed_range_too_large_to_hold_is_refused_with_a_sentence():
    with pytest.raises(ValueError) as raised:  # before: two million towns in one batched world, out of memory
        parse_seeds("0:2000000", SMOKE)
    assert str(raised.value) == (f"--seeds 0:2000000: 2,000,000 towns; at most {MAX_EVALUATION_TOWNS:,} are scored at "
                                 "once (all of them share one batched world in memory): choose a shorter range")
    assert len(parse_seeds(f"5:{5 + MAX_EVALUATION_TOWNS}", SMOKE)) == MAX_EVALUATION_TOWNS


def test_the_cores_last_ended_night_is_the_nightly_partitions_last_key():
    """`run.sh` and `townlet train anneal --night` check nights in the core (no Dagster there); the schedule's
    partitions must agree on which night ended last, on both sides of 02:00."""
    import datetime
    import zoneinfo

    from townlet_pipelines.pipeline.records import NIGHTS
    from townlet_pipelines.training.nights import TIMEZONE, last_ended_night

    assert last_ended_night() == NIGHTS.get_last_partition_key()
    zone = zoneinfo.ZoneInfo(TIMEZONE)
    for moment in (datetime.datetime(2026, 12, 3, 1, 59, tzinfo=zone), datetime.datetime(2026, 12, 3, 2, 0, tzinfo=zone),
                   datetime.datetime(2026, 12, 3, 23, 30, tzinfo=zone)):
        night = last_ended_night(moment)  # the partition that ended last: its end passed, the next one's not
        ended = NIGHTS.end_time_for_partition_key(night)
        assert ended <= moment < ended + datetime.timedelta(days=1), moment
    assert last_ended_night(datetime.datetime(2026, 12, 3, 1, 59, tzinfo=zone)) == "2026-12-01"
