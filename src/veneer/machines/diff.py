"""What a machine changed relative to its base, read from its upper dir (like `docker diff`)."""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from veneer.config.uidrange import to_image_id
from veneer.overlay.layers import is_opaque, is_whiteout, lookup
from veneer.util.walk import TreeBudget, walk_tree


class ChangeKind(enum.StrEnum):
    """The letters `docker diff` uses."""

    ADDED = "A"
    CHANGED = "C"
    DELETED = "D"


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    kind: ChangeKind
    path: str


def diff_upper(
    upper: Path, lowers: Sequence[Path], *, uid_base: int | None, budget: TreeBudget | None = None
) -> list[Change]:
    """Compare a machine's upper dir with its base layers (bottom first); timestamps are ignored.

    A directory that exists in the base is reported only when the machine changed its mode or owner, or
    replaced it (opaque); a directory that only exists because a file below it was written is not.
    `upper` should be a view that follows no symlinks (`overlay.view`): the machine may be running.
    """
    changes: list[Change] = []
    hidden: list[str] = []  # opaque directories: what lies below them is not the base's
    for rel_dir, entries in walk_tree(upper, budget or TreeBudget(f"'{upper}'")):
        for name, st in entries:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            below = None if any(rel.startswith(h + "/") for h in hidden) else lookup(lowers, rel)
            kind = _classify(st, below, upper / rel, uid_base)
            if stat.S_ISDIR(st.st_mode) and is_opaque(upper / rel):
                hidden.append(rel)
            if kind is not None:
                changes.append(Change(kind=kind, path="/" + rel))
    return changes


def _classify(
    st: os.stat_result, below: os.stat_result | None, path: Path, uid_base: int | None
) -> ChangeKind | None:
    if is_whiteout(st):
        return ChangeKind.DELETED
    if below is None:
        return ChangeKind.ADDED
    if stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(below.st_mode):
        same = (
            stat.S_IMODE(st.st_mode) == stat.S_IMODE(below.st_mode)
            and to_image_id(st.st_uid, uid_base) == below.st_uid
            and to_image_id(st.st_gid, uid_base) == below.st_gid
        )
        return None if same and not is_opaque(path) else ChangeKind.CHANGED
    return ChangeKind.CHANGED
