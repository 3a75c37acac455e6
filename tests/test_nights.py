"""Nights: each partition's own towns, and two nights run at once that never read each other's data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_training import TINY
from townlet_pipelines.config import ConfigError, load_config
from townlet_pipelines.training.anneal import candidate_id
from townlet_pipelines.training.nights import night_config

ROOT = Path(__file__).resolve().parents[1]


def test_a_night_takes_towns_of_its_own_and_keeps_the_recipe():
    base = load_config("default")
    one, two = night_config(base, "2026-11-05"), night_config(base, "2026-11-06")
    for name in ("ppo", "policy_rollouts", "validation", "guardrail"):
        a, b = getattr(one.seeds, name), getattr(two.seeds, name)
        assert a.count == getattr(base.seeds, name).count and not a.overlaps(b)
        for held in (base.seeds.test, base.seeds.validation, base.seeds.expert, base.seeds.dagger, base.seeds.guardrail):
            assert not a.overlaps(held)  # never a held-out test town, never the tuning or BC towns
    assert one.seeds.test == base.seeds.test and one.seeds.expert == base.seeds.expert
    assert candidate_id(one, "expert") == candidate_id(two, "expert") == candidate_id(base, "expert")
    assert night_config(base, "2026-11-05") == one  # from the date alone
    assert str(one.nightly.night) == "2026-11-05" and base.nightly.night is None
    later = night_config(base, "2029-08-01")  # a thousand nights on, the slot comes round again
    assert later.seeds.ppo == night_config(base, "2026-11-05").seeds.ppo
    with pytest.raises(ConfigError, match="not a date"):
        night_config(base, "tonight")
    with pytest.raises(ConfigError, match="nightly: the block"):
        from townlet_pipelines.config import config_from_mapping

        config_from_mapping({"nightly": {"start": 90_000_000}}, "overlap")


def test_two_nights_at_once_each_train_and_judge_only_their_own_data(tmp_path):
    """Two `nightly_anneal` runs of different nights started together on one instance and one artifacts root:
    every step reads its own night's records, so each night's summary judges its own PPO checkpoint, made from
    its own BC record, and the lineage Dagster recorded (data versions) agrees."""
    from dagster import AssetKey, DagsterInstance

    config = tmp_path / "tiny.yaml"
    short = {**TINY, "profile": "tiny", "bc": {**TINY["bc"], "epochs": 1, "dagger_rounds": 0},  # plumbing, not learning
             "anneal": {**TINY["anneal"], "bc_accuracy_threshold": 0.0,
                        "schedule": [{"cycle": 0, "mode": "bc", "epochs": 1}, {"cycle": 1, "mode": "ppo", "epochs": 2}]}}
    config.write_text(yaml.safe_dump(short))
    home, artifacts = tmp_path / "home", tmp_path / "artifacts"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)):
        pass  # the storage is made once, before two processes open it at the same moment
    env = dict(os.environ, DAGSTER_HOME=str(home), TOWNLET_ARTIFACTS=str(artifacts), TOWNLET_CONFIG=str(config))
    dagster_bin = Path(sys.executable).parent / "dagster"
    nights = ("2026-11-05", "2026-11-06")
    runs = [subprocess.Popen([str(dagster_bin), "job", "execute", "-m", "townlet_pipelines.pipeline.definitions",
                              "-j", "nightly_anneal", "--tags", json.dumps({"dagster/partition": night})],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for night in nights]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [error[-6000:] for error in errors]

    def record(asset: str, night: str) -> dict:
        return json.loads((artifacts / "records" / "tiny" / asset / f"{night}.json").read_text())  # its profile's

    with DagsterInstance.from_config(str(home)) as instance:
        windows = {}
        for night in nights:
            run_id = record("ppo_checkpoint", night)["run_id"]
            assert {record(key, night)["run_id"] for key in ("replay_manifest", "bc_checkpoint", "anneal_summary",
                                                             "promoted_policy")} == {run_id}
            summary = json.loads((artifacts / "runs" / run_id / "anneal_summary.json").read_text())
            assert summary["night"] == night
            assert summary["final_checkpoint_id"] == record("ppo_checkpoint", night)["checkpoint_id"]
            stats = instance.get_run_stats(run_id)
            windows[night] = (stats.start_time, stats.end_time)
            own = {}  # this run's materialization of each asset, made for this night, with the record's ids
            for key in ("replay_manifest", "bc_checkpoint", "ppo_checkpoint", "anneal_summary"):
                records = instance.fetch_materializations(AssetKey(["tiny", key]), limit=10).records
                own[key] = next(m for m in records if m.run_id == run_id)
                assert own[key].partition_key == night
            bc_id = record("bc_checkpoint", night)["checkpoint_id"]
            assert own["bc_checkpoint"].asset_materialization.tags["dagster/data_version"] == bc_id
            assert own["ppo_checkpoint"].asset_materialization.tags["dagster/data_version"] \
                == summary["final_checkpoint_id"]
            stages = json.loads(Path(record("ppo_checkpoint", night)["stages_record"]).read_text())
            assert Path(record("ppo_checkpoint", night)["stages_record"]).parent.name == run_id
            releases = [r["checkpoint_id"] for r in json.loads(
                next((artifacts / "state").glob("*/promotion.json")).read_text())["releases"]]
            # From this night's own BC clone, or from the champion when the other night released first.
            assert stages["started_from"].split(":")[0] in {bc_id, *releases}
        (a_start, a_end), (b_start, b_end) = windows.values()
        assert a_start < b_end and b_start < a_end  # the two runs overlapped
    assert record("ppo_checkpoint", nights[0])["checkpoint_id"] != record("ppo_checkpoint", nights[1])["checkpoint_id"]
    ledger = json.loads(next((artifacts / "state").glob("*/promotion.json")).read_text())
    judged = {(e["run_id"], e["checkpoint"]["checkpoint_id"]) for e in ledger["history"] if e["kind"] == "evaluation"}
    assert judged == {(record("ppo_checkpoint", n)["run_id"], record("ppo_checkpoint", n)["checkpoint_id"])
                      for n in nights}
    assert len(ledger["releases"]) == 1  # one first release; the other night waits for its streak
