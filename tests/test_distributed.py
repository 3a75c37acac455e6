"""Data-parallel BC and PPO with torch.distributed (gloo on the CPU, 2 ranks, tiny config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from tests.test_training import TINY  # noqa: E402
from townlet_pipelines.training import distributed  # noqa: E402
from townlet_pipelines.training.torch_support import TrainingError  # noqa: E402

BIN = Path(sys.executable).parent
# One BC epoch on the demonstrations, plain cross-entropy (no decision weights): each rank's mean over its
# half of a global batch, averaged over the ranks, is the global batch's mean, so 2 ranks take the steps
# 1 rank takes, up to float rounding and the odd-sized tail batches.
EQUIVALENT = {**TINY, "profile": "tiny", "bc": {**TINY["bc"], "epochs": 2, "dagger_rounds": 0, "decision_weight": 1.0},
              "anneal": {**TINY["anneal"], "schedule": [{"cycle": 0, "mode": "bc", "epochs": 2}]}}
WEIGHT_TOLERANCE = 2e-3  # max |w2 − w1| after two epochs of Adam at lr 0.002 (measured: 3.0e-6)


def _train(tmp_path: Path, kind: str, processes: int, config: dict) -> dict:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    launcher = [str(BIN / "torchrun"), "--nproc-per-node", str(processes), "--master-port", str(_free_port()),
                "-m", "townlet_pipelines.cli"] if processes > 1 else [str(BIN / "townlet")]
    done = subprocess.run([*launcher, "train", kind, "--config", str(path), "--artifacts",
                           str(tmp_path / f"artifacts-{processes}"), "--json"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # rank 0 alone prints


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _weights(checkpoint: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(checkpoint) / "weights.safetensors"))


def test_two_rank_bc_takes_the_steps_one_rank_takes(tmp_path):
    one = _train(tmp_path, "bc", 1, EQUIVALENT)
    two = _train(tmp_path, "bc", 2, EQUIVALENT)
    assert two["train_rows"] == one["train_rows"]  # every row of every epoch, split between the ranks
    first, second = _weights(one["checkpoint_path"]), _weights(two["checkpoint_path"])
    assert first.keys() == second.keys()
    drift = max(float(np.abs(first[name] - second[name]).max()) for name in first)
    assert drift < WEIGHT_TOLERANCE
    assert abs(two["val_accuracy"] - one["val_accuracy"]) < 0.01
    runs = list((tmp_path / "artifacts-2" / "runs").iterdir())
    assert len(runs) == 1  # the ranks shared rank 0's run folder; rank 0 alone wrote the checkpoint and log
    assert len(list((runs[0] / "logs").glob("bc*.jsonl"))) == 1


def test_ppo_stored_rows_modes_stay_single_process():
    with pytest.raises(TrainingError, match="data_mode mixed runs in one process"):
        distributed.require_rollout_mode("mixed", distributed.Ranks(0, 2, 0, "gloo"))
    distributed.require_rollout_mode("mixed", distributed.SINGLE)  # one process: anything goes


def test_a_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.from_environment() is distributed.SINGLE
    batch = {"a": np.arange(6)}
    assert distributed.shard_rows(batch, distributed.SINGLE) is batch
    assert distributed.shard_rows(batch, distributed.Ranks(1, 2, 1, "gloo"))["a"].tolist() == [1, 3, 5]


def test_the_backend_follows_the_device(monkeypatch):
    """CUDA present (faked): nccl, each process on cuda:LOCAL_RANK; forced to the CPU: gloo."""
    import torch.distributed as dist

    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: joined.append(f"cuda:{index}"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = distributed.from_environment("auto")
    assert joined == ["cuda:1", "nccl"] and ranks == distributed.Ranks(1, 2, 1, "nccl")
    assert distributed.device_for(ranks, "auto") == "cuda:1"
    joined.clear()
    ranks = distributed.from_environment("cpu")
    assert joined == ["gloo"] and distributed.device_for(ranks, "cpu") == "cpu"


def _diverge(rank: int, world: int, init: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model = torch.nn.Linear(3, 2)
    torch.manual_seed(0)
    for parameter in model.parameters():
        torch.nn.init.constant_(parameter, 0.5 + (rank == 1) * 1e-6)  # rank 1 drifted by a hair
    ranks = distributed.Ranks(rank, world, rank, "gloo")
    try:
        distributed.verify_same_weights(model, ranks)
        queue.put((rank, "agreed"))
    except TrainingError as error:
        queue.put((rank, str(error)))
    distributed.same_weights(model, ranks)  # rank 0's weights everywhere: now they agree
    distributed.verify_same_weights(model, ranks)
    dist.destroy_process_group()


def test_ranks_that_drift_apart_write_no_checkpoint(tmp_path):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    processes = [context.Process(target=_diverge, args=(rank, 2, init, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    told = dict(queue.get(timeout=5) for _ in range(2))
    assert all("ranks [1] hold other weights than rank 0" in message for message in told.values())

