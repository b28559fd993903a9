"""`veneer stats` on this host's supervisor and cgroup layout: figures that agree with the cgroup files read
directly, network counters that agree with a known byte count sent to and from a machine (between the
machine and the host's address on the test store's own bridge), OpenMetrics a Prometheus parser accepts.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as classic_families

from tests.integration.helpers import Store
from veneer.config.layout import Layout
from veneer.runtime.cgroups import Hierarchies
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

SENT = 1_000_000
# What a transfer costs on the wire beyond its payload: Ethernet, IP and TCP headers (66 bytes per segment
# of at least 536 bytes), the handshake, acknowledgements, ARP; a generous bound, not a timing.
OVERHEAD = SENT // 8 + 16_384


def stats(store: Store, *names: str) -> dict[str, Any]:
    readings = json.loads(store.veneer("stats", *names, "--json").stdout)
    return {r["name"]: r for r in readings}


@pytest.fixture
def machine(busybox: Store) -> Iterator[Store]:
    busybox.veneer("create", "s1", "--from", "bb", "--memory", "256M", "--pids", "200")
    busybox.veneer("start", "s1", "--wait")
    yield busybox
    busybox.veneer("stop", "s1", "--timeout", "5", ok=(0, 1))


@contextlib.contextmanager
def frozen(directory: Path) -> Iterator[None]:
    """The cgroup frozen (by the test itself), so its figures hold still while both sides read them."""
    (directory / "cgroup.freeze").write_text("1")
    try:
        while "frozen 1" not in (directory / "cgroup.events").read_text().splitlines():
            time.sleep(0.01)
        yield
    finally:
        (directory / "cgroup.freeze").write_text("0")


def read_int(path: Path) -> int:
    return int(path.read_text())


def test_stats_agree_with_the_cgroup_files(machine: Store) -> None:
    store = machine
    store.veneer("exec", "s1", "--", "sh", "-c", "dd if=/dev/zero of=/root/blk bs=64k count=64 conv=fsync")
    hierarchies = Hierarchies.detect()
    cgroup = Layout(root=store.root, run=store.run).cgroup("s1")
    assert hierarchies.unified is not None
    unified = hierarchies.unified / cgroup
    v2 = set((hierarchies.unified / "cgroup.controllers").read_text().split())

    def file(controller: str, v2_name: str, v1_name: str) -> Path:
        return unified / v2_name if controller in v2 else hierarchies.v1[controller] / cgroup / v1_name

    host = Path("/sys/class/net/vb-s1/statistics")
    with frozen(unified):
        # The network counters may grow meanwhile (the bridge's multicast, ARP answered by the machine's
        # kernel, which no freezer stops): they are bounded.
        sent_before, received_before = read_int(host / "tx_bytes"), read_int(host / "rx_bytes")
        reading = stats(store, "s1")["s1"]
        sent_after, received_after = read_int(host / "tx_bytes"), read_int(host / "rx_bytes")
        cpu = dict(line.split() for line in (unified / "cpu.stat").read_text().splitlines())
        memory = read_int(file("memory", "memory.current", "memory.usage_in_bytes"))
        pids = read_int(file("pids", "pids.current", "pids.current"))
        if "io" in v2:
            io = [
                dict(f.split("=") for f in line.split()[1:])
                for line in (unified / "io.stat").read_text().splitlines()
            ]
            block = (sum(int(d["rbytes"]) for d in io), sum(int(d["wbytes"]) for d in io))
        else:
            lines = (
                hierarchies.v1["blkio"] / cgroup / "blkio.throttle.io_service_bytes_recursive"
            ).read_text()
            fields = [line.split() for line in lines.splitlines()]
            read, written = (
                sum(int(f[2]) for f in fields if len(f) == 3 and f[1] == op) for op in ("Read", "Write")
            )
            block = (read, written)
    assert reading["supervisor"] == "standalone" and reading["cgroup"] == cgroup
    assert reading["cpu_seconds"] == int(cpu["usage_usec"]) / 1e6 > 0
    assert reading["memory_bytes"] == memory > 0
    assert reading["pids"] == pids > 0
    assert (reading["block_read_bytes"], reading["block_write_bytes"]) == block
    assert reading["memory_limit_bytes"] == 256 * 1024 * 1024 and reading["pids_limit"] == 200
    assert reading["interface"] == "vb-s1"
    # The host side's counters are the machine's, crossed.
    assert sent_before <= reading["net_rx_bytes"] <= sent_after
    assert received_before <= reading["net_tx_bytes"] <= received_after


def addresses(store: Store) -> tuple[str, str]:
    """The machine's address and the host's on the store's bridge."""
    status = json.loads(store.veneer("status", "s1", "--json").stdout)
    bridge = Layout(root=store.root, run=store.run).nat_bridge
    line = proc.run(["ip", "-4", "-o", "addr", "show", "dev", bridge], capture=True).stdout
    return status["addresses"][0], line.split()[3].split("/")[0]


def test_network_counters_match_the_bytes_sent(machine: Store) -> None:
    store = machine
    guest, host = addresses(store)
    # Into the machine: nc listens in it, the host connects to its address and sends SENT bytes.
    before = stats(store, "s1")["s1"]
    listener = store.spawn("exec", "s1", "--", "sh", "-c", "nc -l -p 9000 > /dev/null")
    with socket.socket() as conn:
        for _attempt in range(200):  # until nc listens
            try:
                conn.connect((guest, 9000))
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        conn.sendall(bytes(SENT))
    assert listener.wait() == 0
    after = stats(store, "s1")["s1"]
    received = after["net_rx_bytes"] - before["net_rx_bytes"]
    assert SENT <= received <= SENT + OVERHEAD, received
    # Out of it: the host listens on its bridge address, nc in the machine sends SENT bytes.
    before = after
    with socket.socket() as server:
        server.bind((host, 0))
        server.listen()
        server.settimeout(60)
        sender = store.spawn(
            "exec", "s1", "--", "sh", "-c", f"head -c {SENT} /dev/zero | nc {host} {server.getsockname()[1]}"
        )
        conn, _ = server.accept()
        with conn:
            got = 0
            while got < SENT and (chunk := conn.recv(65536)):
                got += len(chunk)
        assert got == SENT
    assert sender.wait() == 0
    after = stats(store, "s1")["s1"]
    sent = after["net_tx_bytes"] - before["net_tx_bytes"]
    assert SENT <= sent <= SENT + OVERHEAD, sent


def test_openmetrics_watch_and_errors(machine: Store) -> None:
    store = machine
    text = store.veneer("stats", "--format", "openmetrics").stdout
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # type: ignore[no-untyped-call]
    cpu = families["veneer_machine_cpu_seconds"]
    assert cpu.type == "counter" and cpu.unit == "seconds"
    assert [(s.name, s.labels) for s in cpu.samples] == [
        ("veneer_machine_cpu_seconds_total", {"machine": "s1"})
    ]
    assert families["veneer_machine_memory_limit_bytes"].samples[0].value == 256 * 1024 * 1024
    assert families["veneer_machine_network_receive_bytes"].samples[0].value > 0
    # The classic text format for node_exporter's textfile collector: TYPE names the `_total` sample.
    classic = store.veneer("stats", "--format", "prometheus").stdout
    assert "# EOF" not in classic and "# UNIT" not in classic
    parsed = {f.name: f for f in classic_families(classic)}
    assert parsed["veneer_machine_cpu_seconds"].type == "counter"
    assert "# TYPE veneer_machine_cpu_seconds_total counter" in classic
    # --watch: a reading per interval, a JSON line each, until interrupted.
    watch = proc.spawn_piped(
        store.argv("stats", "--watch", "0.1", "--json"),
        stdin=None,
        stdout=proc.PIPE,
        stderr=None,
        env=store.env(),
    )
    try:
        assert watch.stdout is not None
        lines = [json.loads(watch.stdout.readline()) for _ in range(2)]
    finally:
        watch.kill()
        watch.wait()
        if watch.stdout is not None:
            watch.stdout.close()
    assert [r["name"] for line in lines for r in line] == ["s1", "s1"]
    assert lines[1][0]["cpu_seconds"] >= lines[0][0]["cpu_seconds"]
    # A table; a stopped machine named is an error that says what to do.
    assert "s1" in store.veneer("stats").stdout
    store.veneer("create", "s2", "--from", "bb", "--network", "none")
    stopped = store.veneer("stats", "s2", ok=(1,))
    assert "Machine 's2' is not running" in stopped.stderr and "veneer start s2" in stopped.stderr
    assert json.loads(store.veneer("stats", "--json").stdout)[0]["name"] == "s1"
