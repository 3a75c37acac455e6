"""A profile is part of an asset's identity (issue 21 item 2): one night run under two profiles on one instance and
one artifacts root keeps two sets of records, two catalog entries and two lineages, and a code location never runs
another profile's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

dagster = pytest.importorskip("dagster")
pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from dagster import AssetKey, DagsterInstance  # noqa: E402

from tests.test_training import TINY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NIGHT = "2026-11-05"
CAPTURED = ("replay_manifest", "rollout_dataset")


def _config(folder: Path, profile: str) -> Path:
    """The tests' tiny recipe under a profile's name (the default's and smoke's keys, without their cost)."""
    path = folder / f"tiny-{profile}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "profile": profile}))
    return path


def test_smoke_and_default_runs_of_one_night_keep_their_own_records_and_catalog(tmp_path):
    """`bash scripts/run.sh smoke` then `bash scripts/run.sh` for the same night: `dagster job execute` with
    TOWNLET_CONFIG named, as run.sh does. Before, the second run's records replaced the first's
    (`records/<asset>/<night>.json`) and the catalog held one `replay_manifest@night`, the last profile's."""
    home, artifacts = tmp_path / "home", tmp_path / "artifacts"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster_bin = Path(sys.executable).parent / "dagster"
    runs = {}
    for profile in ("smoke", "default"):
        config = _config(tmp_path, profile)
        env = dict(os.environ, DAGSTER_HOME=str(home), TOWNLET_ARTIFACTS=str(artifacts), TOWNLET_CONFIG=str(config))
        done = subprocess.run([str(dagster_bin), "job", "execute", "-m", "townlet_pipelines.pipeline.definitions",
                               "-j", "capture_only", "--tags", json.dumps({"dagster/partition": NIGHT})],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
    with DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            runs[run.tags["townlet/profile"]] = run.run_id
        assert set(runs) == {"smoke", "default"}
        latest = {path.relative_to(artifacts / "records").as_posix()
                  for path in (artifacts / "records").rglob(f"{NIGHT}.json")}
        assert latest == {f"{prefix}{asset}/{NIGHT}.json" for prefix in ("", "smoke/") for asset in CAPTURED}
        for asset in CAPTURED:
            for profile, key in (("default", AssetKey(asset)), ("smoke", AssetKey(["smoke", asset]))):
                folder = artifacts / "records" / Path(*key.path)
                record = json.loads((folder / f"{NIGHT}.json").read_text())
                assert record["run_id"] == runs[profile] and record["profile"] == profile, (asset, profile)
                assert [path.stem for path in (folder / NIGHT).glob("*.json")] == [runs[profile]]
                event = instance.get_latest_materialization_event(key)
                assert event.run_id == runs[profile] and event.asset_materialization.partition == NIGHT
                assert event.asset_materialization.metadata["profile"].value == profile
        keys = {key.to_user_string() for key in instance.get_asset_keys()}
        assert keys == {*CAPTURED, *(f"smoke/{asset}" for asset in CAPTURED)}


def test_each_profiles_assets_take_inputs_and_checks_of_that_profile_only(tmp_path):
    from townlet_pipelines.pipeline.definitions import defs, definitions_for

    smoke = definitions_for(str(_config(tmp_path, "smoke"))).resolve_asset_graph()
    default = defs.resolve_asset_graph()
    assert {key.path[0] for key in smoke.get_all_asset_keys()} == {"smoke"}
    assert all(len(key.path) == 1 for key in default.get_all_asset_keys())  # the default profile's keys stay bare
    for key in smoke.get_all_asset_keys():
        node = smoke.get(key)
        assert all(parent.path[0] == "smoke" for parent in node.parent_keys), key
        assert all(check.asset_key == key for check in node.check_keys)
        assert node.assets_def.op.name == key.path[-1]  # step keys, logs and per-step k8s config unchanged
    parents = {parent.to_user_string() for parent in smoke.get(AssetKey(["smoke", "ppo_checkpoint"])).parent_keys}
    assert parents == {"smoke/replay_manifest", "smoke/rollout_dataset", "smoke/bc_checkpoint"}


def test_a_location_refuses_another_profiles_config_before_making_anything(tmp_path):
    """A smoke config launched in the default profile's location (the launchpad, a hand-typed run config) would
    file smoke's data under the default's keys: the first step refuses it in one line, before capturing."""
    from townlet_pipelines.pipeline.definitions import defs

    config, root = _config(tmp_path, "smoke"), tmp_path / "artifacts"
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("capture_only").execute_in_process(
            run_config={"resources": {"townlet": {"config": {"config_path": str(config),
                                                             "artifacts_root": str(root)}}}},
            instance=instance, partition_key=NIGHT, raise_on_error=False)
    assert not result.success and not result.get_asset_materialization_events()
    told = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert f"{config}: profile 'smoke', but this code location serves profile 'default'" in told
    assert f"bash scripts/run.sh {config}" in told
    assert not (root / "records").exists() and not (root / "datasets").exists()
