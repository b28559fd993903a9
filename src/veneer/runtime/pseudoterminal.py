"""A terminal of the machine's own for an interactive command (`veneer shell`), relayed to the user's.

The user's terminal is a device of the host: inside the machine it has no name (`tty` says "not a tty")
and job control has no controlling terminal. So the pseudo-terminal pair is made in the machine's devpts
instance (its `/dev/pts/ptmx`, opened from the host with openat2 RESOLVE_IN_ROOT, never through a symlink
of the machine's), the command gets the peer as its controlling terminal, and veneer copies bytes both
ways between the user's terminal (in raw mode) and the master, passing on window size changes. The
machine never holds a descriptor of the user's terminal, so it cannot push input into it. Stdlib and
`util.inroot` only; must not log.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import stat
import struct
import sys
import termios
import tty
from collections.abc import Iterator

from veneer.util.inroot import open_in_root

TIOCGPTPEER = 0x5441  # include/uapi/asm-generic/ioctls.h: the peer of a master, without a path lookup
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): unlock the peer
PTMX_DEVICE = os.makedev(5, 2)


def open_pair(root_fd: int) -> tuple[int, int]:
    """A new (master, peer) pair of the devpts instance mounted at the machine's /dev/pts."""
    master = open_in_root(root_fd, "dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_DEVICE:
            raise OSError(errno.ENOTTY, "the machine's /dev/pts/ptmx is no pseudo-terminal multiplexer")
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        os.set_blocking(master, True)
    except BaseException:
        os.close(master)
        raise
    return master, peer


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH: what the user typed ahead is for the command
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _copy_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(target, termios.TIOCSWINSZ, fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8))


def relay(master: int) -> None:
    """Copy the user's terminal (stdin, stdout) to and from `master` until the machine's side is closed."""
    user_in, user_out = sys.stdin.fileno(), sys.stdout.fileno()
    _copy_size(user_in, master)
    previous = signal.signal(signal.SIGWINCH, lambda _s, _f: _copy_size(user_in, master))
    try:
        with _raw(user_in):
            reading = [master, user_in]
            while True:
                ready, _, _ = select.select(reading, [], [])
                if master in ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: every process of the machine's side closed the peer
                        return
                    if not data:
                        return
                    os.write(user_out, data)
                if user_in in ready:
                    data = os.read(user_in, 65536)
                    if data:
                        os.write(master, data)
                    else:  # the user's side ended: the command sees end of input no more; stop reading
                        reading.remove(user_in)
    finally:
        signal.signal(signal.SIGWINCH, previous)
