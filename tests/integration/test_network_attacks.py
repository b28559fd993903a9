"""Attacks on the host and the neighbours from the root of real nat machines (busybox, systemd-nspawn), each
with the kernel's own means: routes, addresses, MACs and ARP that root in a network namespace may set.

Servers the tests start listen on the host's loopback only (an address of their own on `lo`); they end by
their pid. Traffic goes only to the test's machines and to those servers.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from veneer.config.layout import Layout
from veneer.network.ipam import (
    NetworkConfig,
    choose_pool,
    host_networks,
    load_network_config,
    save_network_config,
)
from veneer.network.links import mac_for
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

# Answers every TCP connection with "secret", then closes it; writes its port to a file once it listens.
SECRET_SERVER = """
import pathlib, socket, sys
family, address, ready = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, sys.argv[1], sys.argv[2]
s = socket.socket(family, socket.SOCK_STREAM)
s.bind((address, 0)); s.listen(16)
pathlib.Path(ready + ".tmp").write_text(str(s.getsockname()[1])); pathlib.Path(ready + ".tmp").rename(ready)
while True:
    c, _ = s.accept(); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nsecret\\n"); c.close()
"""

# Any exit status: a blocked connection ends in wget's error or in `timeout` killing it. (busybox 1.35's
# wget crashes with -T.)
ANY = tuple(range(256))

# A host-only IPv6 address (a ULA of the test's own) that the test puts on lo.
HOST_ULA = "fd5e:7e57:1e57::1"


@pytest.fixture
def nat(busybox: Store) -> Iterator[Store]:
    """The busybox store with its nat network chosen; its machines are stopped afterwards."""
    busybox.root.mkdir(parents=True, exist_ok=True)
    layout = Layout(root=busybox.root, run=busybox.run)
    bridge = layout.nat_bridge
    save_network_config(
        busybox.root / "network.json",
        NetworkConfig(bridge=bridge, pool=choose_pool(host_networks(bridge=bridge))),
    )
    yield busybox
    names = [m["name"] for m in json.loads(busybox.veneer("list", "--json").stdout)]
    if names:
        busybox.veneer("stop", *names, "--timeout", "5", ok=(0, 1))


def config_of(store: Store) -> NetworkConfig:
    config = load_network_config(store.root / "network.json")
    assert config is not None
    return config


def start(store: Store, *names: str) -> dict[str, IPv4Address]:
    """Create and start busybox machines on the nat network; their addresses."""
    for name in names:
        store.veneer("create", name, "--from", "bb")
    store.veneer("start", *names, "--wait")
    listed = json.loads(store.veneer("list", "--json").stdout)
    return {m["name"]: IPv4Address(m["addresses"][0]) for m in listed if m["name"] in names}


def inside(store: Store, machine: str, script: str, *, ok: Sequence[int] = (0,)) -> proc.Completed:
    """Run a shell script as root in the machine."""
    return store.veneer("exec", machine, "--", "sh", "-c", script, ok=ok)


@pytest.fixture
def secret_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A TCP server on the host's 127.0.0.1 only: (address, port)."""
    yield from _serve(tmp_path, "127.0.0.1")


@pytest.fixture
def secret_server6(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A TCP server on a host-only IPv6 address of the test's own on lo: (address, port)."""
    proc.run(["ip", "-6", "addr", "add", f"{HOST_ULA}/128", "dev", "lo", "nodad"])
    try:
        yield from _serve(tmp_path, HOST_ULA)
    finally:
        proc.run(["ip", "-6", "addr", "del", f"{HOST_ULA}/128", "dev", "lo"], check=False)


def _serve(tmp_path: Path, address: str) -> Iterator[tuple[str, int]]:
    ready = tmp_path / f"port-{address}"
    server = proc.spawn([sys.executable, "-c", SECRET_SERVER, address, str(ready)])
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        port = int(ready.read_text())
        # The server answers the host itself: the setup is right, so a machine's failure is the filter.
        with socket.create_connection((address, port), timeout=5) as s:
            assert b"secret" in s.makefile("rb").read()
        yield address, port
    finally:
        server.kill()
        server.wait()


def test_machine_cannot_reach_services_on_the_host_loopback(
    nat: Store, secret_server: tuple[str, int]
) -> None:
    """CVE-2020-8558 class: route 127.0.0.1 through the gateway and ask a loopback-only host service."""
    _, port = secret_server
    addresses = start(nat, "m1")
    gateway = config_of(nat).pool.gateway
    # The guest's own kernel refuses loopback destinations off lo unless route_localnet is set on host0,
    # answers 127.0.0.0/8 from its local table first, and takes an answer from 127.0.0.1 for a martian
    # unless accept_local is set; root in the machine may change all three.
    attack = (
        "echo 1 > /proc/sys/net/ipv4/conf/host0/route_localnet && "
        "echo 1 > /proc/sys/net/ipv4/conf/host0/accept_local && "
        "ip route del local 127.0.0.1 dev lo table local; "
        "ip route del local 127.0.0.0/8 dev lo table local; "
        f"ip route add 127.0.0.1/32 via {gateway} dev host0 src {addresses['m1']} && "
        "ip route get 127.0.0.1 && "
        f"timeout 5 wget -qO- http://127.0.0.1:{port}/"
    )
    result = inside(nat, "m1", attack, ok=ANY)
    assert f"via {gateway} dev host0" in result.stdout, result.stdout + result.stderr
    assert "secret" not in result.stdout
    assert result.returncode != 0


def test_machine_cannot_reach_host_services_over_ipv6(nat: Store, secret_server6: tuple[str, int]) -> None:
    """The nat network is IPv4; IPv6 from a machine (link-local source, the bridge's MAC as next hop)
    must not reach the host's own IPv6 addresses."""
    address, port = secret_server6
    start(nat, "m6")
    gateway = link_local(mac_for(config_of(nat).bridge))
    attack = (
        # The machine's link-local address is usable once duplicate address detection is done.
        "timeout 10 sh -c 'while ip -6 addr show dev host0 | grep -q tentative; do sleep 0.1; done' && "
        f"ip -6 route add {address}/128 via {gateway} dev host0 && "
        f"timeout 5 wget -qO- http://[{address}]:{port}/"
    )
    result = inside(nat, "m6", attack, ok=ANY)
    assert "secret" not in result.stdout
    assert result.returncode != 0, result.stderr


def link_local(mac: str) -> IPv6Address:
    """The IPv6 link-local address the kernel gives an interface with this MAC (modified EUI-64)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return IPv6Address(b"\xfe\x80" + bytes(6) + eui)


def host_neighbour_mac(bridge: str, address: IPv4Address) -> str | None:
    shown = json.loads(
        proc.run(["ip", "-j", "neigh", "show", str(address), "dev", bridge], capture=True).stdout
    )
    return str(shown[0]["lladdr"]) if shown and "lladdr" in shown[0] else None


def host_ping(address: IPv4Address) -> None:
    """One ping from the host (the host's static busybox: there may be no iputils)."""
    proc.run(["busybox", "ping", "-c", "1", "-W", "3", str(address)], capture=True)


def mac_of(store: Store, machine: str) -> str:
    return inside(store, machine, "cat /sys/class/net/host0/address").stdout.strip()


def test_machine_cannot_send_from_another_address(nat: Store) -> None:
    """An address of the pool that is no machine's: a ping from it to a neighbour gets no answer."""
    addresses = start(nat, "a", "b")
    config = config_of(nat)
    spare = next(
        a for a in config.pool.subnet.hosts() if a > config.pool.gateway and a not in addresses.values()
    )
    inside(nat, "a", f"ip addr add {spare}/{config.pool.prefixlen} dev host0")
    pinged = inside(nat, "a", f"ping -c 1 -W 3 -I {spare} {addresses['b']}", ok=(0, 1))
    assert pinged.returncode == 1, "a spoofed source address passed the bridge"
    # From its own address it still reaches its neighbour.
    inside(nat, "a", f"ping -c 1 -W 3 {addresses['b']}")


def test_machine_cannot_take_the_gateways_address(nat: Store) -> None:
    """Gratuitous ARP for the gateway must not move a neighbour's traffic for it to the attacker."""
    start(nat, "a", "b")
    config = config_of(nat)
    gateway = config.pool.gateway
    inside(nat, "b", f"ping -c 1 -W 3 {gateway}")
    claim = f"ip addr add {gateway}/32 dev host0 && arping -U -c 2 -w 2 -I host0 -s {gateway} {gateway}"
    inside(nat, "a", claim, ok=ANY)
    neighbours = inside(nat, "b", f"ip neigh show {gateway}").stdout
    assert mac_of(nat, "a") not in neighbours, neighbours
    assert mac_for(config.bridge) in neighbours, neighbours
    inside(nat, "b", f"ping -c 1 -W 3 {gateway}")


def test_machine_cannot_take_a_neighbours_address(nat: Store) -> None:
    """Gratuitous ARP for a neighbour must not move the host's traffic for it to the attacker."""
    addresses = start(nat, "a", "b")
    bridge = config_of(nat).bridge
    host_ping(addresses["b"])
    assert host_neighbour_mac(bridge, addresses["b"]) == mac_of(nat, "b")
    b = addresses["b"]
    inside(nat, "a", f"ip addr add {b}/32 dev host0 && arping -U -c 2 -w 2 -I host0 -s {b} {b}", ok=(0, 1))
    assert host_neighbour_mac(bridge, addresses["b"]) == mac_of(nat, "b")


def test_machine_cannot_take_a_neighbours_mac(nat: Store) -> None:
    """A frame from a neighbour's MAC must not teach the bridge that the neighbour is behind the attacker."""
    addresses = start(nat, "a", "b")
    host_ping(addresses["b"])  # the host knows b's MAC now, and b stays quiet
    b_mac = mac_of(nat, "b")
    gateway = config_of(nat).pool.gateway
    inside(nat, "a", f"ip link set host0 address {b_mac} && ping -c 1 -W 1 {gateway}", ok=ANY)
    fdb = proc.run(["bridge", "-j", "fdb", "show", "dev", "vb-a"], capture=True).stdout
    assert b_mac not in [entry["mac"] for entry in json.loads(fdb or "[]")], fdb
    # The host's frames for b still go to b.
    host_ping(addresses["b"])


def test_machines_still_reach_each_other_and_the_host(nat: Store) -> None:
    addresses = start(nat, "a", "b")
    inside(nat, "b", "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www")
    assert inside(nat, "a", "timeout 5 wget -qO- http://b:8080/").stdout.strip() == "hello"
    inside(nat, "a", f"ping -c 1 -W 3 {config_of(nat).pool.gateway}")
    host_ping(addresses["a"])
    assert os.path.exists("/sys/class/net/vb-a")
