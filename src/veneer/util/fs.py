"""File helpers: atomic writes, advisory locks, and path joins that cannot escape their base.

Nothing here knows about images or machines; it must not import from veneer other than `errors`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from veneer.errors import Error, MachineBusy


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` so readers see either the old or the new content, never a part."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def save_json(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record atomically."""
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def locked(path: Path, *, what: str, hint: str | None = None, wait: bool = False) -> Iterator[int]:
    """Hold an exclusive `flock` on `path` (a directory or lock file) for the duration of the block.

    Non-blocking by default: if another process holds it, raise `MachineBusy` naming `what`.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC
    if not path.is_dir():
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise MachineBusy(
                f"{what} is locked by another veneer command",
                hint=hint or "Wait for the other command to finish, then try again.",
            ) from None
        yield fd
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """Take an exclusive lock on `path` without blocking; return the fd, or None if it is held."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def safe_join(base: Path, relative: str) -> Path:
    """Join a relative path under `base`, refusing absolute paths and `..` components."""
    if relative.startswith("/") or any(part == ".." for part in relative.split("/")):
        raise Error(f"Path '{relative}' leaves '{base}'", hint="Use a path relative to the image root.")
    return base / relative


def remove_tree(path: Path) -> None:
    """Delete a directory tree without following symlinks or crossing into other mounts."""
    if not path.exists() and not path.is_symlink():
        return

    def onerror(func: Any, name: str, exc_info: Any) -> None:
        err = exc_info[1]
        if isinstance(err, FileNotFoundError):
            return
        if isinstance(err, OSError) and err.errno == errno.EBUSY:
            raise Error(
                f"Cannot remove '{name}': it is a mount point", hint=f"Unmount it first (umount '{name}')."
            ) from err
        raise err

    shutil.rmtree(path, onerror=onerror)


def make_private_dir(path: Path, *, mode: int = 0o700) -> None:
    """Create `path` and its parents; the last component gets `mode` even under a permissive umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def dir_size(path: Path) -> int:
    """Bytes used by the files under `path` (allocated blocks, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total
