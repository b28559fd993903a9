"""pacman's local database through a rebase: one registered version per package, seen through a real
overlay of the result. The layers are written by hand in overlayfs' upper-dir format (whiteouts are
0/0 character devices, which needs root), as pacman would leave them; no Arch mirror is reachable here."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.integration.helpers import overlay_view, tree_snapshot
from veneer.rebase import journal
from veneer.rebase.actions import Verdict
from veneer.rebase.journal import Target
from veneer.rebase.merge import Prefer
from veneer.rebase.plan import make_plan

pytestmark = pytest.mark.integration

DB = "var/lib/pacman/local"


def entry(layer: Path, name: str) -> None:
    path = layer / DB / name
    path.mkdir(parents=True)
    package = name.rsplit("-", 2)[0]
    (path / "desc").write_text(f"%NAME%\n{package}\n\n%VERSION%\n{name.removeprefix(package + '-')}\n")


def whiteout(layer: Path, name: str) -> None:
    (layer / DB).mkdir(parents=True, exist_ok=True)
    os.mknod(layer / DB / name, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def registered(root: Path) -> list[str]:
    return sorted(os.listdir(root / DB))


@pytest.mark.parametrize("prefer", list(Prefer))
def test_each_package_stays_registered_once(tmp_path: Path, prefer: Prefer) -> None:
    base, update, upper, machine = (tmp_path / n for n in ("base", "update", "upper", "machine"))
    machine.mkdir()
    for name in ("foo-1.0-1", "qux-1-1", "keep-3-1"):
        entry(base, name)
    # The base upgrades foo and qux.
    for name in ("foo-1.1-1", "qux-2-1"):
        entry(update, name)
    whiteout(update, "foo-1.0-1")
    whiteout(update, "qux-1-1")
    # The child upgrades foo its own way and installs baz.
    entry(upper, "foo-1.2-1")
    entry(upper, "baz-0.5-2")
    whiteout(upper, "foo-1.0-1")
    before = tree_snapshot(upper)

    plan = make_plan(upper, [base], [base, update], uid_base=None, prefer=prefer)
    conflicts = [a for a in plan.actions if a.verdict is Verdict.CONFLICT]
    assert conflicts and all("foo" in a.path for a in conflicts), plan
    journal.prepare(
        machine, upper, plan, source=Target(image="i", revision=0), target=Target(image="i", revision=1),
        prefer=prefer.value, trash=lambda p: Path(shutil.move(p, tmp_path / f"t-{os.urandom(3).hex()}")),
    )  # fmt: skip
    journal.apply(machine, upper)
    with overlay_view(tmp_path / "mnt", [base, update, upper]) as root:
        foo = "foo-1.2-1" if prefer is Prefer.CHILD else "foo-1.1-1"
        assert registered(root) == sorted([foo, "qux-2-1", "keep-3-1", "baz-0.5-2"])
    journal.undo(machine, upper, trash=lambda p: Path(shutil.move(p, tmp_path / f"t-{os.urandom(3).hex()}")))
    assert tree_snapshot(upper) == before
