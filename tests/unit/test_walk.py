"""The bounded walk over trees a machine writes: os.walk's order, no symlink followed, clear limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from veneer.errors import TreeTooLarge
from veneer.util.walk import TreeBudget, TreeLimits, walk_tree


def listing(top: Path, budget: TreeBudget) -> list[tuple[str, list[str]]]:
    return [(rel, [name for name, _ in entries]) for rel, entries in walk_tree(top, budget)]


def test_same_order_as_os_walk_and_links_are_entries(tmp_path: Path) -> None:
    for rel in ("b/c/d", "a", "b/e"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "b/f").write_text("x")
    (tmp_path / "a/link").symlink_to(tmp_path / "b")
    expected = []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        dirnames.sort()
        rel = os.path.relpath(dirpath, tmp_path)
        expected.append(("" if rel == "." else rel, sorted(dirnames + filenames)))
    walked = listing(tmp_path, TreeBudget("t"))
    assert walked == expected
    assert ("a", ["link"]) in walked and not any(rel.startswith("a/link") for rel, _ in walked)


def test_too_many_entries(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / str(i)).write_text("")
    assert len(listing(tmp_path, TreeBudget("t", TreeLimits(entries=5)))[0][1]) == 5
    with pytest.raises(TreeTooLarge, match="Machine 'm' holds more than 4 entries"):
        listing(tmp_path, TreeBudget("Machine 'm'", TreeLimits(entries=4)))


def test_too_deep(tmp_path: Path) -> None:
    (tmp_path / "d/d/d/d").mkdir(parents=True)
    assert len(listing(tmp_path, TreeBudget("t", TreeLimits(path_bytes=7)))) == 5
    with pytest.raises(TreeTooLarge, match="nested deeper than 6 bytes"):
        listing(tmp_path, TreeBudget("t", TreeLimits(path_bytes=6)))


def test_a_directory_gone_or_replaced_by_a_link_is_skipped(tmp_path: Path) -> None:
    budget = TreeBudget("t")
    assert budget.list_dir(tmp_path, "missing") == []
    (tmp_path / "file").write_text("")
    assert budget.list_dir(tmp_path, "file") == []


def test_too_many_levels(tmp_path: Path) -> None:
    (tmp_path / "a/b/c").mkdir(parents=True)
    assert len(listing(tmp_path, TreeBudget("t", TreeLimits(depth=3)))) == 4
    with pytest.raises(TreeTooLarge, match="nested deeper than 2 levels, in '/a/b/c/...'"):
        listing(tmp_path, TreeBudget("t", TreeLimits(depth=2)))
