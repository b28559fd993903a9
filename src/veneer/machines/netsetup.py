"""A machine's network: made before nspawn starts it, removed when it ends.

The nat machinery (netlink, nftables, dnsmasq) is loaded only where a nat machine needs it: a run of a
machine on another network passes through here too, and its start-up is worth those imports' 15 ms.

For `nat`, nspawn makes the machine's namespace and a veth into veneer's bridge, and veneer sets the
machine's static address and default route from the host as soon as the container exists, so any guest
works, with or without a DHCP client (a one-shot `run` waits for its address, see runtime.nspawn).
Shared pieces (the bridge, the nftables table, dnsmasq) exist while at least one nat machine runs; every
change to them happens under the network lock, recomputed from the machines that run, so a crash leaves
nothing that the next start or stop does not repair.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import MachineName, Network, NetworkMode, Port
from veneer.errors import NetworkError
from veneer.images.identity import HOST0_NETWORK_UNIT
from veneer.machines.state import MachineRecord, is_alive, list_machine_names, load_machine, load_runtime
from veneer.network import links
from veneer.network.ipam import (
    NetworkConfig,
    allocate_address,
    choose_pool,
    host_addresses,
    host_networks,
    load_network_config,
    save_network_config,
)
from veneer.util.fs import atomic_write, locked

logger = logging.getLogger(__name__)

# networkd in a Debian guest must leave the interface veneer configured alone rather than fight it (it
# could not change it anyway: the namespace belongs to the host).
HOST0_NETWORK = """\
# Made by veneer: host0 is configured by the host (nat network).
[Match]
Name=host0

[Link]
Unmanaged=yes
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """What nspawn needs to put the machine on its network."""

    bridge: str | None = None
    resolv_conf: Path | None = None
    binds_ro: tuple[tuple[Path, str], ...] = ()


def network_config(layout: Layout) -> NetworkConfig:
    """The store's nat network, chosen on first use to avoid the host's own routes; store lock held."""
    config = load_network_config(layout.network_config)
    if config is None:
        config = NetworkConfig(
            bridge=layout.nat_bridge, pool=choose_pool(host_networks(bridge=layout.nat_bridge))
        )
        save_network_config(layout.network_config, config)
    return config


def refuse_missing_bridge(network: Network) -> None:
    """Refuse `bridge:BR` unless BR is a bridge on this host now, rather than fail at the first start."""
    if network.mode is not NetworkMode.BRIDGE or network.bridge is None:
        return
    if not os.path.isdir(f"/sys/class/net/{network.bridge}/bridge"):
        what = "is no bridge" if links.link_exists(network.bridge) else "does not exist"
        raise NetworkError(
            f"Host bridge '{network.bridge}' {what}",
            hint=f"Make it first ('ip link add {network.bridge} type bridge && ip link set {network.bridge} "
            "up'), or use --network nat.",
        )


def allocate_machine_address(layout: Layout, *, exclude: str | None = None) -> str:
    """A free address of the pool for a new nat machine; the caller holds the store lock."""
    config = network_config(layout)
    used = set()
    for name in list_machine_names(layout):
        address = load_machine(layout, name).address
        if address and name != exclude:
            used.add(IPv4Address(address))
    return str(allocate_address(config.pool, used))


def _running_nat(layout: Layout, *, extra: MachineRecord | None, without: str | None) -> list[MachineRecord]:
    records = [extra] if extra is not None else []
    for name in list_machine_names(layout):
        if name in (without, extra.name if extra else None):
            continue
        runtime = load_runtime(layout, name)
        record = load_machine(layout, name)
        if record.network.mode is NetworkMode.NAT and runtime is not None and is_alive(runtime):
            records.append(record)
    return records


def _refuse_clashing_ports(machines: Sequence[MachineRecord]) -> None:
    """Two forwards of one port and protocol clash unless they listen on two different host addresses."""
    taken: list[tuple[Port, str]] = []
    for machine in machines:
        for port in machine.ports:
            for other, owner in taken:
                same_address = None in (port.host_ip, other.host_ip) or port.host_ip == other.host_ip
                if (other.host, other.protocol) == (port.host, port.protocol) and same_address:
                    raise NetworkError(
                        f"Port {port} of '{machine.name}' clashes with {other} of '{owner}'",
                        hint=f"Stop '{owner}', or change the port with "
                        f"'veneer set {machine.name} --port ...'.",
                    )
            taken.append((port, machine.name))


def _refresh(layout: Layout, config: NetworkConfig, machines: Sequence[MachineRecord]) -> None:
    """Rules and names for exactly the machines that run now."""
    from veneer.network import dns, nat

    _refuse_clashing_ports(machines)
    forwards = [
        nat.Forward(
            host_port=p.host,
            guest_port=p.guest,
            protocol=p.protocol,
            address=IPv4Address(m.address),
            listen=p.host_ip,
        )
        for m in machines
        if m.address
        for p in m.ports
    ]
    guests = [
        nat.Guest(port=links.machine_port(m.name), mac=links.mac_for(m.name), address=IPv4Address(m.address))
        for m in machines
        if m.address
    ]
    nat.apply_ruleset(
        nat.ruleset(
            table=layout.nat_table, bridge=config.bridge, pool=config.pool, forwards=forwards, guests=guests
        )
    )
    hosts = {str(m.name): IPv4Address(m.address) for m in machines if m.address}
    upstream = list(config.dns) or dns.upstream_servers()
    dns.setup_dns(layout.network_run, bridge=config.bridge, pool=config.pool, upstream=upstream, hosts=hosts)


def _refuse_clashing_pool(config: NetworkConfig) -> None:
    """The pool was free when chosen; another network (another store's, a VPN) may have taken it since."""
    clashes = [n for n in host_networks(bridge=config.bridge) if n.overlaps(config.pool.subnet)]
    if clashes:
        raise NetworkError(
            f"The nat network {config.pool.subnet} overlaps the host's {', '.join(map(str, clashes))}",
            hint=f"Move the nat network to a free subnet{_free_subnet_note(config)}: "
            "'veneer network subnet auto' (stopped machines get new addresses), or remove that route.",
        )


def _free_subnet_note(config: NetworkConfig) -> str:
    with contextlib.suppress(NetworkError):
        free = choose_pool([*host_networks(bridge=config.bridge), config.pool.subnet]).subnet
        return f" ({free}, as 'veneer doctor' proposes)"
    return ""


def _refuse_foreign_listen(record: MachineRecord, config: NetworkConfig) -> None:
    """A forward on an address the host does not have would never answer."""
    wanted = {p.host_ip for p in record.ports if p.host_ip is not None}
    # The gateway's address counts, though the bridge may not carry it yet.
    missing = wanted - {config.pool.gateway, *host_addresses()} if wanted else set()
    if missing:
        shown = ", ".join(sorted(map(str, missing)))
        raise NetworkError(
            f"Port forwards of '{record.name}' listen on {shown}, which is no address of this host",
            hint=f"Use one of the host's addresses ('ip -4 addr'), or leave the address out: "
            f"'veneer set {record.name} --port HOST_PORT:GUEST_PORT'.",
        )


def attach_machine(layout: Layout, record: MachineRecord, root: Path) -> Attachment:
    """Put a machine that is about to start on its network."""
    if record.network.mode is not NetworkMode.NAT:
        return Attachment()
    from veneer.network import dns

    layout.network_run.mkdir(parents=True, exist_ok=True)
    with locked(layout.network_run / "lock", what="The nat network", wait=True):
        config = load_network_config(layout.network_config)
        assert config is not None and record.address, "nat machines get an address at create"
        if not links.link_exists(config.bridge):
            _refuse_clashing_pool(config)
        _refuse_foreign_listen(record, config)
        if links.setup_bridge(config.bridge, config.pool):
            logger.info("Turned on IPv4 forwarding host-wide (net.ipv4.ip_forward=1) for the nat network.")
            links.save_forwarding_record(layout.network_run)
        _refresh(layout, config, _running_nat(layout, extra=record, without=None))
        resolv = layout.network_run / "resolv.conf"
        atomic_write(resolv, dns.resolv_conf_text(config.pool), durable=False)
        binds: list[tuple[Path, str]] = []
        if (root / "etc/systemd/network").is_dir():
            unit = layout.network_run / "host0.network"
            atomic_write(unit, HOST0_NETWORK, durable=False)
            binds.append((unit, "/" + HOST0_NETWORK_UNIT))
    return Attachment(bridge=config.bridge, resolv_conf=resolv, binds_ro=tuple(binds))


def configure_address(layout: Layout, record: MachineRecord, pid: int) -> None:
    """Give host0 in the namespace of process `pid` (nspawn's container) the machine's address and route;
    OSError (ENODEV) while nspawn has not moved host0 there yet."""
    config = load_network_config(layout.network_config)
    if record.network.mode is not NetworkMode.NAT or config is None or record.address is None:
        return
    from veneer.network.netlink import Netlink

    with _failing_in(record.name), Netlink(netns=f"/proc/{pid}/ns/net") as netlink:
        # The one MAC the bridge lets this machine send from (nat.ruleset), instead of nspawn's (which
        # derives from the host's machine-id as well); a veth takes a new MAC only while it is down, and
        # the kernel sets the address before the flags.
        netlink.set_link("host0", mac=links.mac_for(record.name), up=True)
        netlink.replace_addresses("host0", config.pool.interface(IPv4Address(record.address)))
        netlink.replace_default_route("host0", config.pool.gateway)


@contextlib.contextmanager
def _failing_in(name: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise NetworkError(f"Failed to set the address of '{name}': {e}", hint="See 'veneer doctor'.") from e


def detach_machine(layout: Layout, name: MachineName) -> None:
    """Take a machine that ended off its network; the last nat machine takes the shared pieces along."""
    if not layout.network_config.exists():
        return
    layout.network_run.mkdir(parents=True, exist_ok=True)
    with locked(layout.network_run / "lock", what="The nat network", wait=True):
        # nspawn's veth goes with the container's namespace; a killed nspawn may leave its host side.
        if links.link_exists(links.machine_port(name)):
            from veneer.network.netlink import Netlink

            with contextlib.suppress(OSError), Netlink() as netlink:
                netlink.delete_link(links.machine_port(name))
        config = load_network_config(layout.network_config)
        if config is None:
            return
        if not links.link_exists(config.bridge):
            # The shared pieces come up in the order bridge, rules, dnsmasq (attach_machine) and go in the
            # reverse order (below): without the bridge none is up (a machine on another network ended),
            # unless someone deleted the bridge by hand, which the next nat machine's start and stop repair.
            return
        from veneer.network import dns, nat

        remaining = _running_nat(layout, extra=None, without=name)
        if remaining:
            _refresh(layout, config, remaining)
            return
        nat.remove_table(layout.nat_table)
        dns.remove_dns(layout.network_run)
        links.remove_bridge(config.bridge)
        for leftover in ("resolv.conf", "host0.network"):
            with contextlib.suppress(FileNotFoundError):
                (layout.network_run / leftover).unlink()
