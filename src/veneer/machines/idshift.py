"""Moving a tree of files from one uid/gid range to another (a cloned or copied machine gets a range of its
own): owners, file capabilities and the ids named in POSIX ACLs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from veneer.config.uidrange import ACL_XATTRS, shifted, shifted_acl

CAPABILITY_XATTR = "security.capability"
CAP_V3_SIZE = 24  # struct vfs_ns_cap_data: magic, two 8-byte sets, rootid


def _capability(path: Path, st: os.stat_result) -> bytes | None:
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        return os.getxattr(path, CAPABILITY_XATTR)
    except OSError:
        return None


def shift_ownership(tree: Path, source: int, target: int) -> None:
    """Re-own every entry under `tree` (itself included) from one 65536-id range to another."""
    if source == target:
        return
    paths = [tree]
    for dirpath, dirnames, filenames in os.walk(tree):
        paths += [Path(dirpath, name) for name in dirnames + filenames]
    for path in paths:
        st = os.lstat(path)
        uid, gid = shifted(st.st_uid, source, target), shifted(st.st_gid, source, target)
        _shift_acls(path, st, source, target)
        if (uid, gid) == (st.st_uid, st.st_gid):
            continue
        capability = _capability(path, st)
        os.chown(path, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))  # chown() clears setuid and setgid
        if capability is not None:
            # chown() drops file capabilities too; a v3 capability names its namespace's root uid.
            if len(capability) == CAP_V3_SIZE:
                rootid = shifted(int.from_bytes(capability[20:24], "little"), source, target)
                capability = capability[:20] + rootid.to_bytes(4, "little")
            os.setxattr(path, CAPABILITY_XATTR, capability)


def _shift_acls(path: Path, st: os.stat_result, source: int, target: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        return
    for name in ACL_XATTRS:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # none, or a file system without ACLs
        moved = shifted_acl(value, source, target)
        if moved != value:
            os.setxattr(path, name, moved, follow_symlinks=False)
