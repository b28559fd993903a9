"""How an OCI image says it runs: Entrypoint, Cmd, Env, User, WorkingDir, ExposedPorts, Labels, StopSignal.

Kept with each image revision as a `RunConfig`, parsed from an image config's `config` object and written
back into exported ones (https://github.com/opencontainers/image-spec/blob/main/config.md). Images are
hostile: every value is checked here, once, against bounds a genuine image stays well within. Pure: no I/O.
"""

from __future__ import annotations

import posixpath
import re
import signal
from dataclasses import dataclass
from typing import Any

from veneer.errors import ImageError

MAX_ARGS = 1024  # arguments of Entrypoint + Cmd
MAX_ENV = 1024  # variables
MAX_LABELS = 1024
MAX_PORTS = 1024
MAX_BYTES = 256 << 10  # all strings of one field together
MAX_PATH = 4096
# Numeric user and group ids must fall in a machine's uid range (65536 ids).
MAX_ID = 65535

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")
_PORT_RE = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """What an image asks for when it runs (the OCI `config` object, checked)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None  # USER, UID, USER:GROUP or UID:GID (resolved in the machine when it runs)
    working_dir: str | None = None
    exposed_ports: tuple[str, ...] = ()  # PORT/PROTO
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str | None = None  # SIGNAME

    @property
    def command(self) -> tuple[str, ...]:
        """What runs when no command is given: the entrypoint, then Cmd as its arguments."""
        return self.entrypoint + self.cmd

    def to_oci(self) -> dict[str, Any]:
        """The OCI `config` object (also the stored form)."""
        data: dict[str, Any] = {}
        if self.entrypoint:
            data["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            data["Cmd"] = list(self.cmd)
        if self.env:
            data["Env"] = [f"{name}={value}" for name, value in self.env]
        if self.user:
            data["User"] = self.user
        if self.working_dir:
            data["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            data["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.labels:
            data["Labels"] = dict(self.labels)
        if self.stop_signal:
            data["StopSignal"] = self.stop_signal
        return data

    def describe(self) -> list[tuple[str, str]]:
        """(field, value) lines for `image show`, in the OCI field names."""
        import shlex

        lines = [
            ("Entrypoint", shlex.join(self.entrypoint) if self.entrypoint else ""),
            ("Cmd", shlex.join(self.cmd) if self.cmd else ""),
            ("User", self.user or ""),
            ("WorkingDir", self.working_dir or ""),
            ("ExposedPorts", " ".join(self.exposed_ports)),
            ("StopSignal", self.stop_signal or ""),
        ]
        lines += [("Env", f"{name}={value}") for name, value in self.env]
        lines += [("Label", f"{name}={value}") for name, value in self.labels]
        return [(key, value) for key, value in lines if value]


def _fail(what: str, reason: str) -> ImageError:
    return ImageError(
        f"{what} has an invalid run config: {reason}",
        hint="The image is damaged or hostile; fix its config (e.g. with 'buildah config') and try again.",
    )


def _strings(value: Any, field: str, what: str, *, limit: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(what, f"{field} is not a list of strings")
    if len(value) > limit:
        raise _fail(what, f"{field} has {len(value)} entries (at most {limit})")
    _check_text(value, field, what)
    return tuple(value)


def _check_text(values: list[str], field: str, what: str) -> None:
    if sum(len(v.encode(errors="surrogatepass")) for v in values) > MAX_BYTES:
        raise _fail(what, f"{field} is longer than {MAX_BYTES} bytes")
    if any("\0" in v for v in values):
        raise _fail(what, f"{field} holds a NUL byte")


def parse_user(text: str, what: str) -> str:
    """`USER`, `UID`, `USER:GROUP`, `UID:GID` (names as useradd allows, ids within a machine's range)."""
    parts = text.split(":")
    if len(parts) > 2 or not all(parts):
        raise _fail(what, f"User {text!r} is not USER[:GROUP]")
    for part in parts:
        if part.isdigit():
            if int(part) > MAX_ID:
                raise _fail(what, f"User {text!r} names an id above {MAX_ID}")
        elif not _ACCOUNT_RE.fullmatch(part) or part.isdigit():
            raise _fail(what, f"User {text!r} is not a valid user or group name")
    return text


def parse_working_dir(text: str, what: str) -> str:
    """An absolute, normalized path without `..`."""
    if (
        not text.startswith("/")
        or len(text) > MAX_PATH
        or "\0" in text
        or ".." in text.split("/")
        or any(ord(c) < 32 for c in text)
    ):
        raise _fail(what, f"WorkingDir {text[:100]!r} is not an absolute path without '..'")
    return posixpath.normpath(text).replace("//", "/")


def parse_stop_signal(text: str, what: str) -> str:
    """A signal by name (`SIGTERM`, `TERM`, `SIGRTMIN+3`) or number, as its `SIG` name."""
    name = text.upper()
    if name.isdigit():
        try:
            return signal.Signals(int(name)).name
        except ValueError:
            raise _fail(what, f"StopSignal {text!r} is no signal") from None
    name = name if name.startswith("SIG") else f"SIG{name}"
    match = re.fullmatch(r"SIGRTMIN\+([0-9]{1,2})", name)
    if match and signal.SIGRTMIN + int(match.group(1)) <= signal.SIGRTMAX:
        return name
    if name in signal.Signals.__members__ and name not in ("SIGKILL", "SIGSTOP"):
        return name
    raise _fail(what, f"StopSignal {text[:40]!r} is no signal a process can handle")


def signal_number(name: str) -> int:
    """The number of a signal name made by `parse_stop_signal`."""
    match = re.fullmatch(r"SIGRTMIN\+([0-9]{1,2})", name)
    if match:
        return int(signal.SIGRTMIN) + int(match.group(1))
    return int(signal.Signals[name])


def _pairs(value: Any, field: str, what: str, *, limit: int) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _fail(what, f"{field} is not an object of strings")
    if len(value) > limit:
        raise _fail(what, f"{field} has {len(value)} entries (at most {limit})")
    _check_text([*value, *value.values()], field, what)
    return tuple(sorted(value.items()))


def _env(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    entries = _strings(value, "Env", what, limit=MAX_ENV)
    env: dict[str, str] = {}
    for entry in entries:
        name, sep, val = entry.partition("=")
        if not sep or not _ENV_NAME_RE.fullmatch(name):
            raise _fail(what, f"Env entry {entry[:60]!r} is not NAME=VALUE")
        env[name] = val  # a later entry wins, as in Podman
    return tuple(env.items())


def _ports(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_PORTS:
        raise _fail(what, f"ExposedPorts is not an object of at most {MAX_PORTS} ports")
    ports = []
    for key in value:
        match = _PORT_RE.fullmatch(key) if isinstance(key, str) else None
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise _fail(what, f"ExposedPorts entry {str(key)[:40]!r} is not PORT[/tcp|udp|sctp]")
        ports.append(f"{int(match.group(1))}/{match.group(2) or 'tcp'}")
    return tuple(sorted(set(ports), key=lambda p: (int(p.split("/")[0]), p)))


def _optional_string(document: dict[str, Any], field: str, what: str) -> str | None:
    value = document.get(field)
    if value is not None and not isinstance(value, str):
        raise _fail(what, f"{field} is not a string")
    return value or None


def parse_run_config(document: Any, what: str) -> RunConfig | None:
    """The run settings of an image config's `config` object (None or {}: the image sets none)."""
    if document is None:
        return None
    if not isinstance(document, dict):
        raise _fail(what, "config is not an object")
    entrypoint = _strings(document.get("Entrypoint"), "Entrypoint", what, limit=MAX_ARGS)
    cmd = _strings(document.get("Cmd"), "Cmd", what, limit=MAX_ARGS)
    if len(entrypoint) + len(cmd) > MAX_ARGS:
        raise _fail(what, f"Entrypoint and Cmd have more than {MAX_ARGS} arguments")
    user, working_dir, stop_signal = (
        _optional_string(document, field, what) for field in ("User", "WorkingDir", "StopSignal")
    )
    config = RunConfig(
        entrypoint=entrypoint,
        cmd=cmd,
        env=_env(document.get("Env"), what),
        user=None if user is None else parse_user(user, what),
        working_dir=None if working_dir is None else parse_working_dir(working_dir, what),
        exposed_ports=_ports(document.get("ExposedPorts"), what),
        labels=_pairs(document.get("Labels"), "Labels", what, limit=MAX_LABELS),
        stop_signal=None if stop_signal is None else parse_stop_signal(stop_signal, what),
    )
    return None if config == RunConfig() else config
