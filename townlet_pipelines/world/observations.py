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
    names += [f"{kind}_heading" for kind in OBJECT_TYPES]
    names += [f"{kind}_free" for kind in OBJECT_TYPES]
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


def _rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(rows,) True where row i of a and b differ in any byte; cheaper than `(a != b).any(axis=1)` on short rows."""
    differ = (a.reshape(len(a), -1) != b.reshape(len(b), -1)).view(np.uint8)
    width = differ.shape[1]
    padded = -(-width // 8) * 8
    if padded != width:
        differ = np.pad(differ, ((0, 0), (0, padded - width)))
    return differ.view(np.uint64).reshape(len(a), -1).max(axis=1) > 0


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
        self._objects_by_type = np.zeros((layout.num_objects, len(OBJECT_TYPES)), dtype=np.float32)
        self._objects_by_type[np.arange(layout.num_objects), layout.object_type] = 1.0
        self._objects_per_type = np.maximum(self._objects_by_type.sum(axis=0), 1.0)
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
        self._tie_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
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
            grid = np.zeros((padded, padded, len(HYBRID_CHANNELS)), dtype=np.uint8)
            grid[..., 2] = OUT_OF_BOUNDS
            grid[r : r + size, r : r + size, 2] = 0
            grid[self.obj_tile_y, self.obj_tile_x, 2] = layout.object_type + 1
            self.queue_channel = 3
        elif self.variant == "full":
            grid = np.zeros((padded, padded, len(FULL_CHANNELS)), dtype=np.uint8)
            grid[..., 3] = 1
            grid[r : r + size, r : r + size, 3] = 0
            grid[self.obj_tile_y, self.obj_tile_x, 4 + layout.object_type] = 1
            self.queue_channel = 2
        else:
            return
        self.template = grid  # static channels filled; self, agents and queues start at 0

    def _nearest(self) -> None:
        """Per object type and tile: the nearest object by path (desks are per agent instead)."""
        layout = self.layout
        types = len(OBJECT_TYPES)
        self.nearest = np.zeros((types, layout.size, layout.size), dtype=np.int32)
        for kind in range(types):
            ids = layout.type_slots[kind][layout.type_slots[kind] >= 0]
            self.nearest[kind] = ids[np.argmin(layout.distance[ids], axis=0)]
        self.type_onehot = (layout.object_type[:, None] == np.arange(types)[None, :]).astype(np.float32)

    # ------------------------------------------------------------------ mask
    def action_mask(self, s: WorldState, neighbour: np.ndarray | None = None) -> np.ndarray:
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
        eligible = (free_of_cooldown.astype(np.float32) @ self.type_onehot) > 0  # (B, N, T)
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
        mask[..., CHAT] = ready & (self.has_neighbour(s) if neighbour is None else neighbour)
        return mask

    def has_neighbour(self, s: WorldState) -> np.ndarray:
        """(B, N): another agent stands on the agent's tile or next to it (a chat partner).

        Read from a per-town count grid (padded by one) with five gathers, not an agents x agents test.
        """
        B, N = s.y.shape
        side = self.layout.size + 2
        cells = np.arange(B)[:, None] * (side * side) + (s.y + 1) * side + (s.x + 1)
        counts = np.bincount(cells.ravel(), minlength=B * side * side)
        near = counts[cells] > 1
        for offset in (-side, side, -1, 1):
            near |= counts[cells + offset] > 0
        return near

    def mask_and_observe(self, s: WorldState, observe: bool = True) -> tuple[np.ndarray, Observation | None]:
        """The step's epilogue: both share the neighbour test, computed once."""
        neighbour = self.has_neighbour(s)
        mask = self.action_mask(s, neighbour)
        return mask, (self.observe(s, neighbour) if observe else None)

    # ------------------------------------------------------------------ observations
    def observe(self, s: WorldState, neighbour: np.ndarray | None = None) -> Observation:
        features = self.features(s, neighbour)
        return Observation(map=None if self.variant == "compact" else self.maps(s), features=features)

    def maps(self, s: WorldState) -> np.ndarray:
        r, padded = self.pad, self.layout.size + 2 * self.pad
        B = s.y.shape[0]
        grid = np.broadcast_to(self.template, (B, *self.template.shape)).copy()  # (B, P, P, C)
        flat = grid.reshape(B * padded * padded, -1)
        cells = (np.arange(B)[:, None] * (padded * padded) + (s.y + r) * padded + (s.x + r)).ravel()
        agents = np.bincount(cells, minlength=B * padded * padded)
        flat[cells, 1] = np.minimum(agents[cells], 255)  # agents sharing a tile write the same count
        occupancy = (s.holder >= 0) + self.queue_counts(s)  # (B, O)
        grid[:, self.obj_tile_y, self.obj_tile_x, self.queue_channel] = np.minimum(occupancy, 255)
        w = self.window
        view = sliding_window_view(grid, (w, w), axis=(1, 2))  # (B, size, size, C, w, w)
        out = view[np.arange(B)[:, None], s.y, s.x]  # (B, N, C, w, w)
        out[:, :, 0, r, r] = 1
        out[:, :, 1, r, r] -= 1  # the agents channel counts others
        return out

    def contention(self, s: WorldState) -> tuple[np.ndarray, np.ndarray]:
        """Per agent and object type: other agents walking to or queued for that type (`heading`), and the
        share of the type's objects that nobody holds or heads for and that the agent may use now (not on its
        fairness cooldown): `free`. These let a policy see a conflict coming; the queue count alone shows
        only who has already arrived."""
        B, N = s.y.shape
        objects, types = self.layout.num_objects, len(OBJECT_TYPES)
        walking = s.active & (s.target >= 0) & ~s.holding  # (B, N)
        town, agent = np.nonzero(walking)  # few agents walk or wait at once: work on them alone
        kind = self.layout.object_type[s.target[town, agent]]
        per_town = np.bincount(town * types + kind, minlength=B * types).reshape(B, types).astype(np.float32)
        heading = np.repeat(per_town[:, None, :], N, axis=1)  # (B, N, T)
        heading[town, agent, kind] -= 1.0  # others only
        claimed = np.bincount(town * objects + s.target[town, agent], minlength=B * objects).reshape(B, objects)
        free_objects = (claimed + (s.holder >= 0)) == 0  # (B, O)
        by_type = self._objects_by_type  # (O, T) one-hot
        free = np.repeat((free_objects.astype(np.float32) @ by_type)[:, None, :], N, axis=1)  # (B, N, T)
        cooling = s.cooldown_until > s.tick  # (B, N, O): a few agents have any; only their rows are redone
        town, agent = np.nonzero(cooling.any(axis=2))
        if len(town):
            free[town, agent] -= (cooling[town, agent] & free_objects[town]).astype(np.float32) @ by_type
        return heading, free / self._objects_per_type

    def queue_counts(self, s: WorldState) -> np.ndarray:
        B = s.y.shape[0]
        objects = self.layout.num_objects
        flat = (np.arange(B)[:, None] * objects + s.target)[s.queued]
        return np.bincount(flat, minlength=B * objects).reshape(B, objects)

    def _tie_features(self, s: WorldState) -> np.ndarray:
        """(B, N, 13): top-2 friends and rivals (trust, familiarity, rivalry) and the max rivalry.

        Ties change for a few agents a tick, so rows are recomputed only where `rel` or `tie` differ from
        the last call's snapshot; comparing against a snapshot (not a dirty flag) can never go stale.
        """
        B, N = s.tie.shape[:2]
        flat_rel, flat_tie = s.rel.reshape(B * N, N, 3), s.tie.reshape(B * N, N)
        cache = self._tie_cache
        if cache is not None and cache[0].shape == flat_rel.shape:
            old_rel, old_tie, values = cache
            rows = np.flatnonzero(_rows_differ(flat_rel, old_rel) | _rows_differ(flat_tie, old_tie))
        else:
            values = np.zeros((B * N, 13), dtype=np.float32)
            rows = np.arange(B * N)
        if len(rows):
            rel = flat_rel[rows]  # (M, N, 3)
            # Ties hold values only where `tie` is set (eviction zeroes them), never toward oneself.
            others = flat_tie[rows] & (np.arange(N)[None, :] != (rows % N)[:, None])
            count = others.sum(axis=1)
            picked = []
            for score in (rel[..., TRUST] + rel[..., FAMILIARITY], rel[..., RIVALRY]):
                score = np.where(others, score, -np.inf)
                for rank in range(2):
                    best = np.argmax(score, axis=1)
                    picked.append(np.where((count > rank)[:, None], rel[np.arange(len(rows)), best], 0.0))
                    score[np.arange(len(rows)), best] = -np.inf
            picked.append(np.maximum(rel[..., RIVALRY].max(axis=1), 0.0)[:, None])
            values[rows] = np.concatenate(picked, axis=1)
        self._tie_cache = (flat_rel.copy(), flat_tie.copy(), values)
        return values.reshape(B, N, 13)

    def features(self, s: WorldState, neighbour: np.ndarray | None = None) -> np.ndarray:
        world, layout = self.config.world, self.layout
        B, N = s.y.shape
        size = float(layout.size)
        day = world.day_ticks
        tod = s.tick % day
        rows = np.arange(B)[:, None]
        f = np.empty((B, N, len(FEATURE_NAMES)), dtype=np.float32)
        col = 0

        def put(values) -> None:
            nonlocal col
            values = np.asarray(values)
            width = values.shape[2] if values.ndim == 3 else 1
            f[..., col : col + width] = values.reshape(*values.shape[:2], width) if values.ndim >= 2 else values
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
        heading, free = self.contention(s)
        put(heading / N)
        put(free)
        put(np.broadcast_to(s.meals[:, None] / 10.0, (B, N)))

        put(self._tie_features(s))
        rivalry = s.rel[..., RIVALRY]
        rivals = (rivalry > world.queues.rival_threshold).astype(np.float32)
        put(np.einsum("bij,bj->bi", rivals, (s.holding | s.queued).astype(np.float32)))
        put(s.chat_ready_at <= s.tick)
        put(self.has_neighbour(s) if neighbour is None else neighbour)
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
