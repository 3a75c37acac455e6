"""A training step run data-parallel: `torchrun --nproc-per-node N` through Dagster Pipes, a subprocess of the
step or, with `pipes_image`, a Kubernetes pod of its own (the ranks run pipeline/distributed_step.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from dagster import Failure, PipesSubprocessClient

from townlet_pipelines.pipeline.distributed_step import pod_spec, torchrun_command


def trained_in_processes(context, townlet, extras: dict) -> Path:
    """Run the step's ranks: rank 0's progress lines reach this run's log as they happen, and the stages record it
    wrote comes back. A failed rank fails the step with that rank's one-line reason."""
    record = Path(extras["record"])
    extras = {**extras, "resource": townlet.settings(), "run_id": context.run.run_id, "night": context.partition_key}
    try:
        if townlet.pipes_image:
            from dagster_k8s import PipesK8sClient  # the `k8s` extra

            command = torchrun_command("torchrun", townlet.processes)
            context.log.info(f"training in {townlet.processes} processes, pod {townlet.pipes_image}: "
                             f"{' '.join(command)}")
            PipesK8sClient().run(context=context, extras=extras, image=townlet.pipes_image, command=command,
                                 base_pod_spec=pod_spec(townlet.processes, townlet.pipes_claim, str(townlet.root())))
        else:
            torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
            command = torchrun_command(torchrun, townlet.processes)
            context.log.info(f"training in {townlet.processes} processes: {' '.join(command)}")
            PipesSubprocessClient().run(context=context, command=command, extras=extras)
    except Exception as error:  # noqa: BLE001 - retold with the failing rank's own sentence
        told = [path.read_text() for path in sorted(record.parent.glob(f"{record.name}.rank*.error"))]
        raise Failure(description="; ".join(told) or f"the {townlet.processes}-process step failed: {error}") from None
    return record
