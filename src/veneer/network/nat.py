"""veneer's own nftables tables: masquerading for the nat network, port forwards, the forward policy
for the bridge and what keeps the machines off the host's loopback (`ip <table>`), and what a machine may
send into the bridge (`bridge <table>`). The ruleset is built as text by a pure function and applied in
one nft transaction (libnftables in this process, as `nft -f` runs it) that replaces both tables, so
applying it again is idempotent and a half-applied ruleset cannot exist.

Other tables (the user's firewall, docker's, podman's) are never touched; `doctor` explains conflicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from veneer.errors import NetworkError
from veneer.network import libnft
from veneer.network.ipam import Pool
from veneer.util.proc import run

DEFAULT_TABLE = "veneer"
PROTOCOLS = ("tcp", "udp")
FAMILIES = ("ip", "bridge")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_HINT = "Run 'veneer doctor' to see whether nftables works on this host."


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward:
    """Traffic to `host_port` on the host's addresses (on `listen` alone, if given) goes to `guest_port` at
    a machine's `address`."""

    host_port: int
    guest_port: int
    protocol: str = "tcp"
    address: IPv4Address
    listen: IPv4Address | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is neither tcp nor udp")
        for port in (self.host_port, self.guest_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is out of range")


@dataclass(frozen=True, slots=True, kw_only=True)
class Guest:
    """A machine on the bridge: its `port` (the host side of its veth), and the only MAC and IPv4 address
    it may send from."""

    port: str
    mac: str
    address: IPv4Address

    def __post_init__(self) -> None:
        _quote(self.port)
        if not _MAC.fullmatch(self.mac):
            raise ValueError(f"invalid MAC address {self.mac!r}")


def _quote(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name):
        raise ValueError(f"invalid interface name {name!r}")
    return f'"{name}"'


def ruleset(
    *,
    table: str = DEFAULT_TABLE,
    bridge: str,
    pool: Pool,
    forwards: Sequence[Forward],
    guests: Sequence[Guest],
) -> str:
    """The nft script that makes `table ip <table>` and `table bridge <table>` exactly this, replacing
    whatever they held before."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", table):
        raise ValueError(f"invalid table name {table!r}")
    br = _quote(bridge)
    subnet = pool.subnet
    dnat = [
        f"\t\t{f'ip daddr {f.listen} ' if f.listen else ''}{f.protocol} dport {f.host_port}"
        f" dnat to {f.address}:{f.guest_port}"
        for f in sorted(forwards, key=lambda f: (f.protocol, f.host_port, str(f.listen or "")))
    ]
    lines = [
        f"# Made by veneer: the nat network on {bridge} ({subnet}). Replaced as a whole on every change.",
        # Adding first makes the delete succeed when a table does not exist yet; all of it is one
        # transaction, so no packet ever sees a table missing or half made.
        f"add table ip {table}",
        f"delete table ip {table}",
        f"add table bridge {table}",
        f"delete table bridge {table}",
        f"table ip {table} {{",
        # Port forwards to the host's own addresses: arriving from elsewhere (other hosts, the machines)...
        # but not to 127.0.0.0/8, which only the machines can send here (the bridge has route_localnet):
        # a forward on 127.0.0.1 is for the host itself.
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tfib daddr type local ip daddr != 127.0.0.0/8 jump forwards",
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
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        # route_localnet on the bridge (for forwards used from 127.0.0.1, see links.setup_bridge) also
        # lets a machine that routes 127.0.0.0/8 through the gateway talk to the host's loopback-only
        # services (CVE-2020-8558). Only the answers of those forwards may come in that way.
        f"\t\tiifname {br} ip daddr 127.0.0.0/8 ct direction reply ct status dnat accept",
        f"\t\tiifname {br} ip daddr 127.0.0.0/8 drop",
        # dnsmasq answers on the gateway; the host accepts packets for it on any interface, so keep other
        # hosts from using it as an open resolver.
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
        *_bridge_table(table, guests),
    ]
    return "\n".join(lines) + "\n"


def _bridge_table(table: str, guests: Sequence[Guest]) -> list[str]:
    """What each machine may send into the bridge: IPv4 and ARP from its own MAC and address, nothing else.

    A bridge-family table rather than netdev ingress chains on the ports: nspawn makes a machine's port
    only once the machine starts, and an ingress chain needs its device to exist, so there would be a
    moment without a filter; the port's name is known before. The bridge's prerouting hook sees a frame
    before the bridge learns its source MAC or delivers it, to a neighbour or to the host, and before
    br_netfilter's IP hooks. Matching by port name only (this kernel may lack `meta ibrname`) is enough:
    nspawn's ports are named after their machines, and a name is unique on the host while it runs.
    Everything but IPv4 and ARP is dropped: the nat network is IPv4 only, and IPv6 (link-local on every
    link, routed if the host forwards it) would get around every rule of the ip table.
    """
    ordered = sorted(guests, key=lambda g: g.port)
    lines = [
        "",
        f"table bridge {table} {{",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority filter; policy accept;",
    ]
    if ordered:
        ports = ", ".join(f"{_quote(g.port)} : jump from-{g.port}" for g in ordered)
        lines.append(f"\t\tiifname vmap {{ {ports} }}")
    lines.append("\t}")
    for g in ordered:
        lines += [
            "",
            f"\tchain from-{g.port} {{",
            f"\t\tether saddr != {g.mac} drop",
            f"\t\tarp htype 1 arp ptype ip arp saddr ether {g.mac} arp saddr ip {g.address} accept",
            f"\t\tether type ip ip saddr {g.address} accept",
            "\t\tdrop",
            "\t}",
        ]
    lines.append("}")
    return lines


def apply_ruleset(text: str) -> None:
    """Load an nft script in one transaction (libnftables, in this process)."""
    try:
        libnft.run_script(text)
    except (OSError, libnft.NftError) as e:
        raise NetworkError(f"Failed to load veneer's nftables rules: {e}", hint=_HINT) from e


def remove_table(table: str = DEFAULT_TABLE) -> None:
    """Delete `table ip <table>` and `table bridge <table>`; nothing happens to those that do not exist."""
    apply_ruleset(
        "".join(f"add table {family} {table}\ndelete table {family} {table}\n" for family in FAMILIES)
    )


def table_exists(table: str = DEFAULT_TABLE) -> bool:
    """Whether `table ip <table>` exists."""
    return run(["nft", "list", "table", "ip", table], check=False, capture=True).returncode == 0
