"""`veneer copy` and `veneer move`: a stopped machine to another host over SSH, or from one (`--from`).

Sending, two SSH commands run `veneer _receive` on the other host: the first asks which of the machine's
image layers it has (by id, or by content key), the second sends the stream of `machines.wire` (the
manifest, the missing layers, the upper dir) and prints what was published. Fetching, `veneer _send`
there names the layers, then writes the stream, which `machines.receive` reads here. The receiving end
stages everything and publishes in one step; a move removes the machine where it was only once the
receiving end has confirmed that. The machine stays locked (so stopped) meanwhile. This module does not
print.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from veneer.config.layout import Layout
from veneer.config.settings import MachineName, parse_machine_name
from veneer.errors import CommandFailed, Error, MachineError, UsageError
from veneer.images.store import ImageRecord, load_image
from veneer.images.transfer import END_MEMBER
from veneer.machines.receive import Received, layers_present, receive_machine
from veneer.machines.recovery import discard_machine, machine_lock, refuse_if_mounted, refuse_if_running
from veneer.machines.state import MachineRecord, load_machine
from veneer.machines.upper import check_upper
from veneer.machines.wire import (
    COMMITTED,
    KEPT_XATTRS,
    UPPER,
    LayerQuestion,
    Manifest,
    layer_prefix,
    parse_question,
)
from veneer.overlay.view import nofollow_view
from veneer.util import proc
from veneer.util.fs import random_hex

logger = logging.getLogger(__name__)

_DESTINATION = re.compile(
    r"(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<name>.*))?"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """Where a machine goes: `[user@]host`, and its name there (None: the same)."""

    target: str  # as ssh takes it
    name: MachineName | None


def parse_destination(text: str) -> Destination:
    """`[user@]host[:NEWNAME]`, host a name or an address ([::1] for IPv6)."""
    match = _DESTINATION.fullmatch(text)
    if match is None:
        raise UsageError(
            f"Invalid destination '{text}'",
            hint="Use [user@]host[:NEWNAME], e.g. root@web2 or root@10.0.0.2:db2.",
        )
    host = match["host"].strip("[]")
    target = host if match["user"] is None else f"{match['user']}@{host}"
    return Destination(
        target=target, name=None if match["name"] is None else parse_machine_name(match["name"])
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SshOptions:
    """How to reach the other host and its veneer."""

    port: int | None = None
    identity: Path | None = None
    options: tuple[str, ...] = ()  # ssh -o OPTION=VALUE
    veneer: str = "veneer"  # the command on the other host, split as a shell would (e.g. "sudo veneer")


def ssh_argv(destination: Destination, ssh: SshOptions, remote: Sequence[str]) -> list[str]:
    """The ssh command line that runs `veneer [remote...]` on the destination."""
    argv = ["ssh", "-o", "BatchMode=yes"]
    if ssh.port is not None:
        argv += ["-p", str(ssh.port)]
    if ssh.identity is not None:
        argv += ["-i", os.fspath(ssh.identity)]
    for option in ssh.options:
        argv += ["-o", option]
    # ssh hands the command to the remote user's shell as one string.
    return [*argv, "--", destination.target, shlex.join([*shlex.split(ssh.veneer), *remote])]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """A machine published on another host: its name there, and what went over the wire."""

    name: str
    target: str
    layers_sent: int
    layers_total: int
    bytes_sent: int


def _ssh_env() -> dict[str, str]:
    # An agent holds the keys of many users; ssh finds it by this variable only.
    agent = os.environ.get("SSH_AUTH_SOCK")
    return {} if agent is None else {"SSH_AUTH_SOCK": agent}


def _remote_failure(destination: Destination, name: str, error: str) -> MachineError:
    """The other host's veneer said why (its message, then its hint), or ssh did."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    said = next((i for i, line in enumerate(lines) if line.startswith("veneer: ")), None)
    if said is not None:
        hint = " ".join(lines[said + 1 :]) or "See the message of the other host."
        reason = lines[said].removeprefix("veneer: ")
        return MachineError(
            f"Failed to copy machine '{name}' to {destination.target}: {reason}",
            hint=f"{hint} The machine here is unchanged.",
        )
    return MachineError(
        f"Failed to copy machine '{name}' to {destination.target}: {'; '.join(lines) or 'connection lost'}",
        hint="Check that 'ssh' reaches the host and that it runs veneer (--remote-veneer names the "
        "command there). The machine here is unchanged.",
    )


@contextlib.contextmanager
def _outgoing(
    layout: Layout, name: MachineName, *, move: bool
) -> Iterator[tuple[MachineRecord, ImageRecord]]:
    """The machine, locked (so it stays stopped) while it is sent, and its image."""
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        refuse_if_mounted(layout, name)
        check_upper(layout, name)
        snapshots = layout.snapshots(name)
        if move and snapshots.is_dir() and any(snapshots.iterdir()):
            raise MachineError(
                f"Machine '{name}' has snapshots, which do not travel: moving it would delete them",
                hint=f"Copy it instead ('veneer copy'), or remove its snapshots first "
                f"('veneer snapshot list {name}', 'veneer snapshot rm {name} SNAP...').",
            )
        record = load_machine(layout, name)
        _refuse_untravelled(record)
        yield record, load_image(layout, record.image)


def _manifest(
    record: MachineRecord, image: ImageRecord, *, new_name: str, have: Iterable[str], move: bool
) -> Manifest:
    """What travels: the record under its new name, with a new machine id unless it moves and without an
    address of this host's pool; the layers the other host does not `have`."""
    travelling = replace(
        record, name=parse_machine_name(new_name), address=None,
        machine_id=record.machine_id if move else random_hex(16),
    )  # fmt: skip
    stack = image.layers_of(record.revision)
    present = set(have)
    return Manifest(
        machine=travelling,
        image_created=image.created,
        revision=image.revision(record.revision),
        layers=stack,
        sent=tuple(x.id for x in stack if x.id not in present),
    )


def send_machine(
    layout: Layout,
    name: MachineName,
    destination: Destination,
    *,
    ssh: SshOptions = SshOptions(),
    move: bool = False,
) -> Sent:
    """Copy (or, with `move`, move) a stopped machine to another host; only the image layers that host
    lacks are sent, and it gets a uid range (and, unless it moves, a machine id) of its own there."""
    new_name = destination.name or name
    with _outgoing(layout, name, move=move) as (record, image):
        question = LayerQuestion(
            name=new_name, layers=tuple((x.id, x.key) for x in image.layers_of(record.revision))
        )
        have = _ask_layers(destination, ssh, question)
        manifest = _manifest(record, image, new_name=new_name, have=have, move=move)
        sent = _send_stream(layout, name, destination, ssh, manifest)
        if move:
            discard_machine(layout, name)
    logger.debug("%s machine '%s' to %s.", "Moved" if move else "Copied", name, destination.target)
    return sent


def machine_layers(layout: Layout, name: MachineName, new_name: str) -> LayerQuestion:
    """The layers a machine's image revision stacks (`veneer _send --layers`, for a host fetching it)."""
    record = load_machine(layout, name)
    _refuse_untravelled(record)
    stack = load_image(layout, record.image).layers_of(record.revision)
    return LayerQuestion(name=new_name, layers=tuple((x.id, x.key) for x in stack))


def serve_machine(
    layout: Layout,
    name: MachineName,
    *,
    new_name: str,
    have: Iterable[str],
    move: bool,
    out: IO[bytes],
    confirmations: IO[bytes],
) -> None:
    """Write a machine's stream to `out` for a host fetching it (`veneer _send`); with `move`, remove the
    machine once that host confirms (a line "committed" on `confirmations`)."""
    with _outgoing(layout, name, move=move) as (record, image):
        manifest = _manifest(record, image, new_name=new_name, have=have, move=move)
        write_stream(layout, name, manifest, out)
        out.flush()
        if move and confirmations.readline().strip() == COMMITTED:
            discard_machine(layout, name)


def fetch_machine(
    layout: Layout,
    source: Destination,
    name: MachineName,
    *,
    new_name: MachineName | None = None,
    ssh: SshOptions = SshOptions(),
    move: bool = False,
) -> Received:
    """Copy (or move) machine `name` of another host here, as `new_name`: the other host sends only the
    layers this one lacks."""
    here = new_name or name
    asked = _run_remote(source, ssh, ["_send", "--layers", name, "--as", here], here)
    have = layers_present(layout, parse_question(asked.encode()))
    argv = ssh_argv(
        source,
        ssh,
        ["_send", name, "--as", here, *(["--move"] if move else []), "--have", ",".join(have) or "-"],
    )
    with tempfile.TemporaryFile() as errors:
        process = proc.spawn_piped(argv, stdin=proc.PIPE, stdout=proc.PIPE, stderr=errors.fileno(),
                                   env=_ssh_env())  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        try:
            received = receive_machine(layout, process.stdout)
        except Error as e:
            process.stdout.close()  # the other host may be writing still: it gets EPIPE
            process.stdin.close()
            said = _read_all(errors) if process.wait() != 0 else ""
            if "veneer: " in said:  # it failed first and said why
                raise _remote_failure(source, name, said) from e
            raise
        process.stdout.close()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(COMMITTED + b"\n")
            process.stdin.close()
        if process.wait() != 0 and move:
            raise MachineError(
                f"Machine '{name}' was copied from {source.target} as '{here}', but was not removed there: "
                + _read_all(errors).strip(),
                hint=f"Remove it there yourself ('veneer rm {name}' on {source.target}).",
            )
    return received


def _read_all(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def _refuse_untravelled(record: MachineRecord) -> None:
    if record.privileged:
        raise MachineError(
            f"Machine '{record.name}' is privileged: its files carry this host's ids",
            hint="Only user-namespaced machines go to other hosts; export it instead ('veneer export').",
        )
    if record.binds:
        raise MachineError(
            f"Machine '{record.name}' binds host directories, which the other host does not have",
            hint="Only machines without binds go to other hosts: copy what the binds hold into the "
            "machine ('veneer cp') and send a machine without them.",
        )


def _run_remote(
    destination: Destination, ssh: SshOptions, remote: Sequence[str], name: str, *, input: str | None = None
) -> str:
    try:
        return proc.run(ssh_argv(destination, ssh, remote), capture=True, input=input, env=_ssh_env()).stdout
    except CommandFailed as e:
        raise _remote_failure(destination, name, e.stderr) from e


def _ask_layers(destination: Destination, ssh: SshOptions, question: LayerQuestion) -> list[str]:
    out = _run_remote(
        destination, ssh, ["_receive", "--layers"], question.name, input=json.dumps(question.to_json())
    )
    try:
        answer = json.loads(out)
        return [str(x) for x in answer["have"]]
    except (ValueError, KeyError, TypeError) as e:
        raise _remote_failure(
            destination, question.name, f"its answer is not veneer's: {out[:200]!r}"
        ) from e


class _CountingWriter:
    """Counts what is written through to `target`."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.size = 0

    def write(self, data: bytes) -> int:
        self.target.write(data)
        self.size += len(data)
        return len(data)


def _send_stream(
    layout: Layout, source: str, destination: Destination, ssh: SshOptions, manifest: Manifest
) -> Sent:
    argv = ssh_argv(destination, ssh, ["_receive"])
    name = manifest.machine.name
    with tempfile.TemporaryFile() as errors:
        process = proc.spawn_piped(argv, stdin=proc.PIPE, stdout=proc.PIPE, stderr=errors.fileno(),
                                   env=_ssh_env())  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        writer = _CountingWriter(process.stdin)
        try:
            with contextlib.suppress(BrokenPipeError):  # the other side ended: its status says why
                write_stream(layout, source, manifest, writer)
                process.stdin.close()
            out = process.stdout.read()
        finally:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            status = process.wait()
        stderr = _read_all(errors)
    if status != 0:
        raise _remote_failure(destination, name, stderr)
    try:
        answer = json.loads(out)
        published = str(answer["name"])
    except (ValueError, KeyError, TypeError) as e:
        raise _remote_failure(destination, name, f"its answer is not veneer's: {out[:200]!r}") from e
    return Sent(name=published, target=destination.target, layers_sent=len(manifest.sent),
                layers_total=len(manifest.layers), bytes_sent=writer.size)  # fmt: skip


def write_stream(layout: Layout, source: str, manifest: Manifest, out: IO[bytes] | _CountingWriter) -> None:
    """The stream of `machines.wire`: the manifest line, the layers to send, machine `source`'s upper dir."""
    out.write(json.dumps(manifest.to_json()).encode() + b"\n")
    with tarfile.open(mode="w|", fileobj=out, format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        for layer_id in manifest.sent:
            _add_tree(tf, layout.layer_tree(layer_id), layer_prefix(layer_id))
        with nofollow_view(layout.machine_upper(source)) as upper:
            _add_tree(tf, upper, UPPER)
        end = tarfile.TarInfo(END_MEMBER)
        tf.addfile(end)


def _add_tree(tf: tarfile.TarFile, root: Path, prefix: str) -> None:
    """Add `root` as `prefix` and everything below it, owners as they are, with the xattrs that travel."""
    tf.inodes.clear()  # type: ignore[attr-defined]  # hard links only within one tree
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative = os.path.relpath(dirpath, root)
        here = prefix if relative == "." else f"{prefix}/{relative}"
        if relative == ".":
            _add_entry(tf, os.path.join(dirpath, "."), here)  # root may be a /proc/<pid>/fd/<n> link
        for entry in sorted(dirnames + filenames):
            _add_entry(tf, os.path.join(dirpath, entry), f"{here}/{entry}")


def _add_entry(tf: tarfile.TarFile, path: str, name: str) -> None:
    st = os.lstat(path)
    if stat.S_ISSOCK(st.st_mode):
        logger.debug("Not sending the socket '%s', ignoring.", path)
        return
    info = tf.gettarinfo(path, name)
    info.uname = info.gname = ""
    info.pax_headers = _xattrs(path, st)
    if info.isreg():
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            tf.addfile(info, f)
    else:
        tf.addfile(info)


def _xattrs(path: str, st: os.stat_result) -> dict[str, Any]:
    if stat.S_ISLNK(st.st_mode):
        return {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    headers = {}
    for attr in names:
        if any(attr == k or (k.endswith(".") and attr.startswith(k)) for k in KEPT_XATTRS):
            value = os.getxattr(path, attr, follow_symlinks=False)
            headers[f"SCHILY.xattr.{attr}"] = value.decode("utf-8", "surrogateescape")
    return headers
