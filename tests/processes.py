"""Helpers for tests that kill a parent and watch what its forked children do."""

from __future__ import annotations

import time


def alive(pid: int) -> bool:
    """Whether `pid` still runs: a zombie (exited, not yet reaped) counts as gone. Reads /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


def gone_within(pid: int, seconds: float) -> bool:
    """Whether `pid` has stopped running within `seconds`."""
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive(pid)
