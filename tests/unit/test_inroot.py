"""util/inroot.py: a tree's files read as a process chrooted there would, whatever its symlinks say."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from veneer.util.inroot import read_in_root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "outside").write_text("the host's\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/real").write_text("the machine's\n")
    (root / "outside").write_text("the machine's outside\n")
    return root


@pytest.mark.parametrize(
    ("target", "content"),
    [
        ("real", "the machine's\n"),
        ("/etc/real", "the machine's\n"),
        ("../../../../../outside", "the machine's outside\n"),  # '..' stops at the tree's root
    ],
)
def test_symlinks_resolve_inside(tree: Path, target: str, content: str) -> None:
    (tree / "etc/passwd").symlink_to(target)
    assert read_in_root(tree, "/etc/passwd", limit=100).decode() == content


def test_an_absolute_symlink_to_a_host_path_is_not_followed_out(tree: Path, tmp_path: Path) -> None:
    (tree / "etc/passwd").symlink_to(tmp_path / "outside")  # exists on the host, not in the tree
    with pytest.raises(FileNotFoundError):
        read_in_root(tree, "/etc/passwd", limit=100)


def test_fifos_and_large_files_are_refused(tree: Path) -> None:
    os.mkfifo(tree / "etc/fifo")
    with pytest.raises(OSError) as caught:
        read_in_root(tree, "/etc/fifo", limit=100)
    assert caught.value.errno == errno.EINVAL
    (tree / "etc/big").write_bytes(b"x" * 101)
    with pytest.raises(OSError) as caught:
        read_in_root(tree, "/etc/big", limit=100)
    assert caught.value.errno == errno.EFBIG
