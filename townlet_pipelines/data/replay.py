"""The replay dataset service: open and verify a dataset, then stream shuffled mini-batches.

Streaming holds at most `buffer_shards` shards (plus one partial batch) in memory, whatever the number of
shards, and visits every selected row exactly once per epoch. A trainer that makes many passes over one
dataset can `keep_in_memory(keys)`: the decoded shards (only those arrays) are then kept after their first
read, so later epochs skip decompression; the batches are the same either way. Batches are dicts of numpy arrays keyed like
the shard arrays (see `manifest.ROW_ARRAYS`); torch never appears here.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from townlet_pipelines.config import UsageError
from townlet_pipelines.data.files import sha256_file
from townlet_pipelines.data.manifest import (
    MANIFEST_NAME, ROW_ARRAYS, SHARD_ARRAYS, DatasetError, ReplayManifest, read_manifest,
)

Batch = dict[str, np.ndarray]
Verify = Literal["full", "files", "none"]


class ReplayDataset:
    def __init__(self, directory: Path, manifest: ReplayManifest) -> None:
        self.directory = directory
        self.manifest = manifest
        self.spec = manifest.observation
        self.identity = manifest.identity()
        self._kept: dict[int, Batch] | None = None
        self._kept_keys: tuple[str, ...] = ()

    def keep_in_memory(self, keys: Sequence[str]) -> "ReplayDataset":
        """Keep each decoded shard (the arrays named by `keys`, plus row bookkeeping) after its first read."""
        self._kept, self._kept_keys = {}, tuple(dict.fromkeys([*keys, "tick", "episode"]))
        return self

    def _rows_of_shard(self, index: int) -> Batch:
        if self._kept is None:
            return self.load_shard(index)
        if index not in self._kept:
            arrays = self.load_shard(index)
            self._kept[index] = {name: arrays[name] for name in self._kept_keys if name in arrays}
        return self._kept[index]

    @classmethod
    def open(cls, path: str | Path, verify: Verify = "full") -> "ReplayDataset":
        """Resolve a dataset (its directory or its manifest) and verify it.

        `files` checks paths, sizes, sha256 and array headers; `full` also reads every row (actions inside
        the action space and unmasked, finite rewards, values and features) one shard at a time.
        """
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        dataset = cls(directory, read_manifest(path))
        if verify != "none":
            dataset.verify(deep=verify == "full")
        return dataset

    @property
    def rows(self) -> int:
        return self.manifest.rows

    # ------------------------------------------------------------------ verification
    def _shard_path(self, index: int) -> Path:
        entry = self.manifest.shards[index]
        root = self.directory.resolve()
        target = (self.directory / entry.path).resolve()
        if root not in target.parents:
            raise DatasetError(f"{self.directory / MANIFEST_NAME}: shards[{index}].path {entry.path!r} "
                               "escapes the dataset directory")
        return target

    def _expected_shapes(self, rows: int) -> dict[str, tuple[int, ...]]:
        spec = self.spec
        shapes = {name: (rows,) for name in ROW_ARRAYS}
        shapes["features"] = (rows, spec.feature_dim)
        shapes["action_mask"] = (rows, len(spec.action_names))
        if spec.map_shape is None:
            del shapes["map"]
        else:
            shapes["map"] = (rows, *spec.map_shape)
        return shapes

    def verify(self, deep: bool = True) -> None:
        manifest_path = self.directory / MANIFEST_NAME
        if len({shard.path for shard in self.manifest.shards}) != len(self.manifest.shards):
            raise DatasetError(f"{manifest_path}: shards: the same shard is listed twice")
        for index, entry in enumerate(self.manifest.shards):
            path = self._shard_path(index)
            self._check_file(path, entry.sha256, entry.bytes, f"shards[{index}]")
            if entry.rows != entry.ticks * entry.agents:
                raise DatasetError(f"{manifest_path}: shards[{index}].rows {entry.rows} != ticks x agents")
            self._check_headers(path, entry.rows, entry.agents)
        telemetry = self.directory / self.manifest.telemetry.path
        if (self.directory.resolve() not in telemetry.resolve().parents):
            raise DatasetError(f"{manifest_path}: telemetry.path escapes the dataset directory")
        self._check_file(telemetry, self.manifest.telemetry.sha256, self.manifest.telemetry.bytes, "telemetry")
        if deep:
            for index in range(len(self.manifest.shards)):
                self.load_shard(index)

    def _check_file(self, path: Path, sha256: str, size: int, field: str) -> None:
        manifest_path = self.directory / MANIFEST_NAME
        if not path.is_file():
            raise DatasetError(f"{manifest_path}: {field}.path: {path.name} does not exist")
        actual = path.stat().st_size
        if actual != size:
            raise DatasetError(f"{path}: {actual} bytes but the manifest says {size} (truncated or replaced)")
        digest = sha256_file(path)
        if digest != sha256:
            raise DatasetError(f"{path}: sha256 mismatch: manifest {sha256[:12]}..., file {digest[:12]}...")

    def _check_headers(self, path: Path, rows: int, agents: int) -> None:
        expected = self._expected_shapes(rows)
        expected.update({name: (agents,) for name in SHARD_ARRAYS})
        dtypes = {**ROW_ARRAYS, **SHARD_ARRAYS}
        try:
            with zipfile.ZipFile(path) as archive:
                names = {name.removesuffix(".npy") for name in archive.namelist()}
                missing = sorted(set(expected) - names)
                if missing:
                    raise DatasetError(f"{path}: missing arrays {missing}")
                for name, shape in expected.items():
                    with archive.open(f"{name}.npy") as member:
                        version = np.lib.format.read_magic(member)
                        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                  else np.lib.format.read_array_header_2_0)
                        header = reader(member)
                    if tuple(header[0]) != shape:
                        raise DatasetError(f"{path}: {name} has shape {tuple(header[0])}, expected {shape} "
                                           f"(observation spec {self.spec.variant} {self.spec.map_shape})")
                    if np.dtype(header[2]) != np.dtype(dtypes[name]):
                        raise DatasetError(f"{path}: {name} has dtype {np.dtype(header[2])}, expected {dtypes[name]}")
                    if header[1]:
                        raise DatasetError(f"{path}: {name} is stored in Fortran order; rewrite the shard")
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as error:
            if isinstance(error, DatasetError):
                raise
            raise DatasetError(f"{path}: unreadable shard ({error})") from None

    # ------------------------------------------------------------------ reading
    def load_shard(self, index: int) -> Batch:
        """All rows of one shard, checked for content the headers cannot show."""
        path = self._shard_path(index)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as error:
            raise DatasetError(f"{path}: unreadable shard ({error})") from None
        actions = arrays["actions"].astype(np.int64)
        bad = (actions < 0) | (actions >= len(self.spec.action_names))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{path}: actions[{row}] = {actions[row]} is outside the action space "
                               f"0..{len(self.spec.action_names) - 1}")
        labels = arrays["expert_actions"].astype(np.int64)
        bad = (labels < 0) | (labels >= len(self.spec.action_names))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{path}: expert_actions[{row}] = {labels[row]} is outside the action space")
        allowed = np.take_along_axis(arrays["action_mask"], actions[:, None], axis=1)[:, 0]
        if not allowed.all():
            row = int(np.flatnonzero(~allowed)[0])
            raise DatasetError(f"{path}: actions[{row}] = {self.spec.action_names[actions[row]]} was masked")
        for name in ("rewards", "value_preds", "old_log_probs", "features", "bootstrap_values"):
            finite = np.isfinite(arrays[name])
            if not finite.all():
                row = int(np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))[0])
                raise DatasetError(f"{path}: {name}[{row}] is not finite")
        return arrays

    def episodes(self) -> np.ndarray:
        return np.arange(self.manifest.episodes)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Train and validation episode ids: whole episodes, drawn by a seeded permutation."""
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        episodes = np.random.default_rng(seed).permutation(self.manifest.episodes)
        count = int(round(val_fraction * len(episodes)))
        if val_fraction > 0 and count == 0:
            count = 1
        if count >= len(episodes) and val_fraction > 0:
            raise UsageError(f"{self.manifest.episodes} episode(s) cannot be split with val_fraction={val_fraction}")
        return np.sort(episodes[count:]), np.sort(episodes[:count])

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        episodes: Sequence[int] | np.ndarray | None = None,
        drop_last: bool = False,
        buffer_shards: int = 2,
    ) -> Iterator[Batch]:
        """One epoch of mini-batches over the rows of `episodes` (all when None)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.manifest.shards)) if shuffle else np.arange(len(self.manifest.shards))
        keep = None if episodes is None else np.asarray(episodes)
        carry: Batch | None = None
        for start in range(0, len(order), buffer_shards):
            parts = []
            for index in order[start : start + buffer_shards]:
                arrays = self._rows_of_shard(int(index))
                rows = len(arrays["tick"])
                selected = np.arange(rows) if keep is None else np.flatnonzero(np.isin(arrays["episode"], keep))
                parts.append({name: arrays[name][selected] for name in arrays if name not in SHARD_ARRAYS})
            pool = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
            if shuffle:
                permutation = rng.permutation(len(pool["tick"]))
                pool = {name: values[permutation] for name, values in pool.items()}
            if carry is not None:
                pool = {name: np.concatenate([carry[name], pool[name]]) for name in pool}
            total = len(pool["tick"])
            full = total - total % batch_size
            for begin in range(0, full, batch_size):
                yield {name: values[begin : begin + batch_size] for name, values in pool.items()}
            carry = {name: values[full:] for name, values in pool.items()} if full < total else None
        if carry is not None and not drop_last:
            yield carry


def mixed_batches(sources: Sequence[tuple[Iterator[Batch], float]], batch_size: int) -> Iterator[Batch]:
    """Interleave datasets: each batch takes about `weight` of its rows from each source.

    Used by the `mixed` data mode (replay and fresh rollouts in the same mini-batches). A source that runs
    out drops out and the others go on, so every row of every source is still seen once.
    """
    weights = np.array([weight for _, weight in sources], dtype=np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"mixed_batches: weights must be non-negative and not all zero, got {weights.tolist()}")
    shares = np.maximum(1, np.round(batch_size * weights / weights.sum()).astype(int))
    pending: list[Batch | None] = [None] * len(sources)
    alive = [weight > 0 for weight in weights]
    iterators = [iterator for iterator, _ in sources]

    def take(index: int, count: int) -> Batch | None:
        buffer = pending[index]
        while alive[index] and (buffer is None or len(buffer["tick"]) < count):
            try:
                more = next(iterators[index])
            except StopIteration:
                alive[index] = False
                break
            buffer = more if buffer is None else {k: np.concatenate([buffer[k], more[k]]) for k in buffer}
        if buffer is None or len(buffer["tick"]) == 0:
            pending[index] = None
            return None
        pending[index] = {k: v[count:] for k, v in buffer.items()} if len(buffer["tick"]) > count else None
        return {k: v[:count] for k, v in buffer.items()}

    while True:
        parts = [take(index, int(share)) for index, share in enumerate(shares)]
        parts = [part for part in parts if part is not None]
        if not parts:
            return
        keys = set.intersection(*(set(part) for part in parts))
        yield {key: np.concatenate([part[key] for part in parts]) for key in sorted(keys)}
