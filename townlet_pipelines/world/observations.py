"""What a policy sees (maps and features) and may do (the action mask), for every agent at once.

Maps are uint8 (counts and codes, at most a few per tile) gathered from a padded per-town grid through a
sliding-window view in one indexing operation; models scale them. The `ObservationSpec` names every
channel and feature, and travels with datasets and checkpoints so a model can refuse data of another shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict

from townlet_pipelines.config import NEED_NAMES, TownletConfig
from townlet_pipelines.world.actions import (
    ACTION_NAMES, ACTION_SCHEMA_VERSION, CHAT, EAT, MOVE_DELTAS, MOVE_N, NUM_ACTIONS, OBJECT_OPTIONS,
    OBJECT_TYPES, OPTION_OBJECT_TYPE, WAIT, WORK,
)
from townlet_pipelines.world.layout import Layout
from townlet_pipelines.world.relationships import FAMILIARITY, RIVALRY, TRUST
from townlet_pipelines.world.state import PERSONALITY_NAMES, WorldState
from townlet_pipelines.world.tables import rule_tables

OBSERVATION_SCHEMA_VERSION = 1
OUT_OF_BOUNDS = 6  # object code of tiles beyond the town's edge (objects are 1..5)
HYBRID_CHANNELS = ("self", "agents", "objects", "queues")
FULL_CHANNELS = ("self", "agents", "queues", "out_of_bounds", *OBJECT_TYPES)
_TIE_FIELDS = ("trust", "familiarity", "rivalry")


def feature_names() -> tuple[str, ...]:
    names = [*NEED_NAMES, "wallet", "time_sin", "time_cos", "on_shift", "shift_soon", "shift_phase",
             "ticks_to_shift", "arrived_this_shift", "lateness_count", "attendance_ratio"]
    for kind in OBJECT_TYPES:
        names += [f"{kind}_dx", f"{kind}_dy", f"{kind}_distance"]
    names += [f"{kind}_queue" for kind in OBJECT_TYPES]
    names += ["meals_in_stock"]
    for role in ("friend", "rival"):
        for rank in (1, 2):
            names += [f"{role}{rank}_{name}" for name in _TIE_FIELDS]
    names += ["rivalry_max", "rivalry_avoid_count", "chat_ready", "neighbour_adjacent"]
    names += list(PERSONALITY_NAMES)
    names += [f"option_{name}" for name in ACTION_NAMES]
    names += ["option_progress", "queued", "using", "episode_progress"]
    return tuple(names)


FEATURE_NAMES = feature_names()


class ObservationSpec(BaseModel):
    """Shapes and names of what a policy sees; part of every dataset's and checkpoint's metadata."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = OBSERVATION_SCHEMA_VERSION
    variant: str
    map_shape: tuple[int, int, int] | None  # (channels, window, window), None for `compact`
    map_dtype: str = "uint8"
    map_channels: tuple[str, ...] = ()
    feature_names: tuple[str, ...]
    action_names: tuple[str, ...] = ACTION_NAMES
    action_schema_version: int = ACTION_SCHEMA_VERSION

    @property
    def feature_dim(self) -> int:
        return len(self.feature_names)


@dataclass
class Observation:
    map: np.ndarray | None  # (B, N, C, W, W) uint8, None for `compact`
    features: np.ndarray  # (B, N, F) float32


class ObservationBuilder:
    def __init__(self, config: TownletConfig, layout: Layout) -> None:
        self.config, self.layout = config, layout
        world, obs = config.world, config.observations
        self.variant = obs.variant
        if obs.variant == "compact":
            self.spec = ObservationSpec(variant="compact", map_shape=None, feature_names=FEATURE_NAMES)
            self.window = 0
        else:
            self.window = obs.window if obs.variant == "hybrid" else obs.full_window
            channels = HYBRID_CHANNELS if obs.variant == "hybrid" else FULL_CHANNELS
            self.spec = ObservationSpec(
                variant=obs.variant, map_shape=(len(channels), self.window, self.window),
                map_channels=channels, feature_names=FEATURE_NAMES,
            )
        self._static_grid()
        self.rules = rule_tables(world, layout)
        self.shift_start, self.shift_end = self.rules.shift_start, self.rules.shift_end
        self._nearest()

    # ------------------------------------------------------------------ static parts
    def _static_grid(self) -> None:
        layout, r = self.layout, self.window // 2
        size = layout.size
        self.pad = r
        padded = size + 2 * r
        self.obj_tile_y, self.obj_tile_x = layout.object_y + r, layout.object_x + r
        if self.variant == "hybrid":
            grid = np.full((padded, padded), OUT_OF_BOUNDS, dtype=np.uint8)
            grid[r : r + size, r : r + size] = 0
            grid[self.obj_tile_y, self.obj_tile_x] = layout.object_type + 1
            self.static = grid[..., None]  # the objects channel
        elif self.variant == "full":
            grid = np.zeros((padded, padded, 1 + len(OBJECT_TYPES)), dtype=np.uint8)
            grid[..., 0] = 1
            grid[r : r + size, r : r + size, 0] = 0
            grid[self.obj_tile_y, self.obj_tile_x, 1 + layout.object_type] = 1
            self.static = grid  # out_of_bounds and one channel per object type

    def _nearest(self) -> None:
        """Per object type and tile: the nearest object by path (desks are per agent instead)."""
        layout = self.layout
        types = len(OBJECT_TYPES)
        self.nearest = np.zeros((types, layout.size, layout.size), dtype=np.int32)
        for kind in range(types):
            ids = layout.type_slots[kind][layout.type_slots[kind] >= 0]
            self.nearest[kind] = ids[np.argmin(layout.distance[ids], axis=0)]
        self.type_start = np.searchsorted(layout.object_type, np.arange(types))

    # ------------------------------------------------------------------ mask
    def action_mask(self, s: WorldState) -> np.ndarray:
        world, layout = self.config.world, self.layout
        B, N = s.y.shape
        tod = s.tick % world.day_ticks
        mask = np.zeros((B, N, NUM_ACTIONS), dtype=bool)
        mask[..., WAIT] = True
        for offset, (dy, dx) in enumerate(MOVE_DELTAS):
            ny, nx = s.y + dy, s.x + dx
            inside = (ny >= 0) & (ny < layout.size) & (nx >= 0) & (nx < layout.size)
            clipped = layout.passable[np.clip(ny, 0, layout.size - 1), np.clip(nx, 0, layout.size - 1)]
            mask[..., MOVE_N + offset] = inside & clipped
        free_of_cooldown = s.cooldown_until <= s.tick  # (B, N, O)
        eligible = np.logical_or.reduceat(free_of_cooldown, self.type_start, axis=2)  # (B, N, T)
        for option in OBJECT_OPTIONS:
            if option == WORK:
                continue
            ok = eligible[..., OPTION_OBJECT_TYPE[option]] & (s.wallet >= self.rules.cost[option])
            if option == EAT:
                ok &= (s.meals > 0)[:, None]
            mask[..., option] = ok
        window_open = (tod >= self.shift_start - world.jobs.work_window_before) & (tod < self.shift_end)
        mask[..., WORK] = window_open[None, :]
        # An option in progress may always be continued (its cost is already paid).
        rows = np.arange(B)[:, None]
        continuing = np.zeros_like(mask)
        continuing[rows, np.arange(N)[None, :], s.option] = s.active
        mask |= continuing
        ready = s.chat_ready_at <= s.tick
        mask[..., CHAT] = ready & self._adjacent(s).any(axis=2)
        return mask

    @staticmethod
    def _adjacent(s: WorldState) -> np.ndarray:
        near = (np.abs(s.y[:, :, None] - s.y[:, None, :]) + np.abs(s.x[:, :, None] - s.x[:, None, :])) <= 1
        return near & ~np.eye(s.y.shape[1], dtype=bool)

    # ------------------------------------------------------------------ observations
    def observe(self, s: WorldState) -> Observation:
        features = self.features(s)
        return Observation(map=None if self.variant == "compact" else self.maps(s), features=features)

    def maps(self, s: WorldState) -> np.ndarray:
        layout, r = self.layout, self.pad
        B, N = s.y.shape
        padded = layout.size + 2 * r
        py, px = s.y + r, s.x + r
        agents = np.bincount(
            (np.arange(B)[:, None] * padded * padded + py * padded + px).ravel(), minlength=B * padded * padded
        ).reshape(B, padded, padded)
        occupancy = (s.holder >= 0) + self.queue_counts(s)  # (B, O)
        channels = len(self.spec.map_channels)
        grid = np.zeros((B, padded, padded, channels), dtype=np.uint8)
        grid[..., 1] = np.minimum(agents, 255)
        if self.variant == "hybrid":
            grid[..., 2] = self.static[..., 0]
            grid[:, self.obj_tile_y, self.obj_tile_x, 3] = occupancy
        else:
            grid[:, self.obj_tile_y, self.obj_tile_x, 2] = occupancy
            grid[..., 3:] = self.static
        w = self.window
        view = sliding_window_view(grid, (w, w), axis=(1, 2))  # (B, size, size, C, w, w)
        out = view[np.arange(B)[:, None], s.y, s.x]  # (B, N, C, w, w)
        out[:, :, 0, r, r] = 1
        out[:, :, 1, r, r] -= 1  # the agents channel counts others
        return out

    def queue_counts(self, s: WorldState) -> np.ndarray:
        B = s.y.shape[0]
        objects = self.layout.num_objects
        flat = (np.arange(B)[:, None] * objects + s.target)[s.queued]
        return np.bincount(flat, minlength=B * objects).reshape(B, objects)

    def features(self, s: WorldState) -> np.ndarray:
        world, layout = self.config.world, self.layout
        B, N = s.y.shape
        size = float(layout.size)
        day = world.day_ticks
        tod = s.tick % day
        rows = np.arange(B)[:, None]
        f = np.zeros((B, N, len(FEATURE_NAMES)), dtype=np.float32)
        col = 0

        def put(values) -> None:
            nonlocal col
            values = np.asarray(values, dtype=np.float32)
            width = 1 if values.ndim < 3 else values.shape[2]
            f[..., col : col + width] = values if values.ndim == 3 else values[..., None]
            col += width

        put(s.needs)
        put(s.wallet / 10.0)
        angle = 2 * np.pi * tod / day
        put(np.broadcast_to(np.float32(np.sin(angle)), (B, N)))
        put(np.broadcast_to(np.float32(np.cos(angle)), (B, N)))
        on_shift = (tod >= self.shift_start) & (tod < self.shift_end)
        until = (self.shift_start - tod) % day
        soon = until <= self.config.expert.job_arrival_buffer
        phase = np.where(on_shift, (tod - self.shift_start) / (self.shift_end - self.shift_start), 0.0)
        put(np.broadcast_to(on_shift, (B, N)))
        put(np.broadcast_to(soon & ~on_shift, (B, N)))
        put(np.broadcast_to(phase, (B, N)))
        put(np.broadcast_to(until / day, (B, N)))
        put(s.arrived)
        put(s.lateness / 10.0)
        put(np.where(s.shifts_elapsed > 0, s.shifts_attended / np.maximum(s.shifts_elapsed, 1), 1.0))

        nearest = self.nearest[:, s.y, s.x]  # (T, B, N)
        nearest[len(OBJECT_TYPES) - 1] = layout.desk_of_agent[None, :]
        for kind in range(len(OBJECT_TYPES)):
            obj = nearest[kind]
            put((layout.object_x[obj] - s.x) / size)
            put((layout.object_y[obj] - s.y) / size)
            put(layout.distance[obj, s.y, s.x] / (2 * size))
        occupancy = (s.holder >= 0) + self.queue_counts(s)  # (B, O)
        for kind in range(len(OBJECT_TYPES)):
            put(occupancy[rows, nearest[kind]])
        put(np.broadcast_to(s.meals[:, None] / 10.0, (B, N)))

        rel = np.where(s.tie[..., None], s.rel, 0.0)
        others = s.tie & ~np.eye(N, dtype=bool)
        friend_score = np.where(others, rel[..., TRUST] + rel[..., FAMILIARITY], -np.inf)
        rival_score = np.where(others, rel[..., RIVALRY], -np.inf)
        for score in (friend_score, rival_score):
            order = np.argsort(-score, axis=2, kind="stable")[..., :2]  # (B, N, 2)
            for rank in range(2):
                j = order[..., rank]
                exists = np.take_along_axis(score, j[..., None], axis=2)[..., 0] > -np.inf
                tie = np.take_along_axis(rel, j[..., None, None], axis=2)[:, :, 0, :]
                put(np.where(exists[..., None], tie, 0.0))
        rivalry = np.where(others, rel[..., RIVALRY], 0.0)
        put(rivalry.max(axis=2, initial=0.0))
        rivals = rivalry > world.queues.rival_threshold
        put((rivals & (s.holding | s.queued)[:, None, :]).sum(axis=2))
        put(s.chat_ready_at <= s.tick)
        put(self._adjacent(s).any(axis=2))
        put(s.personality)
        option = np.zeros((B, N, NUM_ACTIONS), dtype=np.float32)
        option[rows, np.arange(N)[None, :], s.option] = s.active
        put(option)
        duration = self.rules.duration[s.option]
        put(np.where(s.holding, s.progress / duration, 0.0))
        put(s.queued)
        put(s.holding)
        put(np.broadcast_to(np.float32(s.tick / world.episode_ticks), (B, N)))
        assert col == f.shape[2], (col, f.shape)
        return f
