"""Data-parallel training on torch.distributed: the same BC and PPO code for one process or N.

Launched with `torchrun --nproc-per-node N -m townlet_pipelines.cli train bc|ppo ...` (and torchrun's
`--nnodes/--node-rank/--rdzv-endpoint` flags on a cluster), every process reads its rank from torchrun's
environment. The backend follows the device: `nccl` on CUDA (each process on `cuda:LOCAL_RANK`), `gloo`
on the CPU. BC gives each rank its share of every global mini-batch (rows `rank::world`), PPO gives each
rank its own towns; after each backward pass the gradients are averaged over the ranks, so every rank
takes the same optimizer step and the weights stay identical. Only rank 0 writes checkpoints, logs and
results. Without torchrun (`WORLD_SIZE` unset or 1) nothing here does anything: one process, as before.

The averaging is one `all_reduce` of the flattened gradients after `backward`, the arithmetic
DistributedDataParallel does in buckets. DDP's hooks assume one forward pass per backward; a PPO
mini-batch with the BC anchor (`bc_weight` > 0) makes two, so one explicit reduction serves BC and PPO
alike (and costs one collective per step: these networks are a few hundred thousand parameters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from townlet_pipelines.training.device import require_gpus_for_ranks
from townlet_pipelines.training.torch_support import TrainingError, require_torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def _dist():
    """`torch.distributed` (importing torch imports it), through `require_torch` like every torch use here."""
    return require_torch().distributed


def from_environment(device_spec: str = "auto") -> Ranks:
    """The ranks torchrun started (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`), with the process group joined; a
    single process when torchrun did not start this one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    torch = require_torch()
    dist = torch.distributed
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_spec != "cpu" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:  # before any rank is sent to a cuda:LOCAL_RANK that does not exist
        require_gpus_for_ranks(torch.cuda.device_count())
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def device_for(ranks: Ranks, spec: str) -> str:
    """Each process on its own GPU (`cuda:LOCAL_RANK`) when the group runs on CUDA."""
    return f"cuda:{ranks.local_rank}" if ranks.backend == "nccl" else spec


def shard_rows(batch: dict[str, np.ndarray], ranks: Ranks) -> dict[str, np.ndarray]:
    """This rank's share of a global mini-batch: rows rank, rank + world, ..."""
    if not ranks.active:
        return batch
    return {key: value[ranks.rank::ranks.world] for key, value in batch.items()}


def average_gradients(model, ranks: Ranks) -> None:
    """Mean of every parameter's gradient over the ranks, in one collective."""
    if not ranks.active:
        return
    torch = require_torch()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= ranks.world
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_sum(values, ranks: Ranks) -> np.ndarray:
    """Element-wise sum of a small float vector over the ranks (epoch totals, conflict counts)."""
    values = np.asarray(values, dtype=np.float64)
    if not ranks.active:
        return values
    torch = require_torch()
    tensor = torch.from_numpy(values.copy())
    if ranks.backend == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


def broadcast(value, ranks: Ranks):
    """Rank 0's value (any picklable object) on every rank."""
    if not ranks.active:
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        _dist().barrier()


def same_weights(model, ranks: Ranks) -> None:
    """Start every rank from rank 0's weights (a fresh network is initialised from each rank's own RNG)."""
    if not ranks.active:
        return
    dist = _dist()
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def verify_same_weights(model, ranks: Ranks) -> None:
    """Refuse to write a checkpoint from ranks that drifted apart (a missed reduction, a nondeterministic
    kernel): every rank's parameter checksum must equal rank 0's."""
    if not ranks.active:
        return
    torch = require_torch()
    with torch.no_grad():
        flat = torch.cat([p.detach().double().reshape(-1).cpu() for p in model.parameters()])
        mine = torch.stack([flat.sum(), (flat * flat).sum(), (flat * torch.arange(len(flat)).double()).sum()])
    mine = mine.to("cuda" if ranks.backend == "nccl" else "cpu")
    gathered = [torch.zeros_like(mine) for _ in range(ranks.world)]
    torch.distributed.all_gather(gathered, mine)
    drifted = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if drifted:
        raise TrainingError(f"data-parallel ranks {drifted} hold other weights than rank 0; no checkpoint was written")


def require_rollout_mode(mode: str, ranks: Ranks) -> None:
    if ranks.active and mode != "rollout":
        raise TrainingError(f"ppo: data_mode {mode} runs in one process; data-parallel PPO collects its own "
                            "rollouts on each rank's towns (data_mode rollout)")
