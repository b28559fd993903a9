"""The nat network's mechanics with real namespaces and real traffic, without nspawn.

Two "machines" are network namespaces made by `setup_machine_link` on a bridge of the test's own; an
"outside host" is a namespace of the test's with a veth uplink from the host (198.51.100.1 on the host,
.2 outside, TEST-NET-2). Traffic only ever goes to addresses these tests create. Everything made here has
a name of the test's own (bridge vnt0, table veneer_test), so a real veneer0 on the host is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from tests.integration import netns_machines as nm
from veneer.network import dns, links, nat
from veneer.network.ipam import Pool, allocate_address, choose_pool, host_networks
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

BRIDGE = "vnt0"
TABLE = "veneer_test"
MACHINE_A, MACHINE_B, MACHINE_C = "vnta", "vntb", "vntc"
OUTSIDE_NS = "vnt-outside"
UPLINK = "vnt-up"
UPLINK_HOST = IPv4Interface("198.51.100.1/24")
OUTSIDE = IPv4Address("198.51.100.2")
ETC_NETNS = Path("/etc/netns")

# Answers every TCP connection or UDP datagram with the address it came from; touches a file once it listens.
SERVER = """
import pathlib, socket, sys
proto, address, port, ready = sys.argv[1:5]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, int(port)))
if proto == "tcp":
    s.listen(16)
pathlib.Path(ready).touch()
while True:
    if proto == "tcp":
        c, peer = s.accept()
        c.sendall(peer[0].encode() + b"\\n")
        c.close()
    else:
        data, peer = s.recvfrom(512)
        s.sendto(peer[0].encode() + b"\\n", peer)
"""

# Asks SERVER who it is talking to, retrying until a deadline; prints the answer.
CLIENT = """
import socket, sys, time
proto, address, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
error = None
while time.monotonic() < deadline:
    try:
        if proto == "tcp":
            with socket.create_connection((address, port), timeout=0.5) as s:
                print(s.makefile().readline().strip())
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.5)
                s.sendto(b"who", (address, port))
                print(s.recv(512).decode().strip())
        sys.exit(0)
    except OSError as e:
        error = e
        time.sleep(0.05)
print(f"failed: {error}")
sys.exit(1)
"""

RESOLVE = """
import socket, sys
try:
    print(socket.gethostbyname(sys.argv[1]))
except OSError as e:
    print(f"failed: {e}")
    sys.exit(1)
"""


def ip(*args: str) -> str:
    return proc.run(["ip", *args], capture=True).stdout


def python_argv(netns: str | None, code: str, *args: str) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, sys.executable, "-c", code, *args]


def ask(netns: str | None, address: object, port: int, *, proto: str = "tcp", timeout: float = 5) -> str:
    """Who the server at address:port says we are, as seen from `netns` (None: the host)."""
    argv = python_argv(netns, CLIENT, proto, str(address), str(port), str(timeout))
    return proc.run(argv, capture=True, check=False).stdout.strip()


def resolve(netns: str, name: str) -> str:
    return proc.run(python_argv(netns, RESOLVE, name), capture=True, check=False).stdout.strip()


def dns_query(server: IPv4Address, name: str, *, timeout: float = 0.5) -> IPv4Address | None:
    """The first A record for `name` from `server`, or None (no answer, refused, or timeout)."""
    import socket

    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", 0x5E5E, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, (str(server), 53))
            reply = s.recv(512)
        except OSError:
            return None
    flags, _, answers = struct.unpack(">HHH", reply[2:8])
    if flags & 0xF or answers == 0:
        return None
    # The answer follows the echoed question: a name pointer (2), type, class, ttl, length, then 4 bytes.
    return IPv4Address(reply[12 + len(question) + 4 + 12 : 12 + len(question) + 4 + 16])


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie waiting for its reaper has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def snapshot() -> dict[str, object]:
    """What the tests may change on the host: links, namespaces, the nftables ruleset, /etc/netns."""
    netns_out = proc.run(["ip", "-j", "netns", "list"], capture=True).stdout
    return {
        "links": sorted(link["ifname"] for link in json.loads(ip("-j", "link", "show"))),
        "netns": sorted(ns["name"] for ns in json.loads(netns_out or "[]")),
        "nft": proc.run(["nft", "-s", "list", "ruleset"], capture=True).stdout,
        "etc_netns": sorted(os.listdir(ETC_NETNS)) if ETC_NETNS.exists() else None,
    }


@dataclass
class World:
    """The bridge, machines, outside host, rules and DNS the traffic tests run against."""

    tmp: Path
    pool: Pool
    addresses: dict[str, IPv4Address] = field(default_factory=dict)
    processes: list[proc.Process] = field(default_factory=list)
    made_etc_netns: bool = False

    @property
    def run_dir(self) -> Path:
        return self.tmp / "dns"

    def start(self, argv: list[str], *, ready: Path | None = None) -> None:
        """Start a background process (ended by its pid in `cleanup`); wait for `ready` to appear."""
        process = proc.spawn(argv)
        self.processes.append(process)
        deadline = time.monotonic() + 5
        while ready is not None and not ready.exists():
            assert process.poll() is None, f"{argv} exited with {process.returncode}"
            assert time.monotonic() < deadline, f"{argv} did not get ready"
            time.sleep(0.01)

    def serve(self, netns: str, proto: str, address: str, port: int) -> None:
        ready = self.tmp / f"ready-{netns}-{proto}-{port}"
        self.start(python_argv(netns, SERVER, proto, address, str(port), str(ready)), ready=ready)

    def forwards(self) -> list[nat.Forward]:
        b = self.addresses[MACHINE_B]
        return [
            nat.Forward(host_port=18080, guest_port=8080, protocol="tcp", address=b),
            nat.Forward(host_port=18081, guest_port=8081, protocol="udp", address=b),
            # On one host address only: the uplink's, and 127.0.0.1.
            nat.Forward(host_port=18082, guest_port=8080, address=b, listen=UPLINK_HOST.ip),
            nat.Forward(host_port=18083, guest_port=8080, address=b, listen=IPv4Address("127.0.0.1")),
        ]

    def guests(self) -> list[nat.Guest]:
        return [
            nat.Guest(port=nm.host_interface(machine), mac=links.mac_for(machine), address=address)
            for machine, address in self.addresses.items()
        ]

    def ruleset(self) -> str:
        return nat.ruleset(
            table=TABLE, bridge=BRIDGE, pool=self.pool, forwards=self.forwards(), guests=self.guests()
        )

    def setup_dns(self, upstream: list[str]) -> None:
        hosts = {name: self.addresses[name] for name in (MACHINE_A, MACHINE_B)}
        dns.setup_dns(self.run_dir, bridge=BRIDGE, pool=self.pool, upstream=upstream, hosts=hosts)

    def remove(self) -> None:
        """veneer's own removal, as the last machine's stop does it."""
        dns.remove_dns(self.run_dir)
        nat.remove_table(TABLE)
        for machine in (MACHINE_A, MACHINE_B, MACHINE_C):
            nm.remove_machine_link(machine)
        links.remove_bridge(BRIDGE)

    def cleanup(self) -> None:
        """Whatever the tests left, failed or not: processes by pid, then links, namespaces, rules, files."""
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=5)
            except Exception:
                process.kill()
                process.wait()
        with contextlib.suppress(Exception):
            self.remove()
        for name in (UPLINK, BRIDGE, *(f"ve-{m}" for m in (MACHINE_A, MACHINE_B, MACHINE_C))):
            proc.run(["ip", "link", "del", "dev", name], check=False, capture=True)
        for netns in (OUTSIDE_NS, *(nm.netns_name(m) for m in (MACHINE_A, MACHINE_B, MACHINE_C))):
            if os.path.lexists(f"/run/netns/{netns}"):
                proc.run(["ip", "netns", "delete", netns], check=False, capture=True)
        proc.run(["nft", "delete", "table", "ip", TABLE], check=False, capture=True)
        for machine in (MACHINE_A, MACHINE_B):
            with contextlib.suppress(FileNotFoundError):
                (ETC_NETNS / nm.netns_name(machine) / "resolv.conf").unlink()
            with contextlib.suppress(FileNotFoundError):
                (ETC_NETNS / nm.netns_name(machine)).rmdir()
        if self.made_etc_netns:
            with contextlib.suppress(OSError):
                ETC_NETNS.rmdir()


@pytest.fixture(scope="module")
def before() -> dict[str, object]:
    return snapshot()


@pytest.fixture(scope="module")
def world(before: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    taken = host_networks(bridge=BRIDGE)
    if any(n.overlaps(UPLINK_HOST.network) for n in taken):
        pytest.fail(f"{UPLINK_HOST.network} is in use on this host; the outside host needs it")
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    w = World(tmp=tmp_path_factory.mktemp("network"), pool=choose_pool(taken))
    try:
        # The outside host: its own namespace, reached through an uplink the host routes to directly.
        ip("netns", "add", OUTSIDE_NS)
        ip("link", "add", UPLINK, "type", "veth", "peer", "name", "eth0", "netns", OUTSIDE_NS)
        ip("addr", "add", str(UPLINK_HOST), "dev", UPLINK)
        ip("link", "set", UPLINK, "up")
        ip("-n", OUTSIDE_NS, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        ip("-n", OUTSIDE_NS, "link", "set", "eth0", "up")
        ip("-n", OUTSIDE_NS, "link", "set", "lo", "up")
        w.serve(OUTSIDE_NS, "tcp", str(OUTSIDE), 9000)
        # The outside's DNS server, the machines' upstream: it knows outside.test.
        w.start([
            "ip", "netns", "exec", OUTSIDE_NS,
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--listen-address={OUTSIDE}", "--bind-interfaces", "--user=root",
            f"--address=/outside.test/{OUTSIDE}", f"--pid-file={w.tmp / 'outside-dnsmasq.pid'}",
        ])  # fmt: skip
        deadline = time.monotonic() + 5
        while dns_query(OUTSIDE, "outside.test") != OUTSIDE:
            assert time.monotonic() < deadline, "the outside's dnsmasq does not answer"

        links.setup_bridge(BRIDGE, w.pool)
        for machine in (MACHINE_A, MACHINE_B):
            address = allocate_address(w.pool, set(w.addresses.values()))
            w.addresses[machine] = address
            path = nm.setup_machine_link(machine, bridge=BRIDGE, address=address, pool=w.pool)
            assert path == Path(f"/run/netns/veneer-{machine}")
        nat.apply_ruleset(w.ruleset())
        w.setup_dns([str(OUTSIDE)])

        # `ip netns exec` bind-mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf.
        w.made_etc_netns = not ETC_NETNS.exists()
        for machine in (MACHINE_A, MACHINE_B):
            directory = ETC_NETNS / nm.netns_name(machine)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "resolv.conf").write_text(dns.resolv_conf_text(w.pool))

        b = nm.netns_name(MACHINE_B)
        w.serve(b, "tcp", "0.0.0.0", 8080)
        w.serve(b, "udp", "0.0.0.0", 8081)
        yield w
    finally:
        w.cleanup()
        if Path("/proc/sys/net/ipv4/ip_forward").read_text() != forwarding:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(forwarding)


def test_machines_are_configured(world: World) -> None:
    a = nm.netns_name(MACHINE_A)
    shown = json.loads(ip("-n", a, "-j", "addr", "show", "dev", "host0"))[0]
    assert shown["address"] == links.mac_for(MACHINE_A)
    assert f"{world.addresses[MACHINE_A]}/24" in [
        f"{i['local']}/{i['prefixlen']}" for i in shown["addr_info"]
    ]
    routes = json.loads(ip("-n", a, "-j", "route", "show", "default"))
    assert routes[0]["gateway"] == str(world.pool.gateway)
    assert {link["ifname"] for link in json.loads(ip("-n", a, "-j", "link"))} == {"lo", "host0"}
    master = json.loads(ip("-j", "link", "show", "dev", f"ve-{MACHINE_A}"))[0]["master"]
    assert master == BRIDGE
    assert Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").read_text().strip() == "1"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert nat.table_exists(TABLE)


def test_machine_reaches_outside_masqueraded(world: World) -> None:
    assert ask(nm.netns_name(MACHINE_A), OUTSIDE, 9000) == str(UPLINK_HOST.ip)


def test_machines_reach_each_other_unmasqueraded(world: World) -> None:
    seen = ask(nm.netns_name(MACHINE_A), world.addresses[MACHINE_B], 8080)
    assert seen == str(world.addresses[MACHINE_A])


@pytest.mark.parametrize("address", ["127.0.0.1", str(UPLINK_HOST.ip)])
def test_port_forward_from_the_host(world: World, address: str) -> None:
    # From 127.0.0.1 the machine sees the gateway (masqueraded), from another host address that address.
    expected = str(world.pool.gateway) if address == "127.0.0.1" else address
    assert ask(None, address, 18080) == expected
    assert ask(None, address, 18081, proto="udp") == expected


def test_port_forward_listens_on_its_host_address_only(world: World) -> None:
    assert ask(OUTSIDE_NS, UPLINK_HOST.ip, 18082) == str(OUTSIDE)
    assert ask(None, UPLINK_HOST.ip, 18082) == str(UPLINK_HOST.ip)
    assert ask(None, "127.0.0.1", 18082, timeout=1).startswith("failed")
    assert ask(None, "127.0.0.1", 18083) == str(world.pool.gateway)
    assert ask(None, UPLINK_HOST.ip, 18083, timeout=1).startswith("failed")
    assert ask(OUTSIDE_NS, UPLINK_HOST.ip, 18083, timeout=1).startswith("failed")


def test_machine_cannot_use_a_loopback_forward(world: World) -> None:
    """Routing 127.0.0.1 through the gateway does not reach a forward meant for the host alone."""
    a = nm.netns_name(MACHINE_A)
    hack = (
        "echo 1 > /proc/sys/net/ipv4/conf/host0/route_localnet && "
        "echo 1 > /proc/sys/net/ipv4/conf/host0/accept_local && "
        "ip route del local 127.0.0.0/8 dev lo table local && "
        "ip route del local 127.0.0.1 dev lo table local && "
        f"ip route add 127.0.0.1/32 via {world.pool.gateway} dev host0 src {world.addresses[MACHINE_A]}"
    )
    proc.run(["ip", "netns", "exec", a, "sh", "-c", hack])
    try:
        assert ask(a, "127.0.0.1", 18083, timeout=1).startswith("failed")
    finally:
        ip("-n", a, "route", "del", "127.0.0.1/32")
        ip("-n", a, "route", "add", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
        for name in ("route_localnet", "accept_local"):
            proc.run(["ip", "netns", "exec", a, "sysctl", "-qw", f"net.ipv4.conf.host0.{name}=0"])


def test_port_forward_from_outside(world: World) -> None:
    assert ask(OUTSIDE_NS, UPLINK_HOST.ip, 18080) == str(OUTSIDE)
    assert ask(OUTSIDE_NS, UPLINK_HOST.ip, 18081, proto="udp") == str(OUTSIDE)


@pytest.mark.parametrize("address", ["gateway", str(UPLINK_HOST.ip)])
def test_port_forward_from_a_machine(world: World, address: str) -> None:
    target = world.pool.gateway if address == "gateway" else address
    assert ask(nm.netns_name(MACHINE_A), target, 18080) == str(world.pool.gateway)


def test_outside_cannot_reach_machines_or_their_dns_directly(world: World) -> None:
    # Even with a route to the pool, only port forwards come in, and dnsmasq is no open resolver.
    ip("-n", OUTSIDE_NS, "route", "add", str(world.pool.subnet), "via", str(UPLINK_HOST.ip))
    try:
        assert ask(OUTSIDE_NS, world.addresses[MACHINE_B], 8080, timeout=1).startswith("failed")
        query = python_argv(OUTSIDE_NS, RESOLVE, "vnta")
        etc = ETC_NETNS / OUTSIDE_NS
        etc.mkdir(parents=True, exist_ok=True)
        try:
            (etc / "resolv.conf").write_text(
                f"options timeout:1 attempts:1\n{dns.resolv_conf_text(world.pool)}"
            )
            assert proc.run(query, capture=True, check=False).stdout.startswith("failed")
        finally:
            (etc / "resolv.conf").unlink()
            etc.rmdir()
    finally:
        ip("-n", OUTSIDE_NS, "route", "del", str(world.pool.subnet))


def test_names_and_upstream(world: World) -> None:
    a = nm.netns_name(MACHINE_A)
    assert resolve(a, MACHINE_B) == str(world.addresses[MACHINE_B])
    assert resolve(a, MACHINE_A) == str(world.addresses[MACHINE_A])
    assert resolve(a, "outside.test") == str(OUTSIDE)
    # The host itself may ask too (its query arrives through lo).
    assert dns_query(world.pool.gateway, MACHINE_B) == world.addresses[MACHINE_B]


def test_dns_updates_hosts_and_restarts_on_new_config(world: World) -> None:
    pid = dns.running_pid(world.run_dir)
    assert pid is not None
    c = allocate_address(world.pool, set(world.addresses.values()))
    hosts = {MACHINE_A: world.addresses[MACHINE_A], MACHINE_B: world.addresses[MACHINE_B], "late": c}
    dns.setup_dns(world.run_dir, bridge=BRIDGE, pool=world.pool, upstream=[str(OUTSIDE)], hosts=hosts)
    assert dns.running_pid(world.run_dir) == pid, "a new host is a SIGHUP, not a restart"
    deadline = time.monotonic() + 5
    while dns_query(world.pool.gateway, "late") != c:
        assert time.monotonic() < deadline, "dnsmasq did not re-read its hosts file"
    # Another upstream list is a new config: dnsmasq restarts with it.
    world.setup_dns([str(OUTSIDE), "198.51.100.3"])
    new_pid = dns.running_pid(world.run_dir)
    assert new_pid is not None and new_pid != pid and gone(pid)
    assert "server=198.51.100.3" in (world.run_dir / dns.CONFIG_NAME).read_text()
    assert dns_query(world.pool.gateway, MACHINE_B) == world.addresses[MACHINE_B], "lost the names"
    assert dns_query(world.pool.gateway, "late") is None
    # A crash lost the pid file: the running dnsmasq is still found, not started twice.
    (world.run_dir / dns.PID_NAME).unlink()
    assert dns.running_pid(world.run_dir) == new_pid
    world.setup_dns([str(OUTSIDE)])
    assert dns_query(world.pool.gateway, MACHINE_B) == world.addresses[MACHINE_B]
    assert gone(new_pid)
    assert resolve(nm.netns_name(MACHINE_A), "outside.test") == str(OUTSIDE)


def test_setup_is_idempotent_and_repairs_crash_leftovers(world: World) -> None:
    links.setup_bridge(BRIDGE, world.pool)
    nat.apply_ruleset(world.ruleset())
    nat.apply_ruleset(world.ruleset())
    rules = proc.run(["nft", "-s", "list", "table", "ip", TABLE], capture=True).stdout
    assert rules.count("dnat to") == 4
    c = allocate_address(world.pool, set(world.addresses.values()))
    netns = nm.netns_name(MACHINE_C)
    try:
        # A crash inside `ip netns add`: the file exists, no namespace is mounted on it.
        Path(f"/run/netns/{netns}").touch()
        nm.setup_machine_link(MACHINE_C, bridge=BRIDGE, address=c, pool=world.pool)
        assert ask(netns, OUTSIDE, 9000) == str(UPLINK_HOST.ip)
        nm.setup_machine_link(MACHINE_C, bridge=BRIDGE, address=c, pool=world.pool)
        nm.remove_machine_link(MACHINE_C)
        # A host side without its peer in the namespace (some other veth of that name).
        ip("link", "add", f"ve-{MACHINE_C}", "type", "veth", "peer", "name", "vnt-stray")
        nm.setup_machine_link(MACHINE_C, bridge=BRIDGE, address=c, pool=world.pool)
        assert not links.link_exists("vnt-stray")
        assert ask(netns, world.addresses[MACHINE_B], 8080) == str(c)
        # A changed address replaces the old one.
        moved = allocate_address(world.pool, {*world.addresses.values(), c})
        nm.setup_machine_link(MACHINE_C, bridge=BRIDGE, address=moved, pool=world.pool)
        shown = json.loads(ip("-n", netns, "-4", "-j", "addr", "show", "dev", "host0"))[0]["addr_info"]
        assert [i["local"] for i in shown] == [str(moved)]
    finally:
        nm.remove_machine_link(MACHINE_C)
        nm.remove_machine_link(MACHINE_C)
    assert not links.link_exists(f"ve-{MACHINE_C}")
    assert not os.path.lexists(nm.netns_path(MACHINE_C))


def test_remove_leaves_the_host_as_before(world: World, before: dict[str, object]) -> None:
    """Runs last: veneer's removal, twice, then only the test's own outside host differs from before."""
    pid = dns.running_pid(world.run_dir)
    world.remove()
    world.remove()
    assert pid is not None and gone(pid)
    assert not nat.table_exists(TABLE)
    assert sorted(os.listdir(world.run_dir)) == []
    world.cleanup()
    assert snapshot() == before
