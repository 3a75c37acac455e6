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


def _stream_base(seeds: np.ndarray, tick: int, stream: int) -> np.ndarray:
    key = np.array([tick, stream], dtype=np.uint64) * np.array([_TICK, _STREAM], dtype=np.uint64)
    return _splitmix(seeds.astype(np.uint64) ^ key[0] ^ key[1])


def _unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniform(seeds: np.ndarray, tick: int, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """Floats in [0, 1) of shape (towns, *shape), one independent stream per (town, tick, stream)."""
    count = int(np.prod(shape)) if shape else 1
    index = np.arange(count, dtype=np.uint64)
    bits = _splitmix(_stream_base(seeds, tick, stream)[:, None] + index[None, :] * _GOLDEN)
    return _unit(bits).reshape((len(seeds), *shape))


def uniform_at(seeds: np.ndarray, tick: int, stream: int, index: np.ndarray) -> np.ndarray:
    """`uniform(seeds, tick, stream, shape)[i, index[i]]` for each i (an index into the flattened shape):
    the same numbers, drawn only where needed, for the few agents of many towns that need one."""
    return _unit(_splitmix(_stream_base(seeds, tick, stream) + np.asarray(index).astype(np.uint64) * _GOLDEN))


# Stream ids: one per kind of draw, so adding a draw never shifts another's numbers.
STREAM_SPAWN = 1
STREAM_PERSONALITY = 2
STREAM_TIE_BREAK = 3
STREAM_CHAT_SUCCESS = 4
STREAM_CHAT_QUALITY = 5
STREAM_NEEDS = 6
STREAM_POLICY = 7  # a sampled evaluation's draws (training/policy.py); + 16 x its seed
