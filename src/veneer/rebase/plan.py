"""The plan of a rebase: for every entry of a machine's upper dir that the base changed between the old and
the new revision, what happens to it and why. Reads the trees, changes nothing.

The rules (PRODUCT.md, "Rebase"), with C the child's entry, O the old base's and N the new base's,
compared without timestamps: C equal to N or to O is dropped, so the new base shows; a file veneer knows
how to merge is merged record by record; any other difference is a conflict that keeps C (or, preferring
the base, drops it). A whiteout (the child deleted the path) and an opaque directory (the child replaced
a directory) follow the same rules. The machine's identity and logs always stay the child's.

Which entries the base changed is found from the layers the two revisions do not share: a path is touched
when one of those layers holds it, or holds a whiteout, file or opaque directory above it. Untouched
subtrees of the upper dir are not even read, which keeps planning cheap for the usual update.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from veneer.config.uidrange import to_machine_id
from veneer.images.identity import belongs_to_machine
from veneer.overlay.layers import is_opaque, is_whiteout, locate
from veneer.rebase.actions import Action, Operation, Plan, Verdict
from veneer.rebase.compare import same_entry, same_tree, same_union
from veneer.rebase.merge import Prefer, merge_file, merger_for
from veneer.rebase.pacman import pacman_actions
from veneer.util.walk import TreeBudget

# Account databases, dpkg's status, debconf's database: a few MiB on the largest real systems.
MAX_MERGE_BYTES = 64 << 20


class _Touched:
    """The paths the layers two revisions do not share hold, and the ones they cover."""

    def __init__(self, layers: Sequence[Path]) -> None:
        self.entries: set[str] = set()
        self.covers: set[str] = set()  # whiteouts, files, symlinks, opaque dirs: all below is touched
        self.parents: set[str] = set()  # directories with touched entries below (a layer's directories)
        for layer in layers:
            pending = [""]
            while pending:
                rel_dir = pending.pop()
                prefix = rel_dir + "/" if rel_dir else ""
                with os.scandir(layer / rel_dir if rel_dir else layer) as scan:
                    for entry in scan:
                        rel = prefix + entry.name
                        self.entries.add(rel)
                        if not entry.is_dir(follow_symlinks=False):
                            self.covers.add(rel)
                            continue
                        self.parents.add(rel)
                        pending.append(rel)
                        if is_opaque(Path(entry.path)):
                            self.covers.add(rel)

    def touches(self, relative: str) -> bool:
        if relative in self.entries:
            return True
        parent = os.path.dirname(relative)
        while parent:
            if parent in self.covers:
                return True
            parent = os.path.dirname(parent)
        return False


def shared_prefix(old: Sequence[Path], new: Sequence[Path]) -> int:
    count = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        count += 1
    return count


def make_plan(
    upper: Path,
    old: Sequence[Path],
    new: Sequence[Path],
    *,
    uid_base: int | None,
    prefer: Prefer,
    budget: TreeBudget | None = None,
) -> Plan:
    """Plan moving the upper dir of a machine (owners in the range at `uid_base`) from the layer stack
    `old` to `new` (both bottom first). `upper` should be a view that follows no symlinks (`overlay.view`),
    and `budget` bounds how much of it is read."""
    shared = shared_prefix(old, new)
    planner = _Planner(
        upper,
        list(old),
        list(new),
        uid_base=uid_base,
        prefer=prefer,
        budget=budget or TreeBudget(f"'{upper}'"),
    )
    touched = _Touched([*old[shared:], *new[shared:]])
    actions = pacman_actions(
        upper, old, new, list(planner.walk("", touched)), prefer=prefer, budget=planner.budget
    )
    return Plan(actions=tuple(actions), examined=planner.examined)


class _Planner:
    def __init__(
        self,
        upper: Path,
        old: list[Path],
        new: list[Path],
        *,
        uid_base: int | None,
        prefer: Prefer,
        budget: TreeBudget,
    ) -> None:
        self.upper, self.old, self.new = upper, old, new
        self.uid_base = uid_base
        self.prefer = prefer
        self.budget = budget
        self.examined = 0

    def walk(self, rel_dir: str, touched: _Touched) -> Iterator[Action]:
        # Only directories the layers hold are looked into, so the recursion is as deep as the image's tree.
        directory = self.upper / rel_dir if rel_dir else self.upper
        for name, st in self.budget.list_dir(self.upper, rel_dir):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            self.examined += 1
            descend = stat.S_ISDIR(st.st_mode)
            if touched.touches(rel):
                action, descend = self.decide(rel, directory / name, st)
                if action is not None:
                    yield action
            elif rel not in touched.parents:
                descend = False
            if descend:
                yield from self.walk(rel, touched)

    def _conflict(self, rel: str, reason: str, *, base: Operation = Operation.REMOVE) -> Action:
        if self.prefer is Prefer.BASE:
            return Action(
                path=rel, verdict=Verdict.CONFLICT, operation=base, reason=f"{reason}; the base's kept"
            )
        return Action(
            path=rel,
            verdict=Verdict.CONFLICT,
            operation=Operation.NONE,
            reason=f"{reason}; the child's kept",
        )

    def _same(self, path: Path, st: os.stat_result, found: tuple[Path, os.stat_result] | None) -> bool:
        return found is not None and same_entry(path, st, self.uid_base, found[0], found[1], None)

    def decide(self, rel: str, path: Path, st: os.stat_result) -> tuple[Action | None, bool]:
        """The action for one touched entry, and whether to look at what it holds."""
        old, new = locate(self.old, rel), locate(self.new, rel)
        if old is not None and new is not None and same_entry(*old, None, *new, None):
            # Touched by a layer but the same in both revisions (e.g. changed and changed back). A
            # directory may still hold changed entries: the child's own directory is looked into; a
            # whiteout, opaque directory or file of the child's hides them all, so unless the base's tree
            # below is unchanged too, it is decided like any entry the base changed.
            looks_in = stat.S_ISDIR(st.st_mode) and not is_opaque(path)
            if looks_in or not stat.S_ISDIR(new[1].st_mode) or same_union(self.old, self.new, rel):
                return None, looks_in
        if belongs_to_machine(rel):
            keep = Action(
                path=rel, verdict=Verdict.KEEP, operation=Operation.NONE, reason="the machine's own"
            )
            return (None if self._same(path, st, new) else keep), False
        if is_whiteout(st):
            return self._decide_whiteout(rel, old, new), False
        if stat.S_ISDIR(st.st_mode):
            return self._decide_directory(rel, path, st, old, new)
        return self._decide_file(rel, path, st, old, new), False

    def _decide_whiteout(
        self, rel: str, old: tuple[Path, os.stat_result] | None, new: tuple[Path, os.stat_result] | None
    ) -> Action | None:
        if new is None or old is None:
            reason = "deleted in the new base too" if new is None else "the old base did not have it"
            return _drop(rel, reason)
        return self._conflict(rel, "the child deleted it, the base changed it")

    def _decide_directory(
        self,
        rel: str,
        path: Path,
        st: os.stat_result,
        old: tuple[Path, os.stat_result] | None,
        new: tuple[Path, os.stat_result] | None,
    ) -> tuple[Action | None, bool]:
        new_is_dir = new is not None and stat.S_ISDIR(new[1].st_mode)
        if is_opaque(path):
            if (
                new is not None
                and new_is_dir
                and self._same(path, st, new)
                and same_tree(path, self.uid_base, self.new, rel)
            ):
                return _drop(rel, "the child's replacement equals the new base"), False
            return self._conflict(rel, "the child replaced the directory, the base changed it"), False
        if new is None or not new_is_dir:
            what = "removed" if new is None else "replaced"
            return self._conflict(rel, f"the base {what} the directory the child changed things in"), False
        assert new is not None
        if self._same(path, st, new):
            return None, True
        attrs = (
            new[1].st_mode & 0o7777,
            to_machine_id(new[1].st_uid, self.uid_base),
            to_machine_id(new[1].st_gid, self.uid_base),
        )
        if self._same(path, st, old):
            reason = "the base changed the directory's owner or mode, the child did not"
            return Action(
                path=rel, verdict=Verdict.DROP, operation=Operation.SETATTR, reason=reason, attrs=attrs
            ), True
        conflict = self._conflict(rel, "owner or mode changed on both sides", base=Operation.SETATTR)
        return (conflict if conflict.operation is Operation.NONE else replace(conflict, attrs=attrs)), True

    def _decide_file(
        self,
        rel: str,
        path: Path,
        st: os.stat_result,
        old: tuple[Path, os.stat_result] | None,
        new: tuple[Path, os.stat_result] | None,
    ) -> Action | None:
        if self._same(path, st, new):
            return _drop(rel, "equal to the new base")
        if self._same(path, st, old):
            return _drop(rel, "the child did not change it")
        if old is None and new is None:
            return None  # added and removed again by the base's layers: the child's own file
        if (
            merger_for(rel) is not None
            and stat.S_ISREG(st.st_mode)
            and _regular_or_none(old)
            and _regular_or_none(new)
        ):
            child = _read_bounded(path, MAX_MERGE_BYTES)
            if child is None:
                return self._conflict(rel, f"too large to merge (over {MAX_MERGE_BYTES} bytes)")
            return self._merge(rel, child, old, new)
        if new is None:
            return self._conflict(rel, "the base deleted it, the child changed it")
        if old is None:
            return self._conflict(rel, "added on both sides, differently")
        return self._conflict(rel, "changed on both sides")

    def _merge(
        self,
        rel: str,
        child: bytes,
        old: tuple[Path, os.stat_result] | None,
        new: tuple[Path, os.stat_result] | None,
    ) -> Action:
        new_bytes = None if new is None else new[0].read_bytes()
        merged = merge_file(
            rel,
            old=None if old is None else old[0].read_bytes(),
            child=child,
            new=new_bytes,
            prefer=self.prefer,
        )
        conflicts = tuple(
            c.reason if c.reason.startswith(c.record) else f"{c.record}: {c.reason}"
            for c in merged.conflicts
        )
        verdict = Verdict.CONFLICT if conflicts else Verdict.MERGE
        if new_bytes is not None and merged.content == new_bytes:
            reason = "merged: the new base has all the child's records"
            return Action(
                path=rel, verdict=verdict, operation=Operation.REMOVE, reason=reason, conflicts=conflicts
            )
        reason = "merged record by record" + (f", {len(conflicts)} conflict(s) below" if conflicts else "")
        return Action(
            path=rel,
            verdict=verdict,
            operation=Operation.WRITE,
            reason=reason,
            content=merged.content,
            conflicts=conflicts,
        )


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """A child's file, or None if it is larger than `limit` (merges hold three versions in memory)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


def _drop(rel: str, reason: str) -> Action:
    """The child's entry goes (saved first), so the new base's shows."""
    return Action(path=rel, verdict=Verdict.DROP, operation=Operation.REMOVE, reason=reason)


def _regular_or_none(found: tuple[Path, os.stat_result] | None) -> bool:
    return found is None or stat.S_ISREG(found[1].st_mode)
