"""A machine's uid range: the one place that maps owners between an image's terms (container ids
0..65535, what layers hold) and a machine's host range (`uid_base` onwards, what its upper dir holds).

`uid_base` None is a privileged machine: no user namespace, ids are the same on both sides. Ids outside
the range are left as they are (nobody, or a file the host put there).
"""

from __future__ import annotations

from veneer.config.settings import UID_RANGE_SIZE


def in_range(value: int, uid_base: int) -> bool:
    """Whether host id `value` is one of the range at `uid_base`."""
    return uid_base <= value < uid_base + UID_RANGE_SIZE


def last_id(uid_base: int) -> int:
    """The highest host id of the range at `uid_base`."""
    return uid_base + UID_RANGE_SIZE - 1


def to_image_id(value: int, uid_base: int | None) -> int:
    """A machine's on-disk owner as the image would record it: its range mapped back to 0..65535."""
    return value - uid_base if uid_base is not None and in_range(value, uid_base) else value


def to_machine_id(value: int, uid_base: int | None) -> int:
    """An image's owner as the machine's upper dir holds it."""
    return value if uid_base is None or value >= UID_RANGE_SIZE else value + uid_base


def shifted(value: int, source: int, target: int) -> int:
    """`value` moved from the range at `source` to the range at `target`; ids outside stay as they are."""
    return value - source + target if in_range(value, source) else value


# POSIX ACLs as the kernel stores them in the system.posix_acl_* xattrs: a 4-byte version header, then
# 8-byte entries (tag u16, permissions u16, id u32); only named users and groups carry an id.
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_ACL_HEADER = 4
_ACL_ENTRY = 8
_ACL_NAMED = (0x02, 0x08)  # ACL_USER, ACL_GROUP


def acl_ids(value: bytes) -> list[int] | None:
    """The ids named in an ACL xattr, or None if it is malformed."""
    if len(value) < _ACL_HEADER or (len(value) - _ACL_HEADER) % _ACL_ENTRY:
        return None
    ids = []
    for offset in range(_ACL_HEADER, len(value), _ACL_ENTRY):
        if int.from_bytes(value[offset : offset + 2], "little") in _ACL_NAMED:
            ids.append(int.from_bytes(value[offset + 4 : offset + 8], "little"))
    return ids


def shifted_acl(value: bytes, source: int, target: int) -> bytes:
    """An ACL xattr with its named ids moved from the range at `source` to the range at `target`."""
    out = bytearray(value)
    for offset in range(_ACL_HEADER, len(value) - _ACL_ENTRY + 1, _ACL_ENTRY):
        if int.from_bytes(value[offset : offset + 2], "little") in _ACL_NAMED:
            old = int.from_bytes(value[offset + 4 : offset + 8], "little")
            out[offset + 4 : offset + 8] = shifted(old, source, target).to_bytes(4, "little")
    return bytes(out)
