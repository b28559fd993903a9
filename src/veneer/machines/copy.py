"""Copying files between the host and a machine (`veneer cp`), as tar streams.

The machine's end of every copy is `tar` run inside the machine, by the machine's root in its user
namespace: through `veneer exec` while the machine runs, through `veneer run` (a throwaway nspawn of its
root) while it is stopped. Paths in the machine are therefore resolved by the kernel inside the machine
(its root, its symlinks), never on the host, and the writes are the machine root's own: a planted
symlink cannot lead a copy out of the machine, nor ids outside its range into it.

On the host, a stream from the machine is hostile: `images.transfer.extract_tar` extracts it into a new
directory next to the destination, from which the copied entry is renamed into place.
This module does not print; it reads and writes the file descriptors it is given.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import select
import shutil
import stat
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from veneer.config.layout import Layout
from veneer.config.settings import UID_RANGE_SIZE, MachineName
from veneer.errors import Error, ImageError, MachineError, UnsafeArchive, UsageError
from veneer.images.transfer import extract_tar
from veneer.machines.state import is_alive, load_machine, load_runtime
from veneer.util import proc

# Exit status of the scripts below for a path that is not there or of the wrong type.
_PATH_ERROR = 101

# Inside the machine, stdin is a tar stream. $1 is the destination, $2 the archive's top entry (empty for
# a stream from the user, which goes into the directory $1). Like `docker cp`: into an existing directory,
# else as that name in an existing parent, renamed into place so a replaced file changes atomically.
_INTO_SCRIPT = """\
set -e
dest=$1 top=$2
fail() { echo "$*" >&2; exit 101; }
if [ -d "$dest" ]; then exec tar -x -f - -C "$dest"; fi
[ -n "$top" ] || fail "$dest: no such directory in the machine"
case $dest in */) fail "$dest: no such directory in the machine";; esac
parent=${dest%/*}
parent=${parent:-/}
[ -d "$parent" ] || fail "$parent: no such directory in the machine"
tmp=$(mktemp -d "$parent/.veneer-cp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -x -f - -C "$tmp"
mv -f "$tmp/$top" "$dest"
"""

# Inside the machine: write $1 as a tar stream with one top entry (all of / as "."). With $2 = follow,
# a symlink $1 is resolved first, inside the machine.
_FROM_SCRIPT = """\
set -e
src=$1
fail() { echo "$*" >&2; exit 101; }
missing="$1: no such file or directory in the machine"
if [ "$2" = follow ]; then src=$(readlink -f "$src") || fail "$missing"; fi
[ -e "$src" ] || [ -L "$src" ] || fail "$missing"
if [ "$src" = / ]; then exec tar -c -f - -C / .; fi
dir=${src%/*}
exec tar -c -f - -C "${dir:-/}" "./${src##*/}"
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ownership:
    """Owner and mode for what a copy writes (None: the default; see `copy_into` and `copy_from`)."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None

    def apply(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        """The member with this owner and mode; directories get x wherever the mode has r."""
        if self.uid is not None:
            member.uid, member.uname = self.uid, ""
        if self.gid is not None:
            member.gid, member.gname = self.gid, ""
        if self.mode is not None and not member.issym() and not member.islnk():
            member.mode = self.mode | ((self.mode & 0o444) >> 2) if member.isdir() else self.mode
        return member


def parse_mode(text: str) -> int:
    """An octal file mode such as 644 or 0755."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise UsageError(f"Invalid mode '{text}'", hint="Use an octal mode such as 644 or 0755.")
    return mode


def machine_path(text: str) -> str:
    """A path in the machine, absolute (relative ones start at its /); a trailing '/' is kept."""
    if "\0" in text or not text:
        raise UsageError(f"Invalid path in the machine '{text}'", hint="Use an absolute path such as /etc.")
    path = posixpath.normpath("/" + text)
    path = "/" + path.lstrip("/")  # normpath keeps a leading '//'
    return path + "/" if text.endswith("/") and path != "/" else path


def _check_ids(layout: Layout, name: MachineName, owner: Ownership) -> None:
    if load_machine(layout, name).privileged:
        return
    for what, value in (("uid", owner.uid), ("gid", owner.gid)):
        if value is not None and not 0 <= value < UID_RANGE_SIZE:
            raise UsageError(
                f"Invalid {what} {value} for machine '{name}'",
                hint=f"Ids are the machine's own: 0 to {UID_RANGE_SIZE - 1}.",
            )


def _machine_argv(layout: Layout, name: MachineName, script: str, args: Sequence[str]) -> list[str]:
    """`sh -c script` in the machine: exec'd into it while it runs, else in a throwaway run of its root."""
    runtime = load_runtime(layout, name)
    # A copy needs no network: a stopped machine's throwaway run has none, whatever the machine's is.
    verb = ["exec"] if runtime is not None and is_alive(runtime) else ["run", "--network", "none"]
    command = ["sh", "-c", script, "veneer-cp", *args]
    return [sys.executable, "-m", "veneer", "--root", os.fspath(layout.root), *verb, name, "--", *command]


def _veneer_env(layout: Layout) -> dict[str, str]:
    """This store, and the veneer package this process runs from, for the veneer started by a copy."""
    package_parent = Path(__file__).resolve().parents[2]
    return {"VENEER_RUN": os.fspath(layout.run), "VENEER_UIDS": os.fspath(layout.uids),
            "PYTHONPATH": os.fspath(package_parent)}  # fmt: skip


@contextlib.contextmanager
def _in_machine(
    layout: Layout,
    name: MachineName,
    script: str,
    args: Sequence[str],
    *,
    stdin: int,
    stdout: int | None,
    what: str,
) -> Iterator[None]:
    """Run a script in the machine over these stdin (-1: none) and stdout (None: with its stderr) while
    the body streams; then raise `MachineError` with the script's own message unless it succeeded."""
    with tempfile.TemporaryFile() as errors:
        process = proc.spawn_piped(
            _machine_argv(layout, name, script, args),
            stdin=proc.DEVNULL if stdin < 0 else stdin,
            stdout=errors.fileno() if stdout is None else stdout, stderr=errors.fileno(),
            env=_veneer_env(layout),
        )  # fmt: skip
        failure: BaseException | None = None
        try:
            yield
        except (UnsafeArchive, UsageError):
            process.wait()
            raise  # the stream was refused here: that is the news, not tar's broken pipe
        except BaseException as e:
            failure = e
        status = process.wait()
        if failure is not None and status == 0:
            raise failure
        if status != 0:
            errors.seek(0)
            reason, hint = _reason(errors.read().decode(errors="replace"), status)
            # A broken stream on this side is the consequence; what the machine said is the cause.
            raise MachineError(f"Failed to copy {what} machine '{name}': {reason}", hint=hint) from failure


def _reason(stderr: str, status: int) -> tuple[str, str]:
    """What went wrong, from the stderr of the veneer command or of the script it ran, and a hint."""
    lines = stderr.strip().splitlines()
    # veneer's own error (the machine could not be entered or run): its message and its hint.
    for i, line in enumerate(lines):
        if line.startswith("veneer: "):
            hint = " ".join(rest.strip() for rest in lines[i + 1 :] if rest.startswith("  "))
            return line.removeprefix("veneer: "), hint or "See 'veneer status'."
    reason = lines[-1] if lines else f"exit status {status}"
    if status == _PATH_ERROR:
        return reason, "Check the path in the machine."
    return reason, "The machine needs sh and tar (busybox has both)."


@contextlib.contextmanager
def _writing_into(layout: Layout, name: MachineName, args: Sequence[str]) -> Iterator[IO[bytes]]:
    """A stream to tar extracting in the machine (`_INTO_SCRIPT` with `args`)."""
    r, w = os.pipe()
    try:
        out = open(w, "wb")
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    with out:
        try:
            with _in_machine(layout, name, _INTO_SCRIPT, args, stdin=r, stdout=None, what="into"):
                os.close(r)
                r = -1
                try:
                    yield out
                except BrokenPipeError:
                    pass  # tar in the machine gave up: its own message is raised on the way out
                finally:
                    # Before the wait: tar in the machine reads until the stream ends, whatever happened.
                    with contextlib.suppress(BrokenPipeError):
                        out.close()
        finally:
            if r >= 0:
                os.close(r)


@contextlib.contextmanager
def _reading_from(layout: Layout, name: MachineName, args: Sequence[str]) -> Iterator[int]:
    """A file descriptor reading the tar stream of `_FROM_SCRIPT` with `args` in the machine."""
    r, w = os.pipe()
    try:
        with _in_machine(layout, name, _FROM_SCRIPT, args, stdin=-1, stdout=w, what="from"):
            os.close(w)
            w = -1
            try:
                yield r
            finally:
                # Before the wait: a reader that gave up must not leave tar blocked on a full pipe.
                os.close(r)
                r = -1
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


def _rewrite_stream(source: IO[bytes], dest: IO[bytes], owner: Ownership) -> None:
    """Copy a tar stream, giving each member `owner`."""
    try:
        with (
            tarfile.open(fileobj=source, mode="r|*", errors="surrogateescape") as archive,
            tarfile.open(
                fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape"
            ) as out,
        ):
            for member in archive:
                data = archive.extractfile(member) if member.isreg() else None
                out.addfile(owner.apply(member), data)
    except tarfile.TarError as e:
        raise UsageError(f"Not a valid tar stream: {e}", hint="Pipe in a plain or gzip tar.") from e


def copy_into(
    layout: Layout,
    name: MachineName,
    source: Path | None,
    dest: str,
    *,
    owner: Ownership = Ownership(),
    stream: int = 0,
) -> None:
    """Copy the host file or directory `source` to `dest` in the machine, or (`source` None) extract the
    tar stream read from the file descriptor `stream` into the directory `dest` in the machine.

    Copied files belong to the machine's root unless `owner` says otherwise (ids are the machine's);
    a tar stream keeps its owners unless `owner` says otherwise.
    """
    _check_ids(layout, name, owner)
    path = machine_path(dest)
    if source is None:
        if owner == Ownership():
            with _in_machine(layout, name, _INTO_SCRIPT, [path, ""], stdin=stream, stdout=None, what="into"):
                return
        with _writing_into(layout, name, [path, ""]) as out:
            _rewrite_stream(open(stream, "rb", closefd=False), out, owner)
        return
    try:
        top = source.lstat()
    except OSError as e:
        raise UsageError(f"Cannot copy '{source}': {e.strerror}", hint="Check the path on the host.") from e
    arcname = source.resolve().name if source.name in ("", ".", "..") else source.name
    if not arcname:
        raise UsageError("Cannot copy the host's / into a machine", hint="Name a directory below it.")
    defaults = Ownership(uid=owner.uid or 0, gid=owner.gid or 0, mode=owner.mode)
    with (
        _writing_into(layout, name, [path, arcname]) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        archive.add(source, arcname=arcname, recursive=stat.S_ISDIR(top.st_mode), filter=defaults.apply)


def copy_from(
    layout: Layout,
    name: MachineName,
    source: str,
    dest: Path | None,
    *,
    owner: Ownership = Ownership(),
    follow: bool = False,
    stream: int = 1,
) -> None:
    """Copy `source` in the machine to the host path `dest` (into it if it is a directory), or (`dest`
    None) write it as a tar stream to the file descriptor `stream`.

    On the host, copied files belong to the user running veneer unless `owner` says otherwise (host ids);
    a tar stream keeps the machine's ids unless `owner` says otherwise. With `follow`, a symlink `source`
    is resolved (inside the machine) and what it points to is copied.
    """
    path = machine_path(source).rstrip("/") or "/"
    args = [path, "follow" if follow else ""]
    load_machine(layout, name)
    if dest is None:
        try:
            _stream_from(layout, name, args, owner, stream)
        except MachineError:
            if _reader_gone(stream):
                # `veneer cp m:/ - | head`: the reader went away, which is no failure of the copy's. The
                # command line ends quietly, as on any closed pipe, not with tar's write error.
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)) from None
            raise
        return
    final = _host_destination(dest, path)
    staging = Path(tempfile.mkdtemp(prefix=".veneer-cp.", dir=final.parent))
    try:
        _extract_from(layout, name, args, staging)
        if path == "/":
            content = staging
        else:
            entries = os.listdir(staging)
            if len(entries) != 1:
                what = f"'{source}' came as {len(entries)} entries"
                raise MachineError(f"Failed to copy from machine '{name}': {what}", hint="Copy one path.")
            content = staging / entries[0]
        _set_owner(content, Ownership(
            uid=os.getuid() if owner.uid is None else owner.uid,
            gid=os.getgid() if owner.gid is None else owner.gid,
            mode=owner.mode,
        ))  # fmt: skip
        try:
            os.replace(content, final)
        except OSError as e:
            raise Error(f"Cannot copy to '{final}': {e.strerror}",
                        hint="Remove it first, or copy into another directory.") from e  # fmt: skip
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _stream_from(
    layout: Layout, name: MachineName, args: Sequence[str], owner: Ownership, stream: int
) -> None:
    if owner == Ownership():
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _in_machine(layout, name, _FROM_SCRIPT, args, stdin=devnull, stdout=stream, what="from"):
                return
        finally:
            os.close(devnull)
    with _reading_from(layout, name, args) as r, open(stream, "wb", closefd=False) as out:
        _rewrite_stream(open(r, "rb", closefd=False), out, owner)


def _reader_gone(fd: int) -> bool:
    """Whether `fd` is a pipe whose reader has closed it (the write end then polls as POLLERR)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))


def _host_destination(dest: Path, path: str) -> Path:
    """Where a copy from the machine lands on the host: into `dest` if it is a directory (`docker cp`)."""
    if dest.is_dir() and path != "/":
        return dest / posixpath.basename(path)
    if os.fspath(dest).endswith("/") and not dest.is_dir():
        raise UsageError(f"No such directory: '{dest}'", hint="Create it first.")
    if not dest.parent.is_dir():
        raise UsageError(f"No such directory: '{dest.parent}'", hint="Create it first.")
    return dest


def _extract_from(layout: Layout, name: MachineName, args: Sequence[str], staging: Path) -> None:
    """Extract the machine's tar stream into `staging` as a hostile archive."""
    with _reading_from(layout, name, args) as r:
        try:
            extract_tar(Path(f"/proc/self/fd/{r}"), staging)
        except UnsafeArchive as e:
            message = e.message.replace(f"'/proc/self/fd/{r}'", f"the stream from '{name}'")
            raise UnsafeArchive(message, hint="Nothing was copied.") from e
        except ImageError as e:
            message = e.message.replace(f"'/proc/self/fd/{r}'", f"the stream from '{name}'")
            raise MachineError(message, hint="Nothing was copied.") from e


def _set_owner(top: Path, owner: Ownership) -> None:
    """Give everything from `top` down (never following a symlink) this owner and mode."""
    entries = [top]
    if top.is_dir() and not top.is_symlink():
        for dirpath, dirnames, filenames in os.walk(top):
            entries += [Path(dirpath, n) for n in dirnames + filenames]
    for entry in entries:
        st = entry.lstat()
        os.chown(entry, owner.uid, owner.gid, follow_symlinks=False)  # type: ignore[arg-type]
        if owner.mode is not None and not stat.S_ISLNK(st.st_mode):
            is_dir = stat.S_ISDIR(st.st_mode)
            os.chmod(entry, owner.mode | ((owner.mode & 0o444) >> 2) if is_dir else owner.mode)
