"""A training step run by torchrun under Dagster Pipes: `torchrun --nproc-per-node N -m <this module>`.

The training assets launch it when the `townlet` resource asks for more than one process (`processes`): as
a subprocess of the step, or (`pipes_image` set, on Kubernetes) as a pod of its own through dagster-k8s's
`PipesK8sClient`, with one GPU per process and the artifacts claim mounted (`pod_spec`).
Every rank joins the group and runs the same core call (`AnnealStrategy.run_bc_stages` / `run_ppo_stages`,
data-parallel through training/distributed.py); rank 0 alone opens the Pipes channel, so its `townlet` log
lines (epochs, updates, validation) reach the asset's run log as they happen, and it writes the stages record
whose path it reports back. A rank that fails writes its one-line error beside the record, so the step fails
with that rank's reason (torchrun stops the others).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from townlet_pipelines.data.files import atomic_write_text
from townlet_pipelines.errors import one_line


def torchrun_command(torchrun: str, processes: int) -> list[str]:
    return [torchrun, "--standalone", "--nproc-per-node", str(processes), "-m",
            "townlet_pipelines.pipeline.distributed_step"]


GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}  # the taint many clusters put on GPU nodes
TRAINING_OPS = ("bc_checkpoint", "ppo_checkpoint")  # the assets that train (GPU_OP_TAGS, the `gpu` pool)


def pod_spec(processes: int, claim: str, artifacts: str) -> dict:
    """The Kubernetes pod a multi-process step runs in (Pipes on Kubernetes): one GPU per process, and the
    artifacts claim mounted where the launching step sees the root, so every path in the records holds."""
    return {
        "containers": [{
            "resources": {"limits": {GPU: str(processes)}},
            "volume_mounts": [{"name": "townlet-artifacts", "mount_path": artifacts}],
        }],
        "volumes": [{"name": "townlet-artifacts", "persistent_volume_claim": {"claim_name": claim}}],
        "tolerations": [GPU_TOLERATION],
    }


def step_pod_gpus(processes: int = 1, pipes_image: str | None = None) -> int:
    """The GPUs a training step's own pod uses: none when Pipes starts its ranks in a pod of their own
    (`processes` > 1 and `pipes_image`, `pod_spec`), else one per process (torchrun runs inside the step)."""
    return 0 if processes > 1 and pipes_image else processes


def step_k8s_config(processes: int = 1, pipes_image: str | None = None) -> dict:
    """A training step's entry in the k8s_job_executor's `per_step_k8s_config`: its pod's GPU limit and the GPU
    nodes' toleration, or, when it uses no GPU, a pod with no resources at all (SHALLOW replaces the `resources`
    the op tags set, GPU_OP_TAGS' one GPU, where a deep merge could only change its number)."""
    gpus = step_pod_gpus(processes, pipes_image)
    if gpus == 0:
        return {"merge_behavior": "SHALLOW", "container_config": {"resources": {}}}
    return {"container_config": {"resources": {"limits": {GPU: str(gpus)}}},
            "pod_spec_config": {"tolerations": [GPU_TOLERATION]}}


def k8s_execution_config(townlet: dict) -> dict:
    """The run config's `execution` block for the k8s_job_executor that matches a run's `townlet` resource
    settings (`processes`, `pipes_image`): the GPUs each training pod asks for add up to what runs, and GPU
    pods tolerate the GPU taint. The scheduled runs carry it (definitions.RUN_CONFIG); deploy/k8s/
    step-executor.yaml is it for the default settings."""
    per_step = step_k8s_config(int(townlet.get("processes") or 1), townlet.get("pipes_image"))
    return {"config": {"per_step_k8s_config": {op: per_step for op in TRAINING_OPS}}}


def error_path(record: str | Path, rank: int) -> Path:
    return Path(f"{record}.rank{rank}.error")


def _forward_logs(pipes) -> None:
    class ToPipes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            pipes.log.info(record.getMessage())

    logger = logging.getLogger("townlet")
    logger.addHandler(ToPipes(logging.INFO))
    logger.setLevel(logging.INFO)


def run_step(extras: dict) -> str:
    """Train this rank's part of the step; rank 0 writes and returns the stages record's path."""
    from townlet_pipelines.pipeline.resources import TownletResource  # the training stack: in the torchrun worker only
    from townlet_pipelines.training import distributed  # in the worker only
    from townlet_pipelines.training.anneal import AnnealStrategy  # in the worker only
    from townlet_pipelines.training.cache import read_stages  # in the worker only

    townlet = TownletResource(**extras["resource"])
    config = townlet.load_config(extras.get("night"))
    ranks = distributed.from_environment(config.runtime.device)
    training = dataclasses.replace(townlet.training_context(extras["run_id"], extras.get("night")), ranks=ranks)
    if ranks.active:
        from townlet_pipelines.training.device import device_context  # in the worker only

        training = dataclasses.replace(training, device=device_context(
            distributed.device_for(ranks, config.runtime.device), config.runtime.amp, config.runtime.torch_threads))
    strategy = AnnealStrategy(extras["dataset"], rollout_dataset=extras.get("rollout_dataset"))
    record = Path(extras["record"])
    if extras["kind"] == "bc":
        outcome = strategy.run_bc_stages(dataclasses.replace(training, artifacts=record.parent))
    else:
        outcome = strategy.run_ppo_stages(training, read_stages(extras["bc_stages"], townlet.root()))
    if ranks.main:
        atomic_write_text(record, outcome.to_json())
    distributed.barrier(ranks)
    return str(record)


def main() -> int:
    from dagster_pipes import open_dagster_pipes  # dagster-pipes: the worker's side, not the location's

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # one rank talks to Dagster; the others train
        return _guarded(_extras_from_environment(), rank)
    with open_dagster_pipes() as pipes:
        _forward_logs(pipes)
        extras = dict(pipes.extras)
        code = _guarded(extras, rank)
        if code == 0:
            pipes.report_custom_message({"stages_record": extras["record"]})
        return code


def _extras_from_environment() -> dict:
    """The other ranks read the same extras Dagster handed to rank 0 (without opening the channel)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader  # dagster-pipes: the worker's side

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data.get("extras") or {})


def _guarded(extras: dict, rank: int) -> int:
    try:
        run_step(extras)
        return 0
    except Exception as error:  # noqa: BLE001 - told to the asset in one line, then the process fails
        atomic_write_text(error_path(extras["record"], rank), f"rank {rank}: {one_line(error)}")
        raise


if __name__ == "__main__":
    sys.exit(main())
