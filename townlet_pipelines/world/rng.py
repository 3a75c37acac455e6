"""Counter-based random numbers: a pure hash of (town seed, tick, stream, index).

Each town draws from its own seed, so town k of a batch is bit-identical to the same town run alone,
and no per-town generator (or Python loop over towns) is needed on the hot path.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TICK = np.uint64(0xD6E8FEB86659FD93)
_STREAM = np.uint64(0xA0761D6478BD642F)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def uniform(seeds: np.ndarray, tick: int, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """Floats in [0, 1) of shape (towns, *shape), one independent stream per (town, tick, stream)."""
    count = int(np.prod(shape)) if shape else 1
    key = np.array([tick, stream], dtype=np.uint64) * np.array([_TICK, _STREAM], dtype=np.uint64)
    base = _splitmix(seeds.astype(np.uint64) ^ key[0] ^ key[1])
    index = np.arange(count, dtype=np.uint64)
    bits = _splitmix(base[:, None] + index[None, :] * _GOLDEN)
    values = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return values.reshape((len(seeds), *shape))


# Stream ids: one per kind of draw, so adding a draw never shifts another's numbers.
STREAM_SPAWN = 1
STREAM_PERSONALITY = 2
STREAM_TIE_BREAK = 3
STREAM_CHAT_SUCCESS = 4
STREAM_CHAT_QUALITY = 5
STREAM_NEEDS = 6
