"""Checkpoints: weights in safetensors (never pickle) plus a JSON record, written as one atomic directory.

A checkpoint's id is the sha256 of its weights file (first 16 hex digits). The record carries the config,
the observation spec, the dataset identity, the parent checkpoint, metrics and the code version, so a
checkpoint explains itself in the lineage; loading refuses a model for another observation spec.
Optimizer moments are saved beside the weights so training can resume where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, FiniteFloat
from safetensors import SafetensorError, safe_open

from townlet_pipelines.config import ModelConfig
from townlet_pipelines.data.files import atomic_directory, sha256_file
from townlet_pipelines.training.torch_support import TrainingError, require_torch
from townlet_pipelines.world.observations import ObservationSpec

CHECKPOINT_SCHEMA_VERSION = 1
WEIGHTS, OPTIMIZER, RECORD = "weights.safetensors", "optimizer.safetensors", "checkpoint.json"


class CheckpointRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = CHECKPOINT_SCHEMA_VERSION
    checkpoint_id: str
    kind: Literal["bc", "ppo"]
    created_at: str
    observation: ObservationSpec
    model: ModelConfig
    config: dict
    dataset_identity: str | None
    parent_checkpoint_id: str | None
    metrics: dict[str, FiniteFloat]  # a NaN here would mean weights nothing should load: refused before writing
    progress: dict[str, int] = {}  # epochs/updates done
    weights_sha256: str
    code_version: str
    optimizer_sha256: str | None = None  # the optimizer's moments, when saved (records before it carry none)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and a digest of the package's source files. Cache keys (the expert dataset, the BC
    stages, the held-out reference rows) carry it, so an entry made by other code is never reused: not after
    an uncommitted edit, and not in an image without git (a commit id alone missed both)."""
    try:
        version = metadata.version("townlet-pipelines")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{version}+src.{source_digest(Path(__file__).resolve().parents[1])}"


def source_digest(package: Path) -> str:
    """A hash of every `.py` file under `package` (paths and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, layout = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        layout["state"][str(index)] = {}
        for name, value in values.items():
            if hasattr(value, "detach"):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
                layout["state"][str(index)][name] = "tensor"
            else:
                layout["state"][str(index)][name] = value
    return tensors, layout


def write_tensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """safetensors' `save_file`, whose errors name the file; a full disk is an OSError (ENOSPC), not damage."""
    from safetensors.torch import save_file  # safetensors.torch imports torch

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as error:
        code = re.search(r"os error (\d+)", str(error))
        if code:  # "Error while serializing: I/O error: No space left on device (os error 28)"
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
        raise TrainingError(f"{path}: could not write tensors ({' '.join(str(error).split())})") from None


def damaged_file(path: str | Path, error: BaseException) -> TrainingError:
    return TrainingError(f"{path}: damaged checkpoint file ({' '.join(str(error).split())[:200]}); re-create it or "
                         "restore it from its release copy")


def read_tensors(path: str | Path) -> dict:
    """safetensors' `load_file`; a damaged file is a TrainingError naming it."""
    from safetensors.torch import load_file  # safetensors.torch imports torch

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise damaged_file(path, error) from None


def spec_difference(found: ObservationSpec, expected: ObservationSpec) -> str:
    """What differs between two observation specs, field by field ("action_names: only in the checkpoint …")."""
    parts = []
    for name in ObservationSpec.model_fields:
        mine, theirs = getattr(found, name), getattr(expected, name)
        if mine == theirs:
            continue
        if name.endswith("_names") or name == "map_channels":
            only_mine = [item for item in mine if item not in theirs]
            only_theirs = [item for item in theirs if item not in mine]
            parts.append(f"{name}: only in the checkpoint {only_mine}, only in the data {only_theirs}"
                         if only_mine or only_theirs else f"{name}: the same {len(mine)} in another order")
        else:
            parts.append(f"{name}: {mine!r} in the checkpoint, {theirs!r} in the data")
    return "; ".join(parts)


def save_checkpoint(
    directory: str | Path, model, kind: str, config: dict, dataset_identity: str | None,
    parent_checkpoint_id: str | None, metrics: dict[str, float], optimizer=None, progress: dict[str, int] | None = None,
) -> CheckpointRecord:
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_directory(directory) as temporary:
        write_tensors(weights, temporary / WEIGHTS)
        digest = sha256_file(temporary / WEIGHTS)
        layout, optimizer_digest = None, None
        if optimizer is not None:
            tensors, layout = _optimizer_tensors(optimizer)
            write_tensors(tensors, temporary / OPTIMIZER, metadata={"layout": json.dumps(layout)})
            optimizer_digest = sha256_file(temporary / OPTIMIZER)
        record = CheckpointRecord(
            checkpoint_id=digest[:16], kind=kind, created_at=datetime.now(timezone.utc).isoformat(),
            observation=model.spec, model=model.model_config, config=config, dataset_identity=dataset_identity,
            parent_checkpoint_id=parent_checkpoint_id, metrics={k: float(v) for k, v in metrics.items()},
            progress=progress or {}, weights_sha256=digest, code_version=code_version(),
            optimizer_sha256=optimizer_digest,
        )
        (temporary / RECORD).write_text(record.model_dump_json(indent=2))
    return record


def read_record(directory: str | Path) -> CheckpointRecord:
    path = Path(directory) / RECORD
    if not path.is_file():
        raise TrainingError(f"{directory}: not a checkpoint (no {RECORD})")
    try:
        return CheckpointRecord.model_validate_json(path.read_text())
    except ValueError as error:
        raise TrainingError(f"{path}: invalid checkpoint record: {error}") from None


def verify_checkpoint(directory: str | Path) -> CheckpointRecord:
    """The record, after checking the weights file still matches it (no torch needed)."""
    record = read_record(directory)
    weights = Path(directory) / WEIGHTS
    if not weights.is_file() or sha256_file(weights) != record.weights_sha256:
        raise TrainingError(f"{weights}: missing or its sha256 does not match the checkpoint record")
    return record


def new_network(spec: ObservationSpec, model_config: ModelConfig):
    """A fresh `PolicyNetwork` (on the CPU): the one place here that imports the model."""
    from townlet_pipelines.training.model import PolicyNetwork  # imports torch at its module level

    return PolicyNetwork(spec, model_config)


def load_checkpoint(directory: str | Path, expected_spec: ObservationSpec | None = None, device="cpu", optimizer=None):
    """(model, record); refuses a checkpoint whose spec differs from `expected_spec` or whose weights changed."""
    require_torch()
    directory = Path(directory)
    record = read_record(directory)
    if record.schema_version != CHECKPOINT_SCHEMA_VERSION:
        raise TrainingError(f"{directory / RECORD}: schema_version {record.schema_version} is not supported")
    if expected_spec is not None and record.observation != expected_spec:
        raise TrainingError(f"{directory}: checkpoint observation spec does not match the data "
                            f"({spec_difference(record.observation, expected_spec)})")
    if sha256_file(directory / WEIGHTS) != record.weights_sha256:
        raise TrainingError(f"{directory / WEIGHTS}: sha256 does not match the checkpoint record")
    model = new_network(record.observation, record.model)
    model.load_state_dict(read_tensors(directory / WEIGHTS))
    model.to(device)
    if optimizer is not None:
        restore_optimizer(directory, optimizer, device)
    return model, record


def restore_optimizer(directory: str | Path, optimizer, device="cpu") -> bool:
    """Load the optimizer's saved moments (to resume or continue training); False when the checkpoint has none.

    Only the moments: the optimizer keeps its own settings (learning rate, eps, weight decay), so PPO continued
    from a BC checkpoint trains at PPO's rate. Refused in one line naming the file: moments whose sha256 is not
    the one the checkpoint's record holds, or that belong to parameters of other shapes (another model's)."""
    path = Path(directory) / OPTIMIZER
    if not path.is_file():
        return False
    record = Path(directory) / RECORD
    expected = read_record(directory).optimizer_sha256 if record.is_file() else None
    if expected is not None and sha256_file(path) != expected:
        raise TrainingError(f"{path}: its sha256 does not match the checkpoint record; re-create it or restore it "
                            "from its release copy")
    try:
        with safe_open(str(path), framework="pt") as handle:
            layout = json.loads(handle.metadata()["layout"])
            state = {}
            for index, values in layout["state"].items():
                state[int(index)] = {
                    name: (handle.get_tensor(f"state.{index}.{name}").to(device) if value == "tensor" else value)
                    for name, value in values.items()
                }
    except (SafetensorError, ValueError, KeyError, TypeError) as error:
        raise damaged_file(path, error) from None
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    for index, values in state.items():
        for name, value in values.items():
            shape = tuple(value.shape) if hasattr(value, "shape") and value.dim() > 0 else None
            if shape is not None and (index >= len(parameters) or shape != tuple(parameters[index].shape)):
                found = tuple(parameters[index].shape) if index < len(parameters) else "no such parameter"
                raise TrainingError(f"{path}: optimizer moments for another model (parameter {index}'s {name} has "
                                    f"shape {shape}, the model's {found})")
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": layout["param_groups"]})
    except (ValueError, RuntimeError, KeyError) as error:
        raise damaged_file(path, error) from None
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
    return True


def model_for(spec: ObservationSpec, model_config: ModelConfig, device, init_checkpoint: str | Path | None = None):
    """(model, parent checkpoint id): a fresh network, or the given checkpoint's (whose spec must match)."""
    if init_checkpoint is None:
        return new_network(spec, model_config).to(device), None
    model, record = load_checkpoint(init_checkpoint, spec, device)
    return model, record.checkpoint_id
