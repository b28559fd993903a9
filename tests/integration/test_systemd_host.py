"""veneer on a host where systemd is PID 1 on cgroup v2: scenarios run in a VM (`vms.py`).

Each test removes the machines it made: the VM is shared by the whole session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.vms import VirtualMachine

pytestmark = [pytest.mark.root]


def machine(vm: VirtualMachine, name: str) -> dict[str, object]:
    """The machine's entry in `veneer list --json`."""
    (entry,) = (m for m in json.loads(vm.veneer("list", "--json").stdout) if m["name"] == name)
    assert isinstance(entry, dict)
    return entry


def machined_knows(vm: VirtualMachine, name: str) -> bool:
    return vm.run(["machinectl", "show", name], ok=None).returncode == 0


def veneer_processes(vm: VirtualMachine) -> list[str]:
    """Processes in the guest that veneer starts for a machine: nspawn, its console keeper, veneer."""
    listing = vm.run(["ps", "-e", "-o", "pid=,args="]).stdout.splitlines()
    return [line for line in listing if any(word in line for word in ("nspawn", "tmux", "veneer"))]


def assert_nothing_left(vm: VirtualMachine, name: str) -> None:
    """No process, mount or cgroup of veneer's or of the machine's is left in the guest."""
    assert veneer_processes(vm) == []
    mounts = vm.run(["findmnt", "--list", "--noheadings", "--output", "TARGET"]).stdout.split()
    assert [m for m in mounts if "/veneer/" in m] == []
    find = ["find", "/sys/fs/cgroup", "-type", "d", "(", "-name", "veneer", "-o", "-name", f"*{name}*", ")"]
    assert vm.run(find).stdout.split() == []


@pytest.fixture
def m1(busybox_vm: VirtualMachine) -> Iterator[VirtualMachine]:
    """The VM with the machine 'm1' made from the busybox image; stopped and removed afterwards."""
    busybox_vm.veneer("create", "m1", "--from", "bb")
    yield busybox_vm
    busybox_vm.veneer("stop", "m1", ok=None)
    busybox_vm.veneer("rm", "m1", ok=None)


@pytest.fixture
def d1(debian_vm: VirtualMachine) -> Iterator[VirtualMachine]:
    """The VM with the machine 'd1' made from the Debian image; stopped and removed afterwards."""
    debian_vm.veneer("create", "d1", "--from", "deb")
    yield debian_vm
    debian_vm.veneer("stop", "d1", ok=None)
    debian_vm.veneer("rm", "d1", ok=None)


def test_the_vm_is_a_systemd_host_on_cgroup_v2(systemd_vm: VirtualMachine) -> None:
    vm = systemd_vm
    assert vm.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert vm.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
    assert vm.run(["readlink", "/proc/1/root"]).stdout.strip() == "/"
    # What the guest runs is this checkout, read-only.
    assert vm.veneer("--help").returncode == 0
    assert vm.run(["touch", "/veneer/README.md"], ok=(1,)).returncode == 1


def test_the_vm_reboots_keeping_its_disk(systemd_vm: VirtualMachine) -> None:
    vm = systemd_vm
    vm.run(["sh", "-c", "echo kept >/var/tmp/vm-marker && echo gone >/run/vm-marker"])
    vm.reboot()
    try:
        assert vm.run(["cat", "/var/tmp/vm-marker"]).stdout == "kept\n"
        assert vm.run(["test", "-e", "/run/vm-marker"], ok=(1,)).returncode == 1
    finally:
        vm.run(["rm", "-f", "/var/tmp/vm-marker"])


def test_busybox_machine_starts_registers_with_machined_and_stops(m1: VirtualMachine) -> None:
    vm = m1
    assert machine(vm, "m1")["state"] == "stopped"
    vm.veneer("start", "m1", "--wait")
    running = machine(vm, "m1")
    assert running["state"] == "running"
    leader = running["pid"]
    assert isinstance(leader, int)
    assert vm.run(["cat", f"/proc/{leader}/comm"]).stdout.strip() == "init"
    assert machined_knows(vm, "m1")
    listed = vm.run(["machinectl", "list", "--no-legend"]).stdout.split()
    assert "m1" in listed
    assert vm.veneer("exec", "m1", "--", "hostname").stdout.strip() == "m1"

    vm.veneer("stop", "m1")
    stopped = machine(vm, "m1")
    assert stopped["state"] == "stopped" and stopped["pid"] is None
    assert not machined_knows(vm, "m1")
    assert_nothing_left(vm, "m1")


def test_debian_machine_boots_under_machined_with_its_journal(d1: VirtualMachine) -> None:
    vm = d1
    vm.veneer("start", "d1", "--wait", "--timeout", "300")
    running = machine(vm, "d1")
    assert running["state"] == "running" and running["init"] == "systemd"
    assert machined_knows(vm, "d1")
    booted = vm.veneer("exec", "d1", "--", "systemctl", "is-system-running", "--wait", ok=(0, 1))
    assert booted.stdout.strip() in ("running", "degraded")
    journal = vm.run(["journalctl", "-M", "d1", "--no-pager", "-o", "cat"]).stdout
    assert "Startup finished" in journal or "Reached target" in journal

    vm.veneer("stop", "d1", "--timeout", "120")
    stopped = machine(vm, "d1")
    assert stopped["state"] == "stopped" and stopped["pid"] is None
    assert not machined_knows(vm, "d1")
    assert_nothing_left(vm, "d1")


def test_stats_and_a_running_snapshot_read_and_freeze_the_unit(m1: VirtualMachine) -> None:
    vm = m1
    vm.veneer("start", "m1", "--wait")
    unit, cgroup = "veneer-m1.service", "/sys/fs/cgroup/machine.slice/veneer-m1.service"
    files = ("cpu.stat", "memory.current", "pids.current", "io.stat")
    host_tx = ["cat", "/sys/class/net/vb-m1/statistics/tx_bytes"]
    vm.run(["systemctl", "freeze", unit])  # the figures hold still while both sides read them
    try:
        # but for what the host sends the machine (its bridge's multicast, ARP), which only grows
        sent_before = int(vm.run(host_tx).stdout)
        (reading,) = json.loads(vm.veneer("stats", "m1", "--json").stdout)
        sent_after = int(vm.run(host_tx).stdout)
        script = "; ".join(f"echo @@{f}; cat {cgroup}/{f} 2>/dev/null || echo none" for f in files)
        raw = dict(part.split("\n", 1) for part in vm.run(["sh", "-c", script]).stdout.split("@@")[1:])
    finally:
        vm.run(["systemctl", "thaw", unit])
    assert reading["supervisor"] == "systemd" and reading["cgroup"] == f"machine.slice/{unit}"
    cpu = dict(line.split() for line in raw["cpu.stat"].splitlines())
    assert reading["cpu_seconds"] == int(cpu["usage_usec"]) / 1e6 > 0
    assert reading["memory_bytes"] == int(raw["memory.current"]) > 0
    assert reading["pids"] == int(raw["pids.current"]) > 0
    if raw["io.stat"].strip() == "none":  # no io controller on this unit: no block figures
        assert reading["block_read_bytes"] is None
    else:
        stat = [dict(f.split("=") for f in line.split()[1:]) for line in raw["io.stat"].splitlines()]
        assert reading["block_read_bytes"] == sum(int(d.get("rbytes", 0)) for d in stat)
    assert sent_before <= reading["net_rx_bytes"] <= sent_after
    assert vm.veneer("stats", "--format", "openmetrics").stdout.endswith("# EOF\n")
    # A snapshot of the running machine freezes the unit through systemd, and thaws it.
    vm.veneer("exec", "m1", "--", "sh", "-c", "echo live > /root/live")
    assert "frozen while its files were copied" in vm.veneer("snapshot", "m1", "live").stdout
    assert vm.run(["systemctl", "show", "-P", "FreezerState", unit]).stdout.strip() == "running"
    assert vm.veneer("exec", "m1", "--", "cat", "/root/live").stdout == "live\n"
    vm.veneer("stop", "m1")
    vm.veneer("restore", "m1", "live")
    assert vm.veneer("run", "m1", "--", "cat", "/root/live").stdout == "live\n"
