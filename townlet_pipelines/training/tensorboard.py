"""TensorBoard event files beside the JSONL training log, when the optional extra is installed
(`pip install -e '.[tensorboard]'`): every numeric field BC and PPO log (losses, KL, clip fraction, entropy,
value loss, explained variance, validation reward and conflicts, the conflict multiplier and budget) becomes a
scalar under `<run folder>/tensorboard/<strategy name>/`, plus the steps (rows) per second between two entries.

On by default when `tensorboard` is importable; `TOWNLET_TENSORBOARD=0` switches it off (the Dagster resource's
`tensorboard` setting and `townlet`'s environment set it). The JSONL log stays the record; this only mirrors it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from townlet_pipelines.training.logs import NullLog

ENV = "TOWNLET_TENSORBOARD"
FOLDER = "tensorboard"
STEP_KEYS = ("epoch", "update")  # BC logs an epoch per entry, PPO an update


def switch(on: bool) -> None:
    """Turn event files on or off for this process and the ones it starts (torchrun ranks inherit it): read
    where BC and PPO open their logs."""
    os.environ[ENV] = "1" if on else "0"


def enabled() -> bool:
    """Whether to write event files: not switched off, and the `tensorboard` package is installed."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return importlib.util.find_spec("tensorboard") is not None


class MirroredLog:
    """A training log that also writes each entry's numbers as TensorBoard scalars: `<name>/<field>` for a
    training entry, `<name>/validation_<policy|expert>/<field>` for a validation entry, at the entry's epoch or
    update."""

    def __init__(self, log, directory: Path, name: str) -> None:
        self.log, self.directory, self.name = log, Path(directory) / name, name
        self._writer = None
        self._last: float | None = None

    def _scalars(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # torch, and the optional `tensorboard` extra

            self._writer = SummaryWriter(log_dir=str(self.directory))
        return self._writer

    def __del__(self) -> None:  # the run's strategy is done with its log: close the event file
        if self._writer is not None:
            self._writer.close()

    def truncate(self, key: str, first_dropped: int) -> None:
        self.log.truncate(key, first_dropped)

    def write(self, entry: dict) -> None:
        self.log.write(entry)
        step = next((int(entry[key]) for key in STEP_KEYS if isinstance(entry.get(key), (int, float))), 0)
        prefix = f"{self.name}/validation_{entry['validation']}/" if "validation" in entry else f"{self.name}/"
        numbers = {key: float(value) for key, value in entry.items()
                   if key not in STEP_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)}
        now = time.perf_counter()
        if "validation" not in entry and "rows" in numbers and self._last is not None and now > self._last:
            numbers["rows_per_sec"] = numbers["rows"] / (now - self._last)
        if "validation" not in entry:
            self._last = now
        writer = self._scalars()
        for key, value in numbers.items():
            writer.add_scalar(prefix + key, value, step)
        writer.flush()


def mirror(log, directory: Path, name: str):
    """`log` itself, or (TensorBoard on, and this rank writes a log) `log` mirrored into `directory/name`."""
    if isinstance(log, NullLog) or not enabled():
        return log
    return MirroredLog(log, directory, name)
