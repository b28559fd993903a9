"""libnftables through ctypes: run an nft script in one transaction, in this process.

The same library `nft -f` runs, loaded once instead of a process forked and executed per change (about 20
ms each on the development VM, against 1 to 2 ms here). stdlib + ctypes only.

One context serves the whole process and is never freed: freeing it closes its netlink socket, and the
kernel makes the close of a socket that has just committed wait until the rules it replaced are freed,
after an RCU grace period (nf_tables' NETLINK_URELEASE handler flushes that work): 10 to 16 ms per
script here, twice per nat run. At the process's exit, that work has long been done.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading

LIBRARY = "libnftables.so.1"


class NftError(Exception):
    """nft refused a script; the message is what `nft -f` would have printed."""


@functools.cache
def _library() -> ctypes.CDLL:
    library = ctypes.CDLL(LIBRARY)
    library.nft_ctx_new.restype = ctypes.c_void_p
    library.nft_ctx_new.argtypes = (ctypes.c_uint32,)
    library.nft_ctx_buffer_output.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_buffer_error.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    library.nft_ctx_get_output_buffer.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    library.nft_ctx_get_error_buffer.argtypes = (ctypes.c_void_p,)
    library.nft_run_cmd_from_buffer.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    return library


@functools.cache
def _context() -> int:
    """The process's nft context (see the module's docstring for why it lives as long as the process)."""
    library = _library()
    before = _open_fds()
    context: int | None = library.nft_ctx_new(0)  # NFT_CTX_DEFAULT
    if not context:
        raise MemoryError("nft_ctx_new")
    # Its netlink socket (made here, by libmnl) is inheritable: a command veneer execs in its own place
    # (`veneer _boot` becomes nspawn) must not hold it. Python's own fds are not inheritable anyway.
    for fd, _what in _open_fds().items() - before.items():
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    # Buffered, so messages come back to the caller instead of going to this process's stdout/stderr.
    library.nft_ctx_buffer_output(context)
    library.nft_ctx_buffer_error(context)
    return context


def _open_fds() -> dict[int, str]:
    """This process's open fds and what each is (listdir's own fd is gone by the time it is read)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    return found


# A context is not for two threads at once (`veneer start A B ...` starts machines in threads).
_lock = threading.Lock()


def run_script(script: str) -> None:
    """Apply `script` as `nft -f` does: all of it in one transaction, or nothing. OSError if the library
    cannot be loaded, NftError with nft's message if the script is refused."""
    with _lock:
        library, context = _library(), _context()
        failed = library.nft_run_cmd_from_buffer(context, script.encode()) != 0
        # Reading a buffer empties it for the next script.
        library.nft_ctx_get_output_buffer(context)
        message = library.nft_ctx_get_error_buffer(context)
    if failed:
        raise NftError((message or b"nft refused the rules").decode(errors="replace").strip())
