"""The one reader of /proc/PID/mountinfo (proc(5)): mount points, file system types, superblock options,
with the kernel's octal escapes undone."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True, slots=True, kw_only=True)
class MountInfo:
    """One line of /proc/PID/mountinfo, paths unescaped (proc(5))."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str


def unescape_mountinfo(field: str) -> str:
    """Undo the octal escapes (`\\040` space, `\\011` tab, `\\012` newline, `\\134` backslash, ...)."""
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8) & 0xFF]), os.fsencode(field))
    return os.fsdecode(raw)


def parse_mountinfo(text: str) -> tuple[MountInfo, ...]:
    """Parse the text of /proc/PID/mountinfo; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(
                MountInfo(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2],
                    root=unescape_mountinfo(fields[3]),
                    mount_point=unescape_mountinfo(fields[4]),
                    options=fields[5],
                    fstype=fields[sep + 1],
                    source=unescape_mountinfo(fields[sep + 2]),
                    super_options=fields[sep + 3],
                )
            )
        except (ValueError, IndexError):
            continue
    return tuple(entries)


def load_mountinfo() -> tuple[MountInfo, ...]:
    """The mounts of this process's mount namespace."""
    return parse_mountinfo(MOUNTINFO.read_bytes().decode(errors="surrogateescape"))


def parse_super_options(text: str) -> tuple[tuple[str, str], ...]:
    """Split the superblock options of a mountinfo line into unescaped (key, value) pairs, in order.

    overlayfs escapes ',' in paths as an octal escape, so a plain split on ',' is safe.
    """
    pairs = []
    for option in text.split(","):
        key, _, value = option.partition("=")
        pairs.append((key, unescape_mountinfo(value)))
    return tuple(pairs)
