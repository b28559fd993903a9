"""Syscall wrappers for mounts and idmapped mounts: the new mount API, umount2, and user namespaces.

Owns the ctypes calls `open_tree`, `move_mount`, `mount_setattr`, `fsopen`, `fsconfig`, `fsmount` and
`umount2`, the user namespace that carries an idmapping, and `idmapped_mount()` built from them.
Stdlib and ctypes only (as mkosi `mkosi/sandbox.py`); it must not import from veneer, log, or run
commands. Every wrapper raises `OSError(errno, "<syscall> '<object>': <strerror>")` naming the syscall
and what it was applied to; callers in `mount.py` wrap that in a `MountError`.

The syscall numbers of the new mount API come from the unified table that every architecture shares
since Linux 5.1 (`include/uapi/asm-generic/unistd.h`, numbers 424 and up), so they are the same on
x86_64 and aarch64.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path

from veneer.config.settings import UID_RANGE_SIZE

NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
NR_FSOPEN = 430
NR_FSCONFIG = 431
NR_FSMOUNT = 432
NR_MOUNT_SETATTR = 442

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC

MOVE_MOUNT_F_EMPTY_PATH = 0x4

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1

FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6

MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_NOSYMFOLLOW = 0x00200000

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

CLONE_NEWUSER = 0x10000000

#: The size of one idmapped range: the 16-bit uid space a distribution image uses.
IDMAP_COUNT = UID_RANGE_SIZE


class _MountAttr(ctypes.Structure):
    """`struct mount_attr` (MOUNT_ATTR_SIZE_VER0) from `include/uapi/linux/mount.h`."""

    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _oserror(syscall: str, obj: object) -> OSError:
    err = ctypes.get_errno() or errno.EIO
    return OSError(err, f"{syscall} '{obj}': {os.strerror(err)}")


def _syscall(syscall: str, obj: object, nr: int, *args: object) -> int:
    """Call syscall `nr` with `args` (ctypes values); raise an OSError naming `syscall` and `obj`."""
    ret: int = _libc().syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        raise _oserror(syscall, obj)
    return ret


def open_tree(path: Path, *, flags: int = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC) -> int:
    """open_tree(2): with OPEN_TREE_CLONE, a detached copy of the mount at `path`, as an fd."""
    return _syscall(
        "open_tree", path, NR_OPEN_TREE,
        ctypes.c_long(AT_FDCWD), ctypes.c_char_p(os.fsencode(path)), ctypes.c_ulong(flags),
    )  # fmt: skip


def move_mount(mount_fd: int, target: Path) -> None:
    """move_mount(2): attach the detached mount `mount_fd` on `target`."""
    _syscall(
        "move_mount", target, NR_MOVE_MOUNT,
        ctypes.c_long(mount_fd), ctypes.c_char_p(b""),
        ctypes.c_long(AT_FDCWD), ctypes.c_char_p(os.fsencode(target)),
        ctypes.c_ulong(MOVE_MOUNT_F_EMPTY_PATH),
    )  # fmt: skip


def mount_setattr(
    mount_fd: int,
    *,
    attr_set: int,
    attr_clr: int = 0,
    userns_fd: int | None = None,
    recursive: bool = False,
    name: object = "",
) -> None:
    """mount_setattr(2) on the mount `mount_fd`; `name` only labels errors."""
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd if userns_fd is not None else 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _syscall(
        "mount_setattr", name, NR_MOUNT_SETATTR,
        ctypes.c_long(mount_fd), ctypes.c_char_p(b""), ctypes.c_ulong(flags),
        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
    )  # fmt: skip


def fsopen(fstype: str) -> int:
    """fsopen(2): a filesystem context for `fstype`, as an fd."""
    return _syscall(
        "fsopen", fstype, NR_FSOPEN,
        ctypes.c_char_p(fstype.encode()), ctypes.c_ulong(FSOPEN_CLOEXEC),
    )  # fmt: skip


def fsconfig_set_string(fs_fd: int, key: str, value: str) -> None:
    """fsconfig(2) FSCONFIG_SET_STRING: set parameter `key` to `value`."""
    _syscall(
        "fsconfig", f"{key}={value}", NR_FSCONFIG,
        ctypes.c_long(fs_fd), ctypes.c_ulong(FSCONFIG_SET_STRING),
        ctypes.c_char_p(key.encode()), ctypes.c_char_p(os.fsencode(value)), ctypes.c_long(0),
    )  # fmt: skip


def fsconfig_set_fd(fs_fd: int, key: str, fd: int) -> None:
    """fsconfig(2) FSCONFIG_SET_FD: set parameter `key` to the file (or detached mount) `fd`."""
    _syscall(
        "fsconfig", f"{key}=fd {fd}", NR_FSCONFIG,
        ctypes.c_long(fs_fd), ctypes.c_ulong(FSCONFIG_SET_FD),
        ctypes.c_char_p(key.encode()), ctypes.c_void_p(None), ctypes.c_long(fd),
    )  # fmt: skip


def fsconfig_create(fs_fd: int, *, name: object = "") -> None:
    """fsconfig(2) FSCONFIG_CMD_CREATE: create the superblock; `name` only labels errors."""
    _syscall(
        "fsconfig", name, NR_FSCONFIG,
        ctypes.c_long(fs_fd), ctypes.c_ulong(FSCONFIG_CMD_CREATE),
        ctypes.c_void_p(None), ctypes.c_void_p(None), ctypes.c_long(0),
    )  # fmt: skip


def fsmount(fs_fd: int, *, attr_flags: int = 0, name: object = "") -> int:
    """fsmount(2): a detached mount of the superblock created on `fs_fd`, as an fd."""
    return _syscall(
        "fsmount", name, NR_FSMOUNT,
        ctypes.c_long(fs_fd), ctypes.c_ulong(FSMOUNT_CLOEXEC), ctypes.c_ulong(attr_flags),
    )  # fmt: skip


def fs_messages(fs_fd: int) -> list[str]:
    """The messages the filesystem queued on a context fd ("e overlayfs: ..."); empty if none."""
    messages = []
    while True:
        try:
            data = os.read(fs_fd, 1024)
        except OSError:
            # ENODATA ends the queue; anything else means there is nothing more we can read.
            break
        if not data:
            break
        messages.append(data.decode(errors="replace").strip())
    return messages


def mount(source: str, target: Path, fstype: str, *, flags: int = 0, data: str = "") -> None:
    """mount(2) with the classic option string `data`."""
    ret: int = _libc().mount(
        os.fsencode(source), os.fsencode(target), fstype.encode(), ctypes.c_ulong(flags), os.fsencode(data),
    )  # fmt: skip
    if ret < 0:
        raise _oserror("mount", target)


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces."""
    if _libc().unshare(ctypes.c_int(flags)) < 0:
        raise _oserror("unshare", hex(flags))


def umount2(path: Path, flags: int = 0) -> None:
    """umount2(2) of the mount at `path`."""
    if _libc().umount2(os.fsencode(path), ctypes.c_int(flags | UMOUNT_NOFOLLOW)) < 0:
        raise _oserror("umount2", path)


def _write_map(path: str, line: str) -> None:
    # A map file must be written with a single write(2) (user_namespaces(7)).
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, line.encode())
    except OSError as e:
        raise OSError(e.errno, f"write '{path}': {os.strerror(e.errno or errno.EIO)}") from None
    finally:
        os.close(fd)


def _userns_child(status_w: int, release_r: int, unshare: Callable[[ctypes.c_int], int]) -> None:
    """The forked child: enter a new user namespace, report errno, wait until released. os/ctypes only."""
    err = 0
    if unshare(ctypes.c_int(CLONE_NEWUSER)) < 0:
        err = ctypes.get_errno() or errno.EIO
    os.write(status_w, err.to_bytes(4, "little"))
    # Blocks until the parent has opened our namespace and closes its end of the pipe.
    os.read(release_r, 1)


def open_userns(*, uid_base: int, count: int = IDMAP_COUNT) -> int:
    """An fd of a new user namespace whose uid_map and gid_map are `0 uid_base count`.

    A forked child unshares the namespace and waits; this process writes the maps (as root of the
    parent namespace it needs no `setgroups deny` for gid_map), opens `/proc/PID/ns/user`, then lets
    the child exit and reaps it. The namespace lives on through the returned fd.
    """
    if uid_base < 0 or count <= 0 or uid_base + count > 2**32 - 1:
        raise OSError(errno.EINVAL, f"open_userns '{uid_base}:{count}': {os.strerror(errno.EINVAL)}")
    # Resolved before fork(): the child must not enter the dynamic loader.
    unshare = _libc().unshare
    max_fd = os.sysconf("SC_OPEN_MAX")
    status_r, status_w = os.pipe()
    release_r, release_w = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        for fd in (status_r, status_w, release_r, release_w):
            os.close(fd)
        raise
    if pid == 0:
        try:
            # Only its own two ends: a copy of another thread's pipe (`start A B C` runs a thread per
            # machine) would keep that thread's child from ever reading EOF, and both children would wait
            # for each other.
            low, high = sorted((status_w, release_r))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, max_fd)
            _userns_child(status_w, release_r, unshare)
        finally:
            os._exit(0)
    os.close(status_w)
    os.close(release_r)
    try:
        data = os.read(status_r, 4)
        if len(data) != 4:
            raise OSError(errno.ECHILD, f"unshare 'CLONE_NEWUSER': child {pid} exited before reporting")
        if err := int.from_bytes(data, "little"):
            raise OSError(err, f"unshare 'CLONE_NEWUSER': {os.strerror(err)}")
        line = f"0 {uid_base} {count}\n"
        _write_map(f"/proc/{pid}/uid_map", line)
        _write_map(f"/proc/{pid}/gid_map", line)
        try:
            return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise OSError(e.errno, f"open '/proc/{pid}/ns/user': {e.strerror}") from None
    finally:
        os.close(release_w)
        os.close(status_r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def open_idmapped_tree(source: Path, *, userns_fd: int, readonly: bool = True) -> int:
    """A detached clone of `source` with the idmapping of `userns_fd` (and read-only), as an fd.

    Not recursive: a layer is one directory tree, and mount_setattr(MOUNT_ATTR_IDMAP) on a recursive
    clone fails if any submount's filesystem cannot be idmapped.
    """
    tree = open_tree(source)
    try:
        attrs = MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if readonly else 0)
        mount_setattr(tree, attr_set=attrs, userns_fd=userns_fd, name=source)
    except BaseException:
        os.close(tree)
        raise
    return tree


def idmapped_mount(source: Path, target: Path, *, uid_base: int, count: int = IDMAP_COUNT) -> None:
    """Mount `source` read-only on the existing directory `target`, ids 0..count-1 shown as uid_base+."""
    userns = open_userns(uid_base=uid_base, count=count)
    try:
        tree = open_idmapped_tree(source, userns_fd=userns)
        try:
            move_mount(tree, target)
        finally:
            os.close(tree)
    finally:
        os.close(userns)
