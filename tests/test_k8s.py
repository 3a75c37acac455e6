"""Kubernetes, checked offline: deploy/ parses, agrees with the code location and the local instance, and the
Kubernetes Jobs dagster-k8s would create from it carry the GPU, the image, the command and the artifacts volume.

No cluster is reachable here. The Jobs are built by dagster-k8s's own code, fed with the definitions and with
deploy/: the K8sRunLauncher (configured from deploy/helm/values.yaml) launches a run and the k8s_job_executor
(configured from deploy/k8s/step-executor.yaml) launches steps, against a mocked Kubernetes API whose only
role is to receive the Job body. What Kubernetes, the NVIDIA device plugin and the chart's templates then do
with it is not tested: the chart's two helpers that turn values into launcher config and container context
are translated by hand below (`run_launcher_config`, `container_context`), for the keys deploy/ uses.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tomllib
import zlib
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

dagster_k8s = pytest.importorskip(
    "dagster_k8s", reason="dagster-k8s is not installed (pip install -c constraints.txt -e '.[dev]' brings it)")

import dagster  # noqa: E402
from dagster import DagsterRun  # noqa: E402
from dagster._config import process_config  # noqa: E402
from dagster._core.code_pointer import ModuleCodePointer  # noqa: E402
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository  # noqa: E402
from dagster._core.execution.api import create_execution_plan  # noqa: E402
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext  # noqa: E402
from dagster._core.execution.context_creation_job import create_context_free_log_manager  # noqa: E402
from dagster._core.executor.init import InitExecutorContext  # noqa: E402
from dagster._core.executor.step_delegating import StepHandlerContext  # noqa: E402
from dagster._core.launcher import LaunchRunContext  # noqa: E402
from dagster._core.origin import DEFAULT_DAGSTER_ENTRY_POINT, JobPythonOrigin, RepositoryPythonOrigin  # noqa: E402
from dagster._core.test_utils import instance_for_test  # noqa: E402
from dagster._core.utils import make_new_run_id  # noqa: E402
from dagster._grpc.types import ExecuteStepArgs  # noqa: E402
from dagster._serdes import deserialize_value  # noqa: E402
from dagster_k8s import K8sRunLauncher, k8s_job_executor  # noqa: E402
from dagster_k8s.client import DagsterKubernetesClient  # noqa: E402
import kubernetes.client  # noqa: E402
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict  # noqa: E402
from kubernetes.client import ApiClient  # noqa: E402

from townlet_pipelines.pipeline.assets import GPU_OP_TAGS, GPU_POOL  # noqa: E402
from townlet_pipelines.pipeline.definitions import defs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
STEP_EXECUTOR = yaml.safe_load((DEPLOY / "k8s" / "step-executor.yaml").read_text())
PVC = yaml.safe_load((DEPLOY / "k8s" / "artifacts-pvc.yaml").read_text())
INSTANCE = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
MODULE = "townlet_pipelines.pipeline.definitions"
RELEASE, NAMESPACE = "dagster", "townlet"  # deploy/README.md: helm upgrade --install dagster ... -n townlet
GPU = "nvidia.com/gpu"
TRAINING, OTHER = ("bc_checkpoint", "ppo_checkpoint"), "replay_manifest"


def code_location() -> dict:
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    return deployment


def image() -> str:
    return f"{code_location()['image']['repository']}:{code_location()['image']['tag']}"


def container_context() -> dict:
    """What the chart's `dagsterUserDeployments.k8sContainerContext` helper hands the code server (and so every
    run it launches, includeConfigInLaunchedRuns), for the keys deploy/helm/values.yaml sets."""
    deployment = code_location()
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    return {"k8s": {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE}-{deployment['name']}-user-env"],
        "volume_mounts": deployment["volumeMounts"],
        "volumes": deployment["volumes"],
        "namespace": NAMESPACE,
        "service_account_name": f"{RELEASE}-user-deployments",
        "env": deployment["env"],
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }}


def run_launcher_config() -> dict:
    """The K8sRunLauncher block the chart's `dagsterYaml.runLauncher.k8s` helper writes into the instance's
    dagster.yaml (its `env:` sources resolved to the values the chart gives those variables)."""
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    config = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": RELEASE,
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": VALUES["global"]["postgresqlSecretName"],
        "env_config_maps": [f"{RELEASE}-pipeline-env", *(m["name"] for m in k8s.get("envConfigMaps", []))],
    }
    for key, name in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes"),
                      ("labels", "labels"), ("resources", "resources")):
        if k8s.get(key):
            config[name] = k8s[key]
    if k8s.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in k8s["envSecrets"]]
    if k8s.get("runK8sConfig"):
        names = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
                 "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
                 "jobMetadata": "job_metadata"}
        config["run_k8s_config"] = {names[k]: v for k, v in k8s["runK8sConfig"].items()}
    return config


@pytest.fixture(scope="module")
def cluster():
    """An instance whose run launcher is the K8sRunLauncher of the Helm values, the k8s_job_executor of
    deploy/k8s/step-executor.yaml, nightly_anneal's execution plan and a run of it as the code server would
    record it (image and container context from the Helm values). Kubernetes itself is a mock."""
    with make_cluster(STEP_EXECUTOR["execution"]["config"]) as made:
        yield made


@contextlib.contextmanager
def make_cluster(execution_config: dict):
    """`cluster`, with the k8s_job_executor configured from `execution_config` (a run config's
    `execution.config`)."""
    api = mock.MagicMock(name="kubernetes API")
    with mock.patch("kubernetes.config.load_incluster_config"), mock.patch("kubernetes.config.load_kube_config"), \
            mock.patch.object(DagsterKubernetesClient, "production_client", return_value=api), \
            instance_for_test(overrides={"run_launcher": {
                "module": "dagster_k8s", "class": "K8sRunLauncher", "config": run_launcher_config()}}) as instance:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        pointer = ModuleCodePointer(MODULE, "defs", working_directory=None)
        recon = ReconstructableJob(ReconstructableRepository(pointer), "nightly_anneal")
        origin = JobPythonOrigin("nightly_anneal", RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python", code_pointer=pointer, container_image=image(),
            container_context=container_context(), entry_point=DEFAULT_DAGSTER_ENTRY_POINT))
        executor_config = process_config(k8s_job_executor.config_schema.config_type, execution_config)
        assert executor_config.success, executor_config.errors
        executor = k8s_job_executor.executor_creation_fn(InitExecutorContext(
            job=recon, executor_def=k8s_job_executor, executor_config=executor_config.value, instance=instance))
        job = defs.resolve_job_def("nightly_anneal")
        plan = create_execution_plan(job)
        run = instance.add_run(DagsterRun(job_name="nightly_anneal", run_id=make_new_run_id(),
                                          job_code_origin=origin, tags={"dagster/partition": "2026-11-02"}))
        plan_context = PlanOrchestrationContext(
            plan_data=PlanData(job=recon, dagster_run=run, instance=instance, execution_plan=plan),
            log_manager=create_context_free_log_manager(instance, run), executor=executor, output_capture=None)
        yield SimpleNamespace(api=api, instance=instance, origin=origin, executor=executor, plan=plan, run=run,
                              plan_context=plan_context)


def created_job(cluster):
    """The Job the launcher or executor handed the Kubernetes API, as the JSON the API server receives (the
    kubernetes client's own serialization: camelCase, no unset fields), and its namespace."""
    call = cluster.api.create_namespaced_job_with_retries.call_args
    return ApiClient().sanitize_for_serialization(call.kwargs["body"]), call.kwargs["namespace"]


def launch_step(cluster, step_key: str):
    cluster.api.reset_mock()
    context = StepHandlerContext(
        instance=cluster.instance, plan_context=cluster.plan_context, steps=cluster.plan.steps,
        execute_step_args=ExecuteStepArgs(cluster.origin, cluster.run.run_id, [step_key]),
        dagster_run=cluster.run)
    list(cluster.executor._step_handler.launch_step(context))  # the K8sStepHandler the executor config made
    return created_job(cluster)


def launch_run(cluster, tags: dict[str, str]):
    cluster.api.reset_mock()
    run = cluster.instance.add_run(DagsterRun(job_name="nightly_anneal", run_id=make_new_run_id(),
                                              job_code_origin=cluster.origin, tags=tags))
    cluster.instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return created_job(cluster)


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container["env"]}


def limits_of(container: dict) -> dict:
    return container.get("resources", {}).get("limits", {})


def assert_shared_artifacts(pod: dict, container: dict) -> None:
    """The code location's env and artifacts volume reach the pod (includeConfigInLaunchedRuns)."""
    env = env_of(container)
    for item in code_location()["env"]:
        assert env[item["name"]]["value"] == item["value"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "townlet-artifacts"]
    assert mount["mountPath"] == env["TOWNLET_ARTIFACTS"]["value"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "townlet-artifacts"]
    assert volume["persistentVolumeClaim"]["claimName"] == PVC["metadata"]["name"]
    password = env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": VALUES["global"]["postgresqlSecretName"], "key": "postgresql-password"}


# ---- the files in deploy/ ----

def test_the_deploy_yaml_files_parse():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 3
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), path


def test_the_kubernetes_manifests_fit_the_kubernetes_models():
    """Each manifest in deploy/k8s/ converts into the kubernetes client's model of its kind, field by field
    (dagster-k8s's strict converter rejects unknown keys); the API server's own validation is not run."""
    manifests = [d for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text()) if d and "kind" in d]
    assert [m["kind"] for m in manifests] == ["PersistentVolumeClaim"]
    for manifest in manifests:
        model = getattr(kubernetes.client, manifest["apiVersion"].split("/")[-1].capitalize() + manifest["kind"])
        parsed = k8s_model_from_dict(model, k8s_snake_case_dict(model, manifest))
        assert parsed.metadata.name == manifest["metadata"]["name"]


def test_the_helm_values_serve_this_code_location_from_the_image():
    deployment = code_location()
    assert image() == "registry.example.com/townlet-pipelines:1.0"
    assert deployment["dagsterApiGrpcArgs"] == ["-m", MODULE]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert [entry["python_module"]["module_name"] for entry in workspace["load_from"]] == [MODULE]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert set(env) >= {"TOWNLET_ARTIFACTS", "TOWNLET_CONFIG"}
    assert [m["mountPath"] for m in deployment["volumeMounts"]] == [env["TOWNLET_ARTIFACTS"]]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]]
    assert claims == [PVC["metadata"]["name"]] and PVC["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_helm_values_name_postgres_as_the_instance_storage():
    pg = VALUES["postgresql"]
    assert pg["postgresqlHost"] and pg["postgresqlUsername"] and pg["postgresqlDatabase"]
    assert pg["service"]["port"] == 5432
    # the same psycopg2 driver as the team block of dagster_home/dagster.yaml (a comment there)
    assert f"scheme: {pg['postgresqlScheme']}" in (ROOT / "dagster_home" / "dagster.yaml").read_text()
    assert VALUES["generatePostgresqlPasswordSecret"] is False and VALUES["global"]["postgresqlSecretName"]


def test_the_helm_values_keep_the_queue_pools_and_run_monitoring_of_dagster_yaml():
    runs, pools = VALUES["concurrency"]["runs"], VALUES["concurrency"]["pools"]
    assert VALUES["concurrency"]["enabled"]
    assert runs["maxConcurrentRuns"] == INSTANCE["concurrency"]["runs"]["max_concurrent_runs"]
    assert runs["tagConcurrencyLimits"] == INSTANCE["concurrency"]["runs"]["tag_concurrency_limits"]
    assert pools["defaultLimit"] == INSTANCE["concurrency"]["pools"]["default_limit"]
    daemon = VALUES["dagsterDaemon"]
    assert daemon["runCoordinator"] == {"enabled": True, "type": "QueuedRunCoordinator"}
    assert daemon["runMonitoring"]["enabled"] == INSTANCE["run_monitoring"]["enabled"] is True
    assert daemon["runMonitoring"]["pollIntervalSeconds"] == INSTANCE["run_monitoring"]["poll_interval_seconds"]
    assert (daemon["runMonitoring"]["freeSlotsAfterRunEndSeconds"]
            == INSTANCE["run_monitoring"]["free_slots_after_run_end_seconds"])


def test_the_helm_run_launcher_config_is_valid_k8s_run_launcher_config():
    result = process_config(K8sRunLauncher.config_type(), run_launcher_config())
    assert result.success, result.errors
    # no GPU at run level: dagster-k8s would merge it into every step pod (see the step tests below)
    assert GPU not in json.dumps(VALUES["runLauncher"])


def test_the_image_installs_the_pinned_dagster_k8s():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'pip install -c constraints.txt ".[postgres,k8s]"' in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("dagster-k8s") for r in extras["k8s"])
    assert any(r.startswith("dagster-k8s") for r in extras["dev"])
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["dagster"] == dagster.__version__ == "1.13.27"
    assert pins["dagster-k8s"] == dagster_k8s.__version__ == "0.29.27"


# ---- the definitions: what the step pods are built from ----

def test_the_training_steps_carry_the_gpu_tag_and_pool():
    graph = defs.resolve_asset_graph()
    for name in (*TRAINING, OTHER):
        node = graph.get(dagster.AssetKey(name))
        op = node.assets_def.op
        tags = json.loads(op.tags.get("dagster-k8s/config", "{}"))
        limits = tags.get("container_config", {}).get("resources", {}).get("limits", {})
        if name in TRAINING:
            assert limits == {GPU: "1"} and tags == GPU_OP_TAGS["dagster-k8s/config"]
            assert op.pool == GPU_POOL == "gpu"
        else:
            assert limits == {} and op.pool is None


def test_the_execution_plan_keeps_the_pool_on_the_training_steps(cluster):
    pools = {step.key: step.pool for step in cluster.plan.steps}
    assert {key: pools[key] for key in (*TRAINING, OTHER)} == {**dict.fromkeys(TRAINING, "gpu"), OTHER: None}


# ---- the Kubernetes Jobs dagster-k8s builds ----

@pytest.mark.parametrize("step_key", [*TRAINING, OTHER])
def test_each_step_becomes_a_kubernetes_job_with_its_gpu_image_and_command(cluster, step_key):
    job, namespace = launch_step(cluster, step_key)
    assert namespace == NAMESPACE
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    gpu_toleration = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
    if step_key in TRAINING:
        assert limits_of(container) == {GPU: "1"}
        assert gpu_toleration in pod["tolerations"]
    else:
        assert GPU not in limits_of(container) and gpu_toleration not in pod.get("tolerations", [])
    assert container["image"] == image()
    assert container["args"] == ["dagster", "api", "execute_step"] and "command" not in container
    step_args = deserialize_value(zlib.decompress(base64.b64decode(
        env_of(container)["DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS"]["value"])).decode(), ExecuteStepArgs)
    assert step_args.step_keys_to_execute == [step_key] and step_args.run_id == cluster.run.run_id
    assert step_args.job_origin.repository_origin.code_pointer.module == MODULE
    assert job["spec"]["template"]["metadata"]["labels"]["dagster/op"] == step_key
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert_shared_artifacts(pod, container)


def test_a_run_pod_gets_image_command_and_artifacts_but_not_the_training_gpu(cluster):
    """The run launcher reads run tags, never op tags: with the in-process executor (TOWNLET_EXECUTOR unset) the
    training steps run in this pod, which requests no GPU unless the run is tagged for one (next test)."""
    job, namespace = launch_run(cluster, tags={"dagster/partition": "2026-11-02"})
    assert namespace == NAMESPACE
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image()
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert GPU not in limits_of(container)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "run_worker"
    assert_shared_artifacts(pod, container)


def test_a_run_tagged_with_the_training_k8s_config_gets_a_gpu_pod(cluster):
    tag = {"dagster-k8s/config": json.dumps(GPU_OP_TAGS["dagster-k8s/config"])}
    job, _ = launch_run(cluster, tags={"dagster/partition": "2026-11-02", **tag})
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert limits_of(container) == {GPU: "1"}
    assert container["image"] == image()


def test_the_code_location_picks_the_k8s_job_executor_where_the_helm_values_say_so():
    """TOWNLET_EXECUTOR=k8s (the Helm values' env): both jobs run a pod per step; unset: in-process."""
    import subprocess
    import sys

    env_var = next(item for item in VALUES["dagster-user-deployments"]["deployments"][0]["env"]
                   if item["name"] == "TOWNLET_EXECUTOR")
    code = ("from townlet_pipelines.pipeline.definitions import defs\n"
            "print(*(defs.resolve_job_def(name).executor_def.name for name in ('nightly_anneal', 'capture_only')))")
    for value, expected in ((env_var["value"], "k8s"), (None, "in_process")):
        env = {key: item for key, item in os.environ.items() if key != "TOWNLET_EXECUTOR"}
        if value is not None:
            env["TOWNLET_EXECUTOR"] = value
        printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=env, cwd=ROOT).stdout.split()
        assert printed == [expected, expected]


def test_a_multi_process_step_on_kubernetes_is_a_pod_with_one_gpu_per_rank(tmp_path, monkeypatch):
    """Pipes on Kubernetes (`pipes_image`): the training step's torchrun is a pod built by dagster-k8s's own
    build_pod_body from what the asset hands PipesK8sClient: the image, torchrun with N processes, N GPUs in
    the limits, and the artifacts claim mounted at the root's own path."""
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.pipes import build_pod_body
    from kubernetes.client import ApiClient

    from townlet_pipelines.pipeline.pipes import trained_in_processes as _trained_in_processes
    from townlet_pipelines.pipeline.resources import TownletResource

    handed = {}
    monkeypatch.setattr(PipesK8sClient, "run", lambda self, **kwargs: handed.update(kwargs))
    townlet = TownletResource(config_path="smoke", artifacts_root=str(tmp_path), processes=2,
                              pipes_image="registry.example.com/townlet-pipelines:1.0")
    context = SimpleNamespace(log=SimpleNamespace(info=lambda message: None), run=SimpleNamespace(run_id="r1"),
                              partition_key="2026-11-05")
    record = _trained_in_processes(context, townlet, {"kind": "ppo", "record": str(tmp_path / "ppo_stages.json")})
    assert record == tmp_path / "ppo_stages.json"
    assert handed["extras"]["resource"]["artifacts_root"] == str(tmp_path) and handed["extras"]["night"] == "2026-11-05"
    pod = ApiClient().sanitize_for_serialization(build_pod_body(
        "townlet-step", handed["image"], handed["command"], {}, None, handed["base_pod_spec"]))
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example.com/townlet-pipelines:1.0"
    assert container["command"][:4] == ["torchrun", "--standalone", "--nproc-per-node", "2"]
    assert container["command"][-2:] == ["-m", "townlet_pipelines.pipeline.distributed_step"]
    assert container["resources"]["limits"][GPU] == "2"
    assert container["volumeMounts"] == [{"mountPath": str(tmp_path), "name": "townlet-artifacts"}]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "townlet-artifacts"
    assert pod["spec"]["restartPolicy"] == "Never"


# ---- GPU requests add up to what runs (issue 21 item 3) ----

SCHEDULED = """
import json
from datetime import datetime, timezone
from dagster import build_schedule_context
from dagster._config import process_config
from townlet_pipelines.pipeline.definitions import RUN_CONFIG, defs
schedule = defs.resolve_schedule_def("nightly_anneal_schedule")
with build_schedule_context(scheduled_execution_time=datetime(2026, 11, 6, 2, 0, tzinfo=timezone.utc)) as context:
    (request,) = schedule.evaluate_tick(context).run_requests
for name in ("nightly_anneal", "capture_only"):  # the jobs' own run config passes their config schema
    job = defs.resolve_job_def(name)
    checked = process_config(job.run_config_schema.run_config_schema_type, RUN_CONFIG)
    assert checked.success, checked.errors
print(json.dumps(request.run_config))
"""


def scheduled_run_config(executor: str | None) -> dict:
    """The run config of the 02:00 schedule's run request, from the code location as it loads with
    TOWNLET_EXECUTOR=executor (a subprocess: the executor is chosen when definitions.py is imported)."""
    import subprocess
    import sys

    env = {key: item for key, item in os.environ.items() if key != "TOWNLET_EXECUTOR"}
    if executor is not None:
        env["TOWNLET_EXECUTOR"] = executor
    done = subprocess.run([sys.executable, "-c", SCHEDULED], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_scheduled_nights_carry_the_gpu_toleration_to_the_training_pods():
    """Before, deploy/k8s/step-executor.yaml's tolerations were only in that file: the schedule's run request held
    the townlet resource alone, so a scheduled night's training pods could not land on tainted GPU nodes. Now the
    code location under the Helm values' executor puts the block in both jobs' run config (the schedule's with
    it), and the step pods dagster-k8s builds from the scheduled run config tolerate the taint."""
    from townlet_pipelines.pipeline.distributed_step import k8s_execution_config

    env_var = next(item for item in code_location()["env"] if item["name"] == "TOWNLET_EXECUTOR")
    run_config = scheduled_run_config(env_var["value"])
    assert run_config["execution"] == STEP_EXECUTOR["execution"]  # the file says what the code location sends
    assert run_config["execution"] == k8s_execution_config(run_config["resources"]["townlet"]["config"])
    toleration = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
    with make_cluster(run_config["execution"]["config"]) as scheduled:
        for step_key in (*TRAINING, OTHER):
            job, _ = launch_step(scheduled, step_key)
            pod = job["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            if step_key in TRAINING:
                assert toleration in pod["tolerations"] and limits_of(container) == {GPU: "1"}
            else:
                assert toleration not in pod.get("tolerations", []) and GPU not in limits_of(container)
    assert "execution" not in scheduled_run_config(None)  # in-process: no k8s block (its schema would refuse one)


@pytest.mark.parametrize("processes, pipes_image", [(1, None), (2, None), (2, "registry.example.com/townlet:1.0"),
                                                    (1, "registry.example.com/townlet:1.0")])
def test_the_gpus_a_training_step_asks_for_add_up_to_the_processes_it_runs(processes, pipes_image, tmp_path,
                                                                           monkeypatch):
    """The step pod (k8s_job_executor, run config from k8s_execution_config) plus the Pipes pod (PipesK8sClient,
    built by dagster-k8s's build_pod_body from what the asset hands it) request exactly `processes` GPUs. Before,
    the step pod always held its op tags' GPU, so with `pipes_image` a 2-process step held 3."""
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.pipes import build_pod_body

    from townlet_pipelines.pipeline import distributed_step
    from townlet_pipelines.pipeline.pipes import trained_in_processes as _trained_in_processes
    from townlet_pipelines.pipeline.resources import TownletResource

    graph = defs.resolve_asset_graph()
    gpu_ops = {key.path[-1] for key in graph.get_all_asset_keys() if graph.get(key).assets_def.op.pool == GPU_POOL}
    assert gpu_ops == set(distributed_step.TRAINING_OPS) == set(TRAINING)
    settings = {"processes": processes, **({"pipes_image": pipes_image} if pipes_image else {})}
    execution = distributed_step.k8s_execution_config(settings)
    pipes_gpus = 0
    if processes > 1 and pipes_image:  # the asset hands PipesK8sClient the pod its ranks run in
        handed = {}
        monkeypatch.setattr(PipesK8sClient, "run", lambda self, **kwargs: handed.update(kwargs))
        townlet = TownletResource(config_path="smoke", artifacts_root=str(tmp_path), **settings)
        context = SimpleNamespace(log=SimpleNamespace(info=lambda message: None), run=SimpleNamespace(run_id="r1"),
                                  partition_key="2026-11-05")
        _trained_in_processes(context, townlet, {"kind": "bc", "record": str(tmp_path / "bc_stages.json")})
        pipes_pod = ApiClient().sanitize_for_serialization(build_pod_body(
            "townlet-step", handed["image"], handed["command"], {}, None, handed["base_pod_spec"]))
        pipes_gpus = int(limits_of(pipes_pod["spec"]["containers"][0])[GPU])
    with make_cluster(execution["config"]) as launched:
        for step_key in TRAINING:
            job, _ = launch_step(launched, step_key)
            pod = job["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            step_gpus = int(limits_of(container).get(GPU, 0))
            assert step_gpus + pipes_gpus == processes, (step_key, step_gpus, pipes_gpus)
            assert step_gpus == distributed_step.step_pod_gpus(processes, pipes_image)
            tolerated = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod.get("tolerations", [])
            assert tolerated == (step_gpus > 0)  # a pod with no GPU need not wait for a GPU node
            assert container["image"] == image()  # SHALLOW replaced the resources alone: env, mounts, image stay
            assert_shared_artifacts(pod, container)
