"""What the user asked for: validated names and the frozen settings of machines.

Names are `NewType`s made by one parser each, so a value of that type has been checked once, at the edge.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import NewType

from veneer.errors import UsageError

MachineName = NewType("MachineName", str)

# Each machine's user namespace maps 65536 ids (container 0-65535), as systemd-nspawn's --private-users does.
UID_RANGE_SIZE = 0x10000
ImageName = NewType("ImageName", str)

# A machine's host-side interface is "vb-<name>" (systemd-nspawn --network-bridge), and interface names
# hold at most 15 characters.
MACHINE_NAME_MAX = 15 - len("vb-")
_MACHINE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
IMAGE_NAME_MAX = 64


def parse_machine_name(text: str) -> MachineName:
    """Check a machine name: 1-12 of a-z, 0-9 and '-', not starting or ending with '-'."""
    if not _MACHINE_NAME.fullmatch(text) or len(text) > MACHINE_NAME_MAX:
        raise UsageError(
            f"Invalid machine name '{text}'",
            hint=f"Use 1-{MACHINE_NAME_MAX} characters of a-z, 0-9 and '-', starting and ending with a "
            "letter or digit (it becomes the hostname and the interface name vb-NAME).",
        )
    return MachineName(text)


def parse_image_name(text: str) -> ImageName:
    """Check an image name: 1-64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit."""
    if not _IMAGE_NAME.fullmatch(text) or len(text) > IMAGE_NAME_MAX:
        raise UsageError(
            f"Invalid image name '{text}'",
            hint=f"Use 1-{IMAGE_NAME_MAX} characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit.",
        )
    return ImageName(text)


SnapshotName = NewType("SnapshotName", str)
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
SNAPSHOT_NAME_MAX = 64


def parse_snapshot_name(text: str) -> SnapshotName:
    """Check a snapshot name: 1-64 of A-Z, a-z, 0-9, '.', '_', ':' and '-', a letter or digit first."""
    if not _SNAPSHOT_NAME.fullmatch(text) or len(text) > SNAPSHOT_NAME_MAX:
        raise UsageError(
            f"Invalid snapshot name '{text}'",
            hint=f"Use 1-{SNAPSHOT_NAME_MAX} characters of A-Z, a-z, 0-9, '.', '_', ':' and '-', "
            "starting with a letter or digit.",
        )
    return SnapshotName(text)


class NetworkMode(enum.StrEnum):
    """How a machine is networked; the values are the CLI spellings."""

    NAT = "nat"  # a veth into veneer's bridge, a static address, outbound NAT, port forwards, names
    HOST = "host"  # the host's network, no namespace of its own
    NONE = "none"  # a namespace with loopback only
    BRIDGE = "bridge"  # a veth into an existing host bridge; the guest configures itself

    def private_netns(self) -> bool:
        """Whether the machine gets a network namespace of its own."""
        return self is not NetworkMode.HOST


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """A machine's network: the mode, and the host bridge for `bridge:BR`."""

    mode: NetworkMode
    bridge: str | None = None

    def __str__(self) -> str:
        return f"bridge:{self.bridge}" if self.mode is NetworkMode.BRIDGE else self.mode.value


DEFAULT_NETWORK = Network(mode=NetworkMode.NAT)


def parse_network(text: str) -> Network:
    """Parse `--network nat|host|none|bridge:BR`."""
    mode, _, bridge = text.partition(":")
    try:
        network = Network(mode=NetworkMode(mode), bridge=bridge or None)
    except ValueError:
        network = None
    valid = network is not None and (network.mode is NetworkMode.BRIDGE) == bool(bridge)
    if network is None or not valid or (bridge and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge)):
        raise UsageError(
            f"Unknown network '{text}'", hint="Use nat (the default), host, none, or bridge:BRIDGE."
        )
    return network


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    """A port forward: HOST port on the host's addresses (on `host_ip` alone, if given) to GUEST port in
    the machine."""

    host: int
    guest: int
    protocol: str = "tcp"
    host_ip: IPv4Address | None = None

    def __str__(self) -> str:
        listen = f"{self.host_ip}:" if self.host_ip else ""
        return f"{listen}{self.host}:{self.guest}/{self.protocol}"


_PORT_HINT = (
    "Use --port [HOST_IP:]HOST_PORT:GUEST_PORT[/udp], e.g. 8080:80, 127.0.0.1:8080:80 or 5353:53/udp."
)


def parse_port(text: str) -> Port:
    """Parse `--port [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`."""
    spec, _, protocol = text.partition("/")
    fields = spec.split(":")
    if len(fields) > 3 or "[" in spec:
        raise UsageError(
            f"Invalid port forward '{text}': port forwards are IPv4 only",
            hint="Give one of the host's IPv4 addresses, or none to listen on all of them.",
        )
    if len(fields) < 2 or (protocol or "tcp") not in ("tcp", "udp"):
        raise UsageError(f"Invalid port forward '{text}'", hint=_PORT_HINT)
    address, host, guest = ["", *fields] if len(fields) == 2 else fields
    for number in (host, guest):
        if not (number.isascii() and number.isdigit()):
            raise UsageError(
                f"Invalid port forward '{text}': '{number}' is no port number (1-65535)", hint=_PORT_HINT
            )
        if not 1 <= int(number) <= 65535:
            raise UsageError(
                f"Invalid port forward '{text}': port {int(number)} is out of range (1-65535)",
                hint=_PORT_HINT,
            )
    host_ip = _parse_host_ip(text, address)
    return Port(host=int(host), guest=int(guest), protocol=protocol or "tcp", host_ip=host_ip)


def _parse_host_ip(text: str, address: str) -> IPv4Address | None:
    """The address a forward listens on; None (every address of the host) for none or 0.0.0.0."""
    if not address:
        return None
    try:
        ip = IPv4Address(address)
    except ValueError:
        raise UsageError(
            f"Invalid port forward '{text}': '{address}' is no IPv4 address",
            hint="Port forwards are IPv4 only: give one of the host's IPv4 addresses, or leave it out "
            "to listen on all of them.",
        ) from None
    if ip.is_multicast or ip == IPv4Address("255.255.255.255"):
        raise UsageError(
            f"Invalid port forward '{text}': {ip} is no unicast address",
            hint="Give one of the host's own IPv4 addresses, or leave it out to listen on all of them.",
        )
    return None if ip.is_unspecified else ip


@dataclass(frozen=True, slots=True, kw_only=True)
class Bind:
    """A host path bind-mounted into the machine: SRC[:DST[:OPTIONS]] with ro/rw plus nspawn's options."""

    source: str
    target: str
    readonly: bool = False
    options: str = ""  # nspawn's own: rbind, norbind, idmap, noidmap, rootidmap

    def argument(self) -> str:
        """The nspawn `--bind=`/`--bind-ro=` argument; ':' inside paths is escaped as nspawn documents."""
        parts = [self.source.replace(":", "\\:"), self.target.replace(":", "\\:")]
        if self.options:
            parts.append(self.options)
        return ("--bind-ro=" if self.readonly else "--bind=") + ":".join(parts)


NSPAWN_BIND_OPTIONS = frozenset({"rbind", "norbind", "idmap", "noidmap", "rootidmap"})


def parse_bind(text: str) -> Bind:
    """Parse `--bind SRC[:DST[:OPTIONS]]`; SRC must be absolute, DST defaults to SRC."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0].startswith("/"):
        raise UsageError(
            f"Invalid bind '{text}'",
            hint="Use --bind /host/path[:/container/path[:ro|idmap|...]] with absolute paths.",
        )
    target = parts[1] if len(parts) > 1 and parts[1] else parts[0]
    if not target.startswith("/"):
        raise UsageError(f"Invalid bind '{text}': the container path must be absolute")
    options = [o for o in (parts[2].split(",") if len(parts) == 3 else []) if o]
    unknown = set(options) - NSPAWN_BIND_OPTIONS - {"ro", "rw"}
    if unknown:
        raise UsageError(
            f"Invalid bind '{text}': unknown option {', '.join(sorted(unknown))}",
            hint=f"Use ro, rw or one of {', '.join(sorted(NSPAWN_BIND_OPTIONS))}.",
        )
    return Bind(
        source=parts[0],
        target=target,
        readonly="ro" in options,
        options=",".join(o for o in options if o in NSPAWN_BIND_OPTIONS),
    )


def parse_seconds(text: str) -> float:
    """Parse a `--timeout` in seconds: a number, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UsageError(f"Invalid timeout '{text}'", hint="Give a number of seconds, 0 or more, e.g. 30.")
    return seconds


def parse_workdir(text: str) -> str:
    """Parse `--workdir DIR`: an absolute path inside the machine."""
    if not text.startswith("/"):
        raise UsageError(
            f"Invalid working directory '{text}': not an absolute path",
            hint=f"Give the path inside the machine from its root, e.g. /{text.lstrip('./') or 'root'}.",
        )
    return text


def parse_env(text: str) -> tuple[str, str]:
    """Parse `--env NAME=VALUE`."""
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(f"Invalid environment assignment '{text}'", hint="Use --env NAME=VALUE.")
    return name, value


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Resource limits of a machine; None means unlimited."""

    memory: int | None = None  # bytes
    cpus: float | None = None  # CPUs' worth of time, e.g. 0.5
    pids: int | None = None

    def to_json(self) -> dict[str, int | float | None]:
        return {"memory": self.memory, "cpus": self.cpus, "pids": self.pids}

    def describe(self) -> str:
        parts = [
            f"memory {self.memory >> 20}M" if self.memory else "",
            f"cpus {self.cpus:g}" if self.cpus else "",
            f"pids {self.pids}" if self.pids else "",
        ]
        return ", ".join(p for p in parts if p) or "none"

    @classmethod
    def from_json(cls, data: dict[str, int | float | None]) -> Limits:
        memory, cpus, pids = data.get("memory"), data.get("cpus"), data.get("pids")
        return cls(
            memory=None if memory is None else int(memory),
            cpus=None if cpus is None else float(cpus),
            pids=None if pids is None else int(pids),
        )


def parse_memory(text: str) -> int:
    """Parse `--memory` such as 512M, 2G, 1048576."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.rstrip("BbiI"), ""
    if number and number[-1].upper() in units:
        number, unit = number[:-1], number[-1].upper()
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value < 1 << 20:
        raise UsageError(
            f"Invalid memory limit '{text}'", hint="Use a size of at least 1M, e.g. 512M or 2G."
        )
    return value


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.01 <= value <= 1024:
        raise UsageError(f"Invalid CPU limit '{text}'", hint="Use a number of CPUs such as 0.5 or 2.")
    return value


def parse_pids(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"Invalid process limit '{text}'", hint="Use a whole number such as 200.")
    return int(text)
