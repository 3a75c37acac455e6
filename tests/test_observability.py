"""What Dagster's own UI shows without code of ours: owners and tags for the catalog, float metadata for the
Plots tab, dataset previews, a freshness check, and where the TensorBoard files are (the console and CI:
tests/test_observability_console.py; the event files themselves: tests/test_observability_tensorboard.py)."""

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
    from townlet_pipelines.pipeline.definitions import definitions_for

    root = tmp_path_factory.mktemp("artifacts")
    job = definitions_for(str(config)).resolve_job_def("nightly_anneal")  # the tiny profile's own location
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
        for kpi in ("reward_mean", "faints_per_agent_day", "queue_conflict_events_per_agent_day", "telemetry_rows"):
            assert isinstance(metadata[kpi], dagster.FloatMetadataValue), (name, kpi)


# ---------------------------------------------------------------------------- TensorBoard (the optional extra)
def test_the_training_steps_link_their_event_files_and_the_command_that_shows_the_night(tmp_path):
    from townlet_pipelines.nightly.describe import tensorboard
    from townlet_pipelines.nightly.outcome import FilePath
    from townlet_pipelines.pipeline.reporting import metadata_value

    bc, night = tmp_path / "cache" / "bc-1", tmp_path / "runs" / "r1"
    assert tensorboard({"bc": bc, "ppo": night}) == {}  # the extra not installed (or switched off): nothing
    for folder in (bc, night):
        (folder / "tensorboard").mkdir(parents=True)
    linked = tensorboard({"bc": bc, "ppo": night})
    assert isinstance(linked["tensorboard"], FilePath)  # shown as a path in the UI
    assert metadata_value(linked["tensorboard"]).value == str(night / "tensorboard")
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
