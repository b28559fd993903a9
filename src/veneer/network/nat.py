"""veneer's own nftables table: masquerading for the nat network, port forwards, and the forward policy
for the bridge. The ruleset is built as text by a pure function and applied in one `nft -f` transaction
that replaces the whole table, so applying it again is idempotent and a half-applied table cannot exist.

Other tables (the user's firewall, docker's, podman's) are never touched; `doctor` explains conflicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from veneer.errors import CommandFailed, NetworkError
from veneer.network.ipam import Pool
from veneer.util.proc import run

DEFAULT_TABLE = "veneer"
PROTOCOLS = ("tcp", "udp")
_PORT = re.compile(r"(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?")
_HINT = "Run 'veneer doctor' to see whether nftables works on this host."


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward:
    """Traffic to `host_port` on the host's addresses goes to `guest_port` at a machine's `address`."""

    host_port: int
    guest_port: int
    protocol: str = "tcp"
    address: IPv4Address

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is neither tcp nor udp")
        for port in (self.host_port, self.guest_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is out of range")


def _quote(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name):
        raise ValueError(f"invalid interface name {name!r}")
    return f'"{name}"'


def ruleset(*, table: str = DEFAULT_TABLE, bridge: str, pool: Pool, forwards: Sequence[Forward]) -> str:
    """The nft script that makes `table ip <table>` exactly this, replacing whatever it held before."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", table):
        raise ValueError(f"invalid table name {table!r}")
    br = _quote(bridge)
    subnet = pool.subnet
    dnat = [
        f"\t\t{f.protocol} dport {f.host_port} dnat to {f.address}:{f.guest_port}"
        for f in sorted(forwards, key=lambda f: (f.protocol, f.host_port))
    ]
    lines = [
        f"# Made by veneer: the nat network on {bridge} ({subnet}). Replaced as a whole on every change.",
        # Adding first makes the delete succeed when the table does not exist yet; all three are one
        # transaction, so no packet ever sees the table missing or half made.
        f"add table ip {table}",
        f"delete table ip {table}",
        f"table ip {table} {{",
        # Port forwards to the host's own addresses: arriving from elsewhere (other hosts, the machines)...
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tfib daddr type local jump forwards",
        "\t}",
        "",
        # ...and made on the host itself, 127.0.0.1 included (locally made packets skip prerouting).
        "\tchain output {",
        "\t\ttype nat hook output priority -100; policy accept;",
        "\t\tfib daddr type local jump forwards",
        "\t}",
        "",
        "\tchain forwards {",
        *dnat,
        "\t}",
        "",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f"\t\tip saddr {subnet} oifname != {br} masquerade",
        # A forward used from 127.0.0.1 needs a source the machine can answer; one used from a machine
        # (hairpin) needs the answer to come back through the host, not straight from its neighbour.
        f"\t\toifname {br} ct status dnat ip saddr {{ 127.0.0.0/8, {subnet} }} masquerade",
        "\t}",
        "",
        # dnsmasq answers on the gateway; the host accepts packets for it on any interface, so keep other
        # hosts from using it as an open resolver.
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        f"\t\tip daddr {pool.gateway} meta l4proto {{ tcp, udp }} th dport 53"
        f' iifname != {{ {br}, "lo" }} drop',
        "\t}",
        "",
        # Machines may go out; from outside only answers and port forwards come in. With br_netfilter,
        # bridged traffic between machines passes here too (in and out the bridge): accepted.
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tct state established,related accept",
        f"\t\tiifname {br} accept",
        f"\t\toifname {br} ct status dnat accept",
        f"\t\toifname {br} drop",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def apply_ruleset(text: str) -> None:
    """Load an nft script in one transaction."""
    try:
        run(["nft", "-f", "-"], input=text, capture=True)
    except CommandFailed as e:
        raise NetworkError(f"Failed to load veneer's nftables rules: {e.message}", hint=_HINT) from e


def remove_table(table: str = DEFAULT_TABLE) -> None:
    """Delete `table ip <table>`; nothing happens if it does not exist."""
    apply_ruleset(f"add table ip {table}\ndelete table ip {table}\n")


def table_exists(table: str = DEFAULT_TABLE) -> bool:
    """Whether `table ip <table>` exists."""
    return run(["nft", "list", "table", "ip", table], check=False, capture=True).returncode == 0
