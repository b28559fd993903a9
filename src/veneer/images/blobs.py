"""The blob cache: image blobs (layers, configs) by digest, each checked before it enters the cache.

`blobs/sha256/<hex>` holds verified blobs only; a download goes to `blobs/partial/<hex>`, locked by the
process writing it, and is renamed into place once its size and sha256 match. An interrupted download
stays in `partial/` and the next pull resumes it with an HTTP range request (or starts over when the
server ignores the range); a blob that turns out wrong is deleted. The cache can be removed at any time:
it only saves downloads. This module does no HTTP itself (the caller passes an opener) and knows nothing
about the image store.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from veneer.errors import ImageError
from veneer.images.oci import Descriptor, digest_hex
from veneer.util.fs import make_private_dir

_CHUNK = 1 << 20


class _Stream(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def close(self) -> None: ...


# opener(offset) -> (stream, where the stream starts: offset if the range was honoured, else 0)
Opener = Callable[[int], tuple[_Stream, int]]


class Downloads:
    """Bytes received by all download threads together, for a progress line."""

    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.done = 0
        self._report = report
        self._lock = threading.Lock()
        # Set when the pull fails or is interrupted: the other downloads stop at their next chunk, so
        # Ctrl-C does not wait for them (the executor joins its threads before the process exits).
        self.cancelled = threading.Event()

    def add(self, n: int) -> None:
        if self.cancelled.is_set():
            raise ImageError("Download cancelled", hint="Run the pull again: it resumes its downloads.")
        with self._lock:
            self.done += n
            if self._report is not None:
                self._report(self.done, self.total)


class BlobCache:
    """Verified blobs below `root` (the store's `blobs/` directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest_hex(digest)

    def has(self, descriptor: Descriptor) -> bool:
        try:
            return self.path(descriptor.digest).stat().st_size == descriptor.size
        except FileNotFoundError:
            return False

    def fetch(self, descriptor: Descriptor, opener: Opener, *, progress: Downloads | None = None) -> Path:
        """Return the cached blob, downloading (or resuming) it with `opener` if it is missing."""
        final = self.path(descriptor.digest)
        if self.has(descriptor):
            if progress is not None:
                progress.add(descriptor.size)
            return final
        make_private_dir(self.root, mode=0o700)
        for sub in ("sha256", "partial"):
            make_private_dir(self.root / sub)
        partial = self.root / "partial" / digest_hex(descriptor.digest)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            # Another pull of the same blob: wait for it, then find the blob cached.
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.has(descriptor):
                if progress is not None:
                    progress.add(descriptor.size)
                return final
            self._download(fd, descriptor, opener, progress)
            os.fsync(fd)
            os.rename(partial, final)
        except ImageError:
            raise
        except OSError as e:
            raise ImageError(
                f"Cannot store blob {descriptor.digest} in '{self.root}': {e.strerror or e}",
                hint="Check the free space of the veneer store.",
            ) from e
        finally:
            os.close(fd)
        return final

    def _download(self, fd: int, descriptor: Descriptor, opener: Opener, progress: Downloads | None) -> None:
        sha = hashlib.sha256()
        offset = os.fstat(fd).st_size
        if offset > descriptor.size:
            offset = 0
        # Hash what an earlier, interrupted download left, to resume after it.
        os.lseek(fd, 0, os.SEEK_SET)
        remaining = offset
        while remaining:
            chunk = os.read(fd, min(_CHUNK, remaining))
            if not chunk:
                break
            sha.update(chunk)
            remaining -= len(chunk)
        stream, start = opener(offset)
        try:
            if start != offset:
                sha, offset = hashlib.sha256(), 0
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            if progress is not None:
                progress.add(offset)
            written = offset
            while chunk := stream.read(_CHUNK):
                written += len(chunk)
                if written > descriptor.size:
                    os.ftruncate(fd, 0)
                    raise ImageError(
                        f"Blob {descriptor.digest} exceeds its size ({descriptor.size} bytes)",
                        hint="The registry or image is damaged or was tampered with; nothing was published.",
                    )
                sha.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                if progress is not None:
                    progress.add(len(chunk))
        finally:
            stream.close()
        if written < descriptor.size:
            raise ImageError(
                f"Download of blob {descriptor.digest} ended after {written} of {descriptor.size} bytes",
                hint="Run the pull again: it resumes where this one stopped.",
            )
        actual = f"sha256:{sha.hexdigest()}"
        if actual != descriptor.digest:
            os.ftruncate(fd, 0)
            raise ImageError(
                f"Blob {descriptor.digest} does not match its digest (got {actual})",
                hint="The registry or image is damaged or was tampered with; nothing was published.",
            )


def file_digest(path: Path) -> str:
    """The `sha256:` digest of a file."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"
