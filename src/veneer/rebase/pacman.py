"""pacman's local database in a rebase: one directory per installed package, `NAME-VERSION-REL`.

Path by path, a package the base upgraded (foo-1.0 replaced by foo-1.1) and the child upgraded too
(foo-1.0 replaced by foo-1.2) do not even touch the same path, and the machine would end up with two
versions of foo registered. So after the path-by-path plan, the entries are merged per package name
(`merge_pacman_entries`), and the plan is corrected so that exactly the chosen entry of each package
shows: an unwanted entry of the child's is removed, one of the base's is hidden by a new whiteout, and a
whiteout of the child's that hides the chosen entry is removed.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path

from veneer.overlay.layers import is_whiteout, list_union
from veneer.rebase.actions import Action, Operation, Verdict
from veneer.rebase.merge import Prefer, merge_pacman_entries
from veneer.util.walk import TreeBudget

LOCAL_DB = "var/lib/pacman/local"


def _package(entry: str) -> str:
    # pkgver and pkgrel never hold a dash (makepkg refuses them), so the name is all before the last two.
    return entry.rsplit("-", 2)[0]


def _by_package(entries: Sequence[str]) -> dict[str, str]:
    return {_package(entry): entry for entry in entries}


def pacman_actions(
    upper: Path,
    old: Sequence[Path],
    new: Sequence[Path],
    actions: list[Action],
    *,
    prefer: Prefer,
    budget: TreeBudget | None = None,
) -> list[Action]:
    """`actions` corrected so that the machine's pacman database registers one entry per package; the
    machine's database is listed within `budget`."""
    db = upper / LOCAL_DB
    if not db.is_dir() or db.is_symlink():
        return actions
    if any(a.operation is Operation.REMOVE and f"{LOCAL_DB}/".startswith(f"{a.path}/") for a in actions):
        return actions  # the whole database goes (the base's kept): nothing to correct inside it
    new_entries = {n: p for n, p in list_union(new, LOCAL_DB).items() if p.is_dir()}
    child_view = {n: p for n, p in list_union([*old, upper], LOCAL_DB).items() if p.is_dir()}
    old_entries = [n for n, p in list_union(old, LOCAL_DB).items() if p.is_dir()]
    chosen, conflicts = merge_pacman_entries(
        old=_by_package(old_entries),
        child=_by_package(list(child_view)),
        new=_by_package(list(new_entries)),
        prefer=prefer,
    )
    wanted = set(chosen.values())
    by_path = {a.path: a for a in actions}
    removed = {a.path for a in actions if a.operation is Operation.REMOVE}
    mine = {}
    for name, st in (budget or TreeBudget(f"'{upper}'")).list_dir(upper, LOCAL_DB):
        if f"{LOCAL_DB}/{name}" not in removed:
            mine[name] = st
    conflicted = {c.record.removeprefix("package ") for c in conflicts}

    def correct(name: str, operation: Operation) -> None:
        package = _package(name)
        verdict = Verdict.CONFLICT if package in conflicted else Verdict.MERGE
        reason = (
            f"pacman database: {chosen[package]} registers {package}"
            if package in chosen
            else (f"pacman database: {package} is removed")
        )
        path = f"{LOCAL_DB}/{name}"
        by_path[path] = Action(path=path, verdict=verdict, operation=operation, reason=reason)

    for name, st in mine.items():
        if is_whiteout(st):
            if name in wanted and name in new_entries:
                correct(name, Operation.REMOVE)  # it hides the entry that should show
        elif stat.S_ISDIR(st.st_mode) and name not in wanted:
            correct(name, Operation.REMOVE)
    for name in new_entries:
        if name not in wanted and name not in mine:
            correct(name, Operation.WHITEOUT)
    return sorted(by_path.values(), key=lambda a: a.path)
