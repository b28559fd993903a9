"""The systemd supervisor in a VM (`vms.py`): a booted machine is the unit veneer-NAME.service in
machine.slice, its limits are the unit's and hold, it is registered with machined, and veneer's view
follows whatever ends it. Each test removes the machines it made: the VM is shared by the session."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator

import pytest

from tests.integration.test_systemd_host import (
    assert_nothing_left,
    machine,
    machined_knows,
    veneer_processes,
)
from tests.integration.vms import VirtualMachine

# On the oldest systemd veneer supports (bookworm's 252) only: test_systemd_host.py covers the newer
# suites' start, stop, journal and reboot, and a second VM for these would add minutes to every CI run.
pytestmark = [pytest.mark.root, pytest.mark.parametrize("systemd_vm", ["bookworm"], indirect=True)]

UNIT_CGROUP = "/sys/fs/cgroup/machine.slice/veneer-{}.service"


def cgroup_top(vm: VirtualMachine) -> set[str]:
    return set(vm.run(["ls", "/sys/fs/cgroup"]).stdout.split())


def unit(vm: VirtualMachine, name: str, *properties: str) -> dict[str, str]:
    argv = ["systemctl", "show", f"veneer-{name}.service", *(f"--property={p}" for p in properties)]
    return dict(line.split("=", 1) for line in vm.run(argv).stdout.splitlines() if "=" in line)


def cgroup_file(vm: VirtualMachine, name: str, file: str) -> str:
    return vm.run(["cat", f"{UNIT_CGROUP.format(name)}/{file}"]).stdout


def wait_for_state(vm: VirtualMachine, name: str, states: tuple[str, ...], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while machine(vm, name)["state"] not in states:
        assert time.monotonic() < deadline, f"{name} is still {machine(vm, name)['state']}"
        time.sleep(1)


@pytest.fixture
def limited(busybox_vm: VirtualMachine) -> Iterator[VirtualMachine]:
    """The VM with the busybox machine 'lm', --memory 64M --pids 64; stopped and removed afterwards."""
    busybox_vm.veneer("create", "lm", "--from", "bb", "--memory", "64M", "--pids", "64")
    yield busybox_vm
    busybox_vm.veneer("stop", "lm", ok=None)
    busybox_vm.veneer("rm", "lm", ok=None)


def test_a_busybox_machine_is_a_unit_whose_limits_hold(limited: VirtualMachine) -> None:
    vm = limited
    before = cgroup_top(vm)
    vm.veneer("start", "lm", "--wait")
    shown = unit(vm, "lm", "ActiveState", "Slice", "MemoryMax", "TasksMax", "Delegate")
    assert shown == {"ActiveState": "active", "Slice": "machine.slice", "MemoryMax": str(64 << 20),
                     "TasksMax": "64", "Delegate": "yes"}  # fmt: skip
    leader = machine(vm, "lm")["pid"]
    # (A non-systemd guest also gets a line for nspawn's name=systemd hierarchy.)
    assert (
        "0::/machine.slice/veneer-lm.service/payload"
        in vm.run(["cat", f"/proc/{leader}/cgroup"]).stdout.split()
    )
    assert machined_knows(vm, "lm")
    assert vm.run(["machinectl", "show", "lm", "--property=Unit"]).stdout.strip() == "Unit=veneer-lm.service"
    assert cgroup_top(vm) - before <= {"machine.slice"}, "veneer made a cgroup outside machine.slice"

    # A memory hog is killed inside the machine's cgroup; the machine and the host live on.
    hog = vm.veneer(
        "exec", "lm", "--", "sh", "-c", "dd if=/dev/zero of=/dev/null bs=200M count=1; echo dd=$?"
    )
    assert hog.stdout.strip() == "dd=137"
    events = dict(line.split() for line in cgroup_file(vm, "lm", "memory.events").splitlines())
    assert int(events["oom_kill"]) >= 1
    assert machine(vm, "lm")["state"] == "running"

    # A fork bomb stops at 64 tasks.
    vm.veneer(
        "exec", "lm", "--", "sh", "-c", "for i in $(seq 100); do sleep 600 >/dev/null 2>&1 & done", ok=None
    )
    assert int(cgroup_file(vm, "lm", "pids.current")) <= 64
    # Refused forks: bookworm's kernel counts them in the forking task's cgroup (the payload), newer ones
    # in the cgroup whose limit refused them (the unit).
    refused = [int(cgroup_file(vm, "lm", f"{d}pids.events").split()[1]) for d in ("", "payload/")]
    assert max(refused) >= 1
    assert machine(vm, "lm")["state"] == "running"

    vm.veneer("stop", "lm")
    assert machine(vm, "lm")["state"] == "stopped"
    assert unit(vm, "lm", "LoadState")["LoadState"] == "not-found", "the transient unit is gone"
    assert not machined_knows(vm, "lm")
    assert_nothing_left(vm, "lm")
    assert cgroup_top(vm) - before <= {"machine.slice"}


def test_kill_restart_and_a_set_on_a_running_machine(limited: VirtualMachine) -> None:
    vm = limited
    vm.veneer("start", "lm", "--wait")
    vm.veneer("restart", "lm", "--wait")
    assert machine(vm, "lm")["state"] == "running"
    # KILL to every process of the machine: its init dies, nspawn ends, the unit's ExecStopPost reaps.
    vm.veneer("kill", "lm", "--signal", "KILL")
    wait_for_state(vm, "lm", ("stopped", "failed"))
    deadline = time.monotonic() + 120
    while unit(vm, "lm", "LoadState")["LoadState"] != "not-found":
        assert time.monotonic() < deadline, "the unit outlived its machine"
        time.sleep(1)
    assert_nothing_left(vm, "lm")
    vm.veneer("start", "lm", "--wait")
    # `set` on the running machine changes its unit at once.
    vm.veneer("set", "lm", "--pids", "32")
    assert unit(vm, "lm", "TasksMax") == {"TasksMax": "32"}
    assert cgroup_file(vm, "lm", "pids.max").strip() == "32"
    vm.veneer("stop", "lm")
    assert_nothing_left(vm, "lm")


def test_ten_machines_start_and_stop_at_once(busybox_vm: VirtualMachine) -> None:
    vm = busybox_vm
    names = [f"t{i}" for i in range(10)]
    for name in names:
        vm.veneer("create", name, "--from", "bb")
    try:
        each = " ".join(names)
        script = f"for n in {each}; do (veneer start $n --wait 2>&1 || echo FAILED $n) & done; wait"
        started = vm.run(["sh", "-c", script], timeout=900).stdout
        assert "FAILED" not in started, started
        listed = json.loads(vm.veneer("list", "--json").stdout)
        assert {m["name"] for m in listed if m["state"] == "running"} == set(names), started
        units = vm.run(["systemctl", "list-units", "--no-legend", "--plain", "veneer-t*"]).stdout
        assert len(units.splitlines()) == 10
        vm.run(["sh", "-c", f"for n in {each}; do veneer stop $n & done; wait"], timeout=900)
        listed = json.loads(vm.veneer("list", "--json").stdout)
        assert {m["name"] for m in listed if m["state"] == "stopped"} >= set(names)
        for name in names:
            assert_nothing_left(vm, name)
    finally:
        for name in names:
            vm.veneer("stop", name, ok=None)
            vm.veneer("rm", name, ok=None)


def test_after_a_host_reboot_nothing_reads_as_running(busybox_vm: VirtualMachine) -> None:
    vm = busybox_vm
    vm.veneer("create", "rb", "--from", "bb")
    try:
        vm.veneer("start", "rb", "--wait")
        vm.reboot()
        assert machine(vm, "rb")["state"] != "running"
        vm.veneer("start", "rb", "--wait")
        assert machine(vm, "rb")["state"] == "running"
        vm.veneer("stop", "rb")
        assert_nothing_left(vm, "rb")
    finally:
        vm.veneer("stop", "rb", ok=None)
        vm.veneer("rm", "rb", ok=None)


def test_an_enabled_machine_runs_again_after_a_reboot_and_disable_undoes_it(
    busybox_vm: VirtualMachine,
) -> None:
    vm = busybox_vm
    vm.veneer("create", "atboot", "--from", "bb", "--memory", "64M", "--pids", "64")
    try:
        vm.veneer("enable", "atboot")
        vm.veneer("start", "atboot", "--wait")
        shown = unit(vm, "atboot", "Type", "ActiveState", "FragmentPath")
        assert shown == {"Type": "notify", "ActiveState": "active",
                         "FragmentPath": "/etc/systemd/system/veneer-atboot.service"}  # fmt: skip
        vm.reboot()
        wait_for_state(vm, "atboot", ("running",), timeout=300)
        assert unit(vm, "atboot", "ActiveState", "MemoryMax", "TasksMax") == {
            "ActiveState": "active", "MemoryMax": str(64 << 20), "TasksMax": "64",
        }  # fmt: skip
        assert machined_knows(vm, "atboot")
        assert vm.veneer("exec", "atboot", "--", "hostname").stdout.strip() == "atboot"
        # Its network came up too: its address is on host0.
        assert "inet " in vm.veneer("exec", "atboot", "--", "ip", "-4", "addr", "show", "host0").stdout
        # And its console, kept by its console unit, which came back with it.
        type_on_console(vm, "atboot")
        # The unit is the machine: a poweroff from inside ends it, and veneer's view follows.
        vm.veneer("exec", "atboot", "--", "poweroff")
        wait_for_state(vm, "atboot", ("stopped", "failed"))
        deadline = time.monotonic() + 120
        while unit(vm, "atboot", "ActiveState")["ActiveState"] not in ("inactive", "failed"):
            assert time.monotonic() < deadline, "the unit did not end after its machine powered off"
            time.sleep(1)
        assert_nothing_left(vm, "atboot")
        vm.veneer("disable", "atboot")
        assert vm.run(["test", "-e", "/etc/systemd/system/veneer-atboot.service"], ok=(1,)).returncode == 1
        enabled = vm.run(["systemctl", "is-enabled", "veneer-atboot.service"], ok=None)
        assert enabled.returncode != 0
        vm.reboot()
        assert machine(vm, "atboot")["state"] == "stopped"
    finally:
        vm.veneer("disable", "atboot", ok=None)
        vm.veneer("stop", "atboot", ok=None)
        vm.veneer("rm", "atboot", ok=None)


def wait_for_unit_gone(vm: VirtualMachine, name: str) -> None:
    deadline = time.monotonic() + 120
    while unit(vm, name, "LoadState")["LoadState"] != "not-found":
        assert time.monotonic() < deadline, "the unit outlived its machine"
        time.sleep(1)


def test_machinectl_poweroff_stops_a_busybox_machine_and_veneer_follows(busybox_vm: VirtualMachine) -> None:
    vm = busybox_vm
    vm.veneer("create", "po", "--from", "bb")
    try:
        before = cgroup_top(vm)
        vm.veneer("start", "po", "--wait")
        # machined sends the init SIGRTMIN+4, which busybox's own init ignores (the machine ran on).
        vm.run(["machinectl", "poweroff", "po"])
        wait_for_state(vm, "po", ("stopped",))
        wait_for_unit_gone(vm, "po")
        assert machine(vm, "po")["pid"] is None
        assert not machined_knows(vm, "po")
        assert_nothing_left(vm, "po")
        assert cgroup_top(vm) - before <= {"machine.slice"}
    finally:
        vm.veneer("stop", "po", ok=None)
        vm.veneer("rm", "po", ok=None)


def test_set_rewrites_the_unit_of_an_enabled_machine(busybox_vm: VirtualMachine) -> None:
    vm = busybox_vm
    vm.veneer("create", "setm", "--from", "bb", "--pids", "64")
    path = "/etc/systemd/system/veneer-setm.service"
    try:
        vm.veneer("enable", "setm")
        # Stopped: the unit file is all there is, and the next start (or host boot) reads it.
        vm.veneer("set", "setm", "--pids", "48", "--memory", "96M")
        text = vm.run(["cat", path]).stdout
        assert "TasksMax=48\n" in text and f"MemoryMax={96 << 20}\n" in text
        assert unit(vm, "setm", "NeedDaemonReload") == {"NeedDaemonReload": "no"}
        vm.veneer("start", "setm", "--wait")
        assert unit(vm, "setm", "TasksMax", "MemoryMax", "FragmentPath") == {
            "TasksMax": "48", "MemoryMax": str(96 << 20), "FragmentPath": path,
        }  # fmt: skip
        # Running: the unit at once, and its file for the next boot.
        vm.veneer("set", "setm", "--pids", "32")
        assert unit(vm, "setm", "TasksMax") == {"TasksMax": "32"}
        assert cgroup_file(vm, "setm", "pids.max").strip() == "32"
        assert "TasksMax=32\n" in vm.run(["cat", path]).stdout
        assert unit(vm, "setm", "NeedDaemonReload") == {"NeedDaemonReload": "no"}
        vm.veneer("stop", "setm")
        assert_nothing_left(vm, "setm")
    finally:
        vm.veneer("disable", "setm", ok=None)
        vm.veneer("stop", "setm", ok=None)
        vm.veneer("rm", "setm", ok=None)


def test_run_confines_a_command_in_a_scope_of_machine_slice(busybox_vm: VirtualMachine) -> None:
    vm = busybox_vm
    vm.veneer("create", "r1", "--from", "bb", "--memory", "64M", "--pids", "64")
    try:
        before = cgroup_top(vm)
        ran = vm.veneer("run", "r1", "--", "sh", "-c", "hostname; cat /proc/self/cgroup; exit 3", ok=(3,))
        lines = ran.stdout.split()
        assert lines[0] == "r1"
        assert any(line.startswith("0::/") for line in lines[1:]), ran.stdout
        # Its limits hold: a memory hog is killed, the command's status comes back.
        hog = vm.veneer(
            "run", "r1", "--", "sh", "-c", "dd if=/dev/zero of=/dev/null bs=200M count=1; echo dd=$?"
        )
        assert hog.stdout.strip().splitlines()[-1] == "dd=137"
        assert machine(vm, "r1")["state"] == "stopped"
        assert unit(vm, "r1", "LoadState") == {"LoadState": "not-found"}
        assert vm.run(["systemctl", "show", "veneer-r1.scope", "--property=LoadState"]).stdout.strip() == (
            "LoadState=not-found"
        )
        assert_nothing_left(vm, "r1")
        # A throwaway machine: made, run and gone.
        eph = vm.veneer("run", "--ephemeral", "--from", "bb", "--", "sh", "-c", "echo eph-$((6*7))")
        assert eph.stdout.strip() == "eph-42"
        assert [m["name"] for m in json.loads(vm.veneer("list", "--json").stdout)] == ["r1"]
        assert veneer_processes(vm) == []
        assert cgroup_top(vm) - before <= {"machine.slice"}
    finally:
        vm.veneer("rm", "r1", ok=None)


def console_unit(vm: VirtualMachine, name: str) -> str:
    argv = ["systemctl", "show", f"veneer-console@{name}.service", "--property=LoadState,ActiveState"]
    return " ".join(vm.run(argv).stdout.split())


def type_on_console(vm: VirtualMachine, name: str) -> None:
    """Type a command on the machine's console through `veneer console` (in `script`'s terminal) once it
    is attached, wait for its output in the console log, detach with Ctrl-]; `veneer logs` shows it."""
    tmux = f"tmux -S /run/veneer/machines/{name}.console list-clients"
    log = f"/var/lib/veneer/machines/{name}/console.log"
    typed = (
        f'until [ -n "$({tmux})" ]; do sleep 0.2; done; printf "echo marker-\\$((6*7))\\n"; '
        f"until grep -q marker-42 {log}; do sleep 0.2; done; printf '\\035'; "
        f'while [ -n "$({tmux})" ]; do sleep 0.2; done'
    )
    attach = shlex.quote(f"veneer console {name}")
    command = f"timeout 300 sh -c {shlex.quote(typed)} | timeout 300 script -qfec {attach} /dev/null"
    shown = vm.run(["env", "TERM=xterm", "sh", "-c", command])
    assert f"[detached (from session {name})]" in shown.stdout
    assert "marker-42" in vm.veneer("logs", name).stdout


def test_console_of_a_busybox_machine_is_kept_by_a_unit_of_its_own(busybox_vm: VirtualMachine) -> None:
    vm = busybox_vm
    vm.veneer("create", "cm1", "--from", "bb")
    try:
        vm.veneer("start", "cm1", "--wait")
        assert console_unit(vm, "cm1") == "LoadState=loaded ActiveState=active"
        type_on_console(vm, "cm1")
        assert machine(vm, "cm1")["state"] == "running", "detaching leaves the machine running"
        # Its whole console is in the log, the boot's output too.
        assert "BusyBox" in vm.veneer("logs", "cm1").stdout
        # machinectl poweroff ends the machine, and its console keeper with it.
        vm.run(["machinectl", "poweroff", "cm1"])
        wait_for_state(vm, "cm1", ("stopped",))
        wait_for_unit_gone(vm, "cm1")
        deadline = time.monotonic() + 60
        while console_unit(vm, "cm1") != "LoadState=not-found ActiveState=inactive":
            assert time.monotonic() < deadline, "the console unit outlived its machine"
            time.sleep(1)
        assert_nothing_left(vm, "cm1")
        assert "marker-42" in vm.veneer("logs", "cm1").stdout, "the console log outlives the boot"
        # A stop by veneer too; a new boot starts a new log.
        vm.veneer("start", "cm1", "--wait")
        assert "marker-42" not in vm.veneer("logs", "cm1").stdout
        vm.veneer("stop", "cm1")
        assert console_unit(vm, "cm1") == "LoadState=not-found ActiveState=inactive"
        assert_nothing_left(vm, "cm1")
    finally:
        vm.veneer("stop", "cm1", ok=None)
        vm.veneer("rm", "cm1", ok=None)
