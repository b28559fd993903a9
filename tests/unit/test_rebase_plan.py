"""Plans over small real trees that need no root: what a child's entry hiding a base directory becomes."""

from pathlib import Path

import pytest

from veneer.rebase.actions import Operation, Verdict
from veneer.rebase.merge import Prefer
from veneer.rebase.plan import make_plan


def layer(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    for directory in [p for p in path.rglob("*") if p.is_dir()]:
        directory.chmod(0o700)  # the same in every layer: only what they hold differs
    return path


@pytest.mark.parametrize(
    ("prefer", "operation"), [(Prefer.CHILD, Operation.NONE), (Prefer.BASE, Operation.REMOVE)]
)
def test_file_in_place_of_a_directory_the_base_changed_inside_conflicts(
    tmp_path: Path, prefer: Prefer, operation: Operation
) -> None:
    bottom = layer(tmp_path / "0", {"root/.bashrc": "PS1='# '\n", "root/.profile": "\n"})
    update = layer(tmp_path / "1", {"root/.bashrc": "PS1='# '\n# the base\n"})
    upper = layer(tmp_path / "upper", {"root": "the child's file where /root was\n"})
    plan = make_plan(upper, [bottom], [bottom, update], uid_base=None, prefer=prefer)
    (action,) = plan.actions
    assert (action.path, action.verdict, action.operation) == ("root", Verdict.CONFLICT, operation)


def test_file_in_place_of_a_directory_the_base_left_alone_stays(tmp_path: Path) -> None:
    bottom = layer(tmp_path / "0", {"root/.bashrc": "PS1='# '\n", "root/.profile": "\n"})
    # The update rewrote .bashrc with the same bytes: touched, not changed.
    update = layer(tmp_path / "1", {"root/.bashrc": "PS1='# '\n"})
    upper = layer(tmp_path / "upper", {"root": "the child's file where /root was\n"})
    for prefer in Prefer:
        assert make_plan(upper, [bottom], [bottom, update], uid_base=None, prefer=prefer).actions == ()


def test_a_file_too_large_to_merge_is_a_conflict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from veneer.rebase import plan

    bottom = layer(tmp_path / "0", {"etc/group": "root:x:0:\n"})
    update = layer(tmp_path / "1", {"etc/group": "root:x:0:\nstaff:x:50:\n"})
    upper = layer(tmp_path / "upper", {"etc/group": "root:x:0:\nmine:x:1000:\n"})
    merged = make_plan(upper, [bottom], [bottom, update], uid_base=None, prefer=Prefer.CHILD)
    assert [a.verdict for a in merged.actions] == [Verdict.MERGE]
    monkeypatch.setattr(plan, "MAX_MERGE_BYTES", 16)
    (action,) = make_plan(upper, [bottom], [bottom, update], uid_base=None, prefer=Prefer.CHILD).actions
    assert (action.verdict, action.operation) == (Verdict.CONFLICT, Operation.NONE)
    assert "too large to merge" in action.reason
