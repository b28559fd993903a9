"""What a rebase plan is made of: one action per path of the upper dir, with its verdict and reason.

Like mkosi's `FSOperation`s, an action can describe itself (`--dry-run`) and is carried out elsewhere
(`journal.apply`), so what is printed is exactly what is done.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Verdict(enum.StrEnum):
    KEEP = "keep"  # the child's entry stays as it is
    DROP = "drop"  # the child's entry goes (saved first): the new base shows
    MERGE = "merge"  # a known file merged record by record, cleanly
    CONFLICT = "conflict"  # changed on both sides; resolved by --prefer


class Operation(enum.StrEnum):
    """What applying an action does to the upper dir."""

    NONE = "none"
    REMOVE = "remove"  # move the entry (a whole subtree for a directory) into the backup
    WRITE = "write"  # move the entry into the backup and write new contents with its metadata
    SETATTR = "setattr"  # give a directory the new base's mode and owner (the old ones are recorded)
    WHITEOUT = "whiteout"  # hide the new base's entry where the upper dir has none


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    path: str  # relative to the upper dir
    verdict: Verdict
    operation: Operation
    reason: str
    content: bytes | None = None  # WRITE
    attrs: tuple[int, int, int] | None = None  # SETATTR: mode, uid, gid as the upper dir holds them
    conflicts: tuple[str, ...] = ()  # the records a merge resolved by --prefer

    def describe(self) -> str:
        text = f"{self.verdict.value:<9}/{self.path}  ({self.reason})"
        return "\n".join([text, *(f"{'':<9}  conflict: {c}" for c in self.conflicts)])

    def to_json(self) -> dict[str, Any]:
        return {
            "path": "/" + self.path,
            "verdict": self.verdict.value,
            "operation": self.operation.value,
            "reason": self.reason,
            "conflicts": list(self.conflicts),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    actions: tuple[Action, ...]
    examined: int  # entries of the upper dir read

    def count(self, verdict: Verdict) -> int:
        return sum(1 for a in self.actions if a.verdict is verdict)

    def summary(self) -> str:
        parts = [f"{self.count(v)} {v.value}" for v in Verdict if self.count(v)]
        return ", ".join(parts) or "nothing to do"
