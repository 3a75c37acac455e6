"""The town's static map: where objects stand, which tiles are walkable, and distance fields to objects.

The layout depends only on the config, so every town of a batch shares it, and walking reduces to a
gather from precomputed next-move fields (breadth-first search once, at construction).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from townlet_pipelines.config import WorldConfig, layout_band_width, layout_groups
from townlet_pipelines.world.actions import MOVE_DELTAS, OBJECT_TYPES

UNREACHABLE = np.int32(1 << 20)


@dataclass(frozen=True)
class Layout:
    size: int
    object_type: np.ndarray  # (O,) index into OBJECT_TYPES
    object_y: np.ndarray  # (O,) tile of the object itself (not walkable)
    object_x: np.ndarray
    access_y: np.ndarray  # (O,) tile an agent stands on to use the object
    access_x: np.ndarray
    passable: np.ndarray  # (H, W) bool
    distance: np.ndarray  # (O, H, W) int32 path length to the access tile
    next_move: np.ndarray  # (O, H, W) int8 move code 0..3 toward it, -1 when there (or unreachable)
    desk_of_agent: np.ndarray  # (N,) object index of each agent's own desk
    job_of_agent: np.ndarray  # (N,)
    home_bed: np.ndarray  # (N,) object index of the bed an agent respawns beside
    type_slots: np.ndarray  # (T, K) object indices of each type, padded with -1

    @property
    def num_objects(self) -> int:
        return len(self.object_type)


def _bfs(passable: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    size_y, size_x = passable.shape
    dist = np.full(passable.shape, UNREACHABLE, dtype=np.int32)
    dist[start] = 0
    frontier = deque([start])
    while frontier:
        y, x = frontier.popleft()
        for dy, dx in MOVE_DELTAS:
            ny, nx = y + dy, x + dx
            if 0 <= ny < size_y and 0 <= nx < size_x and passable[ny, nx] and dist[ny, nx] == UNREACHABLE:
                dist[ny, nx] = dist[y, x] + 1
                frontier.append((ny, nx))
    return dist


def _next_moves(dist: np.ndarray) -> np.ndarray:
    """For every tile, the first move (n, e, s, w order) that lowers the distance; -1 at the goal."""
    size_y, size_x = dist.shape
    padded = np.pad(dist, 1, constant_values=UNREACHABLE)
    best = np.full(dist.shape, -1, dtype=np.int8)
    best_value = dist.copy()
    for code, (dy, dx) in enumerate(MOVE_DELTAS):
        neighbour = padded[1 + dy : 1 + dy + size_y, 1 + dx : 1 + dx + size_x]
        better = neighbour < best_value
        best[better] = code
        best_value = np.where(better, neighbour, best_value)
    return best


def build_layout(config: WorldConfig) -> Layout:
    size = config.grid_size
    n_agents, n_jobs = config.agents_per_town, len(config.jobs.jobs)
    width = layout_band_width(size)
    types, ys, xs = [], [], []
    band = 0
    for group in layout_groups(config.objects, n_agents, n_jobs):
        for start in range(0, len(group), width):
            row = 1 + 3 * band
            for column, name in enumerate(group[start : start + width]):
                types.append(OBJECT_TYPES.index(name))
                ys.append(row)
                xs.append(1 + 2 * column)
            band += 1
    object_type = np.array(types, dtype=np.int32)
    object_y, object_x = np.array(ys, dtype=np.int32), np.array(xs, dtype=np.int32)
    passable = np.ones((size, size), dtype=bool)
    passable[object_y, object_x] = False
    access_y, access_x = object_y + 1, object_x.copy()
    distance = np.stack([_bfs(passable, (int(y), int(x))) for y, x in zip(access_y, access_x)])
    next_move = np.stack([_next_moves(d) for d in distance])

    desk_ids = np.flatnonzero(object_type == OBJECT_TYPES.index("desk"))
    job_of_agent = np.arange(n_agents) % n_jobs
    desk_of_agent = np.empty(n_agents, dtype=np.int32)
    cursor = 0  # desks were placed job by job, in agent order within a job
    for job in range(n_jobs):
        members = np.flatnonzero(job_of_agent == job)
        desk_of_agent[members] = desk_ids[cursor : cursor + len(members)]
        cursor += len(members)
    beds = np.flatnonzero(object_type == OBJECT_TYPES.index("bed"))
    home_bed = beds[np.arange(n_agents) % len(beds)].astype(np.int32)

    per_type = [np.flatnonzero(object_type == t) for t in range(len(OBJECT_TYPES))]
    slots = max(len(ids) for ids in per_type)
    type_slots = np.full((len(OBJECT_TYPES), slots), -1, dtype=np.int32)
    for t, ids in enumerate(per_type):
        type_slots[t, : len(ids)] = ids
    return Layout(
        size=size, object_type=object_type, object_y=object_y, object_x=object_x, access_y=access_y,
        access_x=access_x, passable=passable, distance=distance, next_move=next_move,
        desk_of_agent=desk_of_agent, job_of_agent=job_of_agent.astype(np.int32), home_bed=home_bed,
        type_slots=type_slots,
    )


def move_table(layout: Layout) -> np.ndarray:
    """(H, W, 5) bool: from each tile, whether move code 0..3 (n, e, s, w) lands inside on a walkable tile;
    code 4 (stay) is the tile's own walkability.

    The step's movement and the action mask read one gather from it instead of recomputing the bounds
    and walkability tests every tick.
    """
    size = layout.size
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    table = np.empty((size, size, len(MOVE_DELTAS) + 1), dtype=bool)
    for code, (dy, dx) in enumerate([*MOVE_DELTAS, (0, 0)]):
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < size) & (nx >= 0) & (nx < size)
        table[..., code] = inside & layout.passable[np.clip(ny, 0, size - 1), np.clip(nx, 0, size - 1)]
    return table


def move_destinations(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Row and column an agent ends on after move code 0..4 from each tile, as flat (H * W * 5,) int32 tables
    indexed by `tile * 5 + code` (tile = y * size + x): the target tile where `move_table` allows the move,
    the agent's own tile where it does not. Movement is then two gathers instead of a dozen array operations."""
    ok = move_table(layout)  # (H, W, 5)
    size = layout.size
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    dy = np.array([d[0] for d in MOVE_DELTAS] + [0])
    dx = np.array([d[1] for d in MOVE_DELTAS] + [0])
    dest_y = np.where(ok, y[..., None] + dy, y[..., None]).astype(np.int32)
    dest_x = np.where(ok, x[..., None] + dx, x[..., None]).astype(np.int32)
    return dest_y.reshape(-1), dest_x.reshape(-1)
