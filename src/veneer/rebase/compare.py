"""Whether two filesystem entries are the same for a rebase: type, mode, owner, contents and xattrs, never
timestamps. A machine's entries are owned in its uid range; they are compared in the image's terms."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from veneer.config.uidrange import to_image_id
from veneer.machines.idshift import CAPABILITY_XATTR
from veneer.overlay.layers import OVERLAY_XATTR_PREFIX, is_whiteout, list_union

_CHUNK = 1 << 20


def _xattrs(path: Path) -> dict[str, bytes]:
    values: dict[str, bytes] = {}
    with contextlib.suppress(OSError):
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith(OVERLAY_XATTR_PREFIX):
                continue
            value = os.getxattr(path, name, follow_symlinks=False)
            if name == CAPABILITY_XATTR:
                value = value[:20]  # a v3 capability ends with its namespace's root uid: not content
            values[name] = value
    return values


def same_contents(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(_CHUNK)
            if chunk != fb.read(_CHUNK):
                return False
            if not chunk:
                return True


def same_entry(
    a: Path, a_stat: os.stat_result, a_base: int | None, b: Path, b_stat: os.stat_result, b_base: int | None
) -> bool:
    """Whether two entries (each with the uid base its owners are in, None for an image's) are the same;
    for directories only their own metadata counts, not what they hold."""
    if a_stat.st_mode != b_stat.st_mode:  # type and permission bits
        return False
    if (to_image_id(a_stat.st_uid, a_base), to_image_id(a_stat.st_gid, a_base)) != (
        to_image_id(b_stat.st_uid, b_base),
        to_image_id(b_stat.st_gid, b_base),
    ):
        return False
    kind = stat.S_IFMT(a_stat.st_mode)
    if kind == stat.S_IFREG and (a_stat.st_size != b_stat.st_size or not same_contents(a, b)):
        return False
    if kind == stat.S_IFLNK and os.readlink(a) != os.readlink(b):
        return False
    if kind in (stat.S_IFCHR, stat.S_IFBLK) and a_stat.st_rdev != b_stat.st_rdev:
        return False
    return kind == stat.S_IFLNK or _xattrs(a) == _xattrs(b)


def same_tree(upper_dir: Path, uid_base: int | None, layers: list[Path], relative: str) -> bool:
    """Whether an opaque directory of a machine's upper dir holds exactly what the union of `layers` shows
    at `relative` (both directories themselves already compared)."""
    mine = {}
    for name in os.listdir(upper_dir):
        st = os.lstat(upper_dir / name)
        if not is_whiteout(st):
            mine[name] = st
    theirs = list_union(layers, relative)
    if mine.keys() != theirs.keys():
        return False
    for name, st in mine.items():
        other = theirs[name]
        other_stat = os.lstat(other)
        if not same_entry(upper_dir / name, st, uid_base, other, other_stat, None):
            return False
        if stat.S_ISDIR(st.st_mode) and not same_tree(
            upper_dir / name, uid_base, layers, f"{relative}/{name}"
        ):
            return False
    return True


def same_union(old: list[Path], new: list[Path], relative: str) -> bool:
    """Whether two layer stacks (bottom first) show the same tree below the directory `relative` (the
    directory itself already compared)."""
    mine, theirs = list_union(old, relative), list_union(new, relative)
    if mine.keys() != theirs.keys():
        return False
    for name, path in mine.items():
        other = theirs[name]
        st = os.lstat(path)
        if path == other and not stat.S_ISDIR(st.st_mode):
            continue  # the same entry of a layer both stacks share
        if not same_entry(path, st, None, other, os.lstat(other), None):
            return False
        if stat.S_ISDIR(st.st_mode) and not same_union(old, new, f"{relative}/{name}"):
            return False
    return True
