"""The nat network end to end with real traffic: machines, an "outside" host in a network namespace of the
test's own (with a veth as the host's uplink, TEST-NET-2 addresses), port forwards, names, teardown.

Traffic goes only to 127.0.0.1 and to the addresses of the namespaces these tests make.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from veneer.config.layout import Layout
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

UPLINK, OUTSIDE = "198.51.100.1", "198.51.100.2"

# Answers every TCP connection with the address it came from, then closes it.
PEER_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen()
while True:
    c, (addr, _) = s.accept(); c.recv(1024)
    c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + addr.encode() + b"\\n"); c.close()
"""


@dataclass
class Outside:
    netns: str
    uplink: str


def ip(*args: str) -> None:
    proc.run(["ip", *args])


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Outside]:
    """A host beyond the uplink: a namespace with a web server telling peers their address, and a DNS
    server that knows 'outside.test'."""
    tag = os.urandom(3).hex()
    host = Outside(netns=f"vt-out-{tag}", uplink=f"vt-up-{tag}")
    servers: list[proc.Process] = []
    ip("netns", "add", host.netns)
    try:
        ip("link", "add", host.uplink, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("addr", "add", f"{UPLINK}/24", "dev", host.uplink)
        ip("link", "set", host.uplink, "up")
        for args in (["addr", "add", f"{OUTSIDE}/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                     ["link", "set", "lo", "up"]):  # fmt: skip
            ip("-n", host.netns, *args)
        inside = ["ip", "netns", "exec", host.netns]
        servers.append(proc.spawn([*inside, "python3", "-c", PEER_SERVER]))
        servers.append(proc.spawn([
            *inside, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--port=53",
            f"--listen-address={OUTSIDE}", "--bind-interfaces", f"--address=/outside.test/{OUTSIDE}",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        ]))  # fmt: skip
        yield host
    finally:
        for server in servers:
            server.kill()
            server.wait()
        proc.run(["ip", "link", "del", host.uplink], check=False, capture=True)
        proc.run(["ip", "netns", "del", host.netns], check=False, capture=True)


@pytest.fixture
def natted(busybox: Store, outside: Outside) -> Iterator[Store]:
    """The busybox store, its nat network using the outside host's DNS as the upstream resolver."""
    from veneer.network.ipam import NetworkConfig, choose_pool, host_networks, save_network_config

    busybox.root.mkdir(parents=True, exist_ok=True)
    layout = Layout(root=busybox.root, run=busybox.run)
    bridge = layout.nat_bridge
    config = NetworkConfig(bridge=bridge, pool=choose_pool(host_networks(bridge=bridge)), dns=(OUTSIDE,))
    save_network_config(busybox.root / "network.json", config)
    yield busybox
    names = [m["name"] for m in json.loads(busybox.veneer("list", "--json").stdout)]
    if names:
        busybox.veneer("stop", *names, "--timeout", "5", ok=(0, 1))


def status_of(store: Store, name: str) -> str:
    state: str = json.loads(store.veneer("status", name, "--json").stdout)["state"]
    return state


def network_snapshot() -> tuple[list[str], str]:
    links = sorted(
        line.split(":")[1].strip().split("@")[0] for line in _out(["ip", "-o", "link"]).splitlines()
    )
    return links, _out(["nft", "-s", "list", "ruleset"])  # -s: no counters, which other traffic moves


def _out(argv: list[str]) -> str:
    return proc.run(argv, capture=True).stdout


def fetch(url: str, netns: str | None = None) -> str:
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode().strip())"
    )
    argv = ["python3", "-c", code]
    return _out(["ip", "netns", "exec", netns, *argv] if netns else argv).strip()


WEB = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && httpd -p 8080 -h /www"


def test_machine_reaches_outside_through_masquerade_and_resolves(natted: Store, outside: Outside) -> None:
    store = natted
    store.veneer("create", "m1", "--from", "bb")
    store.veneer("start", "m1", "--wait")
    seen = store.veneer("exec", "m1", "--", "wget", "-qO-", f"http://{OUTSIDE}:8000/").stdout.strip()
    assert seen == UPLINK, "the outside host sees the uplink's address, not the machine's"
    # busybox nslookup also asks for AAAA, which the test's upstream refuses (exit 1): the A answer counts.
    answer = store.veneer("exec", "m1", "--", "nslookup", "outside.test", ok=(0, 1)).stdout
    assert f"Address: {OUTSIDE}" in answer


def test_port_forwards_answer_on_localhost_and_from_outside(natted: Store, outside: Outside) -> None:
    store = natted
    store.veneer("create", "web", "--from", "bb", "--port", "18080:8080")
    store.veneer("start", "web", "--wait")
    store.veneer("exec", "web", "--", "sh", "-c", WEB)
    assert fetch("http://127.0.0.1:18080/") == "hello-from-web"
    assert fetch(f"http://{UPLINK}:18080/", netns=outside.netns) == "hello-from-web"


def test_port_forwards_on_one_host_address(natted: Store, outside: Outside) -> None:
    store = natted
    ports = ("--port", "127.0.0.1:18094:8080", "--port", f"{UPLINK}:18095:8080")
    store.veneer("create", "web", "--from", "bb", *ports)
    store.veneer("start", "web", "--wait")
    store.veneer("exec", "web", "--", "sh", "-c", WEB)
    assert fetch("http://127.0.0.1:18094/") == "hello-from-web"
    assert fetch(f"http://{UPLINK}:18095/", netns=outside.netns) == "hello-from-web"
    for url, netns in ((f"http://{UPLINK}:18094/", outside.netns), ("http://127.0.0.1:18095/", None)):
        code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)"
        argv = ["python3", "-c", code]
        blocked = proc.run(
            ["ip", "netns", "exec", netns, *argv] if netns else argv, check=False, capture=True
        )
        assert blocked.returncode != 0, url
    nets = json.loads(store.veneer("network", "ls", "--json").stdout)
    nat = next(n for n in nets if n["name"] == "nat")
    assert nat["machines"][0]["ports"] == ["127.0.0.1:18094:8080/tcp", f"{UPLINK}:18095:8080/tcp"]
    # An address the host does not have is refused at start, saying which.
    store.veneer("create", "far", "--from", "bb", "--port", "192.0.2.99:18096:80")
    refused = store.veneer("start", "far", ok=(1,)).stderr
    assert "192.0.2.99" in refused and "no address of this host" in refused
    assert status_of(store, "far") == "stopped"
    bad = store.veneer("create", "bad", "--from", "bb", "--port", "[::1]:80:80", ok=(2,)).stderr
    assert "IPv4 only" in bad


def test_machines_reach_each_other_by_name(natted: Store) -> None:
    store = natted
    for name in ("a", "b"):
        store.veneer("create", name, "--from", "bb")
    starters = [store.spawn("start", name, "--wait") for name in ("a", "b")]
    assert [p.wait() for p in starters] == [0, 0]
    addresses = {m["name"]: m["addresses"] for m in json.loads(store.veneer("list", "--json").stdout)}
    assert addresses["a"] != addresses["b"] and all(addresses.values())
    store.veneer("exec", "b", "--", "sh", "-c", WEB)
    assert store.veneer("exec", "a", "--", "wget", "-qO-", "http://b:8080/").stdout.strip() == "hello-from-b"


def test_none_has_only_loopback_and_host_sees_the_hosts_links(busybox: Store, outside: Outside) -> None:
    store = busybox
    store.veneer("create", "iso", "--from", "bb", "--network", "none")
    links = store.veneer("run", "iso", "--", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    store.veneer("create", "hn", "--from", "bb", "--network", "host")
    assert outside.uplink in store.veneer("run", "hn", "--", "ip", "-o", "link").stdout


def test_a_run_as_any_user_starts_its_command_once_the_address_is_set(natted: Store) -> None:
    # The command waits at the host's gate (a FIFO) as the user it runs as, which must be able to open it.
    store = natted
    store.veneer("create", "who", "--from", "bb")
    for user in ("root", "nobody"):
        done = store.veneer(
            "run", "--user", user, "who", "--", "sh", "-c", "ip -o -4 addr show host0 | wc -l"
        )
        assert done.stdout.strip() == "1" and "address-gate" not in done.stderr, (user, done.stderr)


def test_stopping_everything_leaves_links_and_rules_as_they_were(natted: Store) -> None:
    store = natted
    before = network_snapshot()
    for name, port in (("p", 18091), ("q", 18092)):
        store.veneer("create", name, "--from", "bb", "--port", f"{port}:80")
    store.veneer("start", "p", "q", "--wait")
    during = network_snapshot()
    layout = Layout(root=store.root, run=store.run)
    assert layout.nat_bridge in during[0] and f"table ip {layout.nat_table}" in during[1]
    store.veneer("stop", "p")
    assert "vb-p" not in network_snapshot()[0] and "vb-q" in network_snapshot()[0]
    store.veneer("stop", "q")
    assert network_snapshot() == before
    # A one-shot run sets up and tears down the same way.
    assert (
        store.veneer("run", "p", "--", "sh", "-c", "ip -o -4 addr show host0 | wc -l").stdout.strip() == "1"
    )
    assert network_snapshot() == before


def test_network_ls_and_inspect_show_the_machines(natted: Store) -> None:
    store = natted
    store.veneer("create", "w", "--from", "bb", "--port", "18093:80")
    store.veneer("start", "w", "--wait")
    nets = json.loads(store.veneer("network", "ls", "--json").stdout)
    nat = next(n for n in nets if n["name"] == "nat")
    assert nat["up"] and nat["nftables"] and nat["dnsmasq_pid"]
    machine = nat["machines"][0]
    assert machine["name"] == "w" and machine["state"] == "running" and machine["ports"] == ["18093:80/tcp"]
    assert machine["address"] in store.veneer("network", "inspect").stdout


@pytest.mark.parametrize("breakage", ["firewall", "pool"])
def test_doctor_names_a_broken_setting(natted: Store, breakage: str) -> None:
    store = natted
    assert store.veneer("doctor").returncode == 0
    from veneer.network.ipam import load_network_config

    config = load_network_config(store.root / "network.json")
    assert config is not None
    setup: tuple[list[str], str | None]
    if breakage == "firewall":
        # A firewall of the kind docker installs: forwarded traffic dropped by policy.
        script = "table ip vt_block {\n chain block {\n type filter hook forward priority 0; policy drop;\n"
        script += " }\n}\n"
        setup, teardown = (["nft", "-f", "-"], script), ["nft", "delete", "table", "ip", "vt_block"]
    else:
        # Another interface of the host that uses the pool's addresses.
        address = f"{config.pool.subnet[5]}/{config.pool.subnet.prefixlen}"
        command = (
            f"ip link add vt-clash type veth peer name vt-clash-p && ip addr add {address} dev vt-clash"
        )
        setup, teardown = (["sh", "-c", command], None), ["ip", "link", "del", "vt-clash"]
    proc.run(setup[0], input=setup[1])
    try:
        report = store.veneer("doctor", ok=(1,)).stdout
        failing = [line for line in report.splitlines() if line.startswith("FAIL")]
        assert any(line.startswith(f"FAIL {breakage}:") for line in failing), report
        assert "fix:" in report
        if breakage == "pool":
            # Starting a nat machine on a clashing pool is refused, with the way out.
            store.veneer("create", "c1", "--from", "bb")
            refused = store.veneer("start", "c1", ok=(1,))
            assert "overlaps the host's" in refused.stderr and "veneer doctor" in refused.stderr
            assert status_of(store, "c1") == "stopped"
    finally:
        proc.run(teardown)
    assert store.veneer("doctor").returncode == 0
