"""Moving a tree of files from one uid/gid range to another (a cloned machine gets a range of its own)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

RANGE = 0x10000


def shifted(value: int, source: int, target: int) -> int:
    """`value` moved from the range at `source` to the range at `target`; ids outside stay as they are."""
    return value - source + target if source <= value < source + RANGE else value


def shift_ownership(tree: Path, source: int, target: int) -> None:
    """Re-own every entry under `tree` (itself included) from one 65536-id range to another."""
    if source == target:
        return
    paths = [tree]
    for dirpath, dirnames, filenames in os.walk(tree):
        paths += [Path(dirpath, name) for name in dirnames + filenames]
    for path in paths:
        st = os.lstat(path)
        uid, gid = shifted(st.st_uid, source, target), shifted(st.st_gid, source, target)
        if (uid, gid) == (st.st_uid, st.st_gid):
            continue
        os.chown(path, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))  # chown() clears setuid and setgid
