"""Small SVG pictures for people: training curves with their phases, held-out scores, and a town over a day.

Hand-written SVG rather than a plotting library: a picture costs a few milliseconds (matplotlib took 0.6 s to
import and about 0.35 s a figure, a tenth of a smoke night), the package needs no plotting dependency, and
vector text stays sharp at any zoom in Dagster's UI. The pictures travel inside Dagster metadata as Markdown
images (`markdown_image`, a `data:image/svg+xml;base64` URI) and `townlet simulate --render-svg` writes one.

They are drawn with the small kit in `svg.py`; values that are missing, NaN or infinite are skipped, and an
empty input draws an empty axis with a note.
"""

from __future__ import annotations

import base64

import numpy as np

from townlet_pipelines.svg import (
    DASHED, DOTTED, LABEL, TICK, Axis, Canvas, Scale, as_finite, axis_margin, draw_marker, text_width,
)
from townlet_pipelines.world.actions import ACTION_NAMES, OBJECT_TYPES
from townlet_pipelines.world.engine import TownWorld

PHASE_COLOURS = {"expert": "#ffffff", "dagger": "#dbe9f6", "expert refresh": "#fdf1d0"}
OBJECT_COLOURS = {"fridge": "#4c9be8", "stove": "#e8744c", "shower": "#5cc9c0", "bed": "#9c7be0", "desk": "#8a8a8a"}
BAR_COLOURS = ("#2471a3", "#7d3c98", "#1e8449", "#a6acaf", "#ca6f1e", "#c0392b", "#17a589", "#5d6d7e")
IDLE, ON_ERRAND = "#222222", "#e74c3c"


def markdown_image(svg: str, alt: str) -> str:
    """Markdown that shows the picture inline (Dagster's UI renders it in a metadata entry)."""
    alt = " ".join(str(alt).replace("[", "(").replace("]", ")").split())
    return f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"


def _entries(entries) -> list[dict]:
    return [entry for entry in entries or () if isinstance(entry, dict)]


def _phase(label) -> str:
    label = str(label or "")
    return next((name for name in ("expert refresh", "dagger", "expert") if label.startswith(name)), "expert")


def bc_curve_svg(entries: list[dict]) -> str:
    """Loss and accuracy per BC epoch (training and validation), the background coloured by phase: the
    expert's demonstrations, a DAgger round's own rollouts, the refresh on the demonstrations."""
    entries = _entries(entries)
    steps = list(range(len(entries)))
    column = {key: [entry.get(key) for entry in entries] for key in ("loss", "val_loss", "accuracy", "val_accuracy")}
    x = Scale(-0.5, len(entries) - 0.5, integer=True) if entries else Scale(0.0, 1.0, integer=True)
    left = Scale.fit(column["loss"] + column["val_loss"])
    right = Scale.fit(column["accuracy"] + column["val_accuracy"])
    canvas = Canvas(560, 260)
    box_left, box_right = axis_margin(left, "loss"), axis_margin(right, "accuracy")
    axis = Axis(canvas, (box_left, 30, canvas.width - box_left - box_right, 190), x, left, right)
    runs: list[list] = []  # [phase, first step, last step]
    for step, entry in zip(steps, entries):
        phase = _phase(entry.get("phase"))
        if runs and runs[-1][0] == phase:
            runs[-1][2] = step
        else:
            runs.append([phase, step, step])
    for phase, first, last in runs:
        axis.span(first - 0.5, last + 0.5, PHASE_COLOURS[phase], class_="phase")
    lines = (("loss", "loss", "#c0392b", None, "left"), ("val_loss", "val loss", "#c0392b", DASHED, "left"),
             ("accuracy", "accuracy", "#2471a3", None, "right"),
             ("val_accuracy", "val accuracy", "#2471a3", DASHED, "right"))
    for key, label, colour, dash, side in lines:
        axis.series(steps, column[key], colour, side, dash, class_="series", data_key=key)
    axis.frame(xlabel="epoch (white: expert, blue: DAgger, yellow: refresh)", ylabel="loss", ylabel_right="accuracy")
    axis.title("BC")
    axis.legend([(label, colour, dash, None) for _, label, colour, dash, _ in lines])
    if not entries:
        axis.note("no data")
    return canvas.svg()


def ppo_curve_svg(entries: list[dict]) -> str:
    """PPO's loss and KL per update; the validation scores every few updates (reward and conflicts per
    agent-day), with the expert's as dotted lines and the kept snapshot marked; and the constraint per update
    (the rollouts' conflict rate, its budget and the multiplier λ)."""
    entries = _entries(entries)
    updates = [e for e in entries if "validation" not in e and as_finite(e.get("update")) is not None]
    validations = [e for e in entries if e.get("validation") == "policy" and as_finite(e.get("update")) is not None]
    expert = next((e for e in entries if e.get("validation") == "expert"), None) or {}
    x_of = lambda rows: [as_finite(e["update"]) + 1 for e in rows]  # noqa: E731 - updates counted from 1
    ux, vx = x_of(updates), x_of(validations)
    if ux or vx:
        x = Scale.fit(ux + vx, integer=True)
    else:
        x = Scale(0.0, 1.0, integer=True)
    column = lambda rows, key: [e.get(key) for e in rows]  # noqa: E731
    loss, kl = Scale.fit(column(updates, "loss_total")), Scale.fit(column(updates, "kl"))
    reward_key, conflicts_key = "reward_per_agent_day", "queue_conflict_events_per_agent_day"
    reward = Scale.fit(column(validations, reward_key) + ([expert.get(reward_key)] if validations else []))
    conflicts = Scale.fit(column(validations, conflicts_key) + ([expert.get(conflicts_key)] if validations else []))
    canvas = Canvas(560, 525)
    box_left = max(axis_margin(loss, "loss"), axis_margin(reward, "validation reward"))
    box_right = max(axis_margin(kl, "KL"), axis_margin(conflicts, "conflicts / agent-day"))
    width = canvas.width - box_left - box_right
    top = Axis(canvas, (box_left, 30, width, 130), x, loss, kl)
    top.series(ux, column(updates, "loss_total"), "#c0392b", class_="series", data_key="loss_total")
    top.series(ux, column(updates, "kl"), "#7d3c98", "right", class_="series", data_key="kl")
    top.frame("marks", ylabel="loss", ylabel_right="KL")
    top.title("PPO")
    top.legend([("loss", "#c0392b", None, None), ("approx KL", "#7d3c98", None, None)])
    if not updates:
        top.note("no updates")

    bottom = Axis(canvas, (box_left, 190, width, 140), x, reward, conflicts if validations else None)
    legend = [("reward", "#1e8449", None, "o"), ("conflicts", "#ca6f1e", None, "s")]
    if validations:
        kept = [e for e in validations if e.get("chosen")]
        if kept:
            bottom.vline(as_finite(kept[-1]["update"]) + 1, "#555555", class_="kept")
            legend.append(("kept snapshot", "#555555", DOTTED, None))
        if as_finite(expert.get(reward_key)) is not None or as_finite(expert.get(conflicts_key)) is not None:
            bottom.hline(expert.get(reward_key), "#1e8449", class_="expert")
            bottom.hline(expert.get(conflicts_key), "#ca6f1e", "right", class_="expert")
            legend.append(("expert", "#888888", DOTTED, None))
        bottom.series(vx, column(validations, reward_key), "#1e8449", marker="o", class_="series",
                      data_key=reward_key)
        bottom.series(vx, column(validations, conflicts_key), "#ca6f1e", "right", marker="s", class_="series",
                      data_key=conflicts_key)
        bottom.legend(legend)
    else:
        bottom.note("no validation")
    bottom.frame(xlabel="update (dotted: the expert; vertical: the kept snapshot)", ylabel="validation reward",
                 ylabel_right="conflicts / agent-day")
    _constraint_panel(canvas, (box_left, 385, width, 110), x, updates)
    return canvas.svg()


def _constraint_panel(canvas: Canvas, box, x: Scale, updates: list[dict]) -> None:
    """Constrained PPO per update: the rollouts' conflict rate against its budget, and the price λ it set."""
    priced = [e for e in updates if as_finite(e.get("conflict_budget")) is not None]
    xs = [as_finite(e["update"]) + 1 for e in priced]
    rate = [e.get("conflict_rate") for e in priced]
    budget = [e.get("conflict_budget") for e in priced]
    price = [e.get("lagrange_multiplier") for e in priced]
    left = Scale.fit(rate + budget, zero=True)
    right = Scale.fit(price, zero=True)
    axis = Axis(canvas, box, x, left, right if priced else None)
    if priced:
        axis.series(xs, rate, "#ca6f1e", marker="s", class_="series", data_key="conflict_rate")
        axis.series(xs, budget, "#ca6f1e", dash=DOTTED, class_="series", data_key="conflict_budget")
        axis.series(xs, price, "#2e4053", "right", class_="series", data_key="lagrange_multiplier")
        axis.legend([("rollout conflicts", "#ca6f1e", None, "s"), ("budget", "#ca6f1e", DOTTED, None),
                     ("price λ", "#2e4053", None, None)])
    else:
        axis.note("no conflict budget (ppo.conflict_budget 0)")
    axis.frame(xlabel="update", ylabel="conflicts / agent-day", ylabel_right="λ (reward per conflict)")


def comparison_svg(rows: dict[str, dict[str, float]]) -> str:
    """Policies side by side on the same towns: reward, queue conflicts and wages per agent-day, with 95%
    intervals over towns."""
    rows = {str(name): row for name, row in (rows or {}).items() if isinstance(row, dict)}
    names = list(rows)
    panels = (("reward_per_agent_day", "reward"), ("queue_conflict_events_per_agent_day", "queue conflicts"),
              ("wages_per_agent_day", "wages"))
    towns = as_finite(next(iter(rows.values()), {}).get("towns"))
    labels = [name.replace("scripted ", "") for name in names]
    labels = [label if len(label) <= 14 else label[:13] + "\u2026" for label in labels]
    x = Scale(-0.5, max(len(names), 1) - 0.5)
    scales = []
    for key, _ in panels:
        values = [as_finite(rows[name].get(key)) for name in names]
        errors = [as_finite(rows[name].get(f"{key}_ci95")) or 0.0 for name in names]
        scales.append(Scale.fit([v + sign * e for v, e in zip(values, errors) if v is not None for sign in (-1, 1)],
                                 zero=True))
    panel_width = 220.0
    # the first name, slanted, reaches left of its bar: room for it before the first panel
    inset = axis_margin(scales[0], "")
    first_bar = inset + (panel_width - inset - 10) / (2 * max(len(names), 1))
    lead = max(0.0, 0.91 * text_width(labels[0], TICK) - 3 - first_bar + 4) if labels else 0.0
    canvas = Canvas(lead + panel_width * len(panels), 235)
    canvas.text(canvas.width / 2, 14, f"held-out towns ({int(towns) if towns is not None else '?'}, seeds.test)",
                LABEL, "middle", class_="title")
    for index, ((key, title), y) in enumerate(zip(panels, scales)):
        values = [rows[name].get(key) for name in names]
        errors = [rows[name].get(f"{key}_ci95") for name in names]
        left = lead + index * panel_width + axis_margin(y, "")
        axis = Axis(canvas, (left, 40, lead + (index + 1) * panel_width - 10 - left, 140), x, y)
        if y.lo < 0 < y.hi:
            axis.hline(0.0, "#999", dash=None)
        for slot, (value, error) in enumerate(zip(values, errors)):
            axis.bar(slot, value, 0.35, BAR_COLOURS[slot % len(BAR_COLOURS)], error)
        axis.frame("none")
        for slot, label in enumerate(labels):
            at = axis.px(slot)
            canvas.line(at, axis.y0 + axis.h, at, axis.y0 + axis.h + 3, "#444")
            canvas.text(at + 3, axis.y0 + axis.h + 12, label, anchor="end", rotate=-25, class_="name")
        canvas.text(axis.x0 + axis.w / 2, axis.y0 - 7, f"{title} / agent-day", LABEL, "middle", class_="title")
        if not names:
            axis.note("no data")
    return canvas.svg()


class TownStrip:
    """Frames of one town (positions, what each agent does) collected while a world runs, drawn side by side."""

    def __init__(self, world, town: int = 0, frames: int = 6) -> None:
        self.world, self.town, self.frames = world, town, []
        self.wanted = frames

    def capture(self) -> None:
        s, town = self.world.state, self.town
        self.frames.append({"tick": int(s.tick), "y": s.y[town].copy(), "x": s.x[town].copy(),
                            "option": np.where(s.active[town], s.option[town], -1), "meals": int(s.meals[town])})

    def chosen(self) -> list[dict]:
        """Up to `frames` captured frames, evenly spread from the first to the last."""
        count = min(self.wanted, len(self.frames))
        return [self.frames[int(i)] for i in np.linspace(0, len(self.frames) - 1, count)] if count > 0 else []

    def svg(self) -> str:
        layout, day_ticks = self.world.layout, self.world.config.world.day_ticks
        chosen = self.chosen()
        cell = max(3.0, min(8.0, 128.0 / layout.size))
        side, gap = cell * layout.size, 14.0
        errands = sorted({int(o) for frame in chosen for o in frame["option"] if o >= 0})
        names = ", ".join(ACTION_NAMES[a] for a in errands if a < len(ACTION_NAMES))
        title = f"town over a day (agents: black idle, red on an errand{': ' + names if names else ''})"
        legend = [(name, OBJECT_COLOURS.get(name, "#8a8a8a"), "s") for name in OBJECT_TYPES]
        legend += [("idle", IDLE, "o"), ("on an errand", ON_ERRAND, "o")]
        legend_width = sum(20 + text_width(label, TICK) for label, _, _ in legend)
        canvas = Canvas(max(max(len(chosen), 1) * (side + gap) + gap, text_width(title, LABEL) + 20,
                             legend_width + 2 * gap), side + 72)
        canvas.text(canvas.width / 2, 14, title, LABEL, "middle", class_="title")
        top = 40.0
        for index, frame in enumerate(chosen):
            left = gap + index * (side + gap)
            canvas.rect(left, top, side, side, stroke="#444", class_="panel")
            for kind, y, x in zip(layout.object_type, layout.object_y, layout.object_x):
                name = OBJECT_TYPES[int(kind)]
                canvas.rect(left + (x + 0.1) * cell, top + (y + 0.1) * cell, 0.8 * cell, 0.8 * cell,
                            OBJECT_COLOURS.get(name, "#8a8a8a"), class_="object")
            for y, x, option in zip(frame["y"], frame["x"], frame["option"]):
                canvas.circle(left + (x + 0.5) * cell, top + (y + 0.5) * cell, 0.35 * cell,
                              ON_ERRAND if option >= 0 else IDLE, class_="agent")
            minutes = frame["tick"] % day_ticks
            canvas.text(left + side / 2, top - 5, f"{minutes // 60:02d}:{minutes % 60:02d}  pantry {frame['meals']}",
                        anchor="middle", class_="frame-title")
        if not chosen:
            canvas.rect(gap, top, side, side, stroke="#444", class_="empty")
            canvas.text(gap + side / 2, top + side / 2, "no frames", LABEL, "middle", fill="#888", class_="note")
        x, y = gap, top + side + 18
        for label, colour, shape in legend:
            draw_marker(canvas, x + 3.5, y - 3.5, shape, colour, 3.5 if shape == "s" else 3.0)
            canvas.text(x + 10, y, label, class_="legend")
            x += 20 + text_width(label, TICK)
        return canvas.svg()


class FirstDay:
    """An `on_tick(world)` hook that keeps town 0's first day as a `TownStrip` of `frames` evenly spaced
    pictures (`.strip`, None before the first tick); a later episode of the same towns is not drawn."""

    def __init__(self, day_ticks: int, frames: int = 6) -> None:
        self.day_ticks, self.frames, self.every = day_ticks, frames, max(1, day_ticks // max(frames, 1))
        self.ticks, self.strip = 0, None

    def __call__(self, world) -> None:
        if self.ticks < self.day_ticks and self.ticks % self.every == 0:
            self.strip = self.strip or TownStrip(world, 0, self.frames)
            self.strip.capture()
        self.ticks += 1


def town_day_svg(config, act, seed: int, frames: int = 6) -> str:
    """One town played by `act` for one day from `seed`, as a strip of `frames` pictures."""
    world = TownWorld(config, 1)
    world.reset(seed)
    watch = FirstDay(config.world.day_ticks, frames)
    for _ in range(config.world.day_ticks):
        watch(world)
        actions = act(world)
        world.step(getattr(actions, "actions", actions))
    return watch.strip.svg()
