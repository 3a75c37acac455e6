"""Small PNG pictures for people: training curves with their phases, and a town over a day.

Drawn with matplotlib's Agg backend (no display needed), at a low resolution so each image stays a few tens
of kilobytes: they travel inside Dagster metadata as Markdown images (`markdown_image`) and are written by
`townlet simulate --render-png`. matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from townlet_pipelines.world.actions import ACTION_NAMES, OBJECT_TYPES

PHASE_COLOURS = {"expert": "#ffffff", "dagger": "#dbe9f6", "expert refresh": "#fdf1d0"}
OBJECT_COLOURS = {"fridge": "#4c9be8", "stove": "#e8744c", "shower": "#5cc9c0", "bed": "#9c7be0", "desk": "#8a8a8a"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows the picture inline (Dagster's UI renders it in a metadata entry)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _phase(label: str) -> str:
    return next((name for name in ("expert refresh", "dagger", "expert") if label.startswith(name)), "expert")


def bc_curve_png(entries: list[dict]) -> bytes:
    """Loss and accuracy per BC epoch (training and validation), the background coloured by phase: the
    expert's demonstrations, a DAgger round's own rollouts, the refresh on the demonstrations."""
    pyplot = _pyplot()
    figure, loss_axis = pyplot.subplots(figsize=(6.4, 2.8))
    steps = np.arange(len(entries))
    for step, entry in zip(steps, entries):
        loss_axis.axvspan(step - 0.5, step + 0.5, color=PHASE_COLOURS[_phase(entry.get("phase", ""))], lw=0)
    loss_axis.plot(steps, [e["loss"] for e in entries], color="#c0392b", label="loss")
    loss_axis.plot(steps, [e["val_loss"] for e in entries], color="#c0392b", ls="--", label="val loss")
    loss_axis.set_xlabel("epoch (white: expert, blue: DAgger, yellow: refresh)")
    loss_axis.set_ylabel("loss")
    accuracy_axis = loss_axis.twinx()
    accuracy_axis.plot(steps, [e["accuracy"] for e in entries], color="#2471a3", label="accuracy")
    accuracy_axis.plot(steps, [e["val_accuracy"] for e in entries], color="#2471a3", ls="--", label="val accuracy")
    accuracy_axis.set_ylabel("accuracy")
    handles = loss_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles=handles, fontsize=7, loc="center right")
    loss_axis.set_title("BC", fontsize=9)
    return _png(figure)


def ppo_curve_png(entries: list[dict]) -> bytes:
    """PPO's loss and KL per update, and the validation scores every few updates (reward and conflicts per
    agent-day), with the expert's as dotted lines and the kept snapshot marked."""
    pyplot = _pyplot()
    updates = [e for e in entries if "validation" not in e]
    validations = [e for e in entries if e.get("validation") == "policy"]
    expert = next((e for e in entries if e.get("validation") == "expert"), None)
    figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(6.4, 4.2), sharex=True)
    x = [e["update"] + 1 for e in updates]
    top.plot(x, [e["loss_total"] for e in updates], color="#c0392b", label="loss")
    top.set_ylabel("loss")
    kl = top.twinx()
    kl.plot(x, [e["kl"] for e in updates], color="#7d3c98", label="approx KL")
    kl.set_ylabel("KL")
    top.legend(handles=top.get_legend_handles_labels()[0] + kl.get_legend_handles_labels()[0], fontsize=7)
    top.set_title("PPO", fontsize=9)
    if validations:
        vx = [e["update"] + 1 for e in validations]
        bottom.plot(vx, [e["reward_per_agent_day"] for e in validations], "o-", color="#1e8449", label="reward")
        conflicts = bottom.twinx()
        conflicts.plot(vx, [e["queue_conflict_events_per_agent_day"] for e in validations], "s-", color="#ca6f1e",
                       label="conflicts")
        kept = [e for e in validations if e.get("chosen")]
        if kept:
            bottom.axvline(kept[-1]["update"] + 1, color="#555555", ls=":", lw=1)
        if expert is not None:
            bottom.axhline(expert["reward_per_agent_day"], color="#1e8449", ls=":", lw=1)
            conflicts.axhline(expert["queue_conflict_events_per_agent_day"], color="#ca6f1e", ls=":", lw=1)
        conflicts.set_ylabel("conflicts / agent-day")
        bottom.legend(handles=bottom.get_legend_handles_labels()[0] + conflicts.get_legend_handles_labels()[0],
                      fontsize=7, loc="lower right")
    bottom.set_ylabel("validation reward")
    bottom.set_xlabel("update (dotted: the expert; vertical: the kept snapshot)")
    return _png(figure)


def comparison_png(rows: dict[str, dict[str, float]]) -> bytes:
    """Policies side by side on the same towns: reward, queue conflicts and wages per agent-day, with 95%
    intervals over towns."""
    pyplot = _pyplot()
    names = list(rows)
    panels = (("reward_per_agent_day", "reward"), ("queue_conflict_events_per_agent_day", "queue conflicts"),
              ("wages_per_agent_day", "wages"))
    figure, axes = pyplot.subplots(1, len(panels), figsize=(7.6, 2.4))
    colours = ["#2471a3", "#7d3c98", "#1e8449", "#a6acaf"]
    for axis, (key, title) in zip(axes, panels):
        values = [rows[name][key] for name in names]
        errors = [rows[name].get(f"{key}_ci95", 0.0) for name in names]
        axis.bar(range(len(names)), values, yerr=errors, color=colours[:len(names)], capsize=3)
        axis.set_xticks(range(len(names)), [name.replace("scripted ", "") for name in names], fontsize=7,
                        rotation=20)
        axis.set_title(f"{title} / agent-day", fontsize=8)
        axis.tick_params(axis="y", labelsize=7)
    towns = int(next(iter(rows.values())).get("towns", 0))
    figure.suptitle(f"held-out towns ({towns}, seeds.test), greedy", fontsize=8, y=1.04)
    return _png(figure)


class TownStrip:
    """Frames of one town (positions, what each agent does) collected while a world runs, drawn side by side."""

    def __init__(self, world, town: int = 0, frames: int = 6) -> None:
        self.world, self.town, self.frames = world, town, []
        self.wanted = frames

    def capture(self) -> None:
        s, town = self.world.state, self.town
        self.frames.append({"tick": int(s.tick), "y": s.y[town].copy(), "x": s.x[town].copy(),
                            "option": np.where(s.active[town], s.option[town], -1), "meals": int(s.meals[town])})

    def png(self) -> bytes:
        pyplot = _pyplot()
        layout, day_ticks = self.world.layout, self.world.config.world.day_ticks
        chosen = [self.frames[int(i)] for i in np.linspace(0, len(self.frames) - 1, min(self.wanted, len(self.frames)))]
        figure, axes = pyplot.subplots(1, len(chosen), figsize=(2.0 * len(chosen), 2.3), squeeze=False)
        for axis, frame in zip(axes[0], chosen):
            axis.set_xlim(-0.5, layout.size - 0.5)
            axis.set_ylim(layout.size - 0.5, -0.5)
            axis.set_xticks([])
            axis.set_yticks([])
            for kind, name in enumerate(OBJECT_TYPES):
                at = layout.object_type == kind
                axis.scatter(layout.object_x[at], layout.object_y[at], marker="s", s=40, color=OBJECT_COLOURS[name],
                             label=name)
            busy = frame["option"] >= 0
            axis.scatter(frame["x"][~busy], frame["y"][~busy], s=14, color="#222222")
            axis.scatter(frame["x"][busy], frame["y"][busy], s=14, color="#e74c3c")
            minutes = frame["tick"] % day_ticks
            axis.set_title(f"{minutes // 60:02d}:{minutes % 60:02d}  pantry {frame['meals']}", fontsize=7)
        axes[0][0].legend(fontsize=5, loc="lower left", markerscale=0.6)
        figure.suptitle("town over a day (agents: black idle, red on an errand: "
                        + ", ".join(ACTION_NAMES[a] for a in sorted(set(np.concatenate(
                            [f["option"][f["option"] >= 0] for f in chosen] or [np.zeros(0, int)]).tolist())))
                        + ")", fontsize=7, y=1.06)
        return _png(figure)


def town_day_png(config, act, seed: int, frames: int = 6) -> bytes:
    """One town played by `act` for one day from `seed`, as a strip of `frames` pictures."""
    from townlet_pipelines.world.engine import TownWorld

    world = TownWorld(config, 1)
    world.reset(seed)
    strip = TownStrip(world, 0, frames)
    every = max(1, config.world.day_ticks // frames)
    for tick in range(config.world.day_ticks):
        if tick % every == 0:
            strip.capture()
        actions = act(world)
        world.step(getattr(actions, "actions", actions))
    return strip.png()
