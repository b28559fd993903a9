"""What the user asked for: the frozen settings of machines, and the names and values they are made of.

The names and plain values (`config.values`, light enough for the CLI to declare its options with) are
re-exported here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from ipaddress import IPv4Address

# Re-exported: where the rest of veneer finds the names and values.
from veneer.config.values import IMAGE_NAME_MAX as IMAGE_NAME_MAX
from veneer.config.values import MACHINE_NAME_MAX as MACHINE_NAME_MAX
from veneer.config.values import SNAPSHOT_NAME_MAX as SNAPSHOT_NAME_MAX
from veneer.config.values import ImageName as ImageName
from veneer.config.values import MachineName as MachineName
from veneer.config.values import SnapshotName as SnapshotName
from veneer.config.values import parse_cpus as parse_cpus
from veneer.config.values import parse_env as parse_env
from veneer.config.values import parse_image_name as parse_image_name
from veneer.config.values import parse_machine_name as parse_machine_name
from veneer.config.values import parse_memory as parse_memory
from veneer.config.values import parse_pids as parse_pids
from veneer.config.values import parse_seconds as parse_seconds
from veneer.config.values import parse_snapshot_name as parse_snapshot_name
from veneer.config.values import parse_workdir as parse_workdir
from veneer.errors import UsageError

# Each machine's user namespace maps 65536 ids (container 0-65535), as systemd-nspawn's --private-users does.
UID_RANGE_SIZE = 0x10000


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
