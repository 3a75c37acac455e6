"""Progress checkpoints: what a killed BC or PPO run needs to continue exactly where it stopped.

Every `runtime.progress_every_epochs` BC epochs (`progress_every_updates` PPO updates) a strategy writes
`<checkpoint dir>.progress/step-NNNNNN/` as one atomic directory: the weights, the optimizer's moments,
torch's RNG state, the loop's own state (JSON) and its arrays (a world snapshot, a selected snapshot's
weights). Older steps are removed after the new one is complete, so a kill at any instant leaves at least
one complete step. Resuming loads the newest step and replays nothing: the loop is deterministic given
that state, so the resumed run writes the checkpoint an uninterrupted run writes (bit-identical on CPU
with the same thread count). On CUDA a step also holds every device's RNG (`cuda_rng.N`) and the AMP
GradScaler's state (its scale and growth tracker), without which a resumed run draws other numbers and scales
its first steps differently. A finished stage removes its progress folder.

One process writes and resumes: under torchrun only rank 0 writes a step (`save_progress` writes nothing on
another rank), and a step is never resumed data-parallel, nor a data-parallel run's step resumed as one process
(each is refused in one line): a resume continues exactly the run that wrote the step, or nothing. Each
step records the recipe it was written under (`recipe`: the optimizer's settings and a hash of the training
config); a run that would resume it under another recipe is refused, naming the step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from townlet_pipelines.data.files import atomic_directory, npz_bytes
from townlet_pipelines.training.checkpoints import _optimizer_tensors, read_tensors, restore_optimizer, write_tensors
from townlet_pipelines.training.torch_support import TrainingError, require_torch
from townlet_pipelines.world.state import WorldState

WEIGHTS, OPTIMIZER, STATE, ARRAYS = "weights.safetensors", "optimizer.safetensors", "state.json", "arrays.npz"
_STEP = re.compile(r"^step-(\d{6})$")


def progress_dir(checkpoint_dir: str | Path) -> Path:
    checkpoint_dir = Path(checkpoint_dir)
    return checkpoint_dir.with_name(checkpoint_dir.name + ".progress")


def _steps(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    return sorted((int(match.group(1)), path) for path in directory.iterdir() if (match := _STEP.match(path.name)))


def require_progress(directory: Path) -> Path:
    """The newest complete step, or a TrainingError naming the folder when there is nothing to resume, or naming
    the step when other processes would resume it than the one process that wrote it."""
    steps = _steps(directory)
    if not steps:
        raise TrainingError(f"{directory}: nothing to resume (no progress checkpoint; a run writes one every "
                            "runtime.progress_every_epochs / progress_every_updates)")
    path = steps[-1][1]
    _rank, world = _world()
    if world > 1:
        raise TrainingError(f"{path}: --resume runs as one process, not data-parallel (torchrun started {world}); "
                            "resume it without torchrun")
    try:
        wrote = json.loads((path / STATE).read_text()).get("world", 1)
    except (OSError, ValueError, AttributeError):
        wrote = 1  # a damaged state.json is load_progress's to name
    if wrote != 1:
        raise TrainingError(f"{path}: written by a data-parallel run of {wrote} processes, which is not resumed (as "
                            "one process it would train another run); start it again")
    return path


HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum", "amsgrad")


def recipe(directory: Path, optimizer, config=None) -> dict:
    """What a progress step must share with the run that resumes it: the optimizer's settings (learning rate,
    weight decay, …) and a hash of the training config (all but `runtime`): `config`'s, else the one the run
    folder's invocation records. A step written under another recipe must not be continued as this one."""
    groups = [{key: value for key, value in group.items() if key in HYPERPARAMETERS}
              for group in optimizer.state_dict()["param_groups"]]
    training = config.model_dump(mode="json") if config is not None else None
    if training is None:
        try:
            training = json.loads((Path(directory).parent / "invocation.json").read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            training = None
    digest = None
    if isinstance(training, dict):
        training = {key: value for key, value in training.items() if key != "runtime"}
        digest = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]
    return json.loads(json.dumps({"optimizer": groups, "config": digest}))  # tuples as lists, as read back


def _check_recipe(path: Path, written: dict, resuming: dict) -> None:
    """The training config decides when both sides name one (an optimizer setting a schedule moved is no other
    recipe); the optimizer's settings decide otherwise."""
    differs = sorted({f"{key} {old.get(key)} in the step, {new.get(key)} in this run"
                      for old, new in zip(written["optimizer"], resuming["optimizer"])
                      for key in HYPERPARAMETERS if old.get(key) != new.get(key)})
    if len(written["optimizer"]) != len(resuming["optimizer"]):
        differs.append(f"{len(written['optimizer'])} parameter groups in the step, {len(resuming['optimizer'])} in "
                       "this run")
    if written["config"] and resuming["config"]:
        if written["config"] == resuming["config"]:
            return
        differs.append(f"training config {written['config']} in the step, {resuming['config']} in this run")
    if differs:
        raise TrainingError(f"{path}: written under another recipe ({'; '.join(differs)}); resume a run only with "
                            "the settings it was started with")


def _world() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun set them; (0, 1) for one process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _cuda_rng_states(torch) -> list:
    """Every CUDA device's RNG state, when this process uses CUDA (initialised): nothing on the CPU."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    return list(torch.cuda.get_rng_state_all())


def save_progress(directory: Path, step: int, model, optimizer, state: dict, arrays: dict[str, np.ndarray],
                  config=None, scaler=None) -> Path | None:
    """Write step `step` atomically, with the recipe it was written under, then drop the older ones.

    Beside the weights, the moments and torch's CPU RNG: every CUDA device's RNG when the run uses CUDA, and
    `scaler`'s state (the AMP GradScaler) when it is enabled. Under torchrun only rank 0 writes: another rank
    writes nothing and gets None.
    """
    torch = require_torch()
    rank, world = _world()
    if rank != 0:
        return None
    arrays = {**arrays, "torch_rng": torch.get_rng_state().numpy()}
    arrays.update({f"cuda_rng.{index}": rng.cpu().numpy() for index, rng in enumerate(_cuda_rng_states(torch))})
    state = {**state, "world": world}
    if scaler is not None and scaler.is_enabled():
        state["amp_scaler"] = scaler.state_dict()
    with atomic_directory(directory / f"step-{step:06d}") as temporary:
        write_tensors({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()},
                      temporary / WEIGHTS)
        tensors, layout = _optimizer_tensors(optimizer)
        write_tensors(tensors, temporary / OPTIMIZER, metadata={"layout": json.dumps(layout)})
        (temporary / ARRAYS).write_bytes(npz_bytes(arrays, compress=False))
        (temporary / STATE).write_text(json.dumps({"step": step, **state, "recipe": recipe(directory, optimizer, config)},
                                                  sort_keys=True))
    for older, path in _steps(directory):
        if older < step:
            shutil.rmtree(path, ignore_errors=True)
    return directory / f"step-{step:06d}"


def load_progress(directory: Path, model, optimizer, device, config=None,
                  scaler=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Restore the newest complete step into `model`, `optimizer`, torch's RNGs (CPU, and CUDA where the step
    holds them and torch reports the devices) and `scaler` (when the step holds an AMP scaler's state and this
    run's is enabled); (loop state, arrays).

    Raises a TrainingError naming the folder when there is nothing to resume from, naming the step when it was
    written under another recipe (`recipe`) than the optimizer and config this run resumes with, and when it
    would be resumed by other processes than the one that wrote it (data-parallel, either way).
    """
    torch = require_torch()
    path = require_progress(directory)  # refuses a data-parallel resume, either way
    resuming = recipe(directory, optimizer, config)  # this run's settings, to compare with the step's
    damages = (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile, TrainingError,
               SafetensorError)

    def damaged(reading: Path, error: BaseException) -> TrainingError:
        told = " ".join(str(error).split()).removeprefix(f"{reading}: ")[:200] or type(error).__name__
        return TrainingError(f"{reading}: damaged progress checkpoint ({told}); it is the run's only step (each "
                             "replaces the one before), so the run must start again")

    try:
        state = json.loads((path / STATE).read_text())
        written = state.pop("recipe", None)  # steps written before steps carried one: nothing to compare
        if written is not None and not (isinstance(written, dict) and {"optimizer", "config"} <= set(written)):
            raise ValueError(f"its recipe is unreadable: {written!r}"[:200])
    except damages as error:
        raise damaged(path / STATE, error) from None
    if written is not None:
        _check_recipe(path, written, resuming)
    state.pop("world", None)  # checked by require_progress
    scaler_state = state.pop("amp_scaler", None)
    reading = path / WEIGHTS
    try:
        model.load_state_dict(read_tensors(reading))
        reading = path / OPTIMIZER
        if not restore_optimizer(path, optimizer, device):  # fresh moments would not reach the uninterrupted run
            raise FileNotFoundError(f"{reading}: missing")
        reading = path / ARRAYS
        with np.load(reading, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except damages as error:
        raise damaged(reading, error) from None
    torch.set_rng_state(torch.from_numpy(arrays.pop("torch_rng")))
    cuda_rng = [torch.from_numpy(arrays.pop(f"cuda_rng.{index}")) for index in range(len(arrays))
                if f"cuda_rng.{index}" in arrays]
    if cuda_rng and torch.cuda.is_available():  # a step written on CUDA, resumed where CUDA is
        torch.cuda.set_rng_state_all(cuda_rng[:torch.cuda.device_count()])
    if scaler is not None and scaler_state and scaler.is_enabled():
        scaler.load_state_dict(scaler_state)
    return state, arrays


def finish_progress(directory: Path) -> None:
    """The stage wrote its final checkpoint: its progress is no longer needed."""
    shutil.rmtree(directory, ignore_errors=True)


def world_arrays(world) -> dict[str, np.ndarray]:
    """The batched world's state as named arrays (its RNG is counter-based: the state is all there is)."""
    return {f"world.{item.name}": getattr(world.state, item.name) for item in fields(world.state)
            if isinstance(getattr(world.state, item.name), np.ndarray)}


def restore_world(world, arrays: dict[str, np.ndarray], tick: int) -> None:
    """Put a snapshot from `world_arrays` back, mid-episode, and observe it as the world would."""
    values = {name[len("world."):]: value.copy() for name, value in arrays.items() if name.startswith("world.")}
    world.state = WorldState(tick=int(tick), **values)
    world.action_mask, world.observation = world.observer.mask_and_observe(world.state)
