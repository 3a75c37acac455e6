"""The Dagster code location against a real (temporary) instance: lineage, guardrails, promotion."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

dagster = pytest.importorskip("dagster")
pytest.importorskip("torch")

from dagster import AssetKey, DagsterInstance, build_schedule_context  # noqa: E402

from tests.test_training import TINY  # noqa: E402
from townlet_pipelines.pipeline.definitions import defs, definitions_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSET_KEYS = {"replay_manifest", "rollout_dataset", "bc_checkpoint", "ppo_checkpoint", "anneal_summary",
              "promoted_policy"}
TINY_KEYS = {f"tiny/{key}" for key in ASSET_KEYS}  # the tests' tiny profile: its own location's keys
GUARDRAILS = {"bc_accuracy_guardrail", "ppo_loss_guardrail", "queue_conflict_guardrail", "expert_guardrail",
              "champion_guardrail"}
NIGHTS = ("2026-11-05", "2026-11-06", "2026-11-07", "2026-11-08")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    import yaml

    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "profile": "tiny"}))
    return path


@pytest.fixture(scope="module")
def tiny_defs(tiny_config):
    """The tiny profile's code location: a profile is part of its assets' keys (pipeline/definitions.py)."""
    return definitions_for(str(tiny_config))


def run_config(config: Path, root: Path, overrides: str = "") -> dict:
    return {"resources": {"townlet": {"config": {"config_path": str(config), "artifacts_root": str(root),
                                                 "overrides": overrides}}}}


@pytest.fixture(scope="module")
def nightly(tiny_config, tiny_defs, tmp_path_factory):
    """Four nights in order on one instance, as a backfill runs them: the first passes (the first release), the
    second has an impossible BC threshold (FAIL), the third and fourth start from the champion and pass, and
    the fourth completes the pass streak of two different nights (the second release)."""
    root = tmp_path_factory.mktemp("artifacts")
    with DagsterInstance.ephemeral() as instance:
        job = tiny_defs.resolve_job_def("nightly_anneal")

        def night(index: int, overrides: str = ""):
            return job.execute_in_process(run_config=run_config(tiny_config, root, overrides), instance=instance,
                                          partition_key=NIGHTS[index], raise_on_error=not overrides)

        first = night(0)
        from townlet_pipelines.config import load_config
        from townlet_pipelines.training.orchestrator import state_dir

        state = state_dir(root, load_config(tiny_config))  # the tiny profile's own namespace
        release = json.loads((state / "promotion.json").read_text())
        promoted_files = {p.relative_to(root): p.read_bytes() for p in (root / "state").rglob("*") if p.is_file()
                          and "releases" in p.parts}
        failed = night(1, "anneal: {bc_accuracy_threshold: 1.01}")
        after_failed = json.loads((state / "promotion.json").read_text())
        files_after_failed = {p.relative_to(root): p.read_bytes() for p in (root / "state").rglob("*")
                              if p.is_file() and "releases" in p.parts}
        rerun = night(2)
        fourth = night(3)
        yield {"instance": instance, "root": root, "first": first, "failed": failed, "release_before": release,
               "promoted_files": promoted_files, "rerun": rerun, "fourth": fourth, "state": state,
               "after_failed": after_failed, "files_after_failed": files_after_failed}


def test_definitions_hold_the_six_assets_the_guardrails_and_no_stray_assets():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == ASSET_KEYS  # a misspelled dep would show up here as an extra external asset
    checks = {key.name for key in graph.asset_check_keys}
    assert GUARDRAILS <= checks and "manifest_verified" in checks
    assert {job.name for job in defs.jobs} >= {"nightly_anneal", "capture_only"}
    upstream = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
                for key in graph.get_all_asset_keys()}
    assert upstream["bc_checkpoint"] == {"replay_manifest"}
    assert upstream["ppo_checkpoint"] == {"bc_checkpoint", "replay_manifest", "rollout_dataset"}
    assert upstream["anneal_summary"] == {"replay_manifest", "bc_checkpoint", "ppo_checkpoint"}
    assert upstream["promoted_policy"] == {"anneal_summary"}
    assert all(graph.get(key).partitions_def is not None for key in graph.get_all_asset_keys())  # nights


def test_nightly_run_materializes_everything_and_every_check_passes(nightly):
    result = nightly["first"]
    assert result.success
    materialized = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    assert materialized == TINY_KEYS
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert GUARDRAILS <= set(evaluations)
    assert all(passed for name, passed in evaluations.items() if name != "action_distribution_sane")
    summary = json.loads((nightly["root"] / "runs" / result.run_id / "anneal_summary.json").read_text())
    assert summary["status"] == "PASS" and summary["promotion_pass_streak"] == 1
    assert nightly["release_before"]["releases"], "the first passing candidate becomes the first release"
    described = {e.check_name: e.description for e in result.get_asset_check_evaluations() if e.check_name in GUARDRAILS}
    assert described["bc_accuracy_guardrail"].startswith("BC validation accuracy") and ">=" in described[
        "bc_accuracy_guardrail"]
    assert "no baseline yet" in described["ppo_loss_guardrail"] or "from the baseline" in described["ppo_loss_guardrail"]
    assert "<= limit" in described["queue_conflict_guardrail"]
    assert described["champion_guardrail"].startswith("no champion yet")
    summary_meta = result.asset_materializations_for_node("anneal_summary")[0].metadata
    assert summary_meta["status"].value == "PASS" and summary_meta["reason"].value == "every guardrail passed"
    for node, key in (("bc_checkpoint", "training_curve_plot"), ("ppo_checkpoint", "training_curve_plot"),
                      ("promoted_policy", "town_day")):  # pictures, inline and small
        picture = result.asset_materializations_for_node(node)[0].metadata[key].value
        assert picture.startswith("![") and "(data:image/svg+xml;base64," in picture and len(picture) < 200_000
    assert "| phase |" in result.asset_materializations_for_node("bc_checkpoint")[0].metadata["training_curve"].value
    held_out = result.asset_materializations_for_node("anneal_summary")[0].metadata
    assert held_out["held_out_comparison"].value.startswith("![held-out comparison](data:image/svg+xml;base64,")
    assert set(held_out["held_out_reward"].value) == {"candidate", "scripted expert", "random"}  # no champion yet
    rerun = nightly["rerun"].asset_materializations_for_node("anneal_summary")[0].metadata
    assert list(rerun["held_out_reward"].value) == ["candidate", "champion", "scripted expert", "random"]
    # The expert's and random's held-out rows depend on the config alone: scored on the first night, read back.
    assert rerun["held_out_reward"].value["scripted expert"] == held_out["held_out_reward"].value["scripted expert"]
    assert len(list((nightly["root"] / "cache").glob("reference-*.json"))) == 1
    # The tiny profile scores 120 ticks, less than its 360-tick day: the report keeps no town-day frames (a
    # partial day is not "over a day"), so `promoted_policy` played the town itself (the picture is checked above).
    record = json.loads((nightly["root"] / "records" / "tiny" / "anneal_summary" / f"{NIGHTS[0]}.json").read_text())
    assert record["town_days"] == {}


def test_lineage_links_each_asset_to_its_inputs(nightly):
    instance = nightly["instance"]
    run_id = nightly["first"].run_id
    for key, parents in (("bc_checkpoint", ["replay_manifest"]),
                         ("ppo_checkpoint", ["bc_checkpoint", "replay_manifest", "rollout_dataset"]),
                         ("anneal_summary", ["replay_manifest", "bc_checkpoint", "ppo_checkpoint"]),
                         ("promoted_policy", ["anneal_summary"])):
        records = instance.fetch_materializations(AssetKey(["tiny", key]), limit=10).records
        record = next(r for r in records if r.run_id == run_id)
        tags = record.asset_materialization.tags or {}
        for parent in parents:  # each input is the same profile's asset
            assert f"dagster/input_event_pointer/tiny/{parent}" in tags, (key, parent)
        if key == "bc_checkpoint":  # data versions come from content: the checkpoint's own id
            metadata = record.asset_materialization.metadata
            assert tags["dagster/data_version"] == metadata["checkpoint_id"].value


def test_metadata_tells_what_was_made(nightly):
    instance = nightly["instance"]
    latest = instance.get_latest_materialization_event(AssetKey(["tiny", "replay_manifest"]))
    manifest = latest.asset_materialization.metadata
    assert manifest["rows"].value > 0 and len(manifest["dataset_identity"].value) == 64
    assert Path(manifest["path"].value, "manifest.json").is_file()
    summary_records = instance.fetch_materializations(AssetKey(["tiny", "anneal_summary"]), limit=1).records
    summary = summary_records[0].asset_materialization.metadata
    assert summary["status"].value == "PASS" and "| cycle | mode |" in summary["stages"].value


def test_a_failed_guardrail_blocks_promotion_and_keeps_the_previous_release(nightly):
    failed, root = nightly["failed"], nightly["root"]
    assert not failed.success
    evaluations = {e.check_name: e for e in failed.get_asset_check_evaluations()}
    assert evaluations["bc_accuracy_guardrail"].passed is False
    assert evaluations["bc_accuracy_guardrail"].metadata["threshold"].value == pytest.approx(1.01)
    materialized = {event.asset_key.to_user_string() for event in failed.get_asset_materialization_events()}
    assert "tiny/bc_checkpoint" in materialized and "tiny/promoted_policy" not in materialized
    assert "tiny/ppo_checkpoint" not in materialized
    after = nightly["after_failed"]
    assert after["current_release_id"] == nightly["release_before"]["current_release_id"]
    assert nightly["files_after_failed"] == nightly["promoted_files"]  # the promoted policy's files are untouched
    statuses = [event.get("status") for event in after["history"] if event.get("kind") == "evaluation"]
    assert statuses == ["PASS", "FAIL"]  # the failed run was recorded (and reset the streak)
    # The verdict is visible from the graph and explained in one line: an observation on anneal_summary, the
    # check's description, and the run's log naming the guardrail that held the candidate.
    observed = [e for e in failed.all_events if e.event_type_value == "ASSET_OBSERVATION"
                and e.asset_key.to_user_string() == "tiny/anneal_summary"]
    metadata = observed[0].event_specific_data.asset_observation.metadata
    assert metadata["status"].value == "FAIL"
    assert "validation accuracy" in metadata["reason"].value and "< threshold 1.01" in metadata["reason"].value
    assert evaluations["bc_accuracy_guardrail"].description.startswith("BC validation accuracy")
    assert "< threshold 1.010" in evaluations["bc_accuracy_guardrail"].description
    failure = failed.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.description.startswith("bc_accuracy_guardrail held the candidate: BC validation accuracy")
    told = [r.user_message for r in nightly["instance"].all_logs(failed.run_id) if r.dagster_event is None]
    assert any(line.startswith("bc_accuracy_guardrail held the candidate: BC validation accuracy") for line in told)


def test_the_schedule_runs_the_night_that_just_ended_at_two_with_its_config_named():
    from datetime import datetime, timezone

    schedule = defs.resolve_schedule_def("nightly_anneal_schedule")
    context = build_schedule_context(scheduled_execution_time=datetime(2026, 11, 25, 2, 0, tzinfo=timezone.utc))
    requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert len(requests) == 1 and requests[0].partition_key == "2026-11-24"
    assert schedule.job_name == "nightly_anneal" and schedule.cron_schedule == "0 2 * * *"
    source = requests[0].run_config["resources"]["townlet"]["config"]["config_path"]  # explicit, never implied
    assert source and requests[0].tags["townlet/config_source"] == source


def test_definitions_import_without_torch():
    code = ("import sys\nsys.modules['torch'] = None\n"
            "from townlet_pipelines.pipeline.definitions import defs\n"
            "print(len(defs.resolve_asset_graph().get_all_asset_keys()))\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert output.strip() == "6"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(base: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables or {}})
                                     .encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def _launch(base: str, night: str, overrides: str = "") -> str:
    run_config_data = {"resources": {"townlet": {"config": {"overrides": overrides}}}} if overrides else {}
    params = {"selector": {"repositoryLocationName": "townlet_pipelines.pipeline.definitions",
                           "repositoryName": "__repository__", "jobName": "nightly_anneal"},
              "runConfigData": run_config_data,
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": night}]}}
    payload = _graphql(base, LAUNCH, {"params": params})["data"]["launchRun"]
    assert payload["__typename"] == "LaunchRunSuccess", payload
    return payload["run"]["runId"]


SHORTEST = ("bc: {epochs: 1, dagger_rounds: 0}\n"
            "anneal: {schedule: [{cycle: 0, mode: bc, epochs: 1}, {cycle: 1, mode: ppo, epochs: 1}], "
            "bc_accuracy_threshold: 0.0, loss_tolerance: 100.0, queue_tolerance: 100.0, intensity_tolerance: 100.0}")


def _wait(what, timeout: float, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what.__doc__ or what}")


def test_dagster_dev_serves_the_graph_and_recovers_from_a_killed_run(tmp_path, tiny_config):
    """The UI's asset graph; then a nightly killed with SIGKILL mid-training is failed by run monitoring,
    its `gpu` pool slot is freed, and the next nightly completes (no person involved)."""
    import yaml
    from dagster import DagsterEventType, DagsterRunStatus

    port = _free_port()
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), TOWNLET_ARTIFACTS=str(tmp_path / "artifacts"),
               TOWNLET_CONFIG=str(tiny_config))
    instance_yaml = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    instance_yaml["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=1)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    dagster_bin = Path(sys.executable).parent / "dagster"
    process = subprocess.Popen([str(dagster_bin), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1",
                                "-p", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def served():
            """dagster dev answering"""
            assert process.poll() is None, "dagster dev exited"
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                return True
            except OSError:
                return False

        _wait(served, 90, every=1)
        query = "{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } }"
        nodes = _wait(lambda: (_graphql(base, query).get("data") or {}).get("assetNodes"), 90, every=1)
        keys = {"/".join(node["assetKey"]["path"]) for node in nodes}
        checks = {check["name"] for node in nodes for check in node["assetChecksOrError"].get("checks", [])}
        assert keys == TINY_KEYS  # the location of $TOWNLET_CONFIG's profile
        assert GUARDRAILS <= checks

        with DagsterInstance.from_config(str(tmp_path)) as instance:
            first = _launch(base, NIGHTS[0])

            def training():
                """the first run's bc_checkpoint step to start"""
                return any(event.step_key == "bc_checkpoint"
                           for event in instance.all_logs(first, of_type=DagsterEventType.STEP_START))

            _wait(training, 120)
            started = [event for event in instance.all_logs(first, of_type=DagsterEventType.ENGINE_EVENT)
                       if (event.message or "").startswith("Started process for run")]
            os.kill(int(started[-1].dagster_event.engine_event_data.metadata["pid"].value), signal.SIGKILL)
            second = _launch(base, NIGHTS[1], SHORTEST)  # the shortest nightly: it only has to get past the pool

            def finished():
                """the second run to finish"""
                run = instance.get_run_by_id(second)
                return run.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE) and run

            assert _wait(finished, 240, every=1).status == DagsterRunStatus.SUCCESS
            assert instance.get_run_by_id(first).status == DagsterRunStatus.FAILURE
            # Whoever noticed first failed it: the code server that spawned the worker (while it lives), or run
            # monitoring through MonitoredRunLauncher (also when the code server died with it).
            told = " ".join(event.message or "" for event in instance.all_logs(first))
            assert "is gone" in told or f"Run execution process for {first}" in told
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_rerun_with_unchanged_inputs_reuses_the_dataset_and_the_bc_stages(nightly):
    def metadata(result, key):
        event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == key)
        return {name: value.value for name, value in event.materialization.metadata.items()}

    first, failed, rerun = nightly["first"], nightly["failed"], nightly["rerun"]
    assert metadata(first, "replay_manifest")["reused"] is False
    assert metadata(failed, "replay_manifest")["reused"] is True  # same data, another threshold
    assert metadata(failed, "bc_checkpoint")["reused"] is False  # the threshold is part of BC's key
    assert metadata(rerun, "bc_checkpoint")["reused"] is True
    assert metadata(rerun, "bc_checkpoint")["checkpoint_id"] == metadata(first, "bc_checkpoint")["checkpoint_id"]
    assert rerun.success


def test_training_assets_ask_for_a_gpu_and_share_one_pool():
    from townlet_pipelines.pipeline.assets import bc_checkpoint, ppo_checkpoint, replay_manifest

    for training_asset in (bc_checkpoint, ppo_checkpoint):
        k8s = json.loads(training_asset.op.tags["dagster-k8s/config"])
        assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert training_asset.op.pool == "gpu"
    assert replay_manifest.op.pool is None  # capture is CPU work
    instance_yaml = (ROOT / "dagster_home" / "dagster.yaml").read_text()
    assert "default_limit: 1" in instance_yaml


def test_a_users_mistake_fails_the_step_with_the_clis_one_line_sentence(tiny_config, tiny_defs, tmp_path):
    from townlet_pipelines.config import ConfigError, config_from_mapping
    from townlet_pipelines.errors import one_line

    with DagsterInstance.ephemeral() as instance:
        result = tiny_defs.resolve_job_def("capture_only").execute_in_process(
            run_config=run_config(tiny_config, tmp_path, "bc: {val_fraction: 0}"), instance=instance,
            partition_key=NIGHTS[0], raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    with pytest.raises(ConfigError) as expected:
        config_from_mapping({"bc": {"val_fraction": 0}}, f"{tiny_config} + overrides")
    assert failure.user_failure_data.description == one_line(expected.value)  # what `townlet` would print
    assert "bc.val_fraction: Input should be greater than 0" in failure.user_failure_data.description


def test_the_launcher_tells_a_dead_run_worker_from_a_live_one():
    from dagster import DagsterRun
    from dagster._core.events import EngineEventData
    from dagster._core.launcher import WorkerStatus

    from townlet_pipelines.pipeline.launcher import MonitoredRunLauncher

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with DagsterInstance.ephemeral() as instance:
        launcher = MonitoredRunLauncher()
        launcher.register_instance(instance)
        verdicts = []
        for pid in (None, os.getpid(), gone.pid):
            run = instance.add_run(DagsterRun(job_name="nightly_anneal", run_id=f"run-{pid}"))
            if pid is not None:
                instance.report_engine_event(f"Started process for run (pid: {pid}).", run,
                                             EngineEventData.in_process(pid))
            verdicts.append(launcher.check_run_worker_health(run))
    assert [verdict.status for verdict in verdicts] == [WorkerStatus.RUNNING, WorkerStatus.RUNNING,
                                                        WorkerStatus.FAILED]
    assert f"pid {gone.pid} is gone" in verdicts[2].msg


def test_rollouts_are_captured_only_when_ppo_trains_on_them_and_each_dataset_is_verified_once(nightly, tiny_config,
                                                                                             tiny_defs):
    first = nightly["first"]
    rollout = first.asset_materializations_for_node("rollout_dataset")[0].metadata
    assert rollout["captured"].value is False and "ppo.data_mode is rollout" in rollout["reason"].value
    with DagsterInstance.ephemeral() as instance:  # on the nightly's root, where a release exists
        result = tiny_defs.resolve_job_def("capture_only").execute_in_process(
            run_config=run_config(tiny_config, nightly["root"], "ppo: {data_mode: mixed}"), instance=instance,
            partition_key="2026-11-09")  # a night of its own: the four nights' records stay
    captured = result.asset_materializations_for_node("rollout_dataset")[0].metadata
    assert captured["captured"].value is True and captured["rows"].value > 0
    release = json.loads((nightly["state"] / "promotion.json").read_text())["current_release_id"]
    assert captured["release"].value == release and captured["generator"].value.startswith("checkpoint ")
    checks = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert checks[("rollout_dataset", "manifest_verified")].passed
    assert checks[("rollout_dataset", "manifest_verified")].metadata["rows"].value == captured["rows"].value
    rerun = nightly["rerun"]  # the expert dataset came from the cache: verified in full once, by the asset
    verified = [e for e in rerun.get_asset_check_evaluations() if e.asset_key.path[-1] == "replay_manifest"
                and e.check_name == "manifest_verified"][0]
    assert verified.passed and verified.metadata["verified_by"].value == "the cache"
    assert verified.description == "verified in full before reuse"


def test_the_failure_sensor_is_on_and_records_in_the_failed_runs_own_store(nightly):
    from dagster import DagsterEventType, DefaultSensorStatus, build_run_status_sensor_context

    from townlet_pipelines.pipeline.definitions import record_failed_runs

    assert record_failed_runs.default_status == DefaultSensorStatus.RUNNING
    failed, instance = nightly["failed"], nightly["instance"]
    event = next(e for e in failed.all_events if e.event_type == DagsterEventType.RUN_FAILURE)
    context = build_run_status_sensor_context(sensor_name="record_failed_runs", dagster_event=event,
                                              dagster_instance=instance, dagster_run=failed.dagster_run)
    record_failed_runs(context.for_run_failure())
    # The run's own artifacts root (a temporary one here), not the default dagster_home/artifacts.
    history = json.loads((nightly["state"] / "promotion.json").read_text())["history"]
    assert history[-1]["kind"] == "failure" and history[-1]["run_id"] == failed.run_id


def test_assets_name_their_config_and_carry_the_code_version_of_their_own_sources(nightly, tmp_path):
    from townlet_pipelines.pipeline.assets import CODE_VERSIONS, MAKERS, code_version_of

    for key in ASSET_KEYS:
        metadata = nightly["first"].asset_materializations_for_node(key)[0].metadata
        assert metadata["profile"].value == "tiny" and metadata["config_source"].value.endswith("tiny.yaml")
        assert len(metadata["config_hash"].value) == 12 and metadata["night"].value == NIGHTS[0]
    tags = nightly["instance"].get_run_by_id(nightly["first"].run_id).tags  # the run names them too
    assert tags["townlet/profile"] == "tiny" and tags["townlet/config_source"].endswith("tiny.yaml")
    assert tags["townlet/config_hash"] == metadata["config_hash"].value and tags["townlet/night"] == NIGHTS[0]
    graph = defs.resolve_asset_graph()
    versions = {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()}
    assert versions == CODE_VERSIONS and len(set(versions.values())) >= 4 and "1" not in versions.values()
    package = tmp_path / "package"  # a change to one source file marks exactly the assets it makes stale
    for relative in ("pipeline/assets.py", "training/bc.py", "data/promotion.py"):
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text("x = 1\n")
    before = {name: code_version_of(patterns, package) for name, patterns in MAKERS.items()}
    (package / "training/bc.py").write_text("x = 2\n")
    after = {name: code_version_of(patterns, package) for name, patterns in MAKERS.items()}
    assert {name for name in MAKERS if before[name] != after[name]} == {"bc_checkpoint", "ppo_checkpoint"}


def test_training_progress_reaches_the_run_log_while_the_step_runs(nightly):
    records = nightly["instance"].all_logs(nightly["first"].run_id)

    def position(step: str, event: str) -> int:
        return next(i for i, r in enumerate(records) if r.step_key == step and r.dagster_event is not None
                    and r.dagster_event.event_type_value == event)

    for step, marker in (("bc_checkpoint", "bc "), ("ppo_checkpoint", "ppo cycle")):
        lines = [(i, r.user_message) for i, r in enumerate(records)
                 if r.step_key == step and r.dagster_event is None and r.user_message.startswith(marker)]
        assert lines, f"no progress lines from {step}"
        start, end = position(step, "STEP_START"), position(step, "STEP_SUCCESS")
        assert all(start < i < end for i, _ in lines)  # logged while the step ran, not after
    bc_lines = [r.user_message for r in records if r.step_key == "bc_checkpoint" and r.dagster_event is None]
    assert any("[dagger 1.0]" in line and "val_acc" in line for line in bc_lines)  # phases are named
    ppo_lines = [r.user_message for r in records if r.step_key == "ppo_checkpoint" and r.dagster_event is None]
    assert any("kl " in line for line in ppo_lines) and any("validation after update" in line for line in ppo_lines)


def test_each_night_starts_from_the_champion_and_the_streak_of_different_nights_promotes(nightly):
    """The backfill of the fixture's nights: night 1 makes the first release; nights 3 and 4 start from it, train
    on towns of their own (different candidates), are no worse than it, and night 4 completes the streak of two
    different nights, so it is promoted if it also scored more than the champion; each step read its own night's
    records."""
    def summary(result) -> dict:
        return json.loads((nightly["root"] / "runs" / result.run_id / "anneal_summary.json").read_text())

    first, third, fourth = summary(nightly["first"]), summary(nightly["rerun"]), summary(nightly["fourth"])
    release = nightly["release_before"]["releases"][0]
    assert first["champion"] is None and "no release yet" in first["started_from"]
    for night, result in ((third, nightly["rerun"]), (fourth, nightly["fourth"])):
        assert night["started_from"].startswith(release["checkpoint_id"])
        assert night["champion"]["release_id"] == release["release_id"] and night["status"] == "PASS"
        evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert evaluation["champion_guardrail"].passed and "vs champion" in evaluation["champion_guardrail"].description
    candidates = {first["final_checkpoint_id"], third["final_checkpoint_id"], fourth["final_checkpoint_id"]}
    assert len(candidates) == 3  # new towns each night: three different candidates of one recipe
    assert first["candidate_id"] == third["candidate_id"] == fourth["candidate_id"]
    assert (third["night"], fourth["night"]) == (NIGHTS[2], NIGHTS[3])
    state = json.loads((nightly["state"] / "promotion.json").read_text())
    promoted = nightly["fourth"].asset_materializations_for_node("promoted_policy")[0].metadata
    # night 4 completes the streak of two different nights; it is released only if it also beat the champion
    if fourth["champion"]["difference"] > 0:
        assert [r["checkpoint_id"] for r in state["releases"]] == [first["final_checkpoint_id"],
                                                                   fourth["final_checkpoint_id"]]
        assert promoted["promoted_this_run"].value is True and "pass streak" in promoted["reason"].value
    else:
        assert [r["checkpoint_id"] for r in state["releases"]] == [first["final_checkpoint_id"]]
        assert promoted["promoted_this_run"].value is False and "must improve" in promoted["reason"].value
    for result, night in ((nightly["rerun"], NIGHTS[2]), (nightly["fourth"], NIGHTS[3])):
        for key in ("bc_checkpoint", "ppo_checkpoint", "anneal_summary"):
            record = json.loads((nightly["root"] / "records" / "tiny" / key / f"{night}.json").read_text())
            assert record["run_id"] == result.run_id and record["night"] == night


def test_a_rerun_of_a_night_is_recorded_but_does_not_lengthen_the_streak(tmp_path):
    from townlet_pipelines.data.promotion import PromotionStore

    store = PromotionStore(tmp_path, required_passes=2)
    store.record_evaluation("c", "PASS", {}, {"checkpoint_id": "a"}, run_id="r1", night=NIGHTS[0])
    again = store.record_evaluation("c", "PASS", {}, {"checkpoint_id": "b"}, run_id="r2", night=NIGHTS[0])
    assert again.pass_streak == 1 and again.state == "monitoring"
    store.record_failure("r3", "killed")  # a crash judged nothing
    assert store.record_evaluation("c", "PASS", {}, {"checkpoint_id": "c"}, run_id="r4",
                                   night=NIGHTS[0]).pass_streak == 1
    ready = store.record_evaluation("c", "PASS", {}, {"checkpoint_id": "d"}, run_id="r5", night=NIGHTS[1])
    assert ready.pass_streak == 2 and ready.state == "ready"
    assert len(store.history()) == 5
