"""The SVG pictures: well-formed, showing what they are given, sturdy on thin or odd input, and cheap."""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from townlet_pipelines.config import load_config
from townlet_pipelines.pictures import (
    PHASE_COLOURS, TownStrip, bc_curve_svg, comparison_svg, markdown_image, ppo_curve_svg, town_day_svg,
)
from townlet_pipelines.world.engine import TownWorld
from townlet_pipelines.world.policies import ScriptedExpert

NS = "{http://www.w3.org/2000/svg}"
NAN, INF = float("nan"), float("inf")
REWARD, CONFLICTS = "reward_per_agent_day", "queue_conflict_events_per_agent_day"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    assert len(svg.encode()) < 50_000
    for element in root.iter():  # every coordinate a plain number: NaN and inf never reach the page
        for name in ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height"):
            if element.get(name) is not None:
                assert math.isfinite(float(element.get(name))), (element.tag, name, element.get(name))
        for pair in (element.get("points") or "").split():
            assert all(math.isfinite(float(v)) for v in pair.split(","))
    return root


def find(root: ET.Element, tag: str, cls: str | None = None) -> list[ET.Element]:
    return [e for e in root.iter(f"{NS}{tag}") if cls is None or e.get("class") == cls]


def texts(root: ET.Element, cls: str | None = None) -> list[str]:
    return [e.text or "" for e in find(root, "text", cls)]


def points(line: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]


def series(root: ET.Element) -> dict[str, ET.Element]:
    return {line.get("data-key"): line for line in find(root, "polyline", "series")}


def frame_box(root: ET.Element, index: int = 0) -> tuple[float, float, float, float]:
    box = find(root, "rect", "frame")[index]
    return tuple(float(box.get(k)) for k in ("x", "y", "width", "height"))


# --- BC ---------------------------------------------------------------------------------------------------------

PHASES = ["expert 0", "expert 1", "dagger 1.0", "dagger 1.1", "expert refresh 1", "dagger 2.0", "expert refresh 2"]


def bc_entries(phases=PHASES) -> list[dict]:
    return [{"epoch": i, "phase": phase, "loss": 1.6 / (i + 1), "val_loss": 1.0 - 0.05 * i,
             "accuracy": 0.6 + 0.05 * i, "val_accuracy": 0.7 + 0.03 * i} for i, phase in enumerate(phases)]


def test_bc_curve_draws_four_series_through_every_epoch_over_phase_bands():
    root = parse(bc_curve_svg(bc_entries()))
    lines = series(root)
    assert set(lines) == {"loss", "val_loss", "accuracy", "val_accuracy"}
    assert all(len(points(line)) == len(PHASES) for line in lines.values())
    assert lines["val_loss"].get("stroke-dasharray") and not lines["loss"].get("stroke-dasharray")
    x, y, w, h = frame_box(root)
    loss, accuracy = points(lines["loss"]), points(lines["accuracy"])
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in loss + accuracy)
    assert [px for px, _ in loss] == sorted(px for px, _ in loss)  # epochs left to right
    assert loss[0][1] < loss[-1][1] and accuracy[0][1] > accuracy[-1][1]  # falling loss, rising accuracy
    assert loss[0][1] == pytest.approx(y, abs=0.06 * h)  # the loss scale is the loss's own (left), not shared

    bands = find(root, "rect", "phase")  # consecutive epochs of one phase are one band
    assert [band.get("fill") for band in bands] == [PHASE_COLOURS[p] for p in (
        "expert", "dagger", "expert refresh", "dagger", "expert refresh")]
    widths = [float(band.get("width")) for band in bands]
    assert widths[0] == pytest.approx(2 * widths[2], abs=0.3) and widths[1] == pytest.approx(2 * widths[3], abs=0.3)
    assert sum(widths) == pytest.approx(w, abs=0.5)
    assert {"loss", "val loss", "accuracy", "val accuracy"} <= set(texts(root, "legend"))
    assert texts(root, "title") == ["BC"]
    assert not find(root, "text", "note")


def test_bc_curve_skips_what_is_not_a_number_and_pads_a_flat_line():
    entries = bc_entries(["expert 0"] * 6)
    entries[2]["loss"], entries[3]["loss"], entries[4]["loss"] = NAN, INF, None
    del entries[5]["val_accuracy"]
    for entry in entries:
        entry["accuracy"] = 0.75  # all equal
    lines = series(parse(bc_curve_svg(entries)))
    assert len(points(lines["loss"])) == 3 and len(points(lines["val_accuracy"])) == 5
    flat = {py for _, py in points(lines["accuracy"])}
    assert len(flat) == 1


@pytest.mark.parametrize("entries", [
    [], [{"phase": "expert 0", "loss": 1.0, "val_loss": 1.1, "accuracy": 0.5, "val_accuracy": 0.4}],
    [{"loss": NAN, "val_loss": INF, "accuracy": -INF}], [{}, {"phase": None}, {"phase": 3, "loss": "high"}],
    [{"phase": "dagger 1.0", "loss": 1e308, "val_loss": -1e308, "accuracy": 1e-300, "val_accuracy": 0.0}],
])
def test_bc_curve_draws_thin_or_odd_logs(entries):
    root = parse(bc_curve_svg(entries))
    assert texts(root, "title") == ["BC"]
    assert ("no data" in texts(root, "note")) == (not entries)


def test_a_single_epoch_is_a_visible_point():
    root = parse(bc_curve_svg(bc_entries(["expert 0"])))
    assert not series(root) and len(find(root, "circle", "marker")) == 4


# --- PPO --------------------------------------------------------------------------------------------------------

def ppo_entries(updates: int = 8, chosen=(3,), expert: bool = True, every: int = 2) -> list[dict]:
    entries = [{"update": -1, "validation": "expert", REWARD: -30.0, CONFLICTS: 0.05}] if expert else []
    for update in range(updates):
        entries.append({"update": update, "mode": "rollout", "loss_total": 0.01 / (update + 1), "kl": 1e-4 * update})
        if update % every == every - 1:
            entries.append({"update": update, "validation": "policy", "chosen": update in chosen,
                            REWARD: -20.0 + update, CONFLICTS: 0.1 + 0.02 * update})
    return entries


def test_ppo_curve_shows_the_constraint_per_update_below_the_validations():
    entries = ppo_entries(every=4)
    for entry in entries:
        if entry.get("mode") == "rollout":
            entry.update(conflict_rate=0.05 * entry["update"], conflict_budget=0.2, lagrange_multiplier=max(0.0, entry["update"] - 4.0))
    root = parse(ppo_curve_svg(entries))
    lines = series(root)
    assert {"conflict_rate", "conflict_budget", "lagrange_multiplier"} <= set(lines)
    assert len(points(lines["conflict_rate"])) == len(points(lines["lagrange_multiplier"])) == 8
    budget = points(lines["conflict_budget"])
    assert len({py for _, py in budget}) == 1  # a constant budget is a flat line
    third = frame_box(root, 2)
    assert frame_box(root, 1)[1] + frame_box(root, 1)[3] < third[1]
    assert all(third[1] <= py <= third[1] + third[3] for _, py in points(lines["conflict_rate"]))
    unpriced = parse(ppo_curve_svg(ppo_entries()))
    assert "conflict_rate" not in series(unpriced) and any("no conflict budget" in t for t in texts(unpriced))


def test_ppo_curve_draws_updates_on_top_and_validations_below():
    root = parse(ppo_curve_svg(ppo_entries()))
    lines = series(root)
    assert set(lines) == {"loss_total", "kl", REWARD, CONFLICTS}
    assert len(points(lines["loss_total"])) == len(points(lines["kl"])) == 8
    assert len(points(lines[REWARD])) == len(points(lines[CONFLICTS])) == 4
    assert len(find(root, "circle", "marker")) == 4 and len(find(root, "rect", "marker")) == 4  # reward o, conflicts s
    top, bottom = frame_box(root, 0), frame_box(root, 1)
    assert top[1] + top[3] < bottom[1]  # loss and KL above, validation below, on one x scale
    assert all(top[1] <= py <= top[1] + top[3] for _, py in points(lines["kl"]))
    assert all(bottom[1] <= py <= bottom[1] + bottom[3] for _, py in points(lines[REWARD]))
    assert points(lines["loss_total"])[1][0] == pytest.approx(points(lines[REWARD])[0][0])  # update 1: same x

    kept = find(root, "line", "kept")
    assert len(kept) == 1 and float(kept[0].get("x1")) == pytest.approx(points(lines[REWARD])[1][0])  # update 3
    expert = find(root, "line", "expert")
    assert len(expert) == 2 and all(e.get("stroke-dasharray") for e in expert)
    assert float(expert[0].get("y1")) > max(py for _, py in points(lines[REWARD]))  # -30: below every reward
    assert {"loss", "approx KL", "reward", "conflicts", "kept snapshot", "expert"} <= set(texts(root, "legend"))
    assert "PPO" in texts(root, "title")


def test_ppo_curve_marks_the_last_kept_snapshot_only_when_one_was_chosen():
    assert not find(parse(ppo_curve_svg(ppo_entries(chosen=()))), "line", "kept")
    root = parse(ppo_curve_svg(ppo_entries(chosen=(1, 5))))
    kept = find(root, "line", "kept")
    assert len(kept) == 1 and float(kept[0].get("x1")) == pytest.approx(points(series(root)[REWARD])[2][0])
    assert "kept snapshot" not in texts(parse(ppo_curve_svg(ppo_entries(chosen=()))), "legend")


def test_ppo_curve_without_the_expert_or_any_validation():
    root = parse(ppo_curve_svg(ppo_entries(expert=False)))
    assert not find(root, "line", "expert") and "expert" not in texts(root, "legend")
    root = parse(ppo_curve_svg([e for e in ppo_entries() if "validation" not in e]))
    assert set(series(root)) == {"loss_total", "kl"} and "no validation" in texts(root, "note")


@pytest.mark.parametrize("entries", [
    [], ppo_entries(updates=0), ppo_entries(updates=1, every=1), [{"update": 0, "loss_total": NAN, "kl": INF}],
    [{"loss_total": 1.0}, {"update": None, "kl": 1.0}, {"validation": "policy", "update": 1}],
    [{"update": 0, "loss_total": 0.5, "kl": 0.5}, {"update": 1, "loss_total": 0.5, "kl": 0.5}],
    [{"update": -1, "validation": "expert"}, {"update": 1, "validation": "policy", "chosen": True, REWARD: NAN}],
])
def test_ppo_curve_draws_thin_or_odd_logs(entries):
    root = parse(ppo_curve_svg(entries))
    assert "PPO" in texts(root, "title")


# --- held-out comparison ----------------------------------------------------------------------------------------

def row(reward: float, conflicts: float, wages: float, ci: bool = True) -> dict:
    out = {REWARD: reward, CONFLICTS: conflicts, "wages_per_agent_day": wages, "towns": 32.0}
    if ci:
        out.update({f"{REWARD}_ci95": 0.5, f"{CONFLICTS}_ci95": 0.02, "wages_per_agent_day_ci95": 0.1})
    return out


ROWS = {"candidate": row(-18.0, 0.10, 1.7), "scripted expert": row(-22.0, 0.15, 3.4), "random": row(-61.0, 0.02, 0.3)}


def test_comparison_has_a_bar_and_an_error_bar_per_policy_in_each_panel():
    root = parse(comparison_svg(ROWS))
    bars = find(root, "rect", "bar")
    assert len(bars) == 3 * len(ROWS) and len(find(root, "polyline", "error")) == 3 * len(ROWS)
    assert texts(root, "name") == ["candidate", "expert", "random"] * 3
    assert texts(root, "title") == ["held-out towns (32, seeds.test)", "reward / agent-day",
                                    "queue conflicts / agent-day", "wages / agent-day"]
    assert len({bar.get("fill") for bar in bars[:3]}) == 3
    wages = [float(bar.get("height")) for bar in bars[6:]]
    assert wages[1] > wages[0] > wages[2]  # expert earns most, random least
    reward = [float(bar.get("y")) for bar in bars[:3]]
    assert reward[0] == reward[1] == reward[2]  # negative rewards hang from the zero line


def test_comparison_without_intervals_missing_values_and_many_policies():
    rows = {name: row(-20.0, 0.1, 2.0, ci=False) for name in ("a", "b", "c", "d", "e", "f")}
    rows["b"]["wages_per_agent_day"] = NAN
    del rows["c"][REWARD]
    root = parse(comparison_svg(rows))
    assert len(find(root, "rect", "bar")) == 3 * 6 - 2 and not find(root, "polyline", "error")
    assert len({bar.get("fill") for bar in find(root, "rect", "bar")}) == 6


def test_comparison_escapes_names_and_shortens_long_ones():
    root = parse(comparison_svg({"<A & \"B\">": row(-1.0, 0.1, 1.0), "x" * 40: row(-2.0, 0.2, 2.0)}))
    assert texts(root, "name")[:2] == ['<A & "B">', "x" * 13 + "\u2026"]


@pytest.mark.parametrize("rows", [
    {}, {"only": row(-1.0, 0.0, 0.0)}, {"flat": row(0.0, 0.0, 0.0, ci=False), "flat too": row(0.0, 0.0, 0.0)},
    {"odd": {REWARD: INF, f"{REWARD}_ci95": NAN, "towns": NAN}}, {"not a row": None},
])
def test_comparison_draws_thin_or_odd_rows(rows):
    root = parse(comparison_svg(rows))
    assert len(texts(root, "title")) == 4


# --- the town over a day ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def played():
    """Two smoke towns played by the expert for a day, town 1 captured every 30 ticks."""
    config = load_config("smoke")
    world = TownWorld(config, 2)
    world.reset(7)
    strip, expert = TownStrip(world, town=1, frames=6), ScriptedExpert(config.expert)
    for tick in range(config.world.day_ticks):
        if tick % 30 == 0:
            strip.capture()
        world.step(expert.act(world))
    return world, strip


def test_town_strip_draws_the_chosen_frames_of_its_own_town(played):
    world, strip = played
    assert len(strip.frames) == 12
    root = parse(strip.svg())
    panels, agents, objects = find(root, "rect", "panel"), find(root, "circle", "agent"), find(root, "rect", "object")
    agents_per_town = world.config.world.agents_per_town
    assert len(panels) == 6 and len(agents) == 6 * agents_per_town
    assert len(objects) == 6 * len(world.layout.object_type)
    titles = texts(root, "frame-title")
    assert len(titles) == 6 and all(re.fullmatch(r"\d\d:\d\d  pantry \d+", title) for title in titles)
    chosen = [strip.frames[int(i)] for i in np.linspace(0, 11, 6)]
    day = world.config.world.day_ticks
    assert titles == [f"{f['tick'] % day // 60:02d}:{f['tick'] % day % 60:02d}  pantry {f['meals']}" for f in chosen]
    size = world.layout.size
    for index, frame in enumerate(chosen):  # each marker sits on its agent's cell of town 1, red when on an errand
        px, py, side = (float(panels[index].get(k)) for k in ("x", "y", "width"))
        cell = side / size
        mine = agents[index * agents_per_town:(index + 1) * agents_per_town]
        drawn = sorted((round((float(a.get("cy")) - py) / cell - 0.5), round((float(a.get("cx")) - px) / cell - 0.5),
                        a.get("fill") == "#e74c3c") for a in mine)
        assert drawn == sorted(zip(frame["y"].tolist(), frame["x"].tolist(), (frame["option"] >= 0).tolist()))
    title = texts(root, "title")[0]
    assert title.startswith("town over a day (agents: black idle, red on an errand:")
    assert {"fridge", "stove", "shower", "bed", "desk", "idle", "on an errand"} <= set(texts(root, "legend"))


def test_town_strip_with_fewer_frames_than_wanted_or_none(played):
    world, _ = played
    strip = TownStrip(world, 0, frames=6)
    assert "no frames" in texts(parse(strip.svg()), "note")
    for _ in range(3):
        strip.capture()
    assert len(find(parse(strip.svg()), "rect", "panel")) == 3
    one = TownStrip(world, 0, frames=1)
    for _ in range(3):
        one.capture()
    assert len(find(parse(one.svg()), "rect", "panel")) == 1, "frames=1 draws one of the captured frames"


def test_town_day_plays_one_town_for_a_day():
    config = load_config("smoke")
    root = parse(town_day_svg(config, ScriptedExpert(config.expert).act, seed=3, frames=4))
    assert len(find(root, "rect", "panel")) == 4 and texts(root, "frame-title")[0].startswith("00:00  pantry ")


# --- Markdown and cost ------------------------------------------------------------------------------------------

def test_markdown_image_round_trips_the_svg():
    svg = comparison_svg({"café": row(-1.0, 0.1, 1.0)})
    text = markdown_image(svg, "held-out comparison")
    match = re.fullmatch(r"!\[held-out comparison\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", text)
    assert match and base64.b64decode(match.group(1)).decode() == svg


def test_pictures_import_no_plotting_library():
    code = ("import sys\n"
            "from townlet_pipelines.pictures import bc_curve_svg, markdown_image\n"
            "markdown_image(bc_curve_svg([{'phase': 'expert 0', 'loss': 1.0, 'val_loss': 1.0, 'accuracy': 0.5,"
            " 'val_accuracy': 0.5}]), 'bc')\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] in ('matplotlib', 'PIL')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fifty_points_stay_small():
    assert len(bc_curve_svg(bc_entries(["expert 0"] * 25 + ["dagger 1.0"] * 25)).encode()) < 20_000
    assert len(ppo_curve_svg(ppo_entries(updates=50)).encode()) < 25_000
