"""A read-only view of a directory a machine writes (its upper dir) on which the kernel follows no symlinks.

Host-side readers (diff, list, journal, rebase planning) read a machine's files while it may be running
and changing them. Below this view plain path joins are safe: a symlink anywhere on the way, planted or
swapped in mid-read, fails with ELOOP (MOUNT_ATTR_NOSYMFOLLOW) instead of leading into the host, whoever
resolves the path (veneer, or a command it starts such as journalctl). The view is also read-only, nodev,
nosuid and noexec. It is a detached clone of the directory's mount (open_tree), in no mount table, gone
with its fd whatever happens to veneer. Must not know about machines; failures raise `MountError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from veneer.errors import MountError
from veneer.overlay import idmap

VIEW_ATTRS = (
    idmap.MOUNT_ATTR_RDONLY
    | idmap.MOUNT_ATTR_NOSUID
    | idmap.MOUNT_ATTR_NODEV
    | idmap.MOUNT_ATTR_NOEXEC
    | idmap.MOUNT_ATTR_NOSYMFOLLOW
)


@contextlib.contextmanager
def nofollow_view(directory: Path) -> Iterator[Path]:
    """`directory` as `/proc/<veneer's pid>/fd/<n>`: a path veneer and the commands it starts can read
    (not /proc/self, which would be each command's own), through which no symlink is followed."""
    try:
        fd = idmap.open_tree(directory)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise MountError(
            f"Failed to open a view of '{directory}': {e.strerror}",
            hint="veneer needs root and Linux 5.14 or later (mount_setattr with MOUNT_ATTR_NOSYMFOLLOW).",
        ) from e
    try:
        try:
            idmap.mount_setattr(fd, attr_set=VIEW_ATTRS, name=directory)
        except OSError as e:
            raise MountError(
                f"Failed to make a read-only view of '{directory}': {e.strerror}",
                hint="veneer needs Linux 5.14 or later (MOUNT_ATTR_NOSYMFOLLOW).",
            ) from e
        yield Path(f"/proc/{os.getpid()}/fd/{fd}")
    finally:
        os.close(fd)
