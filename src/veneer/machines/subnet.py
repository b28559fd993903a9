"""Moving the store's nat network to another subnet, when a route of the host (a VPN, another store's
network) has taken its own: the pool changes and every nat machine gets an address of the new one.

Refused while a nat machine runs: its address is set in its namespace and the bridge carries the old
gateway. Each machine is locked while its record changes, then the store lock covers the config.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from veneer.config.layout import Layout
from veneer.config.settings import NetworkMode
from veneer.errors import NetworkError, UsageError
from veneer.machines.netsetup import network_config
from veneer.machines.recovery import machine_lock, refuse_if_running
from veneer.machines.state import list_machine_names, load_machine, save_machine
from veneer.network.ipam import (
    NetworkConfig,
    Pool,
    allocate_address,
    choose_pool,
    host_networks,
    save_network_config,
)
from veneer.util.fs import locked

logger = logging.getLogger(__name__)


def parse_subnet(text: str) -> IPv4Network:
    """Parse the nat network's new subnet, e.g. `10.250.7.0/24`."""
    try:
        subnet = IPv4Network(text)
        Pool.from_subnet(subnet)
    except ValueError as e:
        raise UsageError(
            f"Invalid subnet '{text}': {e}", hint="Give an IPv4 network, e.g. 10.250.7.0/24."
        ) from None
    return subnet


def free_subnet(config: NetworkConfig) -> IPv4Network:
    """The subnet `veneer doctor` proposes: the first candidate that no route of the host overlaps, and
    not the current one."""
    return choose_pool([*host_networks(bridge=config.bridge), config.pool.subnet]).subnet


def set_nat_subnet(layout: Layout, subnet: IPv4Network | None) -> tuple[NetworkConfig, dict[str, str]]:
    """Move the nat network to `subnet` (None: the free one doctor proposes); return the new config and
    each nat machine's new address."""
    with locked(layout.lock, what="The veneer store", wait=True):
        config = network_config(layout)
    names = [
        n for n in list_machine_names(layout) if load_machine(layout, n).network.mode is NetworkMode.NAT
    ]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(machine_lock(layout, name))
            refuse_if_running(layout, name)
        target = subnet if subnet is not None else free_subnet(config)
        clashes = [n for n in host_networks(bridge=config.bridge) if n.overlaps(target)]
        if clashes:
            raise NetworkError(
                f"Subnet {target} overlaps the host's {', '.join(map(str, clashes))}",
                hint=f"Take a free one: 'veneer network subnet {free_subnet(config)}'.",
            )
        pool = Pool.from_subnet(target)
        moved: dict[str, str] = {}
        with locked(layout.lock, what="The veneer store", wait=True):
            used: set[IPv4Address] = set()
            for name in names:
                address = allocate_address(pool, used)
                used.add(address)
                save_machine(
                    layout.machine_record(name), replace(load_machine(layout, name), address=str(address))
                )
                moved[name] = str(address)
            # Last: should veneer die before, running this again re-addresses every machine anew.
            config = replace(config, pool=pool)
            save_network_config(layout.network_config, config)
    logger.debug("The nat network is now %s.", pool.subnet)
    return config, moved
