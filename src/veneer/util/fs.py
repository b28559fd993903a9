"""File helpers: atomic writes, advisory locks, and path joins that cannot escape their base.

Nothing here knows about images or machines; it must not import from veneer other than `errors`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from veneer.errors import MachineBusy
from veneer.util.mountinfo import load_mountinfo


def random_hex(nbytes: int) -> str:
    """Random hex for names and ids (`secrets` and `uuid` cost the CLI milliseconds to import)."""
    return os.urandom(nbytes).hex()


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` so readers see either the old or the new content, never a part; and,
    if `durable`, so a power cut leaves one or the other too (runtime state under /run need not)."""
    payload = data.encode() if isinstance(data, str) else data
    # As tempfile.mkstemp does it (tempfile costs every command milliseconds to import).
    tmp = path.parent / f".{path.name}.{random_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def save_json(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record atomically."""
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def locked(
    path: Path, *, what: str, hint: str | None = None, wait: bool = False, directory: bool = False
) -> Iterator[int]:
    """Hold an exclusive `flock` on `path` for the duration of the block: an object's existing directory
    (`directory`, FileNotFoundError if it is gone), or a lock file made if missing.

    Non-blocking by default: if another process holds it, raise `MachineBusy` naming `what`.
    """
    if directory:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


def mount_points_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    top = os.path.realpath(path)
    points = [m.mount_point for m in load_mountinfo()]
    inside = [p for p in points if p == top or p.startswith(top.rstrip("/") + "/")]
    return sorted(inside, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a directory tree without following symlinks or crossing into other file systems.

    Whatever is mounted below it (a killed build's /proc, a bind) is detached first, so the deletion can
    never reach through a mount into the host's files.
    """
    if not os.path.lexists(path):
        return
    from veneer.util.proc import run  # subprocess: not for the verbs that only read the store

    for point in mount_points_under(path):
        run(["umount", "--lazy", point], check=False, capture=True)
    result = run(["rm", "-rf", "--one-file-system", "--", os.fspath(path)], check=False, capture=True)
    if result.returncode != 0 and os.path.lexists(path):
        raise OSError(errno.EBUSY, f"Cannot remove '{path}': {result.stderr.strip()}")


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
