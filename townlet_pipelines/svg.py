"""A small SVG drawing kit for the project's pictures (`pictures.py`): just what they need, no plotting library.

`Scale` maps data to pixels with ticks at round values, `Canvas` collects SVG elements (text escaped for XML),
`Axis` is a plot area with a left and an optional right y axis, lines, markers, bars with error bars, shaded
spans, reference lines, titles and a legend. Values that are missing, NaN or infinite are skipped.
"""

from __future__ import annotations

import math
import re

TICK, LABEL, TITLE = 9, 10, 11  # font sizes (px)
_EM = 0.6  # a sans-serif glyph's mean width in ems, to lay out labels without measuring them
DASHED, DOTTED = "4 3", "1.5 2"
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")




def escape(text) -> str:
    text = _INVALID_XML.sub("", str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def fmt(value: float) -> str:
    """A coordinate to one decimal (".0" dropped): keeps the file small."""
    text = f"{value:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return "0" if text == "-0" else text


def as_finite(value) -> float | None:
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def text_width(text: str, size: float) -> float:
    return len(text) * size * _EM


class Scale:
    """A linear scale over the data domain [lo, hi], with ticks at round values (1, 2, 2.5, 5 times 10^k)."""

    def __init__(self, lo: float, hi: float, integer: bool = False) -> None:
        self.lo, self.hi, self.integer = max(lo, -1e300), min(hi, 1e300), integer

    @classmethod
    def fit(cls, values, margin: float = 0.05, integer: bool = False, zero: bool = False) -> "Scale":
        """The finite values' range widened by `margin` on each side (a single value gets some room);
        `zero`: bars start at 0, so 0 is in the domain and no margin is added beyond it."""
        finite = [v for v in map(as_finite, values) if v is not None]
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
        return max((text_width(text, TICK) for _, text in self.ticks()), default=0.0)


class Canvas:
    """SVG elements in drawing order, on a white page of `width` x `height` pixels."""

    def __init__(self, width: float, height: float) -> None:
        self.width, self.height = width, height
        self.parts = [f'<rect width="{fmt(width)}" height="{fmt(height)}" fill="#fff"/>']
        self.clips: list[str] = []

    @staticmethod
    def _attrs(**attributes) -> str:
        out = []
        for name, value in attributes.items():
            if value is None:
                continue
            name = name.rstrip("_").replace("_", "-")
            out.append(f'{name}="{fmt(value) if isinstance(value, float) else escape(value)}"')
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
        self.add("polyline", points=" ".join(f"{fmt(x)},{fmt(y)}" for x, y in points), fill="none", stroke=stroke,
                 **attributes)

    def text(self, x: float, y: float, text: str, size: int = TICK, anchor: str = "start", rotate: float = 0,
             **attributes) -> None:
        if "  " in str(text):
            attributes.setdefault("style", "white-space:pre")  # keep runs of spaces (e.g. "06:00  pantry 3")
        transform = f"rotate({fmt(rotate)} {fmt(x)} {fmt(y)})" if rotate else None
        head = self._attrs(x=float(x), y=float(y), font_size=size if size != TICK else None,
                           text_anchor=anchor if anchor != "start" else None, transform=transform, **attributes)
        self.parts.append(f"<text {head}>{escape(text)}</text>")

    def clip(self, x: float, y: float, w: float, h: float) -> str:
        name = f"c{len(self.clips)}"
        self.clips.append(f'<clipPath id="{name}"><rect x="{fmt(x)}" y="{fmt(y)}" width="{fmt(w)}" '
                          f'height="{fmt(h)}"/></clipPath>')
        return f"url(#{name})"

    def svg(self) -> str:
        w, h = fmt(self.width), fmt(self.height)
        defs = f"<defs>{''.join(self.clips)}</defs>" if self.clips else ""
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
                f'font-family="sans-serif" font-size="{TICK}" fill="#222">{defs}'
                + "\n".join(self.parts) + "</svg>\n")


def axis_margin(scale: Scale, label: str) -> float:
    """Room beside a plot area for a y axis's tick labels and its name."""
    return 4 + scale.label_width() + 4 + (LABEL + 6 if label else 0)


class Axis:
    """A plot area at (x, y, w, h) with scale `x` along the bottom, `left` on the left and optionally a second
    y scale `right` on the right (matplotlib's twinx). Marks are clipped to the area."""

    def __init__(self, canvas: Canvas, box: tuple[float, float, float, float], x: Scale, left: Scale,
                 right: Scale | None = None) -> None:
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
        points = [(self.px(x), self.py(y, side)) for x, y in zip(map(as_finite, xs), map(as_finite, ys))
                  if x is not None and y is not None]
        if len(points) > 1:
            self.canvas.polyline(points, colour, stroke_width="1.5", stroke_dasharray=dash,
                                 clip_path=self.clip_url, **attributes)
        if marker or len(points) == 1:
            for x, y in points:
                draw_marker(self.canvas, x, y, marker or "o", colour, 3.0 if marker else 2.0, class_="marker")
        return len(points)

    def hline(self, value, colour: str, side: str = "left", dash: str | None = DOTTED, **attributes) -> None:
        if (value := as_finite(value)) is not None:
            y = self.py(value, side)
            self.canvas.line(self.x0, y, self.x0 + self.w, y, colour, stroke_dasharray=dash, **attributes)

    def vline(self, value, colour: str, dash: str | None = DOTTED, **attributes) -> None:
        if (value := as_finite(value)) is not None:
            x = self.px(value)
            self.canvas.line(x, self.y0, x, self.y0 + self.h, colour, stroke_dasharray=dash,
                             clip_path=self.clip_url, **attributes)

    def bar(self, at: float, value, half_width: float, fill: str, error=None) -> bool:
        """A bar from 0 to `value` centred on `at`, with a 95% error bar of half-height `error`."""
        if (value := as_finite(value)) is None:
            return False
        left, right = self.px(at - half_width), self.px(at + half_width)
        top, bottom = sorted((self.py(value), self.py(0.0)))
        self.canvas.rect(left, top, right - left, bottom - top, fill, class_="bar", clip_path=self.clip_url)
        if (error := as_finite(error)) is not None and error > 0:
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
                x = edge + sign * (axis_margin(self.scales[side], "") + LABEL / 2 + 1)
                canvas.text(x, self.y0 + self.h / 2, label, LABEL, "middle", rotate=-90,
                            dominant_baseline="central")

    def title(self, text: str) -> None:
        self.canvas.text(self.x0, self.y0 - 7, text, TITLE, font_weight="bold", class_="title")

    def legend(self, items: list[tuple[str, str, str | None, str | None]]) -> None:
        """(label, colour, dash, marker) samples in a row above the plot area's right edge."""
        widths = [22 + text_width(label, TICK) + 10 for label, *_ in items]
        x, y = self.x0 + self.w - sum(widths) + 10, self.y0 - 7
        for (label, colour, dash, marker), width in zip(items, widths):
            self.canvas.line(x, y - 3, x + 18, y - 3, colour, stroke_width="1.5", stroke_dasharray=dash)
            if marker:
                draw_marker(self.canvas, x + 9, y - 3, marker, colour, 3.0)
            self.canvas.text(x + 22, y, label, class_="legend")
            x += width

    def note(self, text: str) -> None:
        self.canvas.text(self.x0 + self.w / 2, self.y0 + self.h / 2 + 4, text, LABEL, "middle", fill="#888",
                         class_="note")


def draw_marker(canvas: Canvas, x: float, y: float, shape: str, colour: str, size: float, **attributes) -> None:
    if shape == "s":
        canvas.rect(x - size, y - size, 2 * size, 2 * size, colour, **attributes)
    else:
        canvas.circle(x, y, size, colour, **attributes)
