"""Device choice and the GPU-only paths (AMP, pinned memory), decided in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

from townlet_pipelines.training.torch_support import TrainingError, require_torch


@dataclass(frozen=True)
class DeviceContext:
    device: "object"  # torch.device
    amp: bool  # float16 autocast + gradient scaling: CUDA only
    pin_memory: bool  # page-locked host batches, copied without blocking: CUDA only

    @property
    def name(self) -> str:
        return str(self.device)


def torchrun_local_rank() -> int | None:
    """This process's `LOCAL_RANK` when torchrun started it as one of several (`WORLD_SIZE` > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def require_gpus_for_ranks(count: int) -> None:
    """Refuse more training processes on this machine (torchrun's `LOCAL_WORLD_SIZE`) than CUDA devices: a rank
    beyond them would be sent to a `cuda:LOCAL_RANK` that does not exist."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or 0)
    if count and local_world > count:
        raise TrainingError(f"processes: {local_world} training processes on this machine (the townlet resource's "
                            f"processes, torchrun --nproc-per-node) but torch reports {count} CUDA device(s) here: "
                            f"set processes to at most {count}, give the pod {local_world} GPUs, or set "
                            "runtime.device: cpu")


def select_device(spec: str = "auto"):
    """`auto`: the CUDA device with the most free memory, else the CPU; a torchrun rank (one of several) takes
    `cuda:LOCAL_RANK` directly, asking no other device for its memory (that would open a CUDA context on each).
    `cpu` / `cuda:N` force one."""
    torch = require_torch()
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if spec == "auto":
        if count == 0:
            return torch.device("cpu")
        local_rank = torchrun_local_rank()
        if local_rank is not None:
            require_gpus_for_ranks(count)
            if local_rank >= count:
                raise TrainingError(f"processes: rank with LOCAL_RANK {local_rank} but torch reports {count} CUDA "
                                    f"device(s) here: set processes to at most {count}")
            return torch.device(f"cuda:{local_rank}")
        free = [torch.cuda.mem_get_info(index)[0] for index in range(count)]
        return torch.device(f"cuda:{max(range(count), key=lambda index: free[index])}")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= count:
        raise TrainingError(f"runtime.device: {spec} requested but torch reports {count} CUDA device(s)")
    return torch.device(f"cuda:{index}")


def auto_threads(cores: int | None = None) -> int:
    """A quarter of the cores, between 1 and 4: the rest stay with the world and the data loader."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores // 4))


def configure_threads(setting: int = 0) -> int:
    """Set torch's intra-op threads (`runtime.torch_threads`; 0 = `auto_threads()`) and return the count.

    Torch's default, one thread per core, leaves no core to the world and the data loader on a small machine
    (the speed issue reported 6.5x slower on 2 cores; on the smoke PPO here 1 and 2 threads timed the same).
    """
    torch = require_torch()
    threads = setting or auto_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def device_context(spec: str = "auto", amp: bool = True, threads: int = 0) -> DeviceContext:
    configure_threads(threads)
    device = select_device(spec)
    on_cuda = device.type == "cuda"
    return DeviceContext(device=device, amp=amp and on_cuda, pin_memory=on_cuda)


def to_tensors(batch: dict, context: DeviceContext, keys) -> dict:
    """Numpy batch -> tensors on the device (pinned and non-blocking on CUDA)."""
    torch = require_torch()
    out = {}
    for key in keys:
        if key not in batch:
            continue
        tensor = torch.from_numpy(batch[key])
        if context.pin_memory:
            tensor = tensor.pin_memory()
        out[key] = tensor.to(context.device, non_blocking=context.pin_memory)
    return out
