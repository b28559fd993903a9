"""Reading a file of a machine from the host as the machine would see it, never the host's.

A machine's root may hold any symlink: `/etc/passwd -> /etc/shadow` means the machine's shadow to the
machine, but the host's to a host process that opens `/proc/PID/root/etc/passwd`, and checking each
component first (then opening) loses a race with the machine. openat2(2) with RESOLVE_IN_ROOT resolves
every component, `..` and absolute symlinks included, as if the root fd were `/`, in one call; magic
links (`/proc/self/root`) are refused outright. Stdlib and ctypes only; must not import from veneer.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from pathlib import Path

NR_OPENAT2 = 437  # the unified syscall table (include/uapi/asm-generic/unistd.h), same on every arch
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    """`struct open_how` from `include/uapi/linux/openat2.h`."""

    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """openat2(root_fd, path, flags | O_CLOEXEC) resolved inside `root_fd`; raise OSError naming `path`."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = int(
        _libc().syscall(
            ctypes.c_long(NR_OPENAT2),
            ctypes.c_int(root_fd),
            ctypes.c_char_p(path.encode()),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, f"openat2 '{path}': {os.strerror(err)}", path)
    return fd


def read_in_root(root: Path, path: str, *, limit: int) -> bytes:
    """The content of regular file `path` inside the tree at `root`, at most `limit` bytes of it.

    Raises OSError: FileNotFoundError if it is missing, EINVAL if it is not a regular file (a FIFO would
    block the reader), EFBIG if it is larger than `limit`.
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, f"'{path}' is not a regular file", path)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"'{path}' is larger than {limit} bytes", path)
    return data
