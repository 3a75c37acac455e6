"""Behaviour cloning: cross-entropy against the expert's action plus lambda x MSE of value against its return.

Masked actions carry no probability (the model masks its logits), so the cross-entropy is over the legal
actions only. Accuracy and loss are measured over every row of an epoch, and validation uses whole held-out
episodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.results import BCTrainingResult
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.device import to_tensors
from townlet_pipelines.training.progress import Progress
from townlet_pipelines.training.torch_support import TrainingError, require_torch

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
    logits, values = model(batch["features"], batch["action_mask"], batch.get("map"))
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
    """Train (or continue training) a policy on a replay dataset of expert demonstrations."""

    dataset: str | Path
    init_checkpoint: str | Path | None = None
    epochs: int | None = None  # default: config.bc.epochs
    bc_weight: float = 1.0
    out: str | Path | None = None  # checkpoint directory; default <artifacts>/bc
    name: str = "bc"
    resume: bool = False  # also restore init_checkpoint's optimizer moments (continue, don't fine-tune)

    def run(self, context: TrainingContext) -> BCTrainingResult:
        torch = require_torch()
        from townlet_pipelines.training.checkpoints import model_for, restore_optimizer, save_checkpoint

        config, bc = context.config, context.config.bc
        device = context.device
        epochs = self.epochs or bc.epochs
        dataset = ReplayDataset.open(self.dataset)
        train_episodes, val_episodes = dataset.split(bc.val_fraction, seed=bc.seed)
        torch.manual_seed(bc.seed)
        model, parent = model_for(dataset.spec, config.model, device.device, self.init_checkpoint)
        optimizer = torch.optim.Adam(model.parameters(), lr=bc.learning_rate, weight_decay=bc.weight_decay)
        if self.resume and self.init_checkpoint is not None:
            restore_optimizer(self.init_checkpoint, optimizer, device.device)
        scaler = torch.amp.GradScaler("cuda", enabled=device.amp)
        log = context.log(self.name)
        start = time.perf_counter()
        train_rows = 0
        progress = Progress(epochs, "bc", context.progress)
        for epoch in range(epochs):
            model.train()
            totals = np.zeros(3)  # loss sum, correct, rows
            for numpy_batch in dataset.iter_batches(bc.batch_size, seed=bc.seed + epoch, episodes=train_episodes):
                batch = to_tensors(numpy_batch, device, BATCH_KEYS)
                with torch.autocast(device_type=device.device.type, dtype=torch.float16, enabled=device.amp):
                    loss, _, _, correct = bc_losses(model, batch, bc.value_coef, bc.decision_weight,
                                                    option_columns(dataset.spec))
                    loss = self.bc_weight * loss
                if not torch.isfinite(loss):
                    raise TrainingError(f"bc: non-finite loss at epoch {epoch}; no checkpoint was written")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                rows = len(numpy_batch["expert_actions"])
                totals += (float(loss.detach()) * rows, float(correct), rows)
            train_rows = int(totals[2])
            train_loss, train_accuracy = totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)
            val_loss, val_accuracy, val_rows = evaluate_bc(model, dataset, val_episodes, context, self.bc_weight)
            entry = {"epoch": epoch, "loss": train_loss, "accuracy": train_accuracy, "val_loss": val_loss,
                     "val_accuracy": val_accuracy, "rows": train_rows, "seconds": time.perf_counter() - start}
            log.write(entry)
            progress.update(1, acc=train_accuracy, val_acc=val_accuracy)
        duration = time.perf_counter() - start
        metrics = {"accuracy": train_accuracy, "loss": train_loss, "val_accuracy": val_accuracy, "val_loss": val_loss}
        out = Path(self.out) if self.out is not None else context.artifacts / "bc"
        record = save_checkpoint(
            out, model, "bc", config.model_dump(mode="json"), dataset.identity, parent, metrics, optimizer,
            progress={"epochs": epochs},
        )
        return BCTrainingResult(
            accuracy=train_accuracy, loss=train_loss, val_accuracy=val_accuracy, val_loss=val_loss,
            learning_rate=bc.learning_rate, batch_size=bc.batch_size, epochs=epochs, weight_decay=bc.weight_decay,
            device=device.name, manifest=str(dataset.directory / "manifest.json"), dataset_identity=dataset.identity,
            duration_sec=duration, samples_per_sec=train_rows * epochs / max(duration, 1e-9), train_rows=train_rows,
            val_rows=val_rows, seed=bc.seed, checkpoint_id=record.checkpoint_id, checkpoint_path=str(out),
        )


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
