"""Atomic, reproducible file writing: a failed run never leaves a half-written file or dataset behind.

Files are written to a temporary sibling and renamed into place; a dataset is built in a temporary
sibling directory and renamed as a whole. A temporary's name carries its writer's host and pid
(`.<name>.<host>-<pid>.<random>.tmp`): a writer that was killed leaves one behind, and the next write in
the same folder removes it once that process is gone (`sweep_leftovers`). `.npz` archives are written with fixed zip timestamps so the
same arrays always give the same bytes, and therefore the same sha256.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]
_LEFTOVER = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers on this host left in `folder`; the paths removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match is None or match["host"] != _HOST or pid_exists(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def _prefix(name: str) -> str:
    return f".{name}.{_HOST}-{os.getpid()}."


def temporary_sibling(final: str | Path) -> Path:
    """A fresh name beside `final` for a folder a writer builds and renames into place; `sweep_leftovers` removes
    it once its writer is gone (killed). The caller creates it."""
    final = Path(final)
    return final.with_name(f"{_prefix(final.name)}{os.urandom(4).hex()}.tmp")


def _umask() -> int:
    """This process's umask: read from /proc where Linux shows it, since setting it to read it back would, for
    that instant, give any file another thread creates a mode of 0666."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `path` whole or not at all, with the mode any new file gets (mkstemp's own is 0600: another user,
    a web server or a reader in another container, could not read the promotion state or a record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def npz_bytes(arrays: Mapping[str, np.ndarray], compress: bool = True) -> bytes:
    """A numpy `.npz` archive (readable by `np.load`) whose bytes depend only on the arrays."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = method
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(info, member.getvalue(), compresslevel=1 if compress else None)
    return buffer.getvalue()


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it appears at `final` only if the block succeeds."""
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final}: already exists; choose a new output directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final.parent)
    temporary = Path(tempfile.mkdtemp(prefix=_prefix(final.name), suffix=".tmp", dir=final.parent))
    os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like any new folder
    try:
        yield temporary
        try:
            os.rename(temporary, final)
        except OSError as error:  # another writer finished the same directory first
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.exists():
                raise FileExistsError(f"{final}: already exists (another writer finished it first)") from None
            raise
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
