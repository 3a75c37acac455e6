"""Text frames of one town, for `townlet simulate --render` and for debugging."""

from __future__ import annotations

import numpy as np

from townlet_pipelines.world.actions import ACTION_NAMES
from townlet_pipelines.world.engine import TownWorld

_OBJECT_GLYPHS = "FSHBD"  # fridge, stove, shower, bed, desk
_AGENT_GLYPHS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?"


def render_town(world: TownWorld, town: int = 0) -> str:
    s, layout = world.state, world.layout
    grid = np.full((layout.size, layout.size), ".", dtype="<U1")
    grid[layout.object_y, layout.object_x] = [_OBJECT_GLYPHS[t] for t in layout.object_type]
    for agent in range(world.agents):
        y, x = s.y[town, agent], s.x[town, agent]
        grid[y, x] = _AGENT_GLYPHS[agent] if grid[y, x] == "." else "*"
    day, tod = divmod(s.tick, world.config.world.day_ticks)
    lines = [f"town {town}  day {day}  {tod // 60:02d}:{tod % 60:02d}  pantry {s.meals[town]} meals"]
    lines += ["".join(row) for row in grid]
    for agent in range(world.agents):
        hunger, hygiene, energy = s.needs[town, agent]
        state = "using" if s.holding[town, agent] else "queued" if s.queued[town, agent] else ""
        option = ACTION_NAMES[s.option[town, agent]] if s.active[town, agent] else "-"
        lines.append(
            f"{_AGENT_GLYPHS[agent]}: hunger {hunger:.2f} hygiene {hygiene:.2f} energy {energy:.2f} "
            f"wallet {s.wallet[town, agent]:6.2f}  {option} {state}".rstrip()
        )
    return "\n".join(lines)
