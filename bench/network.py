"""Network benchmarks: veneer's nat network against plain veth pairs and a plain bridge between network
namespaces the harness makes itself, side by side in one run, as ratios to the plain baseline.

Run as root from a checkout: `python3 bench/network.py [--only NAME] [--repeat N] [--warmup N]`.
Everything the run makes (a veneer store in a scratch dir, its machines and images, network namespaces
`vnb-TAG-*`, links `vnbTAG*`, background iperf3 servers) is removed on the way out, also after a failure,
Ctrl-C or SIGTERM; processes by pid. Traffic goes only to addresses of the namespaces and machines the run
made: every measurement first checks that the host routes the target through the run's own link.

Each contender is a small class, as in bench/run.py: `setup()` once (untimed), then per repetition
`prepare(i)`, `measure(i)` and `reset(i)`, then `teardown()`. `measure()` returns the repetition's
samples: bits per second reported by iperf3, round-trip times reported by ping, or the wall clock of
`veneer start --wait`. Contenders take turns within each repetition, in an order that rotates.
bench/NETWORK.md says what each benchmark measures and why it is fair. The harness (scratch dir,
cleanups, background processes) is bench/harness.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

# The harness (bench/ is on sys.path when a script in it runs); importing it puts src/ on sys.path.
from harness import (
    POLL_INTERVAL,
    Background,
    Scratch,
    descendants,
    exit_with,
    first_line,
    loadavg,
    log,
    machine_info,
    process_name,
    raise_on_sigterm,
    save_report,
    scratch_dir,
    spawn_logged,
    take_turns,
)

from veneer.config.layout import Layout
from veneer.errors import CommandFailed
from veneer.network.ipam import (
    CANDIDATE_POOLS,
    NetworkConfig,
    Pool,
    host_networks,
    save_network_config,
)
from veneer.util.proc import Completed, run

IPERF = Path("/usr/bin/iperf3")
BUSYBOX = Path("/usr/bin/busybox")
IPERF_SECONDS = 5
IPERF_PORT = 5201
PINGS = 200
PING_INTERVAL = "0.002"
# The harness's own subnets (the plain namespaces', and veneer's pool, set in the store's network.json)
# come from here: none of veneer's candidate pools, so no other veneer store on the host can pick them.
SUBNET_RANGE = IPv4Network("10.213.0.0/16")
SERVER_TIMEOUT = 10.0
STOP_PATIENCE = 5.0
DEFAULT_REPEAT = {"throughput": 10, "latency": 10, "start": 10}


# ---------------------------------------------------------------------------------------------------------
# The run's environment: scratch space, the veneer store in it, cleanups.


@dataclass(kw_only=True)
class Bench(Scratch):
    """This script's run: a tag for the names it makes, and what it found and left."""

    tag: str
    leftovers: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return Layout(root=self.store, run=self.runtime)


def listening(pid: int, port: int) -> bool:
    """Whether the network namespace of process `pid` has a TCP socket listening on `port`."""
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


@dataclass(kw_only=True)
class Server:
    """An iperf3 server: the command started in the background, and the iperf3 process it runs (the same
    process for `ip netns exec`; below nsenter for `veneer exec`)."""

    label: str
    background: Background
    iperf_pid: int

    def stop(self) -> None:
        # `veneer exec` waits for nsenter, which waits for iperf3 but passes no signal on: end iperf3
        # itself, then the command that started it returns.
        if self.iperf_pid != self.background.pid and process_name(self.iperf_pid) == "iperf3":
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.iperf_pid, signal.SIGTERM)
            self.background.wait(STOP_PATIENCE)
        self.background.stop(STOP_PATIENCE)


def start_server(
    bench: Bench, label: str, argv: Sequence[str], env: Mapping[str, str] | None = None
) -> Server:
    """Start an iperf3 server (`argv` ends in `iperf3 -s`) and wait until it listens."""
    background = spawn_logged(argv, log=bench.log_file(f"iperf3-{label}"), env=env)
    server = Server(label=label, background=background, iperf_pid=background.pid)
    bench.defer(server.stop, f"stop the iperf3 server of {label} (pid {background.pid})")
    deadline = time.monotonic() + SERVER_TIMEOUT
    while True:
        candidates = [background.pid, *descendants(background.pid)]
        iperf = [pid for pid in candidates if process_name(pid) == "iperf3"]
        if iperf and listening(iperf[0], IPERF_PORT):
            server.iperf_pid = iperf[0]
            return server
        if not background.running() or time.monotonic() > deadline:
            output = background.log.read_text(errors="replace")
            raise CommandFailed(list(argv), background.process.poll() or -1, f"not listening: {output}")
        time.sleep(POLL_INTERVAL)


# ---------------------------------------------------------------------------------------------------------
# The plain baseline: network namespaces with veth pairs, made with `ip`.


def ip(*args: str, ok: Sequence[int] = (0,)) -> str:
    return run(["ip", *args], capture=True, ok_returncodes=ok).stdout


def link_exists(name: str) -> bool:
    return os.path.lexists(f"/sys/class/net/{name}")


def remove_link(name: str) -> None:
    if link_exists(name):
        ip("link", "del", "dev", name, ok=(0, 1))


def remove_netns(name: str) -> None:
    if Path(f"/run/netns/{name}").exists():
        ip("netns", "del", name)


@dataclass(frozen=True, kw_only=True)
class Peer:
    """Something the run made that traffic may go to: its address, and the host link that leads there."""

    label: str
    address: IPv4Address
    host_link: str


def check_route(peer: Peer) -> None:
    """Refuse to send traffic unless the host routes `peer` through the run's own link."""
    route = json.loads(ip("-j", "route", "get", str(peer.address)))
    dev = route[0].get("dev") if route else None
    if dev != peer.host_link:
        raise SystemExit(
            f"bench: {peer.address} ({peer.label}) routes via {dev}, not {peer.host_link}: stop"
        )


@dataclass(kw_only=True)
class Plain:
    """The plain topology: namespace V on a veth pair straight to the host; namespaces A and B on veth pairs
    into a bridge that holds the host's address (as veneer's bridge holds the gateway)."""

    tag: str
    veth_subnet: IPv4Network
    bridge_subnet: IPv4Network

    def netns(self, which: str) -> str:
        return f"vnb-{self.tag}-{which}"

    def host_link(self, which: str) -> str:
        return f"vnb{self.tag}{which}"  # at most 15 characters: tag is 4

    @property
    def bridge(self) -> str:
        return f"vnb{self.tag}br"

    def host_address(self, subnet: IPv4Network) -> IPv4Address:
        return subnet.network_address + 1

    @property
    def veth_peer(self) -> Peer:
        return Peer(
            label="plain veth", address=self.veth_subnet.network_address + 2, host_link=self.host_link("v")
        )

    def bridge_peer(self, which: str) -> Peer:
        offset = {"a": 2, "b": 3}[which]
        address = self.bridge_subnet.network_address + offset
        return Peer(label=f"plain bridge {which}", address=address, host_link=self.bridge)

    def setup(self, bench: Bench) -> None:
        prefix = self.veth_subnet.prefixlen
        self._namespace(bench, "v", self.veth_peer.address, prefix, self.veth_subnet)
        bench.defer(lambda: remove_link(self.host_link("v")), f"ip link del {self.host_link('v')}")
        ip("addr", "add", f"{self.host_address(self.veth_subnet)}/{prefix}", "dev", self.host_link("v"))
        ip("link", "set", "dev", self.host_link("v"), "up")

        bench.defer(lambda: remove_link(self.bridge), f"ip link del {self.bridge}")
        ip("link", "add", "name", self.bridge, "type", "bridge")
        bridge_prefix = self.bridge_subnet.prefixlen
        ip("addr", "add", f"{self.host_address(self.bridge_subnet)}/{bridge_prefix}", "dev", self.bridge)
        ip("link", "set", "dev", self.bridge, "up")
        for which in ("a", "b"):
            peer = self.bridge_peer(which)
            self._namespace(bench, which, peer.address, bridge_prefix, self.bridge_subnet)
            bench.defer(
                functools.partial(remove_link, self.host_link(which)), f"ip link del {self.host_link(which)}"
            )
            ip("link", "set", "dev", self.host_link(which), "master", self.bridge, "up")

    def _namespace(
        self, bench: Bench, which: str, address: IPv4Address, prefix: int, subnet: IPv4Network
    ) -> None:
        """A namespace whose `eth0` is the far end of a veth pair `vnbTAG<which>` on the host."""
        ns = self.netns(which)
        bench.defer(lambda: remove_netns(ns), f"ip netns del {ns}")
        ip("netns", "add", ns)
        ip("link", "add", "name", self.host_link(which), "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", ns, "link", "set", "dev", "lo", "up")
        ip("-n", ns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
        ip("-n", ns, "link", "set", "dev", "eth0", "up")
        ip("-n", ns, "route", "add", "default", "via", str(self.host_address(subnet)))

    def exec_argv(self, which: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(which), *argv]


def free_subnets(count: int, *, avoid: Sequence[IPv4Network] = ()) -> list[IPv4Network]:
    """`count` /24s of SUBNET_RANGE that overlap no route or address of the host."""
    taken = [*host_networks(bridge=""), *avoid, *CANDIDATE_POOLS]
    found = []
    for subnet in SUBNET_RANGE.subnets(new_prefix=24):
        if not any(subnet.overlaps(other) for other in taken):
            found.append(subnet)
            if len(found) == count:
                return found
    raise SystemExit(f"bench: no {count} free /24s left in {SUBNET_RANGE}")


def link_details(name: str, *, netns: str | None = None) -> dict[str, Any]:
    """What might make one veth faster than another: MTU, queues, GSO/GRO limits, qdisc."""
    argv = ["-j", "-d", *(["-n", netns] if netns else []), "link", "show", "dev", name]
    link = json.loads(ip(*argv))[0]
    keys = ["mtu", "qdisc", "txqlen", "num_tx_queues", "num_rx_queues", "gso_max_size", "gso_max_segs"]
    keys += ["tso_max_size", "gro_max_size"]
    return {key: link.get(key) for key in keys}


def netns_details(pid: int, interface: str) -> dict[str, Any]:
    """The settings in the network namespace of process `pid` that could make one side slower: its
    interface, reverse-path filtering, and whether any netfilter rules (and so conntrack) exist there."""
    enter = ["nsenter", f"--target={pid}", "--net"]
    link = json.loads(
        run([*enter, "ip", "-j", "-d", "link", "show", "dev", interface], capture=True).stdout
    )[0]
    sysctls = {}
    for name in ("all/rp_filter", f"{interface}/rp_filter", "all/forwarding"):
        sysctls[name] = run([*enter, "cat", f"/proc/sys/net/ipv4/conf/{name}"], capture=True).stdout.strip()
    rules = run([*enter, "nft", "list", "ruleset"], capture=True).stdout
    keys = ["mtu", "qdisc", "num_tx_queues", "num_rx_queues", "gso_max_size", "gro_max_size", "tso_max_size"]
    return {
        **{key: link.get(key) for key in keys},
        "sysctl": sysctls,
        "nft_ruleset_lines": len(rules.splitlines()),
    }


# ---------------------------------------------------------------------------------------------------------
# veneer's side: images, the iperf3 image's tree, machines on the nat network.


def image_tree(bench: Bench, image: str) -> Path:
    """The tree of the image's newest layer (revision 0 is a whole root filesystem)."""
    record = json.loads((bench.store / "images" / image / "image.json").read_text())
    return bench.store / "layers" / str(record["layers"][-1]["id"]) / "tree"


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` says the binary loads, and its program interpreter."""
    found = []
    for line in run(["ldd", binary], capture=True).stdout.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if not target.startswith("/"):
                raise SystemExit(f"bench: {binary} needs a library ldd cannot find: {line.strip()}")
            found.append(Path(target))
        elif words and words[0].startswith("/"):
            found.append(Path(words[0]))
    return found


def install_host_file(tree: Path, path: Path, *, depth: int = 0) -> None:
    """Copy the host's file `path` to the same path in `tree`, making each symlink on the way as the host has
    it. The tree's own symlinks are never followed: a path in the tree that differs from the host's stops."""
    if depth > 16:
        raise SystemExit(f"bench: too many symlinks resolving {path}")
    parts = path.parts[1:]
    current = Path("/")
    for index, part in enumerate(parts):
        host = current / part
        inside = tree / host.relative_to("/")
        if host.is_symlink():
            target = os.readlink(host)
            if inside.is_symlink():
                if os.readlink(inside) != target:
                    raise SystemExit(f"bench: {inside} points elsewhere than {host}")
            elif inside.exists():
                raise SystemExit(f"bench: {inside} is no symlink, {host} is")
            else:
                os.symlink(target, inside)
            resolved = Path(os.path.normpath(host.parent / target)).joinpath(*parts[index + 1 :])
            install_host_file(tree, resolved, depth=depth + 1)
            return
        if inside.is_symlink():
            raise SystemExit(f"bench: {inside} is a symlink, {host} is not")
        if index < len(parts) - 1:
            inside.mkdir(exist_ok=True)
        current = host
    shutil.copy2(current, tree / current.relative_to("/"))


def make_iperf_tree(bench: Bench, tree: Path) -> None:
    """The busybox image's tree plus the host's iperf3 and the libraries it loads, at the host's paths."""
    run(["cp", "-a", "--", image_tree(bench, "bb"), tree])
    for path in (IPERF, *shared_libraries(IPERF)):
        install_host_file(tree, path)
    # The same binary must run in the tree as on the host: try it before veneer copies the tree.
    version = run(["chroot", tree, os.fspath(IPERF), "--version"], capture=True).stdout
    bench.info["iperf3_in_image"] = version.splitlines()[0]


def store_machines(bench: Bench) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in json.loads(bench.veneer("list", "--json").stdout)}


@dataclass(kw_only=True)
class Veneer:
    """The images of the run's store, made on first use; `bb` from busybox, `ipf` with iperf3 added."""

    bench: Bench
    pool: IPv4Network
    made: set[str] = field(default_factory=set)

    def busybox(self) -> None:
        if "bb" in self.made:
            return
        self.bench.defer(lambda: self.remove_image("bb"), "veneer image rm bb")
        self.bench.timed_setup("veneer image create bb --busybox", self._create_busybox)
        self.made.add("bb")
        # The nat network's subnet, set the documented way (network.json) before the first nat machine is
        # made: outside veneer's candidate pools, so that no other store on this busy host can choose it too
        # (veneer chooses a pool at a store's first nat create, from the host's routes of that moment).
        layout = self.bench.layout
        config = NetworkConfig(bridge=layout.nat_bridge, pool=Pool.from_subnet(self.pool))
        save_network_config(layout.network_config, config)

    def _create_busybox(self) -> None:
        self.bench.veneer("image", "create", "bb", "--busybox")

    def iperf(self) -> None:
        if "ipf" in self.made:
            return
        self.busybox()
        tree = self.bench.scratch / "ipf-tree"
        self.bench.timed_setup(
            "iperf3 tree: bb's tree + host iperf3 and its libraries",
            lambda: make_iperf_tree(self.bench, tree),
        )
        self.bench.defer(lambda: self.remove_image("ipf"), "veneer image rm ipf")
        self.bench.timed_setup("veneer image create ipf --from-dir TREE", lambda: self._create_iperf(tree))
        run(["rm", "-rf", "--one-file-system", tree], capture=True)
        self.made.add("ipf")

    def _create_iperf(self, tree: Path) -> None:
        self.bench.veneer("image", "create", "ipf", "--from-dir", os.fspath(tree))

    def create(self, machine: str, image: str, network: str) -> None:
        """Create a machine, to be stopped (if it runs) and removed at the end of the run."""
        self.bench.defer(lambda: self.remove(machine), f"veneer rm {machine}")
        self.bench.veneer("create", machine, "--from", image, "--network", network)
        self.bench.defer(lambda: self.stop(machine), f"veneer stop {machine}")

    def remove(self, machine: str) -> None:
        if machine in store_machines(self.bench):
            self.bench.veneer("rm", machine)

    def remove_image(self, image: str) -> None:
        if image in {i["name"] for i in json.loads(self.bench.veneer("image", "list", "--json").stdout)}:
            self.bench.veneer("image", "rm", image)

    def stop(self, machine: str) -> None:
        if store_machines(self.bench).get(machine, {}).get("state") == "running":
            self.bench.veneer("stop", machine)

    def address(self, machine: str) -> IPv4Address:
        addresses = store_machines(self.bench)[machine]["addresses"]
        return IPv4Address(addresses[0])

    @property
    def bridge(self) -> str:
        return self.bench.layout.nat_bridge


# Runs a client command somewhere (on the host, in a machine, in a namespace); a Client says where, once the
# topology exists.
Runner = Callable[[Sequence[str]], Completed]
Client = Callable[[], Runner]


@dataclass(kw_only=True)
class Topology:
    """What `throughput` and `latency` share: two running veneer nat machines with iperf3 servers, and the
    plain namespaces with theirs. Made on first use."""

    bench: Bench
    veneer: Veneer
    plain: Plain
    machines: dict[str, str] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)
    up: bool = False

    def ensure(self) -> None:
        if not self.up:
            self.bench.timed_setup(
                "topology: 2 veneer nat machines, 3 namespaces, 5 iperf3 servers", self._make
            )
            self.up = True

    def _make(self) -> None:
        bench, tag = self.bench, self.bench.tag
        self.veneer.iperf()
        for which in ("a", "b"):
            machine = f"nb{tag}{which}"
            self.machines[which] = machine
            self.veneer.create(machine, "ipf", "nat")
            bench.veneer("start", machine, "--wait")
            self.peers[f"veneer {which}"] = Peer(
                label=f"veneer machine {machine}",
                address=self.veneer.address(machine),
                host_link=self.veneer.bridge,
            )
        inspect = json.loads(bench.veneer("network", "inspect", "--json").stdout)
        if inspect["bridge"] != self.veneer.bridge or IPv4Network(inspect["subnet"]) != self.veneer.pool:
            raise SystemExit(f"bench: veneer's nat network is not the run's own: {inspect}")
        bench.info["veneer_network"] = inspect
        self.plain.setup(bench)
        self.peers["plain v"] = self.plain.veth_peer
        self.peers["plain a"] = self.plain.bridge_peer("a")
        self.peers["plain b"] = self.plain.bridge_peer("b")
        for peer in self.peers.values():
            check_route(peer)
        bench.info["links"] = {
            "veneer machine veth (host side, made by nspawn)": link_details(f"vb-{self.machines['a']}"),
            "veneer bridge": link_details(self.veneer.bridge),
            "plain veth (host side)": link_details(self.plain.host_link("v")),
            "plain bridge port (host side)": link_details(self.plain.host_link("a")),
            "plain bridge": link_details(self.plain.bridge),
        }
        bench.info["bridge_nf_call_iptables"] = read_sysctl("net/bridge/bridge-nf-call-iptables")
        inside: dict[str, dict[str, Any]] = {}
        for which, machine in self.machines.items():
            argv = bench.veneer_argv("exec", machine, "--", "iperf3", "-s", "-p", str(IPERF_PORT))
            server = start_server(bench, f"veneer-{which}", argv, env=bench.veneer_env())
            inside[f"veneer machine {which}"] = netns_details(server.iperf_pid, "host0")
        for which in ("v", "a", "b"):
            argv = self.plain.exec_argv(which, [os.fspath(IPERF), "-s", "-p", str(IPERF_PORT)])
            server = start_server(bench, f"plain-{which}", argv)
            inside[f"plain netns {which}"] = netns_details(server.iperf_pid, "eth0")
        bench.info["inside"] = inside

    def in_machine(self, which: str) -> Runner:
        machine = self.machines[which]
        return lambda argv: self.bench.veneer("exec", machine, "--", *argv)

    def in_netns(self, which: str) -> Runner:
        return lambda argv: run(self.plain.exec_argv(which, argv), capture=True)


def on_host(argv: Sequence[str]) -> Completed:
    return run(argv, capture=True)


def read_sysctl(name: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys", name).read_text().strip()
    return None


# ---------------------------------------------------------------------------------------------------------
# Contenders.


class Contender:
    """One way of doing the benchmark's task. `measure()` returns the repetition's samples."""

    group = ""  # rows of a group share a reference (the direction of traffic, or "start")
    name = ""
    command = ""
    reference = 0  # index in its benchmark of the contender this one's ratio is to

    def setup(self) -> None:
        """Untimed, once, before the first repetition."""

    def prepare(self, i: int) -> None:
        """Untimed, before each repetition."""

    def measure(self, i: int) -> list[float]:
        raise NotImplementedError

    def reset(self, i: int) -> None:
        """Untimed, after each repetition."""

    def teardown(self) -> None:
        """Untimed, once; also after a failed `setup()`."""

    def extras(self) -> dict[str, Any]:
        """What the contender recorded besides its samples, for the JSON."""
        return {}

    def notes(self) -> list[str]:
        return []


class Iperf(Contender):
    """`iperf3 -c TARGET -t 5 -J` (with `-R`: the server sends), from the host, a machine or a namespace.
    The sample is the receiver's bits per second (`end.sum_received`)."""

    def __init__(
        self,
        topology: Topology,
        *,
        group: str,
        name: str,
        where: str,
        client: Client,
        target: str,
        reverse: bool,
        reference: int,
    ) -> None:
        self.topology, self.group, self.name, self.reference = topology, group, name, reference
        self.client_of, self.target, self.reverse = client, target, reverse
        self.argv = ["iperf3", "-c", "ADDR", "-p", str(IPERF_PORT), "-t", str(IPERF_SECONDS), "-J"]
        self.argv += ["-R"] if reverse else []
        self.command = f"{where}: {shlex.join(self.argv)}".replace("ADDR", target.upper().replace(" ", "_"))
        self.retransmits: list[int] = []
        self.cpu: list[dict[str, float]] = []

    def setup(self) -> None:
        self.topology.ensure()

    def prepare(self, i: int) -> None:
        check_route(self.topology.peers[self.target])

    def measure(self, i: int) -> list[float]:
        peer = self.topology.peers[self.target]
        argv = [str(peer.address) if word == "ADDR" else word for word in self.argv]
        report = json.loads(self.client_of()(argv).stdout)
        end = report["end"]
        if i >= 0:  # as the samples: timed repetitions only
            self.retransmits.append(int(end["sum_sent"].get("retransmits", 0)))
            self.cpu.append(end.get("cpu_utilization_percent", {}))
        return [float(end["sum_received"]["bits_per_second"])]

    def extras(self) -> dict[str, Any]:
        return {"retransmits": self.retransmits, "cpu_utilization_percent": self.cpu}


PING_LINE = re.compile(r"seq=(\d+) ttl=\d+ time=([0-9.]+) ms")


class Ping(Contender):
    """busybox `ping -c 201 -i 0.002 TARGET`, from the host, a machine or a namespace; the samples are the
    round-trip times in ms of echo 1 to 200 (echo 0 may wait for ARP and is left out)."""

    def __init__(
        self,
        topology: Topology,
        *,
        group: str,
        name: str,
        where: str,
        client: Client,
        busybox: str,
        target: str,
        reference: int,
    ) -> None:
        self.topology, self.group, self.name, self.reference = topology, group, name, reference
        self.client_of, self.target = client, target
        self.argv = [busybox, "ping", "-c", str(PINGS + 1), "-i", PING_INTERVAL, "ADDR"]
        self.command = f"{where}: {shlex.join(self.argv)}".replace("ADDR", target.upper().replace(" ", "_"))
        self.lost = 0

    def setup(self) -> None:
        self.topology.ensure()

    def prepare(self, i: int) -> None:
        check_route(self.topology.peers[self.target])

    def measure(self, i: int) -> list[float]:
        peer = self.topology.peers[self.target]
        argv = [str(peer.address) if word == "ADDR" else word for word in self.argv]
        output = self.client_of()(argv).stdout
        times = {int(seq): float(ms) for seq, ms in PING_LINE.findall(output)}
        if i >= 0:
            self.lost += PINGS + 1 - len(times)
        return [ms for seq, ms in sorted(times.items()) if seq > 0]

    def notes(self) -> list[str]:
        return [f"{self.lost} echo replies missing in all repetitions"] if self.lost else []


class VeneerStart(Contender):
    """`veneer start M --wait` of a busybox machine (timed); `veneer stop M` after (untimed). With
    `beside`, another nat machine of the store runs meanwhile (started and stopped untimed)."""

    def __init__(self, bench: Bench, veneer: Veneer, *, network: str, beside: bool, reference: int) -> None:
        self.bench, self.veneer, self.network, self.beside = bench, veneer, network, beside
        self.group, self.reference = "start", reference
        suffix = {"none": "none", "nat": "nat2" if beside else "nat"}[network]
        self.machine = f"nb{bench.tag}{suffix}"
        self.keeper = f"nb{bench.tag}keep" if beside else None
        self.name = f"--network {network}" + (", another nat machine running" if beside else "")
        if network == "nat" and not beside:
            self.name += ", the store's first"
        self.command = "veneer start M --wait"
        self.unreachable = 0
        self.checks = 0
        self.left_after_stop: list[str] = []

    def setup(self) -> None:
        self.veneer.busybox()
        self.veneer.create(self.machine, "bb", self.network)
        if self.keeper:
            self.veneer.create(self.keeper, "bb", "nat")

    def prepare(self, i: int) -> None:
        if self.keeper:
            self.bench.veneer("start", self.keeper, "--wait")

    def measure(self, i: int) -> list[float]:
        start = time.perf_counter()
        self.bench.veneer("start", self.machine, "--wait")
        return [time.perf_counter() - start]

    def reset(self, i: int) -> None:
        if self.network == "nat":
            # Reachable as soon as start returns? One echo, from the host, through the store's bridge.
            peer = Peer(
                label=self.machine, address=self.veneer.address(self.machine), host_link=self.veneer.bridge
            )
            check_route(peer)
            probe = run(
                [BUSYBOX, "ping", "-c", "1", "-W", "1", str(peer.address)], capture=True, check=False
            )
            self.checks += 1
            self.unreachable += probe.returncode != 0
        self.bench.veneer("stop", self.machine)
        if self.keeper:
            self.bench.veneer("stop", self.keeper)
        if self.network == "nat":
            # The last nat machine of the store takes the bridge, the nftables tables and dnsmasq along.
            layout = self.bench.layout
            left = [f"bridge {layout.nat_bridge}"] if link_exists(layout.nat_bridge) else []
            for family in ("ip", "bridge"):
                table = run(["nft", "list", "table", family, layout.nat_table], capture=True, check=False)
                left += [f"nft table {family} {layout.nat_table}"] if table.returncode == 0 else []
            if left:
                self.left_after_stop.append(f"repetition {i}: {', '.join(left)}")

    def notes(self) -> list[str]:
        notes = []
        if self.checks:
            notes.append(
                f"ping right after start: {self.checks - self.unreachable} of {self.checks} answered"
                " (warm-up included)"
            )
        if self.left_after_stop:
            notes.append("left after the stop of the last nat machine: " + "; ".join(self.left_after_stop))
        return notes


# ---------------------------------------------------------------------------------------------------------
# Benchmarks.


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    name: str
    what: str
    unit: str  # "bit/s", "ms" (round trips) or "s" (wall clock)
    contenders: Callable[[Bench, Topology, Veneer], list[Contender]]


def throughput_contenders(bench: Bench, topology: Topology, veneer: Veneer) -> list[Contender]:
    t = topology

    def iperf(
        group: str, name: str, where: str, client: Client, target: str, reverse: bool, ref: int
    ) -> Iperf:
        return Iperf(
            t,
            group=group,
            name=name,
            where=where,
            client=client,
            target=target,
            reverse=reverse,
            reference=ref,
        )

    def host() -> Runner:
        return on_host

    up, down, across = "host → machine", "machine → host", "machine → machine"
    return [
        iperf(up, "veneer nat machine", "host", host, "veneer a", False, 1),
        iperf(up, "plain veth namespace", "host", host, "plain v", False, 1),
        iperf(up, "plain bridge namespace", "host", host, "plain a", False, 1),
        iperf(down, "veneer nat machine", "host", host, "veneer a", True, 4),
        iperf(down, "plain veth namespace", "host", host, "plain v", True, 4),
        iperf(down, "plain bridge namespace", "host", host, "plain a", True, 4),
        iperf(
            across, "veneer nat machines", "in machine a", lambda: t.in_machine("a"), "veneer b", False, 7
        ),
        iperf(across, "plain bridge namespaces", "in netns a", lambda: t.in_netns("a"), "plain b", False, 7),
    ]


def latency_contenders(bench: Bench, topology: Topology, veneer: Veneer) -> list[Contender]:
    t = topology
    host_bb = os.fspath(BUSYBOX)

    def ping(group: str, name: str, where: str, client: Client, busybox: str, target: str, ref: int) -> Ping:
        return Ping(
            t,
            group=group,
            name=name,
            where=where,
            client=client,
            busybox=busybox,
            target=target,
            reference=ref,
        )

    def host() -> Runner:
        return on_host

    up, across = "host → machine", "machine → machine"
    return [
        ping(up, "veneer nat machine", "host", host, host_bb, "veneer a", 1),
        ping(up, "plain veth namespace", "host", host, host_bb, "plain v", 1),
        ping(up, "plain bridge namespace", "host", host, host_bb, "plain a", 1),
        ping(
            across,
            "veneer nat machines",
            "in machine a",
            lambda: t.in_machine("a"),
            "busybox",
            "veneer b",
            4,
        ),
        ping(
            across, "plain bridge namespaces", "in netns a", lambda: t.in_netns("a"), host_bb, "plain b", 4
        ),
    ]


def start_contenders(bench: Bench, topology: Topology, veneer: Veneer) -> list[Contender]:
    return [
        VeneerStart(bench, veneer, network="none", beside=False, reference=0),
        VeneerStart(bench, veneer, network="nat", beside=False, reference=0),
        VeneerStart(bench, veneer, network="nat", beside=True, reference=0),
    ]


BENCHMARKS = (
    Benchmark(
        name="start",
        what="veneer start --wait of a busybox machine: --network nat against --network none",
        unit="s",
        contenders=start_contenders,
    ),
    Benchmark(
        name="throughput",
        what=f"TCP throughput, iperf3 -t {IPERF_SECONDS}: veneer's nat network against plain veth pairs",
        unit="bit/s",
        contenders=throughput_contenders,
    ),
    Benchmark(
        name="latency",
        what=f"round trips, busybox ping -c {PINGS + 1} -i {PING_INTERVAL}: veneer against plain veth pairs",
        unit="ms",
        contenders=latency_contenders,
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Summaries and tables.


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(
    benchmark: Benchmark, contenders: Sequence[Contender], samples: list[list[list[float]]]
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for contender, series in zip(contenders, samples, strict=True):
        row: dict[str, Any] = {
            "group": contender.group,
            "name": contender.name,
            "command": contender.command,
            "reference": contenders[contender.reference].name,
            "samples": series,
            "notes": contender.notes(),
            **contender.extras(),
        }
        if benchmark.unit == "ms":
            p50s = [percentile(rep, 50) for rep in series]
            p99s = [percentile(rep, 99) for rep in series]
            pooled = [value for rep in series for value in rep]
            row.update(
                p50_ms=statistics.median(p50s),
                p99_ms=statistics.median(p99s),
                min_ms=min(pooled),
                pooled_p50_ms=percentile(pooled, 50),
                pooled_p99_ms=percentile(pooled, 99),
                per_repetition_p50_ms=p50s,
                per_repetition_p99_ms=p99s,
                per_repetition=p50s,
            )
        else:
            values = [rep[0] for rep in series]
            row.update(
                median=statistics.median(values), min=min(values), max=max(values), per_repetition=values
            )
        rows.append(row)
    key = "p50_ms" if benchmark.unit == "ms" else "median"
    for row, contender in zip(rows, contenders, strict=True):
        reference = rows[contender.reference]
        row["ratio"] = row[key] / reference[key]
        # Contenders take turns within a repetition, so a repetition's ratio compares measurements made
        # seconds apart; its median drifts less with the host's load than the ratio of the medians.
        pairs = zip(row["per_repetition"], reference["per_repetition"], strict=True)
        row["paired_ratios"] = [ours / theirs for ours, theirs in pairs]
        row["paired_ratio_median"] = statistics.median(row["paired_ratios"])
        if benchmark.unit == "ms":
            row["ratio_p99"] = row["p99_ms"] / rows[contender.reference]["p99_ms"]
    return {"name": benchmark.name, "what": benchmark.what, "unit": benchmark.unit, "contenders": rows}


def gbits(value: float) -> str:
    return f"{value / 1e9:.2f} Gbit/s"


def micro(ms: float) -> str:
    return f"{ms * 1000:.0f} µs"


def milli(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def paired(row: dict[str, Any]) -> str:
    """The median of the per-repetition ratios, and their range."""
    ratios = row["paired_ratios"]
    return f"{row['paired_ratio_median']:.2f}x ({min(ratios):.2f}–{max(ratios):.2f})"


def format_table(result: dict[str, Any]) -> list[str]:
    rows = result["contenders"]
    if result["unit"] == "bit/s":
        lines = [
            f"`{result['name']}`: {result['what']}",
            "",
            "| direction | contender | median | min | max | median / plain | paired | retransmits |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['group']} | {row['name']} | {gbits(row['median'])} | {gbits(row['min'])} "
                f"| {gbits(row['max'])} | {row['ratio']:.2f}x | {paired(row)} "
                f"| {statistics.median(row['retransmits']):g} |"
            )
    elif result["unit"] == "ms":
        lines = [
            f"`{result['name']}`: {result['what']}",
            "",
            "| direction | contender | p50 | p99 | min | p50 / plain | paired p50 | p99 / plain |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['group']} | {row['name']} | {micro(row['p50_ms'])} | {micro(row['p99_ms'])} "
                f"| {micro(row['min_ms'])} | {row['ratio']:.2f}x | {paired(row)} | {row['ratio_p99']:.2f}x |"
            )
    else:
        lines = [
            f"`{result['name']}`: {result['what']}",
            "",
            "| contender | timed command | median | min | max | median / --network none | paired |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['name']} | `{row['command']}` | {milli(row['median'])} | {milli(row['min'])} "
                f"| {milli(row['max'])} | {row['ratio']:.2f}x | {paired(row)} |"
            )
    notes = [f"- {row['group']}, {row['name']}: {note}" for row in rows for note in row["notes"]]
    return [*lines, *([""] + notes if notes else [])]


# ---------------------------------------------------------------------------------------------------------
# Host details, and the last cleanups: leftovers of the store, processes, mounts, the scratch dir.


def host_info(scratch: Path) -> dict[str, Any]:
    return {
        **machine_info(scratch),
        "iperf3": first_line([os.fspath(IPERF), "--version"]),
        "busybox": first_line([os.fspath(BUSYBOX)]),
        "systemd_nspawn": first_line(["systemd-nspawn", "--version"]),
    }


def processes_under(path: Path) -> dict[int, str]:
    """Processes whose command line, working directory or root is under `path`: left behind by the run."""
    prefix = os.fspath(path) + "/"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            places = [cmdline]
            for link in ("cwd", "root"):
                with contextlib.suppress(OSError):
                    places.append(os.readlink(entry / link) + "/")
            if any(prefix in place for place in places):
                found[int(entry.name)] = cmdline.strip()
    return found


def remove_leftovers(bench: Bench) -> None:
    """After every other cleanup: what veneer should have removed with the store's last machine (reported,
    then removed), and any process still using the scratch dir (ended by pid)."""
    layout = bench.layout
    if link_exists(layout.nat_bridge):
        bench.leftovers.append(f"bridge {layout.nat_bridge}")
        remove_link(layout.nat_bridge)
    for family in ("ip", "bridge"):
        listed = run(["nft", "list", "table", family, layout.nat_table], capture=True, check=False)
        if listed.returncode == 0:
            bench.leftovers.append(f"nft table {family} {layout.nat_table}")
            run(["nft", "delete", "table", family, layout.nat_table], capture=True, check=False)
    group = Path(layout.cgroup("m")).parent
    for hierarchy in {*Path("/sys/fs/cgroup").glob("*"), Path("/sys/fs/cgroup")}:
        if (hierarchy / group).is_dir():
            bench.leftovers.append(f"cgroup {hierarchy / group}")
            for dirpath, _, _ in sorted(os.walk(hierarchy / group), key=lambda walk: -len(walk[0])):
                with contextlib.suppress(OSError):
                    Path(dirpath).rmdir()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        found = processes_under(bench.scratch)
        for pid, cmdline in found.items():
            if sig == signal.SIGTERM:
                bench.leftovers.append(f"process {pid}: {cmdline[:200]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if found:
            time.sleep(1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="veneer network benchmarks (as root)")
    parser.add_argument("--only", choices=[b.name for b in BENCHMARKS], help="run one benchmark")
    parser.add_argument("--repeat", type=int, help="repetitions per contender (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (namespaces, links, nspawn)", file=sys.stderr)
        return 2
    if args.repeat is not None and args.repeat < 1:
        print("bench: --repeat must be at least 1", file=sys.stderr)
        return 2
    for tool in (IPERF, BUSYBOX):
        if not os.access(tool, os.X_OK):
            print(f"bench: {tool} is missing (apt-get install iperf3 busybox-static)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    selected = [b for b in BENCHMARKS if args.only in (None, b.name)]
    started, load_at_start = time.time(), loadavg()
    with scratch_dir("veneer-netbench-") as scratch, contextlib.ExitStack() as cleanups:
        bench = Bench(scratch=scratch, tag=secrets.token_hex(2), cleanups=cleanups)
        # Registered first, so it runs last, once every machine, namespace and server is gone.
        bench.defer(lambda: remove_leftovers(bench), "remove leftovers")
        pool, veth, bridge = free_subnets(3, avoid=[])
        veneer = Veneer(bench=bench, pool=pool)
        plain = Plain(tag=bench.tag, veth_subnet=veth, bridge_subnet=bridge)
        topology = Topology(bench=bench, veneer=veneer, plain=plain)
        bench.info["subnets"] = {
            "veneer pool": str(pool),
            "plain veth": str(veth),
            "plain bridge": str(bridge),
        }
        results = []
        for benchmark in selected:
            log(f"benchmark '{benchmark.name}': {benchmark.what}")
            repeat = args.repeat or DEFAULT_REPEAT[benchmark.name]
            contenders = benchmark.contenders(bench, topology, veneer)
            samples = take_turns(contenders, repeat, args.warmup, lambda c, i: c.measure(i))
            results.append(summarize(benchmark, contenders, samples))
        report: dict[str, Any] = {
            "version": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "arguments": {"only": args.only, "repeat": args.repeat, "warmup": args.warmup},
            "host": {**host_info(bench.scratch), "loadavg_at_start": load_at_start},
            "setup_s": bench.setup_seconds,
            "details": bench.info,
            "benchmarks": results,
        }
    # The cleanups ran when the `with` ended: only now is it known whether all of them worked.
    report["cleanup_failures"] = bench.cleanup_failures
    report["leftovers"] = bench.leftovers
    lines: list[str] = []
    for result in results:
        lines += [*format_table(result), ""]
    if bench.leftovers:
        lines.append("Left behind by veneer (removed by the harness): " + "; ".join(bench.leftovers))
    table = "\n".join(lines).strip("\n")
    print(table)
    save_report({**report, "table": table}, started, prefix="network-")
    if bench.cleanup_failures:
        log(f"some cleanups failed (see above): {', '.join(bench.cleanup_failures)}")
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main)
