"""Address management for the nat network: the pool (a subnet the host does not use), the machines'
addresses in it, and the stored network config (`network.json`).

Choosing and allocating are pure functions over what the caller says is taken; only `host_networks()`
asks the kernel (through `ip`). Serializing allocations between machines is the caller's business.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veneer.errors import NetworkError, StateCorrupt
from veneer.util.fs import save_json

if TYPE_CHECKING:
    from veneer.network.netlink import Address, Route

CONFIG_VERSION = 1
DEFAULT_BRIDGE = "veneer0"

# Tried in order. None is a default of another tool that takes its subnet without looking at the host's
# routes: podman/netavark (10.88.0.0/16), libvirt (192.168.122.0/24), docker's first bridge
# (172.17.0.0/16). Several unrelated /16s, so that one VPN route over a /16 does not rule them all out.
CANDIDATE_POOLS: tuple[IPv4Network, ...] = tuple(
    IPv4Network(subnet)
    for subnet in (
        *(f"10.87.{n}.0/24" for n in range(4)),
        *(f"10.187.{n}.0/24" for n in range(4)),
        *(f"172.30.{n}.0/24" for n in range(87, 91)),
        *(f"192.168.{n}.0/24" for n in range(187, 191)),
    )
)
_BRIDGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """The nat network's subnet; the host's bridge holds the gateway, its first host address."""

    subnet: IPv4Network
    gateway: IPv4Address

    def __post_init__(self) -> None:
        if self.gateway not in self.subnet or self.gateway in (
            self.subnet.network_address,
            self.subnet.broadcast_address,
        ):
            raise ValueError(f"gateway {self.gateway} is no host address of {self.subnet}")

    @classmethod
    def from_subnet(cls, subnet: IPv4Network | str) -> Pool:
        """The pool of `subnet` with its first host address as the gateway."""
        network = IPv4Network(subnet)
        if network.prefixlen > 30:
            raise ValueError(f"subnet {network} has no room for machines")
        return cls(subnet=network, gateway=network.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    @property
    def gateway_interface(self) -> IPv4Interface:
        """The gateway with the prefix, as the bridge carries it (`10.87.0.1/24`)."""
        return IPv4Interface(f"{self.gateway}/{self.prefixlen}")

    def interface(self, address: IPv4Address) -> IPv4Interface:
        """A machine's address with the pool's prefix (`10.87.0.2/24`)."""
        return IPv4Interface(f"{address}/{self.prefixlen}")


def choose_pool(taken: Sequence[IPv4Network]) -> Pool:
    """The first of `CANDIDATE_POOLS` that overlaps none of `taken`."""
    for candidate in CANDIDATE_POOLS:
        if not any(candidate.overlaps(network) for network in taken):
            return Pool.from_subnet(candidate)
    raise NetworkError(
        "Every candidate subnet for the nat network overlaps a route or address of this host",
        hint="Set a free subnet for the nat network in network.json, or remove the conflicting route.",
    )


def route_networks(routes: Sequence[Route], *, exclude_index: int | None) -> list[IPv4Network]:
    """The destinations of routes (all tables), but default routes and those through `exclude_index`."""
    return [r.destination for r in routes if r.destination.prefixlen > 0 and r.index != exclude_index]


def address_networks(addresses: Sequence[Address], *, exclude_index: int | None) -> list[IPv4Network]:
    """The subnets of IPv4 addresses, but those on `exclude_index`."""
    return [a.interface.network for a in addresses if a.index != exclude_index]


def host_addresses() -> list[IPv4Address]:
    """The host's own IPv4 addresses, on every interface."""
    try:
        from veneer.network.netlink import Netlink  # not for the config, which every run reads

        with Netlink() as netlink:
            return [a.interface.ip for a in netlink.addresses()]
    except OSError as e:
        raise NetworkError(f"Failed to read the host's addresses: {e}", hint="See 'veneer doctor'.") from e


def host_networks(*, bridge: str = DEFAULT_BRIDGE) -> list[IPv4Network]:
    """The networks of the host's IPv4 routes (all tables) and addresses, but those of veneer's `bridge`."""
    from veneer.network.netlink import Netlink

    try:
        with Netlink() as netlink:
            index = netlink.link_index(bridge)
            networks = route_networks(netlink.routes(), exclude_index=index)
            networks += address_networks(netlink.addresses(), exclude_index=index)
    except OSError as e:
        raise NetworkError(f"Failed to read the host's routes: {e}", hint="See 'veneer doctor'.") from e
    return sorted(set(networks))


def allocate_address(pool: Pool, used: set[IPv4Address]) -> IPv4Address:
    """The lowest host address of the pool after the gateway that is not in `used`."""
    for address in pool.subnet.hosts():
        if address > pool.gateway and address not in used:
            return address
    raise NetworkError(
        f"No free address is left in the nat network {pool.subnet}",
        hint="Remove machines you no longer need, or move the nat network to a larger subnet.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    """The store's nat network: its bridge, its pool, and upstream DNS servers (empty: the host's)."""

    bridge: str = DEFAULT_BRIDGE
    pool: Pool
    dns: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CONFIG_VERSION,
            "bridge": self.bridge,
            "subnet": str(self.pool.subnet),
            "gateway": str(self.pool.gateway),
            "dns": list(self.dns),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkConfig:
        bridge = str(data.get("bridge", DEFAULT_BRIDGE))
        if not _BRIDGE_NAME.fullmatch(bridge):
            raise ValueError(f"invalid bridge name {bridge!r}")
        dns = tuple(str(ipaddress.ip_address(server)) for server in data.get("dns", []))
        pool = Pool(subnet=IPv4Network(data["subnet"]), gateway=IPv4Address(data["gateway"]))
        return cls(bridge=bridge, pool=pool, dns=dns)


def load_network_config(path: Path) -> NetworkConfig | None:
    """Read the network config, or None if there is none yet."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateCorrupt(
            f"Cannot read the network config '{path}': {e}",
            hint="Fix the file, or remove it while no machine runs so veneer chooses a new network.",
        ) from e
    if not isinstance(data, dict) or data.get("version") != CONFIG_VERSION:
        raise StateCorrupt(
            f"Unknown record version in '{path}'", hint="This record was written by another veneer version."
        )
    try:
        return NetworkConfig.from_json(data)
    except (KeyError, ValueError, TypeError) as e:
        raise StateCorrupt(
            f"Network config '{path}' is malformed: {e}",
            hint="Fix the file, or remove it while no machine runs so veneer chooses a new network.",
        ) from e


def save_network_config(path: Path, config: NetworkConfig) -> None:
    """Write the network config atomically."""
    save_json(path, config.to_json())
