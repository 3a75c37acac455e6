"""Small SVG pictures for people: training curves with their phases, held-out scores, and a town over a day.

Hand-written SVG rather than a plotting library: a picture costs a few milliseconds (matplotlib took 0.6 s to
import and about 0.35 s a figure, a tenth of a smoke night), the package needs no plotting dependency, and
vector text stays sharp at any zoom in Dagster's UI. The pictures travel inside Dagster metadata as Markdown
images (`markdown_image`, a `data:image/svg+xml;base64` URI) and `townlet simulate --render-svg` writes one.

The drawing helper below knows just what these pictures need: `_Scale` (a linear scale with ticks at round
values), `_Canvas` (SVG elements, text escaped for XML) and `_Axis` (a plot area with a left and an optional
right y axis, lines, markers, bars with error bars, shaded spans, reference lines, titles and a legend).
Values that are missing, NaN or infinite are skipped, and an empty input draws an empty axis with a note.
"""

from __future__ import annotations

import base64
import math
import re

import numpy as np

from townlet_pipelines.world.actions import ACTION_NAMES, OBJECT_TYPES

PHASE_COLOURS = {"expert": "#ffffff", "dagger": "#dbe9f6", "expert refresh": "#fdf1d0"}
OBJECT_COLOURS = {"fridge": "#4c9be8", "stove": "#e8744c", "shower": "#5cc9c0", "bed": "#9c7be0", "desk": "#8a8a8a"}
BAR_COLOURS = ("#2471a3", "#7d3c98", "#1e8449", "#a6acaf", "#ca6f1e", "#c0392b", "#17a589", "#5d6d7e")
IDLE, ON_ERRAND = "#222222", "#e74c3c"

TICK, LABEL, TITLE = 9, 10, 11  # font sizes (px)
_EM = 0.6  # a sans-serif glyph's mean width in ems, to lay out labels without measuring them
DASHED, DOTTED = "4 3", "1.5 2"
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def markdown_image(svg: str, alt: str) -> str:
    """Markdown that shows the picture inline (Dagster's UI renders it in a metadata entry)."""
    alt = " ".join(str(alt).replace("[", "(").replace("]", ")").split())
    return f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"


def _esc(text) -> str:
    text = _INVALID_XML.sub("", str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _n(value: float) -> str:
    """A coordinate to one decimal (".0" dropped): keeps the file small."""
    text = f"{value:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return "0" if text == "-0" else text


def _finite(value) -> float | None:
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _width(text: str, size: float) -> float:
    return len(text) * size * _EM


class _Scale:
    """A linear scale over the data domain [lo, hi], with ticks at round values (1, 2, 2.5, 5 times 10^k)."""

    def __init__(self, lo: float, hi: float, integer: bool = False) -> None:
        self.lo, self.hi, self.integer = max(lo, -1e300), min(hi, 1e300), integer

    @classmethod
    def fit(cls, values, margin: float = 0.05, integer: bool = False, zero: bool = False) -> "_Scale":
        """The finite values' range widened by `margin` on each side (a single value gets some room);
        `zero`: bars start at 0, so 0 is in the domain and no margin is added beyond it."""
        finite = [v for v in map(_finite, values) if v is not None]
        if not finite:
            return cls(0.0, 1.0, integer)
        lo, hi = min(finite), max(finite)
        if zero:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        lo, hi = max(lo, -1e300), min(hi, 1e300)
        if hi - lo <= 1e-12 * max(abs(lo), abs(hi)):  # one value (or as good as): give it some room
            pad = 0.5 if integer else (abs(lo) * 0.1 or 1.0)
            lo, hi = (0.0, 1.0) if zero else (lo - pad, hi + pad)  # with `zero`, only all zeros are flat
        else:
            pad = (hi - lo) * margin
            low_pad = 0.0 if zero and min(finite) >= 0 else pad
            high_pad = 0.0 if zero and max(finite) <= 0 else pad
            lo, hi = lo - low_pad, hi + high_pad
        return cls(lo, hi, integer)

    def at(self, value: float, start: float, end: float) -> float:
        """The pixel of `value` on a scale drawn from `start` (at lo) to `end` (at hi), kept near the page."""
        pixel = start + (value - self.lo) / (self.hi - self.lo) * (end - start)
        return min(max(pixel, -10_000.0), 10_000.0)

    def ticks(self, count: int = 5) -> list[tuple[float, str]]:
        span = self.hi - self.lo
        if not (span > 0 and math.isfinite(span)):
            return []
        raw = span / count
        magnitude = 10.0 ** math.floor(math.log10(raw))
        mantissa = next(m for m in ((1, 2, 5, 10) if self.integer else (1, 2, 2.5, 5, 10))
                        if m * magnitude >= raw * (1 - 1e-9))
        step = max(mantissa * magnitude, 1.0) if self.integer else mantissa * magnitude
        decimals = next((d for d in range(16) if abs(round(step, d) - step) <= step * 1e-6), 15)
        first, last = math.ceil(self.lo / step - 1e-9), math.floor(self.hi / step + 1e-9)
        ticks = []
        for k in range(first, min(last, first + 4 * count) + 1):
            text = f"{k * step:.{decimals}f}"
            ticks.append((k * step, "0" if float(text) == 0 else text))
        return ticks

    def label_width(self) -> float:
        return max((_width(text, TICK) for _, text in self.ticks()), default=0.0)


class _Canvas:
    """SVG elements in drawing order, on a white page of `width` x `height` pixels."""

    def __init__(self, width: float, height: float) -> None:
        self.width, self.height = width, height
        self.parts = [f'<rect width="{_n(width)}" height="{_n(height)}" fill="#fff"/>']
        self.clips: list[str] = []

    @staticmethod
    def _attrs(**attributes) -> str:
        out = []
        for name, value in attributes.items():
            if value is None:
                continue
            name = name.rstrip("_").replace("_", "-")
            out.append(f'{name}="{_n(value) if isinstance(value, float) else _esc(value)}"')
        return " ".join(out)

    def add(self, tag: str, **attributes) -> None:
        self.parts.append(f"<{tag} {self._attrs(**attributes)}/>")

    def rect(self, x: float, y: float, w: float, h: float, fill: str = "none", **attributes) -> None:
        self.add("rect", x=float(x), y=float(y), width=float(max(w, 0.0)), height=float(max(h, 0.0)), fill=fill,
                 **attributes)

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = "#222", **attributes) -> None:
        self.add("line", x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2), stroke=stroke, **attributes)

    def circle(self, x: float, y: float, r: float, fill: str, **attributes) -> None:
        self.add("circle", cx=float(x), cy=float(y), r=float(r), fill=fill, **attributes)

    def polyline(self, points: list[tuple[float, float]], stroke: str, **attributes) -> None:
        self.add("polyline", points=" ".join(f"{_n(x)},{_n(y)}" for x, y in points), fill="none", stroke=stroke,
                 **attributes)

    def text(self, x: float, y: float, text: str, size: int = TICK, anchor: str = "start", rotate: float = 0,
             **attributes) -> None:
        if "  " in str(text):
            attributes.setdefault("style", "white-space:pre")  # keep runs of spaces (e.g. "06:00  pantry 3")
        transform = f"rotate({_n(rotate)} {_n(x)} {_n(y)})" if rotate else None
        head = self._attrs(x=float(x), y=float(y), font_size=size if size != TICK else None,
                           text_anchor=anchor if anchor != "start" else None, transform=transform, **attributes)
        self.parts.append(f"<text {head}>{_esc(text)}</text>")

    def clip(self, x: float, y: float, w: float, h: float) -> str:
        name = f"c{len(self.clips)}"
        self.clips.append(f'<clipPath id="{name}"><rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" '
                          f'height="{_n(h)}"/></clipPath>')
        return f"url(#{name})"

    def svg(self) -> str:
        w, h = _n(self.width), _n(self.height)
        defs = f"<defs>{''.join(self.clips)}</defs>" if self.clips else ""
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
                f'font-family="sans-serif" font-size="{TICK}" fill="#222">{defs}'
                + "\n".join(self.parts) + "</svg>\n")


def _margin(scale: _Scale | None, label: str) -> float:
    """Room beside a plot area for a y axis's tick labels and its name."""
    if scale is None:
        return 10.0
    return 4 + scale.label_width() + 4 + (LABEL + 6 if label else 0)


class _Axis:
    """A plot area at (x, y, w, h) with scale `x` along the bottom, `left` on the left and optionally a second
    y scale `right` on the right (matplotlib's twinx). Marks are clipped to the area."""

    def __init__(self, canvas: _Canvas, box: tuple[float, float, float, float], x: _Scale, left: _Scale,
                 right: _Scale | None = None) -> None:
        self.canvas, (self.x0, self.y0, self.w, self.h) = canvas, box
        self.x, self.scales = x, {"left": left, "right": right}
        self.clip_url = canvas.clip(*box)

    def px(self, value: float) -> float:
        return self.x.at(value, self.x0, self.x0 + self.w)

    def py(self, value: float, side: str = "left") -> float:
        return self.scales[side].at(value, self.y0 + self.h, self.y0)

    def span(self, x_from: float, x_to: float, fill: str, **attributes) -> None:
        left, right = max(self.px(x_from), self.x0), min(self.px(x_to), self.x0 + self.w)
        self.canvas.rect(left, self.y0, right - left, self.h, fill, **attributes)

    def series(self, xs, ys, colour: str, side: str = "left", dash: str | None = None, marker: str | None = None,
               **attributes) -> int:
        """A line through the finite (x, y) points, with `marker` ("o", "s") at each; returns how many."""
        points = [(self.px(x), self.py(y, side)) for x, y in zip(map(_finite, xs), map(_finite, ys))
                  if x is not None and y is not None]
        if len(points) > 1:
            self.canvas.polyline(points, colour, stroke_width="1.5", stroke_dasharray=dash,
                                 clip_path=self.clip_url, **attributes)
        if marker or len(points) == 1:
            for x, y in points:
                _marker(self.canvas, x, y, marker or "o", colour, 3.0 if marker else 2.0, class_="marker")
        return len(points)

    def hline(self, value, colour: str, side: str = "left", dash: str | None = DOTTED, **attributes) -> None:
        if (value := _finite(value)) is not None:
            y = self.py(value, side)
            self.canvas.line(self.x0, y, self.x0 + self.w, y, colour, stroke_dasharray=dash, **attributes)

    def vline(self, value, colour: str, dash: str | None = DOTTED, **attributes) -> None:
        if (value := _finite(value)) is not None:
            x = self.px(value)
            self.canvas.line(x, self.y0, x, self.y0 + self.h, colour, stroke_dasharray=dash,
                             clip_path=self.clip_url, **attributes)

    def bar(self, at: float, value, half_width: float, fill: str, error=None) -> bool:
        """A bar from 0 to `value` centred on `at`, with a 95% error bar of half-height `error`."""
        if (value := _finite(value)) is None:
            return False
        left, right = self.px(at - half_width), self.px(at + half_width)
        top, bottom = sorted((self.py(value), self.py(0.0)))
        self.canvas.rect(left, top, right - left, bottom - top, fill, class_="bar", clip_path=self.clip_url)
        if (error := _finite(error)) is not None and error > 0:
            x, cap = self.px(at), min(4.0, (right - left) / 3)
            low, high = self.py(value - error), self.py(value + error)
            self.canvas.polyline([(x - cap, low), (x + cap, low), (x, low), (x, high), (x - cap, high),
                                  (x + cap, high)], "#222", class_="error", clip_path=self.clip_url)
        return True

    def frame(self, x_ticks: str = "labels", xlabel: str = "", ylabel: str = "", ylabel_right: str = "") -> None:
        """The box, the tick marks and their labels (`x_ticks`: "labels", "marks" or "none"), the axes' names."""
        canvas, bottom, right = self.canvas, self.y0 + self.h, self.x0 + self.w
        canvas.rect(self.x0, self.y0, self.w, self.h, stroke="#444", class_="frame")
        for value, text in self.x.ticks(6) if x_ticks != "none" else ():
            x = self.px(value)
            canvas.line(x, bottom, x, bottom + 3, "#444")
            if x_ticks == "labels":
                canvas.text(x, bottom + 12, text, anchor="middle")
        for side, edge, sign in (("left", self.x0, -1), ("right", right, 1)):
            if (scale := self.scales[side]) is None:
                continue
            for value, text in scale.ticks():
                y = self.py(value, side)
                canvas.line(edge, y, edge + 3 * sign, y, "#444")
                canvas.text(edge + 5 * sign, y + 3, text, anchor="end" if sign < 0 else "start")
        if xlabel:
            canvas.text(self.x0 + self.w / 2, bottom + 25, xlabel, LABEL, "middle")
        for label, side, edge, sign in ((ylabel, "left", self.x0, -1), (ylabel_right, "right", right, 1)):
            if label and self.scales[side] is not None:
                x = edge + sign * (_margin(self.scales[side], "") + LABEL / 2 + 1)
                canvas.text(x, self.y0 + self.h / 2, label, LABEL, "middle", rotate=-90,
                            dominant_baseline="central")

    def title(self, text: str) -> None:
        self.canvas.text(self.x0, self.y0 - 7, text, TITLE, font_weight="bold", class_="title")

    def legend(self, items: list[tuple[str, str, str | None, str | None]]) -> None:
        """(label, colour, dash, marker) samples in a row above the plot area's right edge."""
        widths = [22 + _width(label, TICK) + 10 for label, *_ in items]
        x, y = self.x0 + self.w - sum(widths) + 10, self.y0 - 7
        for (label, colour, dash, marker), width in zip(items, widths):
            self.canvas.line(x, y - 3, x + 18, y - 3, colour, stroke_width="1.5", stroke_dasharray=dash)
            if marker:
                _marker(self.canvas, x + 9, y - 3, marker, colour, 3.0)
            self.canvas.text(x + 22, y, label, class_="legend")
            x += width

    def note(self, text: str) -> None:
        self.canvas.text(self.x0 + self.w / 2, self.y0 + self.h / 2 + 4, text, LABEL, "middle", fill="#888",
                         class_="note")


def _marker(canvas: _Canvas, x: float, y: float, shape: str, colour: str, size: float, **attributes) -> None:
    if shape == "s":
        canvas.rect(x - size, y - size, 2 * size, 2 * size, colour, **attributes)
    else:
        canvas.circle(x, y, size, colour, **attributes)


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
    x = _Scale(-0.5, len(entries) - 0.5, integer=True) if entries else _Scale(0.0, 1.0, integer=True)
    left = _Scale.fit(column["loss"] + column["val_loss"])
    right = _Scale.fit(column["accuracy"] + column["val_accuracy"])
    canvas = _Canvas(560, 260)
    box_left, box_right = _margin(left, "loss"), _margin(right, "accuracy")
    axis = _Axis(canvas, (box_left, 30, canvas.width - box_left - box_right, 190), x, left, right)
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
    """PPO's loss and KL per update, and the validation scores every few updates (reward and conflicts per
    agent-day), with the expert's as dotted lines and the kept snapshot marked."""
    entries = _entries(entries)
    updates = [e for e in entries if "validation" not in e and _finite(e.get("update")) is not None]
    validations = [e for e in entries if e.get("validation") == "policy" and _finite(e.get("update")) is not None]
    expert = next((e for e in entries if e.get("validation") == "expert"), None) or {}
    x_of = lambda rows: [_finite(e["update"]) + 1 for e in rows]  # noqa: E731 - updates counted from 1
    ux, vx = x_of(updates), x_of(validations)
    if ux or vx:
        x = _Scale.fit(ux + vx, integer=True)
    else:
        x = _Scale(0.0, 1.0, integer=True)
    column = lambda rows, key: [e.get(key) for e in rows]  # noqa: E731
    loss, kl = _Scale.fit(column(updates, "loss_total")), _Scale.fit(column(updates, "kl"))
    reward_key, conflicts_key = "reward_per_agent_day", "queue_conflict_events_per_agent_day"
    reward = _Scale.fit(column(validations, reward_key) + ([expert.get(reward_key)] if validations else []))
    conflicts = _Scale.fit(column(validations, conflicts_key) + ([expert.get(conflicts_key)] if validations else []))
    canvas = _Canvas(560, 370)
    box_left = max(_margin(loss, "loss"), _margin(reward, "validation reward"))
    box_right = max(_margin(kl, "KL"), _margin(conflicts, "conflicts / agent-day"))
    width = canvas.width - box_left - box_right
    top = _Axis(canvas, (box_left, 30, width, 130), x, loss, kl)
    top.series(ux, column(updates, "loss_total"), "#c0392b", class_="series", data_key="loss_total")
    top.series(ux, column(updates, "kl"), "#7d3c98", "right", class_="series", data_key="kl")
    top.frame("marks", ylabel="loss", ylabel_right="KL")
    top.title("PPO")
    top.legend([("loss", "#c0392b", None, None), ("approx KL", "#7d3c98", None, None)])
    if not updates:
        top.note("no updates")

    bottom = _Axis(canvas, (box_left, 190, width, 140), x, reward, conflicts if validations else None)
    legend = [("reward", "#1e8449", None, "o"), ("conflicts", "#ca6f1e", None, "s")]
    if validations:
        kept = [e for e in validations if e.get("chosen")]
        if kept:
            bottom.vline(_finite(kept[-1]["update"]) + 1, "#555555", class_="kept")
            legend.append(("kept snapshot", "#555555", DOTTED, None))
        if _finite(expert.get(reward_key)) is not None or _finite(expert.get(conflicts_key)) is not None:
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
    return canvas.svg()


def comparison_svg(rows: dict[str, dict[str, float]]) -> str:
    """Policies side by side on the same towns: reward, queue conflicts and wages per agent-day, with 95%
    intervals over towns."""
    rows = {str(name): row for name, row in (rows or {}).items() if isinstance(row, dict)}
    names = list(rows)
    panels = (("reward_per_agent_day", "reward"), ("queue_conflict_events_per_agent_day", "queue conflicts"),
              ("wages_per_agent_day", "wages"))
    towns = _finite(next(iter(rows.values()), {}).get("towns"))
    labels = [name.replace("scripted ", "") for name in names]
    labels = [label if len(label) <= 14 else label[:13] + "\u2026" for label in labels]
    x = _Scale(-0.5, max(len(names), 1) - 0.5)
    scales = []
    for key, _ in panels:
        values = [_finite(rows[name].get(key)) for name in names]
        errors = [_finite(rows[name].get(f"{key}_ci95")) or 0.0 for name in names]
        scales.append(_Scale.fit([v + sign * e for v, e in zip(values, errors) if v is not None for sign in (-1, 1)],
                                 zero=True))
    panel_width = 220.0
    # the first name, slanted, reaches left of its bar: room for it before the first panel
    first_bar = _margin(scales[0], "") + (panel_width - _margin(scales[0], "") - 10) / (2 * max(len(names), 1))
    lead = max(0.0, 0.91 * _width(labels[0], TICK) - 3 - first_bar + 4) if labels else 0.0
    canvas = _Canvas(lead + panel_width * len(panels), 235)
    canvas.text(canvas.width / 2, 14, f"held-out towns ({int(towns) if towns is not None else '?'}, seeds.test), "
                "greedy", LABEL, "middle", class_="title")
    for index, ((key, title), y) in enumerate(zip(panels, scales)):
        values = [rows[name].get(key) for name in names]
        errors = [rows[name].get(f"{key}_ci95") for name in names]
        left = lead + index * panel_width + _margin(y, "")
        axis = _Axis(canvas, (left, 40, lead + (index + 1) * panel_width - 10 - left, 140), x, y)
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
        legend_width = sum(20 + _width(label, TICK) for label, _, _ in legend)
        canvas = _Canvas(max(max(len(chosen), 1) * (side + gap) + gap, _width(title, LABEL) + 20,
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
            _marker(canvas, x + 3.5, y - 3.5, shape, colour, 3.5 if shape == "s" else 3.0)
            canvas.text(x + 10, y, label, class_="legend")
            x += 20 + _width(label, TICK)
        return canvas.svg()


def town_day_svg(config, act, seed: int, frames: int = 6) -> str:
    """One town played by `act` for one day from `seed`, as a strip of `frames` pictures."""
    from townlet_pipelines.world.engine import TownWorld

    world = TownWorld(config, 1)
    world.reset(seed)
    strip = TownStrip(world, 0, frames)
    every = max(1, config.world.day_ticks // max(frames, 1))
    for tick in range(config.world.day_ticks):
        if tick % every == 0:
            strip.capture()
        actions = act(world)
        world.step(getattr(actions, "actions", actions))
    return strip.svg()
