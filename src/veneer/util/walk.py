"""Bounded walks over trees a machine writes (its upper dir): iterative, never following symlinks, and
limited, so a planted tree ends in a clear `TreeTooLarge` instead of a crash or hours of work.

Paths are plain joins below `top`: callers pass a view on which the kernel follows no symlinks
(`veneer.overlay.view.nofollow_view`), so a directory swapped for a link while it is read fails with
ELOOP and is skipped as gone. Must not import from veneer other than `errors`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from veneer.errors import TreeTooLarge

# Relative paths stay below the kernel's PATH_MAX (4096) with a view's "/proc/<pid>/fd/<n>/" in front.
MAX_PATH_BYTES = 4000
# Real trees are a few dozen levels deep; os.walk (recursive before Python 3.12) and the commands that copy
# or re-own a whole upper dir must not meet a tree deeper than Python's recursion limit (1000).
MAX_DEPTH = 256
# A large distribution machine holds a few hundred thousand files; reading more is a planted tree.
MAX_ENTRIES = 2_000_000

# A directory that vanished, or was replaced by a file or a symlink, since its parent was listed.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)

Entry = tuple[str, os.stat_result]  # a name and its lstat


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeLimits:
    path_bytes: int = MAX_PATH_BYTES
    depth: int = MAX_DEPTH
    entries: int = MAX_ENTRIES


class TreeBudget:
    """What one reader may still read of a tree: every listing counts its entries against the limits."""

    def __init__(self, what: str, limits: TreeLimits | None = None) -> None:
        self.what = what
        self.limits = limits or TreeLimits()
        self.entries = 0

    def list_dir(self, top: Path, rel_dir: str) -> list[Entry]:
        """The entries of the directory `rel_dir` below `top`, sorted by name, with their lstat; empty if
        it is gone or is no directory any more."""
        prefix = f"{rel_dir}/" if rel_dir else ""
        if prefix.count("/") > self.limits.depth:
            raise TreeTooLarge(
                f"{self.what} holds directories nested deeper than {self.limits.depth} levels, "
                f"in '/{prefix[:60]}...'",
                hint="veneer does not read such trees; remove it inside the machine.",
            )
        entries = []
        try:
            with os.scandir(top / rel_dir if rel_dir else top) as scan:
                for entry in scan:
                    self.entries += 1
                    if self.entries > self.limits.entries:
                        raise TreeTooLarge(
                            f"{self.what} holds more than {self.limits.entries} entries",
                            hint="veneer stops reading there; remove what you do not need inside it.",
                        )
                    if len(os.fsencode(prefix + entry.name)) > self.limits.path_bytes:
                        raise TreeTooLarge(
                            f"{self.what} holds directories nested deeper than {self.limits.path_bytes} "
                            f"bytes of path, in '/{prefix[:60]}...'",
                            hint="veneer does not read such trees; remove it inside the machine.",
                        )
                    try:
                        entries.append((entry.name, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue
        except OSError as e:
            if e.errno in _GONE:
                return []
            raise
        return sorted(entries, key=lambda item: item[0])


def walk_tree(top: Path, budget: TreeBudget) -> Iterator[tuple[str, list[Entry]]]:
    """Each directory below `top` (itself first, as "") with its entries, in `os.walk`'s top-down order;
    symlinks are entries, never followed."""
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        entries = budget.list_dir(top, rel_dir)
        yield rel_dir, entries
        prefix = f"{rel_dir}/" if rel_dir else ""
        pending += [prefix + name for name, st in reversed(entries) if stat.S_ISDIR(st.st_mode)]
