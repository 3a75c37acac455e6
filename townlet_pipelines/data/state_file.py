"""A small durable JSON state file: read-modify-write under an exclusive lock, replaced atomically.

A file that cannot be parsed is reported (naming it and how to repair it) and never overwritten, so history
is never lost. Every write keeps the version it replaces as `<file>.prev`: a damaged file has a known-good
predecessor. Values JSON cannot hold (NaN, infinity) are refused on the way in and on the way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
from pathlib import Path
from typing import ClassVar, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from townlet_pipelines.data.files import atomic_write_bytes, atomic_write_text

Model = TypeVar("Model", bound=BaseModel)


class StateModel(BaseModel):
    """Top level of a state file: unknown fields and unknown schema versions are errors, never dropped."""

    model_config = ConfigDict(extra="forbid")
    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int = 1

    @field_validator("schema_version")
    @classmethod
    def _known(cls, version: int) -> int:
        if version != cls.SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is not supported (this version reads {cls.SCHEMA_VERSION})")
        return version


def finite_metrics(metrics: dict | None, where: str) -> dict[str, float]:
    """Metrics as floats; NaN or infinity is refused (JSON cannot hold them and the file would stop parsing)."""
    out = {key: float(value) for key, value in (metrics or {}).items()}
    bad = [key for key, value in out.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"{where}: metrics {bad} are not finite")
    return out


class StateFileError(RuntimeError):
    """A state file is unreadable; it was left exactly as it was."""


def _repair_hint(path: Path) -> str:
    previous = path.with_name(path.name + ".prev")
    if previous.exists():
        return f"to repair it, fix the named entry or restore the version before the last write: cp {previous} {path}"
    return "to repair it, fix or remove the named entry (nothing reads a partial file)"


def read_state(path: Path, model: type[Model]) -> Model:
    if not path.exists():
        return model()
    try:
        return model.model_validate_json(path.read_text())
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
                             for item in error.errors()[:3])
        raise StateFileError(f"{path}: unreadable state file, left untouched ({problems}); {_repair_hint(path)}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise StateFileError(f"{path}: unreadable state file, left untouched ({str(error).splitlines()[0]}); "
                             f"{_repair_hint(path)}") from None


@contextlib.contextmanager
def locked_state(path: Path, model: type[Model]) -> Iterator[list[Model]]:
    """Yield a one-item list holding the state; whatever it holds at the end is written back atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            holder = [read_state(path, model)]
            yield holder
            text = holder[0].model_dump_json(indent=2)
            model.model_validate_json(text)  # never write what could not be read back
            if path.exists():
                atomic_write_bytes(path.with_name(path.name + ".prev"), path.read_bytes())
            atomic_write_text(path, text)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
