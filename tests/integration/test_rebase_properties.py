"""Property tests of the rebase on generated trees, with the kernel's own overlayfs as the judge.

Hypothesis generates a base tree and two sets of changes (the base's update and the child's), made
through real overlay mounts so the upper dirs hold what overlayfs itself writes: copy-ups, whiteouts,
opaque directories. The plan is applied with the journal, and what a machine would see afterwards is
read through a real read-only overlay of the new stack. Checked: nothing the child changed is lost
(unless --prefer base took the base's version in a reported conflict), what only the base changed shows,
and undo gives back the upper dir exactly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.helpers import overlay_view, tree_snapshot, view
from veneer.rebase import journal
from veneer.rebase.actions import Operation, Plan, Verdict
from veneer.rebase.journal import Target
from veneer.rebase.merge import Prefer
from veneer.rebase.plan import make_plan

pytestmark = pytest.mark.integration

DIRS = ("a", "a/b", "c")
FILES = ("t", "a/f1", "a/f2", "a/b/g", "c/h")
CONTENTS = (b"one\n", b"two\n", b"three\n")
MODES = (0o644, 0o600, 0o755)

op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FILES), st.sampled_from(CONTENTS)),
    st.tuples(st.just("delete"), st.sampled_from(FILES + DIRS), st.just(b"")),
    st.tuples(st.just("replace"), st.sampled_from(DIRS), st.sampled_from(CONTENTS)),
    st.tuples(
        st.just("chmod"),
        st.sampled_from(FILES + DIRS),
        st.sampled_from(MODES).map(lambda m: bytes([m >> 6])),
    ),
)
ops = st.lists(op, max_size=6)

Op = tuple[str, str, bytes]


def apply_ops(root: Path, changes: list[Op]) -> None:
    """Change a tree as a user would; steps that do not apply (a parent is gone) are skipped."""
    for kind, rel, arg in changes:
        path = root / rel
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if kind == "write":
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_dir():
                    shutil.rmtree(path)
                path.write_bytes(arg)
            elif kind == "delete":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            elif kind == "replace":
                if path.is_dir():
                    shutil.rmtree(path)
                path.mkdir(parents=True)
                (path / "new").write_bytes(arg)
            elif kind == "chmod" and os.path.lexists(path):
                os.chmod(path, (arg[0] << 6) | (0o55 if path.is_dir() else 0o44))


def under(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base_ops=ops, update_ops=ops, child_ops=ops, prefer=st.sampled_from(Prefer))
def test_rebase_keeps_the_childs_changes_and_undo_is_exact(
    tmp_path: Path, base_ops: list[Op], update_ops: list[Op], child_ops: list[Op], prefer: Prefer
) -> None:
    case = Path(tmp_path, os.urandom(4).hex())
    base, update, upper, machine = case / "base", case / "update", case / "upper", case / "machine"
    for directory in (base, update, upper, machine):
        directory.mkdir(parents=True)
    apply_ops(base, [("write", f, b"base\n") for f in FILES] + base_ops)
    with overlay_view(case / "mnt", [base], update) as root:
        apply_ops(root, update_ops)
    with overlay_view(case / "mnt", [base], upper) as root:
        apply_ops(root, child_ops)
    with overlay_view(case / "mnt", [base]) as root:
        old = view(root)
    with overlay_view(case / "mnt", [base, update]) as root:
        new = view(root)
    with overlay_view(case / "mnt", [base, upper]) as root:
        child = view(root)

    plan: Plan = make_plan(upper, [base], [base, update], uid_base=None, prefer=prefer)
    before = tree_snapshot(upper)
    journal.prepare(
        machine,
        upper,
        plan,
        source=Target(image="i", revision=0),
        target=Target(image="i", revision=1),
        prefer=prefer.value,
        trash=lambda p: Path(shutil.move(p, case / f"trash-{os.urandom(4).hex()}")),
    )
    journal.apply(machine, upper)
    with overlay_view(case / "mnt", [base, update, upper]) as root:
        after = view(root)

    base_won = {
        a.path for a in plan.actions if a.verdict is Verdict.CONFLICT and a.operation is not Operation.NONE
    }
    conflicts = {a.path for a in plan.actions if a.verdict is Verdict.CONFLICT}
    for rel in child.keys() | old.keys():
        if child.get(rel) != old.get(rel) and not under(rel, base_won):
            assert after.get(rel) == child.get(rel), f"the child's change to {rel} was lost: {plan}"
    for rel in new.keys() | old.keys():
        if new.get(rel) != old.get(rel) and child.get(rel) == old.get(rel) and not under(rel, conflicts):
            assert after.get(rel) == new.get(rel), f"the base's change to {rel} does not show: {plan}"

    # What the rebase dropped or replaced is saved, exactly as it was.
    for index, action in enumerate(plan.actions):
        if action.operation in (Operation.REMOVE, Operation.WRITE):
            saved = tree_snapshot(machine / "rebase" / "saved" / str(index))
            was = {k: v for k, v in before.items() if k == action.path or k.startswith(action.path + "/")}
            assert {os.path.normpath(f"{action.path}/{k}"): v for k, v in saved.items()} == was, action

    journal.undo(machine, upper, trash=lambda p: Path(shutil.move(p, case / f"trash-{os.urandom(4).hex()}")))
    assert tree_snapshot(upper) == before, f"undo is not exact: {plan}"
