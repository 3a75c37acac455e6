"""Behaviour cloning: cross-entropy against the expert's action plus lambda x MSE of value against its return.

Masked actions carry no probability (the model masks its logits), so the cross-entropy is over the legal
actions only. Accuracy and loss are measured over every row of an epoch, and validation uses whole held-out
episodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from townlet_pipelines.data.capture import capture
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.results import BCTrainingResult
from townlet_pipelines.training import resume, tensorboard
from townlet_pipelines.training.checkpoints import model_for, read_record, restore_optimizer, save_checkpoint
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.device import to_tensors
from townlet_pipelines.training.distributed import (
    all_sum, average_gradients, barrier, same_weights, shard_rows, verify_same_weights,
)
from townlet_pipelines.training.policy import TorchPolicy
from townlet_pipelines.training.progress import Progress
from townlet_pipelines.training.torch_support import TrainingError, require_torch

if TYPE_CHECKING:
    from townlet_pipelines.config import AnnealStage
    from townlet_pipelines.training.registry import StageInputs

BATCH_KEYS = ("map", "features", "action_mask", "expert_actions", "value_preds")


def decision_rows(features, option_columns: slice):
    """True where the expert's label is a decision, not "keep doing the active option (or nothing)".

    Continuations outnumber decisions about a hundred to one (a meal is one decision and fifteen ticks of
    eating), so plain cross-entropy learns to continue and never to start; decision rows are up-weighted.
    """
    torch = require_torch()
    options = features[:, option_columns]
    active = options.sum(dim=1) > 0
    return active, torch.where(active, options.argmax(dim=1), torch.zeros_like(active, dtype=torch.long))


def bc_losses(model, batch: dict, value_coef: float, decision_weight: float = 1.0,
              option_columns: slice | None = None):
    """(loss, cross-entropy, value MSE, correct predictions) for one batch of tensors.

    The target is the expert's choice in each state (`expert_actions`), which is also what it did unless
    the capture injected noise. Rows where that choice is a decision weigh `decision_weight`.
    """
    torch = require_torch()
    logits, values = model(batch["features"], batch["action_mask"], batch.get("map"), shield=False)
    actions = batch["expert_actions"].long()
    per_row = torch.nn.functional.cross_entropy(logits, actions, reduction="none")
    if decision_weight != 1.0 and option_columns is not None:
        _, continuing = decision_rows(batch["features"], option_columns)
        weights = torch.where(actions != continuing, decision_weight, 1.0)
        cross_entropy = (per_row * weights).sum() / weights.sum()
    else:
        cross_entropy = per_row.mean()
    value_mse = torch.nn.functional.mse_loss(values, batch["value_preds"])
    correct = (logits.argmax(dim=1) == actions).sum()
    return cross_entropy + value_coef * value_mse, cross_entropy, value_mse, correct


@dataclass
class BCStrategy:
    """Train (or continue training) a policy on expert demonstrations, then `bc.dagger_rounds` of DAgger.

    A DAgger round lets the current network drive the world (sampling its actions) and records the
    expert's choice in every state it reaches (`expert_actions`), then trains on those rows and refreshes
    on the demonstrations for one epoch. Plain cloning never sees the states its own small mistakes lead
    to; DAgger shows them (docs/BENCHMARKS.md measures the difference in closed loop).
    """

    dataset: str | Path
    init_checkpoint: str | Path | None = None
    epochs: int | None = None  # default: config.bc.epochs
    bc_weight: float = 1.0
    out: str | Path | None = None  # checkpoint directory; default <artifacts>/bc
    name: str = "bc"
    continue_optimizer: bool = False  # also restore init_checkpoint's optimizer moments (continue, don't fine-tune)
    dagger_rounds: int | None = None  # default: config.bc.dagger_rounds
    resume: bool = False  # continue a killed run of this stage from its progress checkpoint (`<out>.progress`)
    phase: ClassVar[str] = "bc"  # the anneal's half it runs in (training/registry.py)

    @classmethod
    def for_stage(cls, stage: "AnnealStage", inputs: "StageInputs") -> "BCStrategy":
        """An anneal stage: `stage.epochs` epochs at `stage.bc_weight`, from the checkpoint carried forward."""
        return cls(inputs.dataset, inputs.init_checkpoint, stage.epochs, stage.bc_weight, out=inputs.out,
                   name=inputs.name)

    def plan(self, config) -> list[tuple[int, str, str]]:
        """Every epoch of the stage in order: (DAgger round, log label, data: expert or own)."""
        bc = config.bc
        epochs = self.epochs or bc.epochs
        rounds = bc.dagger_rounds if self.dagger_rounds is None else self.dagger_rounds
        steps = [(0, f"expert {epoch}", "expert") for epoch in range(epochs)]
        for round_index in range(1, rounds + 1):
            steps += [(round_index, f"dagger {round_index}.{epoch}", "own") for epoch in range(bc.dagger_epochs)]
            steps.append((round_index, f"expert refresh {round_index}", "expert"))
        return steps

    def run(self, context: TrainingContext) -> BCTrainingResult:
        torch = require_torch()
        config, bc = context.config, context.config.bc
        device = context.device
        epochs = self.epochs or bc.epochs
        rounds = bc.dagger_rounds if self.dagger_rounds is None else self.dagger_rounds
        dataset = ReplayDataset.open(self.dataset).keep_in_memory(BATCH_KEYS)  # every epoch reads it again
        train_episodes, val_episodes = dataset.split(bc.val_fraction, seed=bc.seed)
        if len(val_episodes) == 0:
            raise TrainingError(f"bc: {dataset.directory} has {dataset.manifest.episodes} episode(s); "
                                f"bc.val_fraction {bc.val_fraction} leaves none to validate on")
        torch.manual_seed(bc.seed)
        model, parent = model_for(dataset.spec, config.model, device.device, self.init_checkpoint)
        same_weights(model, context.ranks)
        optimizer = torch.optim.Adam(model.parameters(), lr=bc.learning_rate, weight_decay=bc.weight_decay)
        if self.continue_optimizer and self.init_checkpoint is not None:
            restore_optimizer(self.init_checkpoint, optimizer, device.device)
        trainer = _EpochTrainer(model, optimizer, context, self.bc_weight)
        out = Path(self.out) if self.out is not None else context.artifacts / "bc"
        progress_folder = resume.progress_dir(out)
        log = tensorboard.mirror(context.log(self.name), context.artifacts / tensorboard.FOLDER, self.name)
        plan = self.plan(config)
        loop = {"next": 0, "dagger_rows": 0, "seconds": 0.0, "trainer_rows": 0, "trainer_seconds": 0.0,
                "last": {}}
        if self.resume:
            loop, _ = resume.load_progress(progress_folder, model, optimizer, device.device, config=config,
                                           scaler=trainer.scaler)
            trainer.rows, trainer.seconds = loop["trainer_rows"], loop["trainer_seconds"]
            log.truncate("epoch", loop["next"])
        start = time.perf_counter() - loop["seconds"]
        progress = Progress(len(plan), "bc", context.progress)
        progress.skip(loop["next"])
        own, own_round = None, None
        for step in range(loop["next"], len(plan)):
            round_index, label, data = plan[step]
            if data == "own" and own_round != round_index:  # a DAgger round: the network's own states
                own_dir = out.parent / f"{out.name}-dagger{round_index}"
                own, own_round = self._capture_own(model, context, own_dir, round_index), round_index
                if plan[step - 1][0] != round_index:  # the round's first epoch (not a resume inside it)
                    loop["dagger_rows"] += own.rows
            source, episodes = (own, None) if data == "own" else (dataset, train_episodes)
            train_loss, train_accuracy, train_rows = trainer.epoch(source, episodes, seed=bc.seed + step)
            val_loss, val_accuracy, val_rows = evaluate_bc(model, dataset, val_episodes, context, self.bc_weight)
            loop["last"] = {"loss": train_loss, "accuracy": train_accuracy, "rows": train_rows,
                            "val_loss": val_loss, "val_accuracy": val_accuracy, "val_rows": val_rows}
            log.write({"epoch": step, "phase": label, **loop["last"], "seconds": time.perf_counter() - start})
            progress.update(1, phase=label, loss=train_loss, acc=train_accuracy, val_loss=val_loss,
                            val_acc=val_accuracy, rows=train_rows)
            loop.update(next=step + 1, seconds=time.perf_counter() - start, trainer_rows=trainer.rows,
                        trainer_seconds=trainer.seconds)
            if ((step + 1) % context.config.runtime.progress_every_epochs == 0 and step + 1 < len(plan)
                    and context.ranks.main):
                resume.save_progress(progress_folder, step + 1, model, optimizer, loop, {}, config=config,
                                     scaler=trainer.scaler)
        last = loop["last"]
        duration = time.perf_counter() - start
        metrics = {key: last[key] for key in ("accuracy", "loss", "val_accuracy", "val_loss")}
        if not all(np.isfinite(value) for value in metrics.values()):
            raise TrainingError(f"bc: non-finite metrics {metrics}; no checkpoint was written")
        verify_same_weights(model, context.ranks)
        if context.ranks.main:  # one writer; the other ranks hold the very same weights
            save_checkpoint(out, model, "bc", config.model_dump(mode="json"), dataset.identity, parent, metrics,
                            optimizer, progress={"epochs": epochs, "dagger_rounds": rounds})
            resume.finish_progress(progress_folder)
        barrier(context.ranks)
        record = read_record(out)
        return BCTrainingResult(
            accuracy=last["accuracy"], loss=last["loss"], val_accuracy=last["val_accuracy"], val_loss=last["val_loss"],
            learning_rate=bc.learning_rate, batch_size=bc.batch_size, epochs=epochs, weight_decay=bc.weight_decay,
            device=device.name, manifest=str(dataset.directory / "manifest.json"), dataset_identity=dataset.identity,
            duration_sec=duration, samples_per_sec=trainer.rows / max(trainer.seconds, 1e-9),
            train_rows=last["rows"], val_rows=last["val_rows"], seed=bc.seed, checkpoint_id=record.checkpoint_id,
            checkpoint_path=str(out), dagger_rounds=rounds, dagger_rows=loop["dagger_rows"],
        )

    @staticmethod
    def _capture_own(model, context: TrainingContext, out: Path, round_index: int) -> ReplayDataset:
        torch = require_torch()
        config = context.config
        episodes = -(-config.rollout.ticks // config.world.episode_ticks)
        seed = config.seeds.dagger.start + (round_index - 1) * config.bc.dagger_towns * episodes
        if not out.exists() and context.ranks.main:  # (made before a kill: deterministic, so reused)
            state = torch.get_rng_state()
            torch.manual_seed(seed)
            capture(config, TorchPolicy(model, context.device, greedy=False), config.bc.dagger_towns,
                    config.rollout.ticks, seed, out, shard_rows=config.rollout.shard_rows)
            torch.set_rng_state(state)
        barrier(context.ranks)  # rank 0 captured the round; every rank trains on its share of it
        return ReplayDataset.open(out, verify="files").keep_in_memory(BATCH_KEYS)


class _EpochTrainer:
    """One pass of BC over a dataset's rows (all of them, or the given episodes)."""

    def __init__(self, model, optimizer, context: TrainingContext, weight: float) -> None:
        torch = require_torch()
        self.model, self.optimizer, self.context, self.weight = model, optimizer, context, weight
        self.scaler = torch.amp.GradScaler("cuda", enabled=context.device.amp)
        self.rows, self.seconds = 0, 0.0

    def epoch(self, dataset: ReplayDataset, episodes, seed: int) -> tuple[float, float, int]:
        torch = require_torch()
        bc, device = self.context.config.bc, self.context.device
        columns = option_columns(dataset.spec)
        self.model.train()
        totals = np.zeros(3)  # loss sum, correct, rows
        start = time.perf_counter()
        ranks = self.context.ranks
        for numpy_batch in dataset.iter_batches(bc.batch_size, seed=seed, episodes=episodes):
            if len(numpy_batch["expert_actions"]) < ranks.world:
                continue  # a tail too short to give every rank a row (every rank sees the same global batch)
            numpy_batch = shard_rows(numpy_batch, ranks)
            batch = to_tensors(numpy_batch, device, BATCH_KEYS)
            with torch.autocast(device_type=device.device.type, dtype=torch.float16, enabled=device.amp):
                loss, _, _, correct = bc_losses(self.model, batch, bc.value_coef, bc.decision_weight, columns)
                loss = self.weight * loss
            if not torch.isfinite(loss):
                raise TrainingError("bc: non-finite loss; no checkpoint was written")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            average_gradients(self.model, ranks)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            rows = len(numpy_batch["expert_actions"])
            totals += (float(loss.detach()) * rows, float(correct), rows)
        totals = all_sum(totals, ranks)  # the epoch over every rank's rows
        self.seconds += time.perf_counter() - start
        self.rows += int(totals[2])
        return totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1), int(totals[2])


def option_columns(spec) -> slice:
    """Where the active-option one-hot sits in the feature vector."""
    first = spec.feature_names.index(f"option_{spec.action_names[0]}")
    return slice(first, first + len(spec.action_names))


def evaluate_bc(model, dataset: ReplayDataset, episodes, context: TrainingContext, weight: float = 1.0):
    """(loss, accuracy, rows) on the given episodes, without gradients."""
    torch = require_torch()
    if len(episodes) == 0:
        return float("nan"), float("nan"), 0
    model.eval()
    totals = np.zeros(3)
    with torch.no_grad():
        for numpy_batch in dataset.iter_batches(context.config.bc.batch_size * 4, shuffle=False, episodes=episodes):
            batch = to_tensors(numpy_batch, context.device, BATCH_KEYS)
            loss, _, _, correct = bc_losses(model, batch, context.config.bc.value_coef)
            rows = len(numpy_batch["expert_actions"])
            totals += (weight * float(loss) * rows, float(correct), rows)
    return totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1), int(totals[2])
