"""How files enter an image: extracting a root filesystem tarball, or copying a directory tree.

`extract_tar()` treats the archive as hostile. It never calls `tarfile.extract*()`: it reads members with
`tarfile` in stream mode and makes every filesystem change itself with fd-relative syscalls, walking to
each member's parent one component at a time with O_NOFOLLOW|O_DIRECTORY, so neither a `..` name nor a
symlink planted by an earlier member can redirect a write outside the destination. A replaced entry is
unlinked first and files are created with O_EXCL, so an existing entry is never written through.

`copy_tree()` trusts its source (a directory the administrator points at) and delegates to `cp -a`.

`extract_sections()` extracts one stream into several directories (a machine sent from another host).

This module knows nothing about the image store; it imports `veneer.errors`, `veneer.util` and the id
arithmetic of `veneer.config.uidrange` only.
`zstandard` is imported lazily, when a zstd archive is opened.
"""

from __future__ import annotations

import bz2
import contextlib
import decimal
import errno
import gzip
import hashlib
import io
import logging
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, Self

from veneer.config.uidrange import ACL_XATTRS, acl_ids
from veneer.errors import CommandFailed, ImageError, UnsafeArchive
from veneer.util.proc import run
from veneer.util.progress import QUIET, Progress

logger = logging.getLogger(__name__)

UNSAFE_HINT = "The archive is not a safe root filesystem tarball; nothing was imported."
UNSAFE_TREE_HINT = "The directory is not a plain root filesystem; nothing was copied."
_STREAM_HINT = "The stream holds what veneer does not accept; nothing was stored."
DAMAGED_HINT = "The archive is damaged or not a tarball; download or create it again. Nothing was imported."

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_SPARSE_BLOCK = 64 << 10
# Extended headers (pax, GNU long names) are read into memory whole, so cap them. This also bounds the
# quadratic pax record parsing of CPython < 3.11.10 (CVE-2024-6232) to well under a second per header.
_MAX_EXTENDED_HEADER = 1 << 20
# How long an image layer's tar stream may be once decompressed: a few KiB of gzip can decompress to
# terabytes. Genuine layers stay well below (the largest common base images are a few GiB).
DEFAULT_MAX_LAYER_BYTES = 32 << 30
_EXTENDED_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
_XATTR_PREFIX = "SCHILY.xattr."
_OCI_WHITEOUT = ".wh."
_OCI_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_NS = 1_000_000_000


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _HeaderRefused(Exception):
    """Raised inside tarfile's header parsing; turned into an `ImageError` by the caller."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized extended headers and garbled header blocks.

    Plain tarfile stops reading silently at a header with a bad checksum after the first member, which
    would import a truncated tree; raising here (tarfile re-raises non-HeaderError exceptions) stops that.
    The hooks are the two that every CPython since 3.2 goes through for every header: `fromtarfile()` for
    each member and `_proc_member()` (an override point tarfile documents in its source) for extended
    headers too. `frombuf()` is not one: Debian's python3.11 (3.11.2-6+deb12u9) and CPython 3.12+ call a
    private `_frombuf()` instead. The two header errors caught exist since Python 3.2; typeshed omits them.
    """

    __slots__ = ()

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(archive)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as e:  # type: ignore[attr-defined]
            raise _HeaderRefused(f"garbled header block ({e})") from None

    def _proc_member(self, archive: tarfile.TarFile) -> Self:
        if self.type in _EXTENDED_TYPES and self.size > _MAX_EXTENDED_HEADER:
            raise _HeaderRefused(
                f"extended header of {self.size} bytes (at most {_MAX_EXTENDED_HEADER} are accepted)",
            )
        return super()._proc_member(archive)  # type: ignore[misc, no-any-return]


def format_size(n: int) -> str:
    """A size as the user would write it back (16 MiB, 32 GiB), exact."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


class LayerTooLarge(ImageError):
    """A layer decompresses to more than the limit (a gzip bomb would fill the disk)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"Layer decompresses to more than {format_size(limit)}, the limit",
            hint=f"If the image is genuine, raise the limit, e.g. --max-layer-size {(2 * limit) >> 20}M.",
        )
        self.limit = limit


class _ArchiveReader:
    """The decompressed archive as tarfile reads it (forward only); decoder errors become `ImageError`."""

    def __init__(self, stream: _Readable, *, archive: Path, errors: tuple[type[Exception], ...]) -> None:
        self._stream = stream
        self._archive = archive
        self._errors = errors
        # The sha256 of the decompressed archive (an OCI layer's diff_id), as far as it was read.
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.limit: int | None = None
        # Called after each read, to report how far the archive is read (a big member takes long).
        self.on_read: Callable[[], None] = _nothing

    def read(self, size: int, /) -> bytes:
        try:
            data = self._stream.read(size)
        except self._errors as e:
            raise ImageError(f"Cannot read '{self._archive}': {e}", hint=DAMAGED_HINT) from e
        self.sha256.update(data)
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise LayerTooLarge(self.limit)
        self.on_read()
        return data

    def drain(self) -> None:
        """Read to the end, so `sha256` covers the padding tarfile leaves unread after the last member."""
        while self.read(_CHUNK):
            pass

    def write(self, b: bytes, /) -> object:
        raise io.UnsupportedOperation("write")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")

    def seek(self, pos: int, /) -> object:
        raise io.UnsupportedOperation("seek")

    def close(self) -> object:
        return None


def _nothing() -> None:
    pass


def _open_decompressed(raw: io.BufferedReader, archive: Path, stack: contextlib.ExitStack) -> _ArchiveReader:
    """Wrap `raw` in the decompressor its magic bytes call for; anything else is read as plain tar."""
    head = raw.peek(6)[:6]
    stream: _Readable
    errors: tuple[type[Exception], ...]
    if head.startswith(b"\x1f\x8b"):
        kind, errors = "gzip", (OSError, EOFError, zlib.error)
        stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    elif head.startswith(b"\xfd7zXZ\x00"):
        kind, errors = "xz", (OSError, EOFError, lzma.LZMAError)
        stream = stack.enter_context(lzma.LZMAFile(raw))
    elif head.startswith(b"BZh"):
        kind, errors = "bzip2", (OSError, EOFError, ValueError)
        stream = stack.enter_context(bz2.BZ2File(raw))
    elif head.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard  # Lazily: only zstd archives need it, and importing veneer must stay cheap.

        kind, errors = "zstd", (OSError, zstandard.ZstdError)
        # Archives made by parallel compressors (zstd -T, pzstd) consist of several frames.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
        stream = stack.enter_context(reader)
    else:
        kind, errors, stream = "uncompressed", (OSError,), raw
    logger.debug("'%s' is a %s archive", archive, kind)
    return _ArchiveReader(stream, archive=archive, errors=errors)


def _mtime_ns(member: tarfile.TarInfo) -> int | None:
    """The member's mtime in ns, or None if it is garbled.

    A pax mtime is parsed exactly: tarfile's float keeps only microseconds of a current timestamp.
    """
    text = member.pax_headers.get("mtime")
    try:
        seconds = decimal.Decimal(text) if text is not None else decimal.Decimal(member.mtime)
        ns = int(seconds * _NS)
    except (ArithmeticError, ValueError):  # not a number, infinite, NaN, or out of decimal's range
        return None
    return ns if -(2**63) <= ns < 2**63 else None


def _copy_data(source: IO[bytes], fd: int, *, sparse: bool) -> None:
    """Write a member's data to `fd`; for a sparse member, leave all-zero blocks as holes."""
    if not sparse:
        with open(fd, "wb", closefd=False) as out:
            shutil.copyfileobj(source, out, _CHUNK)
        return
    size = 0
    while block := source.read(_SPARSE_BLOCK):
        if block.count(0) == len(block):
            os.lseek(fd, len(block), os.SEEK_CUR)
        else:
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
        size += len(block)
    os.ftruncate(fd, size)


class _Extractor:
    """Creates members below one directory fd, never following a symlink that an earlier member planted."""

    def __init__(
        self,
        root_fd: int,
        *,
        archive: Path,
        allow_whiteouts: bool,
        oci_whiteouts: bool,
        kept_xattrs: tuple[str, ...] | None = None,
    ) -> None:
        self.root_fd = root_fd
        self.archive = archive
        self.allow_whiteouts = allow_whiteouts
        self.oci_whiteouts = oci_whiteouts
        self.kept_xattrs = kept_xattrs
        self.privileged = os.geteuid() == 0
        # Paths of regular files extracted so far: the only valid hard link targets.
        self.regular: set[tuple[str, ...]] = set()
        # Directory mode and mtime (ns), applied after their contents are written.
        self.directories: dict[tuple[str, ...], tuple[int, int]] = {}

    def refuse(self, member: tarfile.TarInfo, reason: str) -> UnsafeArchive:
        return UnsafeArchive(f"Refusing '{self.archive}': member '{member.name}' {reason}", hint=UNSAFE_HINT)

    def parse_path(self, member: tarfile.TarInfo, name: str, what: str) -> tuple[str, ...]:
        """Split a member or link name into components below the root; refuse any that could leave it."""
        if "\0" in name:
            raise self.refuse(member, f"has a NUL byte in its {what}")
        if name.startswith("/"):
            raise self.refuse(member, f"has an absolute {what} '{name}'")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            raise self.refuse(member, f"has a '..' component in its {what} '{name}'")
        return parts

    def check(self, member: tarfile.TarInfo) -> tuple[tuple[str, ...], int]:
        """Refuse a member before anything is written for it; return its path components and mtime (ns)."""
        path = self.parse_path(member, member.name, "name")
        if not path and not member.isdir():
            raise self.refuse(member, "would replace the destination directory itself")
        if member.ischr() and member.devmajor == 0 and member.devminor == 0:
            if not self.allow_whiteouts:
                raise self.refuse(member, "is an overlay whiteout (character device 0/0)")
        elif member.ischr() or member.isblk():
            if len(path) < 2 or path[0] != "dev":
                raise self.refuse(member, "is a device node outside dev/")
        elif not (member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()):
            raise self.refuse(member, f"has the unsupported type {member.type!r}")
        if member.issym() and "\0" in member.linkname:
            raise self.refuse(member, "has a NUL byte in its symlink target")
        for what, value in (("owner", member.uid), ("group", member.gid)):
            if not 0 <= value < 0xFFFFFFFF:
                raise self.refuse(member, f"has an invalid {what} {value}")
        mtime_ns = _mtime_ns(member)
        if mtime_ns is None:
            raise self.refuse(member, "has an invalid modification time")
        return path, mtime_ns

    def xattrs(self, member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        """The extended attributes from the member's pax header that veneer restores (as root only)."""
        if not self.privileged:
            return []
        result = []
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            name = key.removeprefix(_XATTR_PREFIX)
            if self.kept_xattrs is not None:
                kept = any(name == k or (k.endswith(".") and name.startswith(k)) for k in self.kept_xattrs)
            else:  # trusted.overlay.* changes how overlayfs reads a lower layer; only layers may carry it.
                kept = (
                    name == "security.capability"
                    or name.startswith("user.")
                    or (self.allow_whiteouts and name.startswith("trusted.overlay."))
                )
            if kept:
                # tarfile decoded the raw value with surrogateescape; this restores the exact bytes.
                result.append((name, value.encode("utf-8", "surrogateescape")))
            else:
                logger.debug("Not restoring extended attribute %s of '%s', ignoring.", name, member.name)
        return result

    def add(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Extract one member."""
        path, mtime_ns = self.check(member)
        try:
            if self.oci_whiteouts and path and path[-1].startswith(_OCI_WHITEOUT):
                self.add_oci_whiteout(member, path)
            elif member.isdir():
                self.add_directory(member, path, mtime_ns)
            elif member.islnk():
                self.add_hardlink(member, path)
            else:
                parent = self.open_parent(member, path)
                try:
                    self.clear(member, parent, path, keep_directory=False)
                    if member.isreg():
                        self.add_file(tf, member, parent, path[-1], mtime_ns)
                        self.regular.add(path)
                    else:
                        self.add_special(member, parent, path[-1], mtime_ns)
                finally:
                    os.close(parent)
        except OSError as e:
            raise ImageError(
                f"Failed to extract '{member.name}' from '{self.archive}': {e.strerror or e}",
                hint="Check that the destination file system has space and supports the file types. "
                "Nothing was imported.",
            ) from e

    def add_oci_whiteout(self, member: tarfile.TarInfo, path: tuple[str, ...]) -> None:
        """Turn an OCI whiteout into its overlayfs form: `.wh.NAME` becomes a 0/0 character device NAME,
        `.wh..wh..opq` makes its directory opaque (https://github.com/opencontainers/image-spec/blob/main/
        layer.md#whiteouts). A whiteout hides lower layers only, so an entry of this layer stays."""
        if path[-1] != _OCI_OPAQUE and path[-1].startswith(_OCI_WHITEOUT + _OCI_WHITEOUT):
            logger.debug("Skipping the AUFS metadata entry '%s' of '%s'.", member.name, self.archive)
            return
        parent = self.open_parent(member, path)
        try:
            if path[-1] == _OCI_OPAQUE:
                os.setxattr(parent, OPAQUE_XATTR, b"y")
                return
            name = path[-1].removeprefix(_OCI_WHITEOUT)
            try:
                os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)
        finally:
            os.close(parent)

    def open_parent(self, member: tarfile.TarInfo, path: tuple[str, ...], *, create: bool = True) -> int:
        """Open the directory that holds `path[-1]`, creating missing ones; never via a symlink."""
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(path[:-1]):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    where = "/".join(path[: i + 1])
                    if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise self.refuse(member, f"lies below '{where}', which is a symlink") from None
                    raise self.refuse(member, f"lies below '{where}', which is not a directory") from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def clear(
        self, member: tarfile.TarInfo, parent: int, path: tuple[str, ...], *, keep_directory: bool
    ) -> bool:
        """Remove what a member replaces (later members win); True if an existing directory is kept."""
        try:
            st = os.stat(path[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_directory:
                return True
            try:
                os.rmdir(path[-1], dir_fd=parent)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise self.refuse(member, "would replace a directory that is not empty") from None
                raise
            self.directories.pop(path, None)
            return False
        os.unlink(path[-1], dir_fd=parent)
        self.regular.discard(path)
        return False

    def set_owner(self, member: tarfile.TarInfo, target: int | str, parent: int | None = None) -> None:
        if self.privileged:
            if isinstance(target, int):
                os.fchown(target, member.uid, member.gid)
            else:
                os.chown(target, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)

    def set_xattrs(self, member: tarfile.TarInfo, target: int | str) -> None:
        """Set xattrs on an fd, or on a path that must not be followed (xattr calls take no dir_fd)."""
        for name, value in self.xattrs(member):
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.EOPNOTSUPP and name.startswith("user."):
                    logger.debug("Cannot set %s on '%s': %s, ignoring.", name, member.name, e.strerror)
                    continue
                raise ImageError(
                    f"Failed to set extended attribute '{name}' on '{member.name}': {e.strerror or e}",
                    hint="Use a destination file system with extended attributes (ext4, xfs, btrfs).",
                ) from e

    def add_file(
        self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str, mtime_ns: int
    ) -> None:
        # O_EXCL|O_NOFOLLOW: `clear()` removed any previous entry, so this can only create a new file.
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        try:
            source = tf.extractfile(member)
            if source is not None:
                with source:
                    _copy_data(source, fd, sparse=member.issparse())
            # chown clears setuid/setgid and security.capability, and writing data clears capabilities too:
            # hence data, then owner, then mode and xattrs.
            self.set_owner(member, fd)
            os.fchmod(fd, member.mode & 0o7777)
            self.set_xattrs(member, fd)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def add_special(self, member: tarfile.TarInfo, parent: int, name: str, mtime_ns: int) -> None:
        """Create a symlink, device node or fifo named `name` in `parent` and set its metadata."""
        if member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
        else:
            if member.isfifo():
                os.mkfifo(name, 0o600, dir_fd=parent)
            else:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                try:
                    os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
                except PermissionError as e:
                    raise ImageError(
                        f"Failed to create device node '{member.name}': {e.strerror}",
                        hint="Import images as root.",
                    ) from e
        self.set_owner(member, name, parent)
        if not member.issym():
            # Python 3.11 has no fchmodat(AT_SYMLINK_NOFOLLOW); an O_PATH fd pins the inode just created
            # without opening the device, and chmod through /proc/self/fd acts on that inode.
            node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                if stat.S_ISLNK(os.fstat(node).st_mode):
                    raise self.refuse(member, "was replaced by a symlink while being extracted")
                os.chmod(f"/proc/self/fd/{node}", member.mode & 0o7777)
            finally:
                os.close(node)
        self.set_xattrs(member, f"/proc/self/fd/{parent}/{name}")
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)

    def add_directory(self, member: tarfile.TarInfo, path: tuple[str, ...], mtime_ns: int) -> None:
        if path:
            parent = self.open_parent(member, path)
            try:
                if not self.clear(member, parent, path, keep_directory=True):
                    # Owner-only until finish(): a read-only directory must not block its own contents.
                    os.mkdir(path[-1], 0o700, dir_fd=parent)
                fd = os.open(path[-1], _DIR_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
        else:
            fd = os.dup(self.root_fd)
        try:
            self.set_owner(member, fd)
            self.set_xattrs(member, fd)
        finally:
            os.close(fd)
        self.directories[path] = (member.mode & 0o7777, mtime_ns)

    def add_hardlink(self, member: tarfile.TarInfo, path: tuple[str, ...]) -> None:
        target = self.parse_path(member, member.linkname, "hard link target")
        if target not in self.regular:
            raise self.refuse(
                member,
                f"is a hard link to '{member.linkname}', which is not a regular file extracted before it",
            )
        if target == path:
            return
        source_parent = self.open_parent(member, target, create=False)
        try:
            if not stat.S_ISREG(os.stat(target[-1], dir_fd=source_parent, follow_symlinks=False).st_mode):
                raise self.refuse(
                    member, f"is a hard link to '{member.linkname}', which is not a regular file"
                )
            parent = self.open_parent(member, path)
            try:
                self.clear(member, parent, path, keep_directory=False)
                os.link(
                    target[-1], path[-1], src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False
                )
            finally:
                os.close(parent)
        finally:
            os.close(source_parent)
        self.regular.add(path)

    def finish(self) -> None:
        """Apply directory modes and mtimes, deepest first, now that nothing more is written into them."""
        for path in sorted(self.directories, key=len, reverse=True):
            mode, ns = self.directories[path]
            fd = os.dup(self.root_fd)
            try:
                for part in path:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = child
                os.fchmod(fd, mode)
                os.utime(fd, ns=(ns, ns))
            except OSError as e:
                raise ImageError(
                    f"Failed to set the mode of directory '{'/'.join(path) or '.'}': {e.strerror or e}",
                ) from e
            finally:
                os.close(fd)


def _empty_directory(fd: int, dest: Path) -> None:
    """Remove everything below `fd` after a failed extraction, so no half-imported tree remains."""
    for name in os.listdir(fd):
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        except OSError as e:
            logger.debug("Cannot remove '%s' from '%s': %s, ignoring.", name, dest, e)


def member_names(archive: Path, *, limit: int) -> list[str]:
    """The names of the first `limit` members of a (possibly compressed) tar archive; nothing is written.

    Raises `ImageError` if `archive` is not a tar archive.
    """
    names: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            raw = stack.enter_context(open(archive, "rb"))
        except OSError as e:
            raise ImageError(f"Cannot open '{archive}': {e.strerror}", hint="Check the path.") from e
        reader = _open_decompressed(raw, archive, stack)
        try:
            tf = stack.enter_context(
                tarfile.open(mode="r|", fileobj=reader, tarinfo=_BoundedTarInfo, errors="surrogateescape")
            )
            while len(names) < limit and (member := tf.next()) is not None:
                names.append(member.name)
        except (tarfile.TarError, _HeaderRefused, ValueError, EOFError) as e:
            raise ImageError(f"'{archive}' is not a valid tar archive: {e}", hint=DAMAGED_HINT) from e
    return names


def extract_layer(
    blob: Path,
    dest: Path,
    *,
    diff_id: str | None,
    max_bytes: int = DEFAULT_MAX_LAYER_BYTES,
    progress: Progress = QUIET,
) -> None:
    """Apply an OCI/Docker image layer (a tar, plain, gzip or zstd) to the empty directory `dest`, in
    overlayfs upper-dir form: OCI whiteouts become 0/0 character devices and opaque directories.

    The layer is as hostile as any archive (see `extract_tar`); `diff_id`, the sha256 of the uncompressed
    tar from the image config, is checked once everything is read, and `dest` is emptied on a mismatch.
    A layer whose tar stream is longer than `max_bytes` raises `LayerTooLarge` and leaves `dest` empty.
    """
    _extract_into(
        blob,
        dest,
        allow_whiteouts=False,
        oci_whiteouts=True,
        diff_id=diff_id,
        max_bytes=max_bytes,
        progress=progress,
    )


def extract_image_layer(
    blob: Path, dest: Path, *, diff_id: str, position: str, max_bytes: int, progress: Progress = QUIET
) -> None:
    """`extract_layer` for the layer at `position` ("2/5") of an image being pulled or imported: a layer over
    `max_bytes` is an `ImageError` that names it."""
    logger.debug("Applying layer %s (%s)", position, diff_id)
    progress.phase(f"Applying layer {position}", total=blob.stat().st_size)
    try:
        extract_layer(blob, dest, diff_id=diff_id, max_bytes=max_bytes, progress=progress)
    except LayerTooLarge as e:
        raise ImageError(
            f"Layer {position} ({diff_id}) decompresses to more than {format_size(max_bytes)}, the limit; "
            "nothing was stored",
            hint=e.hint,
        ) from e


def extract_tar(
    archive: Path, dest: Path, *, allow_whiteouts: bool = False, progress: Progress | None = None
) -> None:
    """Extract a root filesystem tarball (plain, gzip, xz, bzip2 or zstd) into the empty directory `dest`.

    Members that would write outside `dest` or are not allowed in a root filesystem raise `UnsafeArchive`;
    an unreadable archive raises `ImageError`. On any failure `dest` is emptied again.

    Args:
        allow_whiteouts: accept overlay whiteouts (character devices 0/0) anywhere and restore
            `trusted.overlay.*` attributes, as image layers need.
        progress: gets the phase "Extracting ARCHIVE" and the bytes of the archive read so far.
    """
    size = _size_or_none(archive)
    if progress is not None and size is not None:  # else the extraction says what is wrong, alone
        progress.phase(f"Extracting '{archive.name}'", total=size)
    _extract_into(
        archive,
        dest,
        allow_whiteouts=allow_whiteouts,
        oci_whiteouts=False,
        diff_id=None,
        max_bytes=None,
        progress=progress or QUIET,
    )


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size or None
    except OSError:  # reported by the extraction, with its hint
        return None


def _extract_into(
    archive: Path,
    dest: Path,
    *,
    allow_whiteouts: bool,
    oci_whiteouts: bool,
    diff_id: str | None,
    max_bytes: int | None,
    progress: Progress,
) -> None:
    try:
        root_fd = os.open(dest, _DIR_FLAGS)
    except OSError as e:
        raise ImageError(
            f"Cannot extract into '{dest}': {e.strerror}", hint="Create the destination directory first."
        ) from e
    try:
        if os.listdir(root_fd):
            raise ImageError(
                f"Cannot extract into '{dest}': it is not empty", hint="Extract into a new, empty directory."
            )
        logger.debug("Extracting '%s' into '%s'", archive, dest)
        try:
            _extract(
                archive,
                root_fd,
                allow_whiteouts=allow_whiteouts,
                oci_whiteouts=oci_whiteouts,
                diff_id=diff_id,
                max_bytes=max_bytes,
                progress=progress,
            )
        except BaseException:
            _empty_directory(root_fd, dest)
            raise
    finally:
        os.close(root_fd)


def _extract(
    archive: Path,
    root_fd: int,
    *,
    allow_whiteouts: bool,
    oci_whiteouts: bool,
    diff_id: str | None,
    max_bytes: int | None,
    progress: Progress,
) -> None:
    extractor = _Extractor(
        root_fd, archive=archive, allow_whiteouts=allow_whiteouts, oci_whiteouts=oci_whiteouts
    )
    with contextlib.ExitStack() as stack:
        try:
            raw = stack.enter_context(open(archive, "rb"))
        except OSError as e:
            raise ImageError(
                f"Cannot open '{archive}': {e.strerror}", hint="Check the path of the archive."
            ) from e
        reader = _open_decompressed(raw, archive, stack)
        reader.limit = max_bytes
        if progress is not QUIET and raw.seekable():  # not a stream (`veneer cp` extracts from a pipe)
            # How far into the (compressed) file the decompressor has read: its size is the known total.
            reader.on_read = lambda: progress.advance(raw.tell())
        try:
            tf = stack.enter_context(
                tarfile.open(mode="r|", fileobj=reader, tarinfo=_BoundedTarInfo, errors="surrogateescape")
            )
            while (member := tf.next()) is not None:
                # Stream mode never looks members up again; dropping them keeps memory flat.
                del tf.members[:]  # type: ignore[attr-defined]  # a public attribute typeshed leaves out
                extractor.add(tf, member)
        except (tarfile.TarError, _HeaderRefused, ValueError, EOFError) as e:
            # ValueError and EOFError come from tarfile's own parsing of GNU sparse maps and headers.
            raise ImageError(f"'{archive}' is not a valid tar archive: {e}", hint=DAMAGED_HINT) from e
        if diff_id is not None:
            reader.drain()
            actual = f"sha256:{reader.sha256.hexdigest()}"
            if actual != diff_id:
                raise ImageError(
                    f"Layer '{archive}' does not match its diff_id: expected {diff_id}, got {actual}",
                    hint="The image is damaged or was tampered with; nothing was imported.",
                )
        extractor.finish()


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    """Where the members of a sectioned stream below one prefix go, and what they may be."""

    dest: Path  # an empty directory
    whiteouts: bool  # overlay whiteouts (0/0 character devices) allowed
    ids: range | None = None  # the only owners (and ids named in ACLs) allowed; None: any
    xattrs: tuple[str, ...] | None = None  # the xattrs restored (a trailing '.' for a prefix); None: default


def extract_sections(
    stream: IO[bytes], sections: Mapping[str, Section], *, what: str, max_bytes: int
) -> None:
    """Extract a tar stream whose members each lie below one of the prefixes of `sections` ("upper",
    "layers/ab12") into that section's directory, as hostile as any archive (see `extract_tar`), and
    ending with a member named `END_MEMBER`: a stream cut short, even between two members, is refused.
    Nothing is written outside the sections' directories; on failure the caller removes them."""
    source = Path(what)
    reader = _ArchiveReader(stream, archive=source, errors=(OSError,))
    reader.limit = max_bytes
    extractors: dict[str, _Extractor] = {}
    with contextlib.ExitStack() as stack:
        for prefix, section in sections.items():
            fd = os.open(section.dest, _DIR_FLAGS)
            stack.callback(os.close, fd)
            extractors[prefix] = _Extractor(
                fd, archive=source, allow_whiteouts=section.whiteouts, oci_whiteouts=False,
                kept_xattrs=section.xattrs,
            )  # fmt: skip
        try:
            tf = stack.enter_context(
                tarfile.open(mode="r|", fileobj=reader, tarinfo=_BoundedTarInfo, errors="surrogateescape")
            )
            ended = False
            while (member := tf.next()) is not None:
                del tf.members[:]  # type: ignore[attr-defined]  # as in _extract
                if ended:
                    raise UnsafeArchive(
                        f"Refusing {what}: member '{member.name}' follows its end", hint=_STREAM_HINT
                    )
                if member.name == END_MEMBER and member.isreg() and member.size == 0:
                    ended = True
                    continue
                prefix = _section_of(member, sections, what)
                _check_section_ids(member, sections[prefix], what)
                extractors[prefix].add(tf, member)
        except (tarfile.TarError, _HeaderRefused, ValueError, EOFError) as e:
            raise ImageError(f"{what} is not a valid tar stream: {e}", hint=DAMAGED_HINT) from e
        if not ended:
            raise ImageError(f"{what} ended early", hint="The transfer was cut short; nothing was stored.")
        for extractor in extractors.values():
            extractor.finish()


END_MEMBER = ".end"


def _section_of(member: tarfile.TarInfo, sections: Mapping[str, Section], what: str) -> str:
    """The prefix of the section `member` lies below; its name (and hard link target) made relative to it."""

    def split(name: str) -> tuple[str, str] | None:
        parts = [part for part in name.split("/") if part not in ("", ".")]
        for length in (1, 2):
            prefix = "/".join(parts[:length])
            if prefix in sections and not name.startswith("/"):
                return prefix, "/".join(parts[length:])
        return None

    found = split(member.name)
    if found is None:
        raise UnsafeArchive(
            f"Refusing {what}: member '{member.name}' lies outside what it may write", hint=_STREAM_HINT
        )
    prefix, member.name = found
    if member.islnk():
        target = split(member.linkname)
        if target is None or target[0] != prefix:
            raise UnsafeArchive(
                f"Refusing {what}: member '{member.name}' is a hard link out of its section '{prefix}'",
                hint=_STREAM_HINT,
            )
        member.linkname = target[1]
    return prefix


def _check_section_ids(member: tarfile.TarInfo, section: Section, what: str) -> None:
    if section.ids is None:
        return
    # overlayfs makes whiteouts with the credentials of whoever mounted it: host root.
    whiteout = member.ischr() and member.devmajor == 0 and member.devminor == 0
    named = [] if whiteout and member.uid == member.gid == 0 else [member.uid, member.gid]
    for name in ACL_XATTRS:
        acl = member.pax_headers.get(_XATTR_PREFIX + name)
        if acl is not None:
            ids = acl_ids(acl.encode("utf-8", "surrogateescape"))
            if ids is None:
                raise UnsafeArchive(
                    f"Refusing {what}: member '{member.name}' has a malformed {name}", hint=_STREAM_HINT
                )
            named += ids
    for value in named:
        if value not in section.ids:
            raise UnsafeArchive(
                f"Refusing {what}: member '{member.name}' names id {value}, outside "
                f"{section.ids.start}-{section.ids.stop - 1}",
                hint=_STREAM_HINT,
            )


def check_tree(source: Path, *, allow_whiteouts: bool = False) -> None:
    """Refuse a directory tree holding what an archive may not hold either (see `extract_tar`): device
    nodes outside dev/, and overlay whiteouts or trusted.overlay.* xattrs unless `allow_whiteouts`."""
    for dirpath, dirnames, filenames in os.walk(source):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            relative = os.path.relpath(path, source)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
                if not (whiteout and allow_whiteouts) and not (not whiteout and relative.startswith("dev/")):
                    raise UnsafeArchive(
                        f"Refusing '{source}': '{relative}' is a device node outside dev/",
                        hint=UNSAFE_TREE_HINT,
                    )
            if not allow_whiteouts and not stat.S_ISLNK(st.st_mode):
                with contextlib.suppress(OSError):
                    if any(
                        x.startswith("trusted.overlay.") for x in os.listxattr(path, follow_symlinks=False)
                    ):
                        raise UnsafeArchive(
                            f"Refusing '{source}': '{relative}' carries overlayfs attributes",
                            hint=UNSAFE_TREE_HINT,
                        )


def copy_tree(source: Path, dest: Path, *, allow_whiteouts: bool = False) -> None:
    """Copy the directory tree `source` (an image root, a machine's upper dir) into the empty `dest`.

    `cp -a` keeps owners, modes, timestamps, hard links, devices (overlay whiteouts too), fifos, sparse
    files, ACLs and xattrs (trusted.overlay.* as well, as root); GNU tar would need --xattrs
    --xattrs-include='*' --acls --sparse spelled out, and a pipe. `--preserve=xattr` on top of `-a` makes a
    lost xattr (e.g. security.capability of ping) an error instead of being ignored. The metadata of
    `source` itself is copied onto `dest`.
    """
    if not source.is_dir():
        raise ImageError(
            f"Cannot copy '{source}': not a directory",
            hint="Pass the directory that holds the root filesystem (with usr/ and etc/).",
        )
    if not dest.is_dir() or any(dest.iterdir()):
        raise ImageError(
            f"Cannot copy into '{dest}': not an empty directory", hint="Copy into a new, empty directory."
        )
    dst = dest.resolve()
    # `source` as given, never resolved: it may be a view that follows no symlinks (`overlay.view`), whose
    # /proc path resolves to nothing useful.
    src_stat = source.stat()
    if any(os.path.samestat(src_stat, p.stat()) for p in (dst, *dst.parents)):
        raise ImageError(
            f"Cannot copy '{source}' into '{dest}': the destination is inside the source",
            hint="Choose a destination outside the source tree.",
        )
    check_tree(source, allow_whiteouts=allow_whiteouts)
    logger.debug("Copying '%s' into '%s'", source, dst)
    try:
        run(["cp", "-a", "--reflink=auto", "--preserve=xattr", f"{os.fspath(source)}/.", dst])
    except CommandFailed as e:
        raise ImageError(
            f"Failed to copy '{source}' into '{dest}': {e.message}",
            hint="Check that the destination has space and supports extended attributes.",
        ) from e
