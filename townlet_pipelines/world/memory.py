"""Keep freed memory in the heap for allocation-heavy loops (a process-wide, opt-in setting).

A batched step allocates and frees several MiB of temporaries every tick. glibc returns such blocks to the
kernel (mmap/trim) and faults them back in on the next tick: at 1024 towns that page-fault traffic cost
about 9 ms of a 24 ms tick (docs/BENCHMARKS.md). Raising the mmap and trim thresholds keeps the pages.
Entry points that run long simulations (the CLI, capture, benchmarks) call this; importing never does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def retain_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Return True when the C library accepted the settings (glibc on Linux); a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
