"""What a policy sees (maps and features) and may do (the action mask), for every agent at once.

Maps are uint8 (counts and codes, at most a few per tile) gathered from a padded per-town grid through a
sliding-window view in one indexing operation; models scale them. The `ObservationSpec` names every
channel and feature, and travels with datasets and checkpoints so a model can refuse data of another shape.

Speed: a small batch pays per numpy call, not per element, so everything that depends only on the static
layout, the agent or the time of day (nearest objects and their offsets, shift clocks, legal moves) is a
table built once and read with one gather a tick; what the mask, features and maps all need is computed
once a tick (`TickShared`); and the features are written block by block into one buffer. A large batch
pays per row for operations that broadcast over a short last axis, so those run on contiguous blocks or
option-major planes instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict

from townlet_pipelines.config import NEED_NAMES, TownletConfig
from townlet_pipelines.world.actions import (
    ACTION_NAMES, ACTION_SCHEMA_VERSION, CHAT, EAT, MOVE_DELTAS, MOVE_N, NUM_ACTIONS, OBJECT_OPTIONS,
    OBJECT_TYPES, OPTION_OBJECT_TYPE, SLEEP, WAIT, WORK,
)
from townlet_pipelines.world.layout import Layout, move_table
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
_COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}


def _span(first: str, last: str) -> slice:
    """The feature columns from `first` to `last`, inclusive (blocks are written whole)."""
    return slice(_COLUMN[first], _COLUMN[last] + 1)


_NEEDS = _span(NEED_NAMES[0], NEED_NAMES[-1])
_CLOCK = _span("time_sin", "ticks_to_shift")  # depends only on the time of day and the agent's job
_NEAREST = _span(f"{OBJECT_TYPES[0]}_dx", f"{OBJECT_TYPES[-1]}_distance")  # (dx, dy, distance) per type
_QUEUE = _span(f"{OBJECT_TYPES[0]}_queue", f"{OBJECT_TYPES[-1]}_queue")
_HEADING = _span(f"{OBJECT_TYPES[0]}_heading", f"{OBJECT_TYPES[-1]}_heading")
_FREE = _span(f"{OBJECT_TYPES[0]}_free", f"{OBJECT_TYPES[-1]}_free")
_TIES = _span(f"friend1_{_TIE_FIELDS[0]}", "rivalry_max")
_PERSONALITY = _span(PERSONALITY_NAMES[0], PERSONALITY_NAMES[-1])
_OPTION = _span(f"option_{ACTION_NAMES[0]}", f"option_{ACTION_NAMES[-1]}")
assert _NEAREST.stop - _NEAREST.start == 3 * len(OBJECT_TYPES) and _TIES.stop - _TIES.start == 13
assert _OPTION.stop - _OPTION.start == NUM_ACTIONS and _HEADING.stop == _FREE.start
# Options priced and gated by an eligible object (all object options but work), as one block of the mask.
_SHOP = slice(EAT, SLEEP + 1)
assert tuple(range(EAT, SLEEP + 1)) == tuple(option for option in OBJECT_OPTIONS if option != WORK)
_SHOP_TYPES = np.array(OPTION_OBJECT_TYPE[_SHOP], dtype=np.int64)


def _rows_differ(differ: np.ndarray) -> np.ndarray:
    """(rows,) True where a row of the elementwise `differ` mask has any True; cheaper than `.any(axis=1)`
    on short rows."""
    differ = differ.reshape(len(differ), -1).view(np.uint8)
    width = differ.shape[1]
    padded = -(-width // 8) * 8
    if padded != width:
        differ = np.pad(differ, ((0, 0), (0, padded - width)))
    return differ.view(np.uint64).reshape(len(differ), -1).max(axis=1) > 0


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
class TickShared:
    """Per-tick quantities that the mask, the features and the maps all read (see `ObservationBuilder.shared`)."""

    tile: np.ndarray  # (B, N) y * size + x
    neighbour: np.ndarray  # (B, N) bool: another agent on or next to the agent's tile
    here: np.ndarray  # (B, N) agents on the agent's own tile, itself included
    occupancy: np.ndarray  # (B, O) user plus queue of each object
    # The few (agent, object) pairs on fairness cooldown:
    cooling_agent: np.ndarray  # (M,) flat agent index, town * N + agent
    cooling_type: np.ndarray  # (M,) the object's type
    cooling_town_object: np.ndarray  # (M,) flat object index, town * O + object


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
        self._index_cache: dict = {}
        self._grid_cache: tuple[np.ndarray, np.ndarray] | None = None
        self.rules = rule_tables(world, layout)
        self.shift_start, self.shift_end = self.rules.shift_start, self.rules.shift_end
        self._moves_by_tile = move_table(layout).reshape(layout.size * layout.size, -1)  # (tiles, 5)
        side = layout.size + 2  # of the padded per-town grid that counts agents per tile
        self._around = np.array([0, -side, side, -1, 1], dtype=np.int32)[:, None, None]  # (5, 1, 1)
        self._objects_of_type = np.bincount(layout.object_type, minlength=len(OBJECT_TYPES))  # (T,)
        self._nearest()
        self._clocks()
        # Option one-hot rows indexed by `option + NUM_ACTIONS * active`: all zeros while no option runs.
        self._option_rows = np.concatenate([np.zeros((NUM_ACTIONS, NUM_ACTIONS)), np.eye(NUM_ACTIONS)])
        self._option_rows = self._option_rows.astype(np.float32)

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
        assert not grid[..., 1].any() and not grid[..., self.queue_channel].any()

    def _nearest(self) -> None:
        """Per agent and tile, the nearest object of each type by path (desks: the agent's own desk), and
        the features of it (dx, dy, path distance, scaled by the town's size), as gather tables.

        Row `agent * tiles + y * size + x` of `_nearest_ids` (N * tiles, T) and `_nearest_features`
        (N * tiles, 3T) serves an agent standing on (y, x); the values are the expressions the features
        always used, evaluated once here for every tile.
        """
        layout = self.layout
        types, size, agents = len(OBJECT_TYPES), layout.size, len(layout.desk_of_agent)
        nearest = np.zeros((types, size, size), dtype=np.int32)
        for kind in range(types):
            ids = layout.type_slots[kind][layout.type_slots[kind] >= 0]
            nearest[kind] = ids[np.argmin(layout.distance[ids], axis=0)]

        tiles = size * size
        tile_y, tile_x = np.divmod(np.arange(tiles), size)
        ids = np.repeat(nearest.reshape(types, 1, tiles), agents, axis=1)  # (T, N, tiles)
        ids[types - 1] = layout.desk_of_agent[:, None]
        scale = float(size)
        table = np.empty((agents, tiles, types, 3), dtype=np.float32)
        table[..., 0] = np.moveaxis((layout.object_x[ids] - tile_x) / scale, 0, -1)
        table[..., 1] = np.moveaxis((layout.object_y[ids] - tile_y) / scale, 0, -1)
        table[..., 2] = np.moveaxis(layout.distance[ids, tile_y, tile_x] / (2 * scale), 0, -1)
        self._nearest_features = table.reshape(agents * tiles, types * 3)
        self._nearest_ids = np.ascontiguousarray(np.moveaxis(ids, 0, -1).reshape(agents * tiles, types))
        self._agent_tiles = (np.arange(agents) * tiles).astype(np.int32)  # (N,) first row of each agent's table

    def _clocks(self) -> None:
        """Per time of day and agent: the clock features (sine, cosine, on shift, shift soon, shift phase,
        ticks to the shift) and whether the work option's window is open; both depend on nothing else."""
        world, day = self.config.world, self.config.world.day_ticks
        start, end = self.shift_start, self.shift_end
        tod = np.arange(day)[:, None]  # (day, 1)
        on_shift = (tod >= start) & (tod < end)
        until = (start - tod) % day
        soon = until <= self.config.expert.job_arrival_buffer
        clock = np.empty((day, len(start), 6), dtype=np.float32)
        for tick in range(day):  # the scalar sine and cosine the features always used, tick by tick
            angle = 2 * np.pi * tick / day
            clock[tick, :, 0], clock[tick, :, 1] = np.float32(np.sin(angle)), np.float32(np.cos(angle))
        clock[..., 2] = on_shift
        clock[..., 3] = soon & ~on_shift
        clock[..., 4] = np.where(on_shift, (tod - start) / (end - start), 0.0)
        clock[..., 5] = until / day
        self._clock = clock
        self._work_window = (tod >= start - world.jobs.work_window_before) & (tod < end)  # (day, N)

    def batch_index(self, B: int, N: int) -> dict[str, np.ndarray]:
        """Index arrays for a batch of B towns of N agents, built once per batch shape: `rows` (B, 1) for fancy
        indexing, `mask_row` (B, N) each agent's first entry in the flattened action mask, and each town's
        offset into flattened per-town arrays (int32, as the positions are, so index arithmetic needs no casts).
        Public: the world's step uses the same arrays rather than a second set."""
        cache = self._index_cache
        if cache.get("shape") != (B, N):
            side, padded = self.layout.size + 2, self.layout.size + 2 * self.pad
            small = B * max(side * side, padded * padded, N * self.layout.num_objects) < 2**31
            town = np.arange(B, dtype=np.int32 if small else np.int64)[:, None]
            cache.clear()
            cache.update(
                shape=(B, N), rows=np.arange(B)[:, None],
                mask_row=np.arange(B * N).reshape(B, N) * NUM_ACTIONS,
                count_cell=town * (side * side) + side + 1,  # tile (0, 0) of the padded neighbour count grid
                object_base=town * self.layout.num_objects,  # (B, 1) into (B * O,)
                map_cell=town * (padded * padded) + self.pad * padded + self.pad,  # tile (0, 0) of the map grid
                # Divisors of the contention block: heading by the agents per town, free by the objects per type.
                contention_scale=np.tile(np.concatenate([np.full(len(OBJECT_TYPES), N, dtype=np.float32),
                                                         self._objects_per_type]), (B, N, 1)),
            )
        return cache

    # ------------------------------------------------------------------ shared per-tick parts
    def shared(self, s: WorldState) -> TickShared:
        """What the mask, the features and the maps all read, computed once per tick."""
        B, N = s.y.shape
        objects = self.layout.num_objects
        neighbour, here = self._neighbours(s)
        cooling_agent, cooling_object = np.divmod(np.flatnonzero(s.cooldown_until > s.tick), objects)
        return TickShared(tile=s.y * self.layout.size + s.x, neighbour=neighbour, here=here,
                          occupancy=(s.holder >= 0) + self.queue_counts(s), cooling_agent=cooling_agent,
                          cooling_type=self.layout.object_type[cooling_object],
                          cooling_town_object=cooling_agent // N * objects + cooling_object)

    def _neighbours(self, s: WorldState) -> tuple[np.ndarray, np.ndarray]:
        """(B, N) another agent stands on the agent's tile or next to it (a chat partner), and (B, N) the
        agents on the agent's own tile, itself included.

        Read from a per-town count grid (padded by one) with one gather of five cells per agent, not an
        agents x agents test.
        """
        B, N = s.y.shape
        side = self.layout.size + 2
        cells = self.batch_index(B, N)["count_cell"] + s.y * side + s.x  # (B, N)
        counts = np.bincount(cells.ravel(), minlength=B * side * side)
        around = counts.take(cells + self._around)  # (5, B, N): own tile, then n, s, w, e
        here = around[0]  # counts the agent itself, so another agent is near when the five cells hold two
        return around.sum(axis=0) > 1, here

    def has_neighbour(self, s: WorldState) -> np.ndarray:
        """(B, N): another agent stands on the agent's tile or next to it (a chat partner)."""
        return self._neighbours(s)[0]

    # ------------------------------------------------------------------ mask
    def action_mask(self, s: WorldState, shared: TickShared | None = None) -> np.ndarray:
        """(B, N, A) bool: moves onto walkable tiles; object options with an eligible object (not on the
        agent's fairness cooldown) that the agent can pay for (meals: the pantry has one); work in its
        window; an option in progress; chat off cooldown next to someone; wait always."""
        shared = self.shared(s) if shared is None else shared
        B, N = s.y.shape
        index = self.batch_index(B, N)
        mask = np.zeros((B, N, NUM_ACTIONS), dtype=bool)
        mask[..., WAIT] = True
        moves = self._moves_by_tile.take(shared.tile, axis=0)  # (B, N, 5)
        mask[..., MOVE_N : MOVE_N + len(MOVE_DELTAS)] = moves[..., : len(MOVE_DELTAS)]
        mask[..., _SHOP] = self._shop_options(s, shared).transpose(1, 2, 0)
        mask[..., EAT] &= (s.meals > 0)[:, None]
        mask[..., WORK] = self._work_window[s.tick % self.config.world.day_ticks]
        # An option in progress may always be continued (its cost is already paid).
        mask.reshape(-1)[index["mask_row"] + s.option] |= s.active
        mask[..., CHAT] = (s.chat_ready_at <= s.tick) & shared.neighbour
        return mask

    def _shop_options(self, s: WorldState, shared: TickShared) -> np.ndarray:
        """(options, B, N) for the object options but work: an object of the type is off the agent's
        cooldown (counted from the few cooling pairs) and the agent can pay. Option-major, so each test
        runs over whole (B, N) planes: broadcasting over a short last axis is slow on large batches."""
        B, N = s.y.shape
        keys = shared.cooling_type * (B * N) + shared.cooling_agent
        cooling = np.bincount(keys, minlength=len(OBJECT_TYPES) * B * N).reshape(-1, B, N)  # (T, B, N)
        eligible = self._objects_of_type[:, None, None] > cooling
        return eligible[_SHOP_TYPES] & (s.wallet >= self.rules.cost[_SHOP][:, None, None])

    def mask_and_observe(self, s: WorldState, observe: bool = True) -> tuple[np.ndarray, Observation | None]:
        """The step's epilogue: both share the per-tick parts (neighbours, occupancy, cooldowns)."""
        shared = self.shared(s)
        mask = self.action_mask(s, shared)
        return mask, (self.observe(s, shared) if observe else None)

    # ------------------------------------------------------------------ observations
    def observe(self, s: WorldState, shared: TickShared | None = None) -> Observation:
        """Features and (unless `compact`) maps, from one set of shared per-tick parts."""
        shared = self.shared(s) if shared is None else shared
        features = self.features(s, shared)
        return Observation(map=None if self.variant == "compact" else self.maps(s, shared), features=features)

    def _grid(self, B: int) -> tuple[np.ndarray, np.ndarray]:
        """A (B, P, P, C) map grid holding the template, and its sliding-window view, reused tick to tick.

        Only the agents and queue channels change; `maps` writes them and clears them again after its
        gather, so the grid never needs a fresh copy of the template (the gather copies what it returns).
        """
        if self._grid_cache is None or self._grid_cache[0].shape[0] != B:
            grid = np.broadcast_to(self.template, (B, *self.template.shape)).copy()
            w = self.window
            self._grid_cache = (grid, sliding_window_view(grid, (w, w), axis=(1, 2)))  # (B, size, size, C, w, w)
        return self._grid_cache

    def maps(self, s: WorldState, shared: TickShared | None = None) -> np.ndarray:
        shared = self.shared(s) if shared is None else shared
        r, padded = self.pad, self.layout.size + 2 * self.pad
        B, N = s.y.shape
        index = self.batch_index(B, N)
        rows = index["rows"]
        grid, view = self._grid(B)
        flat = grid.reshape(B * padded * padded, -1)
        cells = (index["map_cell"] + s.y * padded + s.x).ravel()
        try:
            flat[cells, 1] = np.minimum(shared.here, 255).ravel()  # agents sharing a tile write the same count
            grid[:, self.obj_tile_y, self.obj_tile_x, self.queue_channel] = np.minimum(shared.occupancy, 255)
            out = view[rows, s.y, s.x]  # (B, N, C, w, w)
        finally:  # back to the template, where both channels are zero
            flat[cells, 1] = 0
            grid[:, self.obj_tile_y, self.obj_tile_x, self.queue_channel] = 0
        out[:, :, 0, r, r] = 1
        out[:, :, 1, r, r] -= 1  # the agents channel counts others
        return out

    def _contention(self, s: WorldState, shared: TickShared) -> np.ndarray:
        """(B, N, 2T): per agent and object type, other agents walking to or queued for that type (`heading`),
        then the share of the type's objects that nobody holds or heads for and that the agent may use now
        (not on its fairness cooldown): `free`. These let a policy see a conflict coming; the queue count
        alone shows only who has already arrived.

        Both are a per-town count less a per-agent correction (the agent's own heading; free objects on its
        cooldown), applied to a contiguous block, which keeps every step one cheap array operation.
        """
        B, N = s.y.shape
        types = len(OBJECT_TYPES)
        walking = s.active & (s.target >= 0) & ~s.holding  # (B, N)
        town, agent = np.nonzero(walking)  # few agents walk or wait at once: work on them alone
        target = s.target[town, agent]
        kind = self.layout.object_type[target]
        free_objects = s.holder < 0  # (B, O): nobody holds it ...
        free_objects[town, target] = False  # ... nor heads for it
        per_town = np.empty((B, 1, 2 * types), dtype=np.float32)
        per_town[:, 0, :types] = np.bincount(town * types + kind, minlength=B * types).reshape(B, types)
        per_town[:, 0, types:] = free_objects.astype(np.float32) @ self._objects_by_type
        out = np.repeat(per_town, N, axis=1)
        out[town, agent, kind] -= 1.0  # others only
        if len(shared.cooling_agent):  # free objects on the agent's cooldown are not free to it
            weights = free_objects.take(shared.cooling_town_object)
            keys = shared.cooling_agent * (2 * types) + types + shared.cooling_type
            out -= np.bincount(keys, weights, B * N * 2 * types).astype(np.float32).reshape(B, N, 2 * types)
        out /= self.batch_index(B, N)["contention_scale"]  # full size: a (2T,) divisor would broadcast slowly
        return out

    def queue_counts(self, s: WorldState) -> np.ndarray:
        """(B, O) agents waiting in each object's queue."""
        B, N = s.y.shape
        objects = self.layout.num_objects
        flat = (self.batch_index(B, N)["object_base"] + s.target)[s.queued]
        return np.bincount(flat, minlength=B * objects).reshape(B, objects)

    def _tie_features(self, s: WorldState) -> np.ndarray:
        """(B, N, 13): top-2 friends and rivals (trust, familiarity, rivalry) and the max rivalry.

        Ties change for a few agents a tick, so rows are recomputed only where `rel` or `tie` differ from
        the snapshot of the last recomputation; comparing against a snapshot (not a dirty flag) can never go
        stale. A row that compares equal keeps its snapshot row, which is then equal as a float to the new one
        (no NaN compares equal), so every later comparison comes out as it would against the new one.
        """
        B, N = s.tie.shape[:2]
        flat_rel, flat_tie = s.rel.reshape(B * N, N, 3), s.tie.reshape(B * N, N)
        cache = self._tie_cache
        if cache is not None and cache[0].shape == flat_rel.shape:
            old_rel, old_tie, values = cache
            rel_differ, tie_differ = flat_rel != old_rel, flat_tie != old_tie
            if not (rel_differ.any() or tie_differ.any()):  # the usual tick in a small batch
                return values.reshape(B, N, 13)
            rows = np.flatnonzero(_rows_differ(rel_differ) | _rows_differ(tie_differ))
            old_rel[rows], old_tie[rows] = flat_rel[rows], flat_tie[rows]
        else:
            values = np.zeros((B * N, 13), dtype=np.float32)
            rows = np.arange(B * N)
            self._tie_cache = (flat_rel.copy(), flat_tie.copy(), values)
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
        return values.reshape(B, N, 13)

    # ------------------------------------------------------------------ features
    def features(self, s: WorldState, shared: TickShared | None = None) -> np.ndarray:
        """(B, N, F) float32 in `FEATURE_NAMES` order, written block by block into one fresh buffer."""
        shared = self.shared(s) if shared is None else shared
        B, N = s.y.shape
        f = np.empty((B, N, len(FEATURE_NAMES)), dtype=np.float32)
        self._own_features(f, s)
        self._object_features(f, s, shared)
        self._social_features(f, s, shared)
        self._option_features(f, s)
        return f

    def _own_features(self, f: np.ndarray, s: WorldState) -> None:
        """Needs, wallet, the shift clock and the attendance record."""
        f[..., _NEEDS] = s.needs
        f[..., _COLUMN["wallet"]] = s.wallet / 10.0
        f[..., _CLOCK] = self._clock[s.tick % self.config.world.day_ticks]  # (N, 6), the same in every town
        f[..., _COLUMN["arrived_this_shift"]] = s.arrived
        f[..., _COLUMN["lateness_count"]] = s.lateness / 10.0
        # Attended over the shifts that count so far: the ended ones, and this one once the agent has arrived (its
        # arrival is counted as attended at once, its shift as elapsed only when it ends): a ratio in [0, 1].
        counted = s.shifts_elapsed + s.arrived
        attendance = np.where(counted > 0, s.shifts_attended / np.maximum(counted, 1), 1.0)
        f[..., _COLUMN["attendance_ratio"]] = attendance

    def _object_features(self, f: np.ndarray, s: WorldState, shared: TickShared) -> None:
        """Per object type: where the nearest one is, how busy it is, who heads for the type, how much is
        free; and the pantry."""
        B, N = s.y.shape
        key = self._agent_tiles + shared.tile  # (B, N) row of the nearest-object tables
        f[..., _NEAREST] = self._nearest_features.take(key, axis=0)
        nearest = self._nearest_ids.take(key, axis=0)  # (B, N, T)
        f[..., _QUEUE] = shared.occupancy.take(self.batch_index(B, N)["object_base"][..., None] + nearest)
        f[..., _HEADING.start : _FREE.stop] = self._contention(s, shared)
        f[..., _COLUMN["meals_in_stock"]] = s.meals[:, None] / 10.0

    def _social_features(self, f: np.ndarray, s: WorldState, shared: TickShared) -> None:
        """Ties, rivals at objects, chat readiness and partners, personality."""
        f[..., _TIES] = self._tie_features(s)
        rivals = (s.rel[..., RIVALRY] > self.config.world.queues.rival_threshold).astype(np.float32)
        busy = (s.holding | s.queued).astype(np.float32)
        f[..., _COLUMN["rivalry_avoid_count"]] = np.einsum("bij,bj->bi", rivals, busy)
        f[..., _COLUMN["chat_ready"]] = s.chat_ready_at <= s.tick
        f[..., _COLUMN["neighbour_adjacent"]] = shared.neighbour
        f[..., _PERSONALITY] = s.personality

    def _option_features(self, f: np.ndarray, s: WorldState) -> None:
        """The option in progress (one-hot, all zeros when none), its use progress, queue/use flags, and
        the episode's progress."""
        f[..., _OPTION] = self._option_rows.take(s.option + NUM_ACTIONS * s.active, axis=0)
        duration = self.rules.duration[s.option]
        f[..., _COLUMN["option_progress"]] = np.where(s.holding, s.progress / duration, 0.0)
        f[..., _COLUMN["queued"]] = s.queued
        f[..., _COLUMN["using"]] = s.holding
        f[..., _COLUMN["episode_progress"]] = np.float32(s.tick / self.config.world.episode_ticks)
