"""The layer-chain model: how a path resolves through a stack of overlay layers. No mounts here.

Layers are given bottom first. A lookup walks them top first, as overlayfs does: a whiteout (a 0/0
character device) hides the path in every lower layer, an opaque directory hides what lies below it,
and a non-directory where a parent directory is expected ends the lookup.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

OVERLAY_XATTR_PREFIX = "trusted.overlay."  # overlayfs' own attributes on its upper and lower dirs
OPAQUE_XATTR = OVERLAY_XATTR_PREFIX + "opaque"


def is_whiteout(st: os.stat_result) -> bool:
    """Whether `st` is an overlayfs whiteout: a character device 0/0.

    The other form, a zero-size file with the "trusted.overlay.whiteout" xattr, is never created by
    overlayfs itself, only by tools that build layers for nesting.
    """
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def is_opaque(path: Path) -> bool:
    """Whether the directory `path` hides the layers below it (xattr "trusted.overlay.opaque" is "y")."""
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT, errno.ENOTDIR):
            return False
        raise


def lookup(layers: Sequence[Path], relative: str) -> os.stat_result | None:
    """The stat of `relative` as the union of `layers` (bottom first) shows it, or None if absent."""
    found = locate(layers, relative)
    return None if found is None else found[1]


def locate(layers: Sequence[Path], relative: str) -> tuple[Path, os.stat_result] | None:
    """Where the union of `layers` (bottom first) finds `relative` (the top-most entry), or None if absent.

    For a directory this is the top-most layer's directory; the union's contents span the layers."""
    parts = [p for p in relative.split("/") if p]
    for layer in reversed(layers):
        found, hides_lower = _lookup_in_layer(layer, parts)
        if found is not None:
            return None if is_whiteout(found) else (layer.joinpath(*parts), found)
        if hides_lower:
            return None
    return None


def list_union(layers: Sequence[Path], relative: str) -> dict[str, Path]:
    """The names the union of `layers` (bottom first) shows in the directory `relative`, each with the
    path of its top-most entry; empty if `relative` is not a directory there."""
    parts = [p for p in relative.split("/") if p]
    seen: dict[str, Path] = {}
    hidden: set[str] = set()
    for layer in reversed(layers):
        found, hides_lower = _lookup_in_layer(layer, parts)
        if found is not None:
            if not stat.S_ISDIR(found.st_mode):
                break  # a whiteout or a file: nothing below shows
            directory = layer.joinpath(*parts)
            for name in os.listdir(directory):
                if name in seen or name in hidden:
                    continue
                if is_whiteout(os.lstat(directory / name)):
                    hidden.add(name)
                else:
                    seen[name] = directory / name
            if is_opaque(directory):
                break
        elif hides_lower:
            break
    return seen


def _lookup_in_layer(layer: Path, parts: list[str]) -> tuple[os.stat_result | None, bool]:
    """(stat of the entry in this layer or None, whether this layer hides the path in lower layers)."""
    path = layer
    opaque_above = False
    for index, part in enumerate(parts):
        path = path / part
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None, opaque_above
        if index == len(parts) - 1:
            return st, False
        if is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
            return None, True
        opaque_above = opaque_above or is_opaque(path)
    return os.lstat(layer), False
