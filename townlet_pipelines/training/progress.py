"""A minimal progress bar on stderr for long loops (no dependency; silent unless asked)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = max(total, 1), label, enabled
        self.done, self.start = 0, time.perf_counter()

    def update(self, count: int = 1, **info: float) -> None:
        self.done += count
        if not self.enabled:
            return
        width = 30
        filled = int(width * min(self.done / self.total, 1.0))
        extra = "  ".join(f"{key} {value:.4g}" for key, value in info.items())
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{elapsed:5.1f}s {extra}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
