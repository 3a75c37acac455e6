"""What Dagster's own UI shows without code of ours: owners and tags for the catalog, float metadata for the
Plots tab, dataset previews, a freshness check, and Dagster's own check of the code location."""

from __future__ import annotations

import pytest

dagster = pytest.importorskip("dagster")

from townlet_pipelines.pipeline.definitions import defs  # noqa: E402

STAGES = {"replay_manifest": "data", "rollout_dataset": "data", "bc_checkpoint": "training",
          "ppo_checkpoint": "training", "anneal_summary": "judging", "promoted_policy": "release"}
KINDS = {"replay_manifest": "numpy", "rollout_dataset": "numpy", "bc_checkpoint": "pytorch",
         "ppo_checkpoint": "pytorch", "anneal_summary": "python", "promoted_policy": "python"}


def test_every_asset_has_an_owner_a_stage_and_a_kind_in_the_asset_graph():
    graph = defs.resolve_asset_graph()
    seen = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:townlet"], key
        name = key.to_user_string()
        seen[name] = (node.tags["stage"], node.tags["team"], node.tags[f"dagster/kind/{KINDS[name]}"])
    assert seen == {name: (stage, "townlet", "") for name, stage in STAGES.items()}


# ---------------------------------------------------------------------------- plots across nights
PLOT_KEYS = {f"held_out_{row}_{measure}" for row in ("candidate", "champion", "expert", "random")
             for measure in ("reward", "conflicts")} | {"held_out_margin_over_expert",
                                                        "held_out_margin_over_expert_pct", "pass_streak"}


def test_the_held_out_floats_have_the_same_names_with_or_without_a_champion():
    import math

    from townlet_pipelines.pipeline.observability import held_out_plots

    def row(reward, conflicts):
        return {"reward_per_agent_day": reward, "queue_conflict_events_per_agent_day": conflicts}

    first = held_out_plots({"candidate": row(1.5, 0.2), "scripted expert": row(1.0, 0.1),
                            "random": row(-2.0, 0.9)}, pass_streak=1)
    later = held_out_plots({"candidate": row(0.5, 0.2), "champion": row(1.0, 0.3), "scripted expert": row(1.0, 0.1),
                            "random": row(-2.0, 0.9)}, pass_streak=0)
    off = held_out_plots({}, pass_streak=2)  # the report off: every key, every value NaN but the streak
    for plots in (first, later, off):
        assert set(plots) == PLOT_KEYS and all(isinstance(v, dagster.FloatMetadataValue) for v in plots.values())
    assert math.isnan(first["held_out_champion_reward"].value) and later["held_out_champion_reward"].value == 1.0
    assert first["held_out_margin_over_expert"].value == pytest.approx(0.5)
    assert first["held_out_margin_over_expert_pct"].value == pytest.approx(50.0)
    assert later["held_out_margin_over_expert_pct"].value == pytest.approx(-50.0)
    assert first["held_out_random_conflicts"].value == pytest.approx(0.9) and first["pass_streak"].value == 1.0
    assert math.isnan(off["held_out_candidate_reward"].value) and off["pass_streak"].value == 2.0


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory):
    """Two nights of the tests' tiny recipe on one instance (the smoke profile's shape, smaller): the first
    makes the first release, the second trains from it on stored rollouts of it (ppo.data_mode mixed), so both
    datasets are captured."""
    pytest.importorskip("torch")
    import yaml
    from dagster import DagsterInstance

    from tests.test_training import TINY

    config = tmp_path_factory.mktemp("config") / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "profile": "tiny"}))
    root = tmp_path_factory.mktemp("artifacts")
    job = defs.resolve_job_def("nightly_anneal")
    with DagsterInstance.ephemeral() as instance:
        results = [job.execute_in_process(
            run_config={"resources": {"townlet": {"config": {"config_path": str(config), "artifacts_root": str(root),
                                                             "overrides": overrides}}}},
            instance=instance, partition_key=night)
            for night, overrides in (("2026-11-05", ""), ("2026-11-06", "ppo: {data_mode: mixed}"))]
        yield {"instance": instance, "results": results, "root": root}


def _metadata(result, asset: str) -> dict:
    return dict(result.asset_materializations_for_node(asset)[0].metadata)


def test_two_nights_carry_the_same_float_metadata_for_the_plots_tab(two_nights):
    first, second = two_nights["results"]
    for asset, expected in (("anneal_summary", PLOT_KEYS), ("promoted_policy", {"release_held_out_reward",
                                                                                 "pass_streak"})):
        floats = [{key for key, value in _metadata(night, asset).items()
                   if isinstance(value, dagster.FloatMetadataValue)} for night in (first, second)]
        assert floats[0] == floats[1] and expected <= floats[0], asset
    summary = _metadata(first, "anneal_summary")
    reported = summary["held_out_reward"].value  # the JSON row the floats come from
    assert summary["held_out_candidate_reward"].value == pytest.approx(reported["candidate"], abs=1e-3)
    assert summary["held_out_expert_reward"].value == pytest.approx(reported["scripted expert"], abs=1e-3)
    later = _metadata(second, "anneal_summary")
    champion = later["held_out_reward"].value["champion"]
    assert later["held_out_champion_reward"].value == pytest.approx(champion, abs=1e-3)
    # the first night's candidate became the release: its held-out reward is the release's, read from the report
    release = _metadata(first, "promoted_policy")
    assert release["promoted_this_run"].value is True
    assert release["release_held_out_reward"].value == pytest.approx(summary["held_out_candidate_reward"].value)
    assert summary["pass_streak"].value == 1.0 and release["pass_streak"].value == 0.0  # a release starts it anew


# ---------------------------------------------------------------------------- freshness
def _judged_check(instance, now):
    """The freshness check on anneal_summary, evaluated as its sensor would at `now` (a frozen clock)."""
    from dagster import AssetSelection, materialize
    from dagster._core.test_utils import freeze_time

    from townlet_pipelines.pipeline.definitions import night_judged_checks

    with freeze_time(now):
        result = materialize(night_judged_checks, instance=instance,
                             selection=AssetSelection.checks(*night_judged_checks))
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_the_freshness_check_fails_when_no_night_was_judged_for_26_hours(tmp_path):
    from datetime import datetime, timedelta, timezone

    from dagster import AssetKey, AssetMaterialization, AssetObservation, DagsterInstance, MetadataValue

    from townlet_pipelines.pipeline.definitions import JUDGED_WITHIN, night_judged_sensor

    assert JUDGED_WITHIN == timedelta(hours=26)
    assert "freshness_check" not in {n.name for n in defs.resolve_job_def("nightly_anneal").nodes}  # not in a night
    assert night_judged_sensor.default_status == dagster.DefaultSensorStatus.RUNNING
    key = AssetKey("anneal_summary")
    with DagsterInstance.ephemeral() as instance:
        now = datetime.now(timezone.utc)
        assert not _judged_check(instance, now).passed  # never judged
        instance.report_runless_asset_event(AssetMaterialization(key, partition="2026-11-05"))  # a PASS night
        assert _judged_check(instance, now + timedelta(hours=1)).passed
        late = _judged_check(instance, now + timedelta(hours=27))
        assert not late.passed and late.severity == dagster.AssetCheckSeverity.ERROR
        # A HOLD or FAIL night is judged too: `_held` observes anneal_summary with its update time.
        held = now + timedelta(hours=30)
        instance.report_runless_asset_event(AssetObservation(key, partition="2026-11-06", metadata={
            "status": "HOLD", "dagster/last_updated_timestamp": MetadataValue.timestamp(held.timestamp())}))
        assert _judged_check(instance, held + timedelta(hours=25)).passed
        assert not _judged_check(instance, held + timedelta(hours=27)).passed


# ---------------------------------------------------------------------------- Dagster's own check, in CI
def test_the_test_command_validates_the_code_location_first_and_stops_on_a_broken_one(tmp_path):
    """scripts/test.sh runs `dagster definitions validate` on workspace.yaml before pytest: here on a copy of the
    repository whose location raises on import, so it must stop there, non-zero, without starting pytest."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "scripts").mkdir()
    for script in ("test.sh", "setup.sh"):
        shutil.copy(root / "scripts" / script, tmp_path / "scripts" / script)
    (tmp_path / ".venv").symlink_to(root / ".venv")
    for name in ("pyproject.toml", "constraints.txt"):  # as old as the install stamp: setup.sh installs nothing
        shutil.copy2(root / name, tmp_path / name)
        os.utime(tmp_path / name, (0, 0))
    (tmp_path / "broken_location.py").write_text("raise RuntimeError('a code location that does not load')\n")
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: broken_location\n      working_directory: .\n")
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "test.sh"), "-p", "no:xdist"], capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"})
    told = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Validation failed for code location broken_location" in told and "does not load" in told
    assert "passed" not in told and "no tests ran" not in told  # pytest never started


# ---------------------------------------------------------------------------- a calm console
def test_run_sh_on_a_night_that_holds_prints_the_verdict_and_exits_4_without_a_traceback(tmp_path):
    """scripts/run.sh on the smoke profile, shrunk and forced to HOLD (two PPO stages, loss_tolerance 0: the
    second stage's loss differs from the first's at all): the verdict and its sentence, where the summary is, exit
    4; Dagster's own output only in the log file, and the instance keeps every event."""
    pytest.importorskip("torch")
    import os
    import subprocess
    from pathlib import Path

    import yaml
    from dagster import DagsterInstance

    from townlet_pipelines.config import load_config
    from townlet_pipelines.pipeline.console import verdict_of_run

    root = Path(__file__).resolve().parents[1]
    smoke = load_config("smoke").model_dump(mode="json")
    smoke["profile"] = "held"
    smoke["rollout"].update(towns=2)
    smoke["bc"].update(epochs=1, dagger_rounds=0)
    smoke["ppo"].update(rollout_towns=2, rollout_ticks=32, updates=1)
    smoke["evaluation"].update(ticks=120, report_towns=0)
    smoke["anneal"].update(loss_tolerance=0.0, bc_accuracy_threshold=0.0, schedule=[
        {"cycle": 0, "mode": "bc", "epochs": 1}, {"cycle": 1, "mode": "ppo", "epochs": 1, "bc_weight": 0.1},
        {"cycle": 2, "mode": "ppo", "epochs": 1, "bc_weight": 0.1}])
    config = tmp_path / "held.yaml"
    config.write_text(yaml.safe_dump(smoke))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((root / "dagster_home" / "dagster.yaml").read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home), TOWNLET_ARTIFACTS=str(tmp_path / "artifacts"))
    done = subprocess.run(["bash", str(root / "scripts" / "run.sh"), str(config), "2026-11-05"], capture_output=True,
                          text=True, timeout=300, env=env)
    told = done.stdout + done.stderr
    assert done.returncode == 4, told
    assert "Traceback" not in told and "Stack Trace" not in told and "dagster - " not in told, told
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        verdict = verdict_of_run(instance, run.run_id)
        assert any(record.dagster_event is not None and record.dagster_event.event_type_value == "STEP_FAILURE"
                   for record in instance.all_logs(run.run_id))  # the full event log stays in the instance
    assert verdict["status"] == "HOLD" and verdict["reason"]
    assert f"night 2026-11-05: HOLD: {verdict['reason']}" in done.stdout.splitlines()
    assert "latest anneal summary: " in done.stdout and verdict["path"] in done.stdout  # where the report is
    log = Path(run.tags["townlet/console_log"])
    assert log.parent == home / "logs" and "Stack Trace" in log.read_text()  # Dagster's own output, kept


def test_the_console_tells_a_run_that_failed_before_judging_in_one_line_and_a_run_that_never_started(tmp_path):
    from dagster import DagsterInstance

    from townlet_pipelines.pipeline.console import LOG_TAG, tell

    log = tmp_path / "night.log"
    log.write_text("Traceback (most recent call last):\n...\nyaml.scanner.ScannerError: mapping values not allowed\n")
    with DagsterInstance.ephemeral() as instance:
        lines: list[str] = []
        assert tell(log, 1, instance, lines.append) == 2  # dagster exited before a run existed
        assert lines[0].startswith("no run started (dagster exited 1)") and "ScannerError" in lines[-1]
        result = defs.resolve_job_def("capture_only").execute_in_process(
            run_config={"resources": {"townlet": {"config": {"config_path": "smoke", "artifacts_root": str(tmp_path),
                                                             "overrides": "bc: {val_fraction: 0}"}}}},
            instance=instance, partition_key="2026-11-05", tags={LOG_TAG: str(log)}, raise_on_error=False)
        assert not result.success
        lines.clear()
        assert tell(log, 1, instance, lines.append) == 1
    assert lines[0] == "night 2026-11-05: not judged; the run failure"
    assert lines[1].startswith("  replay_manifest: ") and "bc.val_fraction: Input should be greater than 0" in lines[1]
    assert "Traceback" not in "\n".join(lines) and str(log) in lines[-1]


# ---------------------------------------------------------------------------- dataset previews
def test_the_telemetry_schema_describes_every_column_the_world_writes_and_the_catalog_shows_it():
    from townlet_pipelines.pipeline.observability import TELEMETRY_COLUMNS, UNDESCRIBED, telemetry_schema
    from townlet_pipelines.world.engine import TELEMETRY_KEYS

    schema = telemetry_schema()
    assert [column.name for column in schema.columns] == ["tick", "town", "episode", *TELEMETRY_KEYS]
    assert all(column.description and column.description != UNDESCRIBED[1] for column in schema.columns)
    assert {column.name for column in schema.columns if column.type == "int"} == {"tick", "town", "episode"}
    graph = defs.resolve_asset_graph()
    for name in ("replay_manifest", "rollout_dataset"):  # before any materialization, from the definition
        shown = graph.get(dagster.AssetKey(name)).metadata["dagster/column_schema"]
        assert [column.name for column in shown.columns] == list(TELEMETRY_COLUMNS)


def test_a_preview_takes_a_few_rows_of_town_0_and_names_a_column_it_cannot_describe(tmp_path):
    import gzip

    from townlet_pipelines.pipeline.observability import UNDESCRIBED, dataset_preview

    rows = ["tick,town,episode,faints,new_counter"] + [f"{t},{town},{town},{t % 3},1.5" for t in range(40)
                                                       for town in range(2)]
    (tmp_path / "telemetry.csv.gz").write_bytes(gzip.compress("\n".join(rows).encode()))
    preview = dataset_preview(tmp_path)
    assert preview["dagster/row_count"].value == 80 and preview["telemetry_rows"].value == 80.0
    table = preview["telemetry_preview"].value
    assert 2 <= len(table.records) <= 6 and {record.data["town"] for record in table.records} == {0}
    assert table.records[0].data["tick"] == 0 and table.records[-1].data["tick"] == 39  # spread over the capture
    described = {column.name: column.description for column in preview["dagster/column_schema"].value.columns}
    assert described["new_counter"] == UNDESCRIBED[1] and described["faints"] != UNDESCRIBED[1]


def test_both_datasets_show_their_telemetry_schema_a_few_rows_and_float_kpis(two_nights):
    from townlet_pipelines.data.capture import read_telemetry

    second = two_nights["results"][1]  # ppo.data_mode mixed: the champion's rollouts are captured too
    for name in ("replay_manifest", "rollout_dataset"):
        metadata = _metadata(second, name)
        columns = [column.name for column in metadata["dagster/column_schema"].value.columns]
        table = read_telemetry(metadata["path"].value)
        assert columns == list(table.columns) and metadata["dagster/row_count"].value == len(table)
        preview = metadata["telemetry_preview"].value
        assert 2 <= len(preview.records) <= 6 and set(preview.records[0].data) == set(columns)
        for kpi in ("reward_mean", "faints_per_agent_day", "queue_conflicts_per_agent_day", "telemetry_rows"):
            assert isinstance(metadata[kpi], dagster.FloatMetadataValue), (name, kpi)


# ---------------------------------------------------------------------------- TensorBoard (the optional extra)
def test_the_training_steps_link_their_event_files_and_the_command_that_shows_the_night(tmp_path):
    from townlet_pipelines.pipeline.assets import _tensorboard

    bc, night = tmp_path / "cache" / "bc-1", tmp_path / "runs" / "r1"
    assert _tensorboard({"bc": bc, "ppo": night}) == {}  # the extra not installed (or switched off): nothing
    for folder in (bc, night):
        (folder / "tensorboard").mkdir(parents=True)
    linked = _tensorboard({"bc": bc, "ppo": night})
    assert linked["tensorboard"].value == str(night / "tensorboard")
    assert linked["tensorboard_command"] == f"tensorboard --logdir_spec bc:{bc}/tensorboard,ppo:{night}/tensorboard"


def test_the_resource_setting_switches_tensorboard_for_the_steps_and_their_ranks(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import os

    from townlet_pipelines.pipeline.resources import TownletResource
    from townlet_pipelines.training.tensorboard import ENV

    monkeypatch.setenv(ENV, "1")
    off = TownletResource(config_path="smoke", artifacts_root=str(tmp_path), tensorboard=False)
    assert off.settings()["tensorboard"] is False and TownletResource(**off.settings()).tensorboard is False
    off.training_context("r1")
    assert os.environ[ENV] == "0"
    TownletResource(config_path="smoke", artifacts_root=str(tmp_path)).training_context("r2")  # on by default
    assert os.environ[ENV] == "1"
