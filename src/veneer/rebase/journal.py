"""Applying a rebase plan to a machine's upper dir so that nothing is lost, and undoing it.

Everything lives in the machine's `rebase/` directory, on the upper dir's filesystem:

    plan.json    the plan (the report) with what undo needs: where the machine was, what each path was
    head.json    where it came from and went to and the summary, for `status` and `image prune`
    state        "applying", "applied" or "undoing"
    staged/N     new contents for action N, written before anything in the upper dir changes
    saved/N      the upper dir's entry of action N, moved there (a rename: bytes, owner, mode, xattrs,
                 whiteouts and hard links stay exactly as they were)

It is prepared as `rebase.new/` and renamed into place: that rename is the point of no return, after
which any later command finishes the rebase (`resume`). Each step checks the filesystem before it acts,
so running a step twice (after a `kill -9`) does no harm: action N moved its entry away when `saved/N`
exists, and wrote its new contents when `staged/N` no longer does. Undo walks the actions backwards the
same way. The machine record is switched to the new revision only after every action is applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veneer.errors import StateCorrupt
from veneer.overlay.layers import OVERLAY_XATTR_PREFIX
from veneer.rebase.actions import Operation, Plan
from veneer.util.fs import atomic_write, remove_tree, save_json

APPLYING, APPLIED, UNDOING = "applying", "applied", "undoing"


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    image: str
    revision: int

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "revision": self.revision}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        return cls(image=str(data["image"]), revision=int(data["revision"]))


def journal_dir(machine_dir: Path) -> Path:
    return machine_dir / "rebase"


def state(machine_dir: Path) -> str | None:
    try:
        return (journal_dir(machine_dir) / "state").read_text().strip()
    except FileNotFoundError:
        return None


def _set_state(machine_dir: Path, value: str) -> None:
    atomic_write(journal_dir(machine_dir) / "state", value + "\n")


def load_report(machine_dir: Path, *, head: bool = False) -> dict[str, Any]:
    """The journal's plan.json; with `head` only where the rebase came from and went to, and its summary."""
    path = journal_dir(machine_dir) / ("head.json" if head else "plan.json")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StateCorrupt(f"The rebase record '{path}' is unreadable: {e}") from e
    return data


def pinned_revisions(machine_dir: Path) -> set[tuple[str, int]]:
    """The revisions the machine's last rebase came from and went to (undo and resume need both)."""
    if state(machine_dir) is None:
        return set()
    with contextlib.suppress(StateCorrupt, KeyError, ValueError):
        report = load_report(machine_dir, head=True)
        return {(t.image, t.revision) for t in map(Target.from_json, (report["from"], report["to"]))}
    return set()


def prepare(
    machine_dir: Path,
    upper: Path,
    plan: Plan,
    *,
    source: Target,
    target: Target,
    prefer: str,
    trash: Callable[[Path], Path],
) -> None:
    """Write the journal for `plan` and put it in place; from here on the rebase will be finished."""
    new = machine_dir / "rebase.new"
    if new.exists():
        remove_tree(new)
    (new / "staged").mkdir(parents=True, mode=0o700)
    (new / "saved").mkdir(mode=0o700)
    actions = []
    parents: dict[str, tuple[int, int]] = {}
    for index, action in enumerate(plan.actions):
        path = upper / action.path
        entry: dict[str, Any] = {**action.to_json(), "index": index}
        if action.operation is Operation.WHITEOUT:
            os.mknod(new / "staged" / str(index), stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            st = os.lstat(path)
            entry["original"] = [st.st_mode, st.st_uid, st.st_gid]
        if action.attrs is not None:
            entry["attrs"] = list(action.attrs)
        if action.operation is Operation.WRITE:
            assert action.content is not None
            _stage_file(new / "staged" / str(index), action.content, like=path, st=st)
        parent = os.path.dirname(action.path)
        if parent not in parents:
            pst = os.lstat(upper / parent)
            parents[parent] = (pst.st_atime_ns, pst.st_mtime_ns)
        actions.append(entry)
    head = {
        "from": source.to_json(),
        "to": target.to_json(),
        "prefer": prefer,
        "created": time.time(),
        "examined": plan.examined,
        "summary": plan.summary(),
    }
    save_json(
        new / "plan.json", {**head, "actions": actions, "parents": {k: list(v) for k, v in parents.items()}}
    )
    save_json(new / "head.json", head)  # what status and prune read, without the (long) list of actions
    atomic_write(new / "state", APPLYING + "\n")
    old = journal_dir(machine_dir)
    if old.exists():
        remove_tree(trash(old))
    os.rename(new, old)


def _stage_file(path: Path, content: bytes, *, like: Path, st: os.stat_result) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid bits
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        for name in os.listxattr(like, follow_symlinks=False):
            if not name.startswith(OVERLAY_XATTR_PREFIX):
                os.setxattr(path, name, os.getxattr(like, name, follow_symlinks=False))


def apply(machine_dir: Path, upper: Path) -> None:
    """Carry out (or finish) the journal's actions on the upper dir."""
    journal = journal_dir(machine_dir)
    report = load_report(machine_dir)
    for entry in report["actions"]:
        operation, index = Operation(entry["operation"]), str(entry["index"])
        path = upper / entry["path"].lstrip("/")
        saved, staged = journal / "saved" / index, journal / "staged" / index
        if operation in (Operation.REMOVE, Operation.WRITE) and not os.path.lexists(saved):
            os.rename(path, saved)
        if operation in (Operation.WRITE, Operation.WHITEOUT) and os.path.lexists(staged):
            os.rename(staged, path)
        if operation is Operation.SETATTR:
            mode, uid, gid = entry["attrs"]
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, mode)


def finish(machine_dir: Path) -> None:
    _set_state(machine_dir, APPLIED)


def undo(machine_dir: Path, upper: Path, *, trash: Callable[[Path], Path]) -> None:
    """Put back every entry the journal's actions moved or changed, last first, and the timestamps of the
    directories that hold them. Idempotent, like `apply`."""
    _set_state(machine_dir, UNDOING)
    journal = journal_dir(machine_dir)
    report = load_report(machine_dir)
    for entry in reversed(report["actions"]):
        operation, index = Operation(entry["operation"]), str(entry["index"])
        path = upper / entry["path"].lstrip("/")
        saved = journal / "saved" / index
        if operation in (Operation.REMOVE, Operation.WRITE) and os.path.lexists(saved):
            if os.path.lexists(path):  # the merged file, or what the machine wrote there since
                remove_tree(trash(path))
            os.rename(saved, path)
        if operation is Operation.WHITEOUT and os.path.lexists(path):
            remove_tree(trash(path))
        if operation is Operation.SETATTR:
            mode, uid, gid = entry["original"]
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(mode))
    for parent, (atime, mtime) in report["parents"].items():
        with contextlib.suppress(FileNotFoundError):
            os.utime(upper / parent if parent else upper, ns=(atime, mtime), follow_symlinks=False)


def discard(machine_dir: Path, *, trash: Callable[[Path], Path]) -> None:
    """Forget the journal (after an undo, or a half-prepared one that never started)."""
    for path in (machine_dir / "rebase.new", journal_dir(machine_dir)):
        if path.exists():
            remove_tree(trash(path))
