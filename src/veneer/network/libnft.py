"""libnftables through ctypes: run an nft script in one transaction, in this process.

The same library `nft -f` runs, loaded once instead of a process forked and executed per change (about 20
ms each on the development VM, against 1 to 2 ms here). stdlib + ctypes only.
"""

from __future__ import annotations

import ctypes
import functools

LIBRARY = "libnftables.so.1"


class NftError(Exception):
    """nft refused a script; the message is what `nft -f` would have printed."""


@functools.cache
def _library() -> ctypes.CDLL:
    library = ctypes.CDLL(LIBRARY)
    library.nft_ctx_new.restype = ctypes.c_void_p
    library.nft_ctx_new.argtypes = (ctypes.c_uint32,)
    library.nft_ctx_free.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_buffer_output.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_buffer_error.argtypes = (ctypes.c_void_p,)
    library.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    library.nft_ctx_get_error_buffer.argtypes = (ctypes.c_void_p,)
    library.nft_run_cmd_from_buffer.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    return library


def run_script(script: str) -> None:
    """Apply `script` as `nft -f` does: all of it in one transaction, or nothing. OSError if the library
    cannot be loaded, NftError with nft's message if the script is refused."""
    library = _library()
    context = library.nft_ctx_new(0)  # NFT_CTX_DEFAULT
    if not context:
        raise MemoryError("nft_ctx_new")
    try:
        # Buffered, so messages come back to the caller instead of going to this process's stdout/stderr.
        library.nft_ctx_buffer_output(context)
        library.nft_ctx_buffer_error(context)
        if library.nft_run_cmd_from_buffer(context, script.encode()) != 0:
            message = library.nft_ctx_get_error_buffer(context) or b"nft refused the rules"
            raise NftError(message.decode(errors="replace").strip())
    finally:
        library.nft_ctx_free(context)
