"""Machines emulated as network namespaces on a bridge, for testing the network mechanics without nspawn:
a namespace with a veth pair (`ve-<machine>` on the bridge, `host0` inside), as systemd-nspawn's
`--network-bridge` makes it, with the machine's address and default route set as veneer sets them.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

from veneer.errors import NetworkError
from veneer.network.ipam import Pool
from veneer.network.links import _failing, link_exists, mac_for
from veneer.network.netlink import Netlink
from veneer.util.proc import run

NETNS_DIR = Path("/run/netns")
GUEST_INTERFACE = "host0"


def _ip(*args: str, netns: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    return run(argv, capture=True, ok_returncodes=ok).stdout


def host_interface(machine: str) -> str:
    """The host side of a machine's veth pair (nspawn's spelling: at most 15 characters)."""
    name = f"ve-{machine}"
    if len(name) > 15:
        raise NetworkError(
            f"Interface name '{name}' is longer than 15 characters",
            hint="Use a machine name of at most 12 characters.",
        )
    return name


def netns_name(machine: str) -> str:
    return f"veneer-{machine}"


def netns_path(machine: str) -> Path:
    """Where `ip netns` pins a machine's network namespace (for nspawn --network-namespace-path=)."""
    return NETNS_DIR / netns_name(machine)


def _netns_pinned(path: Path) -> bool:
    """Whether the namespace file is a live mount of a namespace, not the empty file a crash may leave."""
    return path.exists() and os.path.ismount(path)


def _guest_link_exists(netns: str) -> bool:
    result = run(["ip", "-n", netns, "link", "show", "dev", GUEST_INTERFACE], check=False, capture=True)
    return result.returncode == 0


def setup_machine_link(machine: str, *, bridge: str, address: IPv4Address, pool: Pool) -> Path:
    """Make the machine's network namespace and its veth into `bridge`; return the namespace's path.

    Inside, `host0` gets `mac_for(machine)`, `address` with the pool's prefix and a default route via the
    gateway, and `lo` comes up; the host side `ve-<machine>` joins the bridge.
    """
    host = host_interface(machine)
    netns = netns_name(machine)
    path = netns_path(machine)
    with _failing(f"set up the network of '{machine}'"):
        if path.exists() and not _netns_pinned(path):
            # `ip netns add` creates the file before it bind-mounts the namespace onto it.
            _ip("netns", "delete", netns, ok=(0, 1))
        if not path.exists():
            _ip("netns", "add", netns)
        has_host, has_guest = link_exists(host), _guest_link_exists(netns)
        if has_host != has_guest:
            # A pair is made whole or not at all, so one half alone is something else's: a veth of an
            # earlier namespace, or a link nspawn made for a machine of this name. Start over.
            if has_host:
                _ip("link", "del", "dev", host, ok=(0, 1))
            if has_guest:
                _ip("link", "del", "dev", GUEST_INTERFACE, netns=netns, ok=(0, 1))
            has_host = has_guest = False
        if not has_host:
            # The peer is made inside the namespace, so a crash never leaves it in the host's.
            _ip(
                "link", "add", "name", host, "type", "veth",
                "peer", "name", GUEST_INTERFACE, "address", mac_for(machine), "netns", netns,
            )  # fmt: skip
        else:
            _ip("link", "set", "dev", GUEST_INTERFACE, "address", mac_for(machine), netns=netns)
        _ip("link", "set", "dev", host, "master", bridge, "up")
        _ip("link", "set", "dev", "lo", "up", netns=netns)
        # As veneer sets a machine's address: over netlink, in the namespace.
        with Netlink(netns=path) as netlink:
            netlink.replace_addresses(GUEST_INTERFACE, pool.interface(address))
            netlink.set_link(GUEST_INTERFACE, up=True)
            netlink.replace_default_route(GUEST_INTERFACE, pool.gateway)
    return path


def remove_machine_link(machine: str) -> None:
    """Delete the machine's veth pair and network namespace; what is gone already is skipped."""
    host = host_interface(machine)
    netns = netns_name(machine)
    with _failing(f"remove the network of '{machine}'"):
        if link_exists(host):
            # The peer goes with it, even while a process still holds the namespace.
            _ip("link", "del", "dev", host, ok=(0, 1))
        if os.path.lexists(netns_path(machine)):
            _ip("netns", "delete", netns, ok=(0, 1))
