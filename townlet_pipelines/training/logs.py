"""JSONL training logs that rotate after a fixed number of entries.

The file index continues from the highest one already on disk, so a new run never overwrites (or
restarts the numbering of) an earlier run's logs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from townlet_pipelines.data.files import atomic_write_text


class JsonlLog:
    def __init__(self, directory: str | Path, name: str, rotate_entries: int = 1000) -> None:
        if rotate_entries < 1:
            raise ValueError(f"rotate_entries must be positive, got {rotate_entries}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name, self.rotate_entries = name, rotate_entries
        pattern = re.compile(rf"^{re.escape(name)}\.(\d+)\.jsonl$")
        indices = [int(m.group(1)) for p in self.directory.iterdir() if (m := pattern.match(p.name))]
        self.index = max(indices, default=0)
        self.entries = self._count(self.path) if indices else 0

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.{self.index:04d}.jsonl"

    @staticmethod
    def _count(path: Path) -> int:
        return sum(1 for _ in path.open()) if path.exists() else 0

    def truncate(self, key: str, first_dropped: int) -> None:
        """Drop entries whose `key` is at least `first_dropped` (a resumed run re-logs them)."""
        for path in sorted(self.directory.glob(f"{self.name}.*.jsonl")):
            lines = path.read_text().splitlines()
            kept = [line for line in lines if json.loads(line).get(key, -1) < first_dropped]
            if len(kept) != len(lines):
                atomic_write_text(path, "".join(line + "\n" for line in kept))
        self.entries = self._count(self.path)

    def write(self, entry: dict) -> None:
        if self.entries >= self.rotate_entries:
            self.index += 1
            self.entries = 0
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry, sort_keys=True, default=float) + "\n")
        self.entries += 1


class NullLog:
    """The training log of a rank that does not write (every rank but 0)."""

    def truncate(self, key: str, first_dropped: int) -> None:
        pass

    def write(self, entry: dict) -> None:
        pass
