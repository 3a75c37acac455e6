"""A training step described for people: the anneal's stages and the JSONL training log as Markdown tables, the
training curve as a picture, and where the TensorBoard event files are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from townlet_pipelines.nightly.outcome import FilePath, Markdown
from townlet_pipelines.pictures import markdown_image
from townlet_pipelines.training.tensorboard import FOLDER


def stage_table(stages) -> Markdown:
    """One row per anneal stage: its mode, whether it passed, its measures against their thresholds, its flags."""
    lines = ["| cycle | mode | passed | accuracy | threshold | loss | conflicts/agent-day | flags |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in stages:
        flags = ", ".join(name for name in ("loss_flag", "queue_flag", "intensity_flag") if getattr(stage, name)) or "-"
        cell = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
        lines.append(f"| {stage.cycle} | {stage.mode} | {'yes' if stage.passed else 'NO'} | {cell(stage.accuracy)} | "
                     f"{cell(stage.threshold)} | {cell(stage.loss)} | {cell(stage.queue_conflict_events)} | {flags} |")
    return Markdown("\n".join(lines))


def log_entries(log_dir: Path, prefix: str) -> list[dict]:
    """Every entry of the step's JSONL logs (`<prefix>*.jsonl`), in file order."""
    return [json.loads(line) for path in sorted(log_dir.glob(f"{prefix}*.jsonl"))
            for line in path.read_text().splitlines()]


def curve(log_dir: Path, prefix: str, keys: tuple[str, ...]) -> Markdown:
    """A Markdown table of the JSONL training log (its phase column too), beside the picture."""
    rows = [row for row in log_entries(log_dir, prefix) if "validation" not in row]
    lines = ["| step | phase | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for step, row in enumerate(rows):
        phase = row.get("phase") or row.get("mode", "")
        lines.append(f"| {step} | {phase} | " + " | ".join(f"{row.get(key, float('nan')):.4f}" for key in keys) + " |")
    return Markdown("\n".join(lines))


def picture(draw: Callable[[list[dict]], str], entries: list[dict], alt: str) -> Markdown:
    """A picture drawn from log entries, embedded in Markdown."""
    return Markdown(markdown_image(draw(entries), alt))


def tensorboard(folders: dict[str, Path]) -> dict:
    """Where the step's TensorBoard event files are (the `tensorboard` extra), and the one command that shows
    them beside the night's other training (BC is often reused from the cache, so it lives in another folder)."""
    found = {name: folder / FOLDER for name, folder in folders.items() if (folder / FOLDER).is_dir()}
    if not found:
        return {}
    own = list(found.values())[-1]
    spec = ",".join(f"{name}:{folder}" for name, folder in found.items())
    return {"tensorboard": FilePath(own), "tensorboard_command": f"tensorboard --logdir_spec {spec}"}
