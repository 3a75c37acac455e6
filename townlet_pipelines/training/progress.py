"""Progress of long training loops: a line on the `townlet.training` logger per step, and a tqdm bar on request.

The log lines are how a step's progress reaches whoever runs it: the Dagster assets forward this logger to
`context.log` (so BC epochs, DAgger rounds and PPO updates appear in the run's log as they happen), and a
plain `logging` set-up sees them too. The bar is for people at a terminal (`townlet train …`).
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

LOGGER = logging.getLogger("townlet.training")


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label = max(total, 1), label
        self.done, self.start = 0, time.perf_counter()
        self.bar = None
        if enabled:
            self.bar = tqdm(total=self.total, desc=label, unit="step", dynamic_ncols=True, leave=True)

    def skip(self, count: int) -> None:
        """Steps a resumed run already did: counted, not logged again."""
        self.done += count
        if self.bar is not None and count:
            self.bar.update(count)

    def update(self, count: int = 1, phase: str | None = None, **info) -> None:
        self.done += count
        elapsed = time.perf_counter() - self.start
        details = "  ".join(f"{key} {_value(value)}" for key, value in info.items() if value is not None)
        LOGGER.info("%s %d/%d%s: %s  (%.1f s)", self.label, self.done, self.total, f" [{phase}]" if phase else "",
                    details, elapsed)
        if self.bar is not None:
            self.bar.set_postfix({key: _value(value) for key, value in info.items() if value is not None},
                                 refresh=False)
            self.bar.update(count)
            if self.done >= self.total:
                self.bar.close()
