"""Progress checkpoints: what a killed BC or PPO run needs to continue exactly where it stopped.

Every `runtime.progress_every_epochs` BC epochs (`progress_every_updates` PPO updates) a strategy writes
`<checkpoint dir>.progress/step-NNNNNN/` as one atomic directory: the weights, the optimizer's moments,
torch's RNG state, the loop's own state (JSON) and its arrays (a world snapshot, a selected snapshot's
weights). Older steps are removed after the new one is complete, so a kill at any instant leaves at least
one complete step. Resuming loads the newest step and replays nothing: the loop is deterministic given
that state, so the resumed run writes the checkpoint an uninterrupted run writes (bit-identical on CPU
with the same thread count). A finished stage removes its progress folder. Each step records the recipe it
was written under (`recipe`: the optimizer's settings and a hash of the training config); a run that would
resume it under another recipe is refused, naming the step.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from townlet_pipelines.data.files import atomic_directory, npz_bytes
from townlet_pipelines.training.torch_support import TrainingError, require_torch

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
    """The newest complete step, or a TrainingError naming the folder when there is nothing to resume."""
    steps = _steps(directory)
    if not steps:
        raise TrainingError(f"{directory}: nothing to resume (no progress checkpoint; a run writes one every "
                            "runtime.progress_every_epochs / progress_every_updates)")
    return steps[-1][1]


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


def save_progress(directory: Path, step: int, model, optimizer, state: dict, arrays: dict[str, np.ndarray],
                  config=None) -> Path:
    """Write step `step` atomically, with the recipe it was written under, then drop the older ones."""
    torch = require_torch()
    from townlet_pipelines.training.checkpoints import _optimizer_tensors, write_tensors

    arrays = {**arrays, "torch_rng": torch.get_rng_state().numpy()}
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


def load_progress(directory: Path, model, optimizer, device, config=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Restore the newest complete step into `model` and `optimizer`; (loop state, arrays).

    Raises a TrainingError naming the folder when there is nothing to resume from, and naming the step when it was
    written under another recipe (`recipe`) than the optimizer and config this run resumes with.
    """
    torch = require_torch()
    from townlet_pipelines.training.checkpoints import _safetensor_error, read_tensors, restore_optimizer

    path = require_progress(directory)
    resuming = recipe(directory, optimizer, config)  # before the step's optimizer settings replace this run's
    damages = (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile, TrainingError,
               _safetensor_error())

    def damaged(reading: Path, error: BaseException) -> TrainingError:
        told = " ".join(str(error).split()).removeprefix(f"{reading}: ")[:200] or type(error).__name__
        return TrainingError(f"{reading}: damaged progress checkpoint ({told}); remove {path} to resume from the "
                             "step before")

    try:
        state = json.loads((path / STATE).read_text())
        written = state.pop("recipe", None)  # steps written before steps carried one: nothing to compare
        if written is not None and not (isinstance(written, dict) and {"optimizer", "config"} <= set(written)):
            raise ValueError(f"its recipe is unreadable: {written!r}"[:200])
    except damages as error:
        raise damaged(path / STATE, error) from None
    if written is not None:
        _check_recipe(path, written, resuming)
    reading = path / WEIGHTS
    try:
        model.load_state_dict(read_tensors(reading))
        reading = path / OPTIMIZER
        restore_optimizer(path, optimizer, device)
        reading = path / ARRAYS
        with np.load(reading, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except damages as error:
        raise damaged(reading, error) from None
    torch.set_rng_state(torch.from_numpy(arrays.pop("torch_rng")))
    return state, arrays


def finish_progress(directory: Path) -> None:
    """The stage wrote its final checkpoint: its progress is no longer needed."""
    shutil.rmtree(directory, ignore_errors=True)


def world_arrays(world) -> dict[str, np.ndarray]:
    """The batched world's state as named arrays (its RNG is counter-based: the state is all there is)."""
    from dataclasses import fields

    return {f"world.{item.name}": getattr(world.state, item.name) for item in fields(world.state)
            if isinstance(getattr(world.state, item.name), np.ndarray)}


def restore_world(world, arrays: dict[str, np.ndarray], tick: int) -> None:
    """Put a snapshot from `world_arrays` back, mid-episode, and observe it as the world would."""
    from townlet_pipelines.world.state import WorldState

    values = {name[len("world."):]: value.copy() for name, value in arrays.items() if name.startswith("world.")}
    world.state = WorldState(tick=int(tick), **values)
    world.action_mask, world.observation = world.observer.mask_and_observe(world.state)
