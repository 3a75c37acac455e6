"""What the network reads, made without torch: the map's scale, so acting code imports on a torch-free install."""

from __future__ import annotations

import numpy as np

MAP_SCALE = 8.0  # map cells are small counts and codes (0..6): scale to about [0, 1]


def scaled_map(map_cells: np.ndarray) -> np.ndarray:
    """The map as the encoder reads it, made in numpy: contiguous float32 cells / MAP_SCALE.

    The same numbers as `map.float() / MAP_SCALE` in torch (a power of two divides exactly), in one pass over the
    world's channel-last cells instead of torch's two strided passes and the flatten's copy: acting on the CPU
    hands the network this, so the encoder's matrix product sees a contiguous input of the same values."""
    return np.multiply(map_cells, np.float32(1.0 / MAP_SCALE), dtype=np.float32, order="C")  # not the cells' layout
