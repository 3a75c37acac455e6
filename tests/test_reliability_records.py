"""Two runs of one night never read each other's records; a partial re-run reads the night's latest and says whose."""

from __future__ import annotations

import pytest

dagster = pytest.importorskip("dagster")
pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from dagster import AssetKey, DagsterInstance, Failure  # noqa: E402

from tests.test_training import TINY  # noqa: E402
from townlet_pipelines.pipeline import records  # noqa: E402
from townlet_pipelines.pipeline.definitions import defs, definitions_for  # noqa: E402

NIGHT = "2026-11-05"
SHORT = {**TINY, "profile": "tiny", "bc": {**TINY["bc"], "epochs": 1, "dagger_rounds": 0},
         "anneal": {**TINY["anneal"], "schedule": [{"cycle": 0, "mode": "bc", "epochs": 1},
                                                   {"cycle": 1, "mode": "ppo", "epochs": 1}]}}


def _run_config(config, root, overrides: str = "") -> dict:
    return {"resources": {"townlet": {"config": {"config_path": str(config), "artifacts_root": str(root),
                                                 "overrides": overrides}}}}


def test_a_night_run_twice_at_once_reads_only_its_own_records(tmp_path, monkeypatch):
    """Run A has trained its BC stage; before its PPO step reads it, run B of the same night (another recipe)
    writes its own BC record. A's PPO step still gets A's BC checkpoint; a run that did not materialize BC (a
    partial re-run of PPO) gets the night's latest, and its log names the run that wrote it."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(SHORT))
    root = tmp_path / "artifacts"
    job = definitions_for(str(config)).resolve_job_def("nightly_anneal")  # the tiny profile's keys: tiny/…
    real_load, read = records.RecordIOManager.load_input, []

    with DagsterInstance.ephemeral() as instance:
        def interleaved(self, context):
            asset = context.asset_key.to_user_string()
            if asset == "tiny/bc_checkpoint" and not read:
                read.append(None)  # run B, all of it between run A's BC step and its PPO step
                other = job.execute_in_process(
                    run_config=_run_config(config, root, "bc: {learning_rate: 0.001}"), instance=instance,
                    partition_key=NIGHT,
                    asset_selection=[AssetKey(["tiny", "replay_manifest"]), AssetKey(["tiny", "bc_checkpoint"])])
                read.append(other.run_id)
            record = real_load(self, context)
            if asset == "tiny/bc_checkpoint":
                read.append(record)
                raise Failure("enough: the test only needs what the PPO step read")
            return record

        monkeypatch.setattr(records.RecordIOManager, "load_input", interleaved)
        first = job.execute_in_process(run_config=_run_config(config, root), instance=instance, partition_key=NIGHT,
                                       raise_on_error=False)
        _, other_run, seen = read
        assert seen["run_id"] == first.run_id  # before: run B's record, so A's PPO trained from B's BC
        latest = records.read_record(records.record_path(root, "tiny/bc_checkpoint", NIGHT), "tiny/bc_checkpoint",
                                     NIGHT)
        assert latest["run_id"] == other_run and latest["checkpoint_id"] != seen["checkpoint_id"]

        monkeypatch.setattr(records.RecordIOManager, "load_input", real_load)
        partial = job.execute_in_process(run_config=_run_config(config, root), instance=instance,
                                         partition_key=NIGHT, asset_selection=[AssetKey(["tiny", "ppo_checkpoint"])],
                                         raise_on_error=False)
        told = " ".join(event.message or "" for event in instance.all_logs(partial.run_id))
        assert f"reading the night's latest record, written by run {other_run}" in told


def test_a_partial_rerun_never_reads_a_latest_record_another_profiles_run_wrote(tmp_path):
    """Before asset keys carried the profile, `bash scripts/run.sh smoke` filed its records under the bare keys
    (`records/replay_manifest/<night>.json`), which are the default profile's now. A partial re-run of the default
    profile that finds one (its run tagged `townlet/profile: smoke`) refuses it in one line, before BC trains."""
    import json

    from dagster import DagsterRun

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**SHORT, "profile": "default"}))
    root = tmp_path / "artifacts"
    legacy = records.record_path(root, "replay_manifest", NIGHT)
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"run_id": "smoke-run", "night": NIGHT, "path": str(tmp_path / "smoke-dataset"),
                                  "dataset_identity": "0" * 64}))
    with DagsterInstance.ephemeral() as instance:
        instance.add_run(DagsterRun(job_name="nightly_anneal", run_id="smoke-run", tags={"townlet/profile": "smoke"}))
        result = defs.resolve_job_def("nightly_anneal").execute_in_process(
            run_config=_run_config(config, root), instance=instance, partition_key=NIGHT,
            asset_selection=[AssetKey("bc_checkpoint")], raise_on_error=False)
    told = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert not result.success and not result.get_asset_materialization_events()
    assert f"{legacy}: the night's latest record of replay_manifest was written by run smoke-run of profile " \
           "'smoke', not 'default'" in told


def test_two_first_runs_at_once_make_the_instance_once(tmp_path):
    """scripts/run.sh makes a brand-new instance's storage under a lock before `dagster job execute`, so two first
    runs at once do not both create its tables ("table runs already exists")."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml")
                                       .read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home))
    both = [subprocess.Popen([sys.executable, "-m", "townlet_pipelines.pipeline.launcher", NIGHT], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in both:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and "already exists" not in err, err
    assert (home / "history" / "runs.db").is_file()
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []
