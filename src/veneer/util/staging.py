"""Half-built objects. Each lives in a staging directory locked by the process building it; a crash
releases the lock, and the next sweep removes whatever is no longer locked.

Publishing is a rename out of the staging directory, so an object is either whole or invisible.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from veneer.util.fs import locked, make_private_dir, random_hex, remove_tree, try_lock

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def staging_dir(staging: Path, store_lock: Path, prefix: str) -> Iterator[Path]:
    """A fresh locked directory under `staging`, removed on the way out unless it was renamed away."""
    make_private_dir(staging)
    # Create and lock under the store lock, so a concurrent sweep cannot take the new dir for a leftover.
    with locked(store_lock, what="The veneer store", wait=True):
        path = staging / f"{prefix}-{random_hex(6)}"
        path.mkdir(mode=0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield path
    finally:
        try:
            if path.exists():
                remove_tree(path)
        finally:
            os.close(fd)


def sweep_staging(staging: Path) -> list[str]:
    """Remove leftovers of interrupted commands; the caller holds the store lock. Returns their names."""
    removed: list[str] = []
    if not staging.is_dir():
        return removed
    for entry in sorted(staging.iterdir()):
        fd = try_lock(entry)
        if fd is None and entry.is_dir():
            continue  # still being built (or deleted) by a live command
        from veneer.util.proc import wait_until  # loaded for leftovers only: a listing has none to sweep

        try:
            # A helper of the dead command may still be writing there for a moment (it gets SIGKILL
            # when its parent dies): try again briefly, then leave the rest to the next sweep.
            if wait_until(functools.partial(_removed, entry), timeout=2.0, interval=0.1):
                removed.append(entry.name)
            else:
                logger.debug("Cannot remove '%s' yet, leaving it to the next command.", entry)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def _removed(path: Path) -> bool:
    try:
        remove_tree(path)
    except OSError:
        return False
    return True


def trash(path: Path, staging: Path) -> Path:
    """Move `path` into the staging dir at once (it disappears atomically), to be deleted afterwards."""
    make_private_dir(staging)
    target = staging / f"trash-{path.name}-{random_hex(6)}"
    os.rename(path, target)
    return target
