"""The fixed, versioned action list: ids mean the same thing in every capture, checkpoint and model."""

from __future__ import annotations

ACTION_SCHEMA_VERSION = 1
ACTION_NAMES: tuple[str, ...] = (
    "wait", "eat", "cook", "shower", "sleep", "work", "chat", "move_n", "move_e", "move_s", "move_w",
)
NUM_ACTIONS = len(ACTION_NAMES)

WAIT, EAT, COOK, SHOWER, SLEEP, WORK, CHAT, MOVE_N, MOVE_E, MOVE_S, MOVE_W = range(NUM_ACTIONS)

# Object types, in the order the layout and the observations use.
OBJECT_TYPES: tuple[str, ...] = ("fridge", "stove", "shower", "bed", "desk")
FRIDGE, STOVE, SHOWER_OBJ, BED, DESK = range(len(OBJECT_TYPES))

# Options that walk to an object, queue and use it, and the object type each targets (-1: none).
OPTION_OBJECT_TYPE: tuple[int, ...] = (-1, FRIDGE, STOVE, SHOWER_OBJ, BED, DESK, -1, -1, -1, -1, -1)
OBJECT_OPTIONS: tuple[int, ...] = (EAT, COOK, SHOWER, SLEEP, WORK)

# Row/column step of each move action, and of the distance fields' next-move codes 0..3 (n, e, s, w).
MOVE_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
