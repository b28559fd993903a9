"""Booted machines end to end: start in the background, exec, console log, stop, kill -9, limits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store, mounts_under
from veneer.config.layout import Layout
from veneer.runtime.cgroups import Hierarchies

pytestmark = [pytest.mark.integration, pytest.mark.root]


def status(store: Store, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(store.veneer("status", name, "--json").stdout)
    return data


def machine_cgroups(store: Store, name: str) -> list[Path]:
    cgroup = Layout(root=store.root, run=store.run).cgroup(name)
    return [d for d in Hierarchies.detect().machine_dirs(cgroup) if d.exists()]


def console_keeper_alive(store: Store, name: str) -> bool:
    from veneer.util import proc

    sock = store.run / "machines" / f"{name}.console"
    return proc.run(["tmux", "-S", str(sock), "has-session"], check=False, capture=True).returncode == 0


def keeper_settings(store: Store, name: str) -> tuple[str, bool]:
    """The console keeper's remain-on-exit and whether its pane-died hook is set."""
    from veneer.util import proc

    tmux = ["tmux", "-S", str(store.run / "machines" / f"{name}.console")]
    remain = proc.run([*tmux, "show-options", "-gv", "remain-on-exit"], capture=True).stdout.strip()
    hooks = proc.run([*tmux, "show-hooks", "-gw"], capture=True).stdout  # pane-died: a window hook
    return remain, "pane-died" in hooks and "_reap" in hooks


def assert_nothing_left(store: Store, *names: str) -> None:
    assert not mounts_under(store.root, store.run), "mounts left behind"
    for name in names:
        assert not machine_cgroups(store, name), f"cgroups of {name} left behind"
        assert status(store, name)["pid"] is None
        assert not console_keeper_alive(store, name), f"the console keeper of {name} is left behind"
        assert not Path(f"/sys/class/net/vb-{name}").exists(), f"the veth of {name} is left behind"
    running = [m for m in json.loads(store.veneer("list", "--json").stdout) if m["state"] == "running"]
    if not running:
        bridge = Layout(root=store.root, run=store.run).nat_bridge
        assert not Path(f"/sys/class/net/{bridge}").exists(), "the bridge outlives the last nat machine"


@pytest.fixture
def booted(busybox: Store) -> Iterator[Store]:
    """The busybox store with machine 'b1', stopped (and cleaned up) whatever the test does."""
    busybox.veneer("create", "b1", "--from", "bb")
    yield busybox
    busybox.veneer("stop", "b1", "--timeout", "5", ok=(0, 1))


def test_busybox_starts_in_the_background_and_stops(booted: Store) -> None:
    store = booted
    started = store.veneer("start", "b1", "--wait")
    assert "busybox" in started.stdout
    info = status(store, "b1")
    assert info["state"] == "running" and info["init"] == "busybox"
    leader = info["pid"]
    assert isinstance(leader, int)
    assert Path(f"/proc/{leader}/status").read_text().count("NSpid:") == 1
    # exec runs inside: its hostname, container root, the init as PID 1, the exit status comes back.
    out = store.veneer("exec", "b1", "--", "sh", "-c", "hostname; id -u; cat /proc/1/comm").stdout.split()
    assert out == ["b1", "0", "init"]
    assert store.veneer("exec", "b1", "--", "sh", "-c", "exit 5", ok=(5,)).returncode == 5
    again = store.veneer("start", "b1")  # as `systemctl start` of an active unit: done already
    assert again.stdout.startswith("Machine 'b1' is running already (pid ")
    assert "BusyBox" in store.veneer("logs", "b1").stdout
    stop = store.veneer("stop", "b1")
    assert "Stopped" in stop.stdout
    info = status(store, "b1")
    assert info["state"] == "stopped" and info["exit_status"] == 0
    assert_nothing_left(store, "b1")
    assert "BusyBox" in store.veneer("logs", "b1", "-n", "50").stdout, "the console log outlives the boot"


def test_poweroff_from_inside_cleans_up(booted: Store) -> None:
    store = booted
    store.veneer("start", "b1", "--wait")
    store.veneer("exec", "b1", "--", "poweroff")
    deadline = time.monotonic() + 20
    while status(store, "b1")["state"] == "running" or mounts_under(store.root):
        assert time.monotonic() < deadline, "the machine's own poweroff was not cleaned up"
        time.sleep(0.2)
    assert_nothing_left(store, "b1")


@pytest.mark.parametrize("victim", ["nspawn", "boot-script", "console-keeper", "log-copier", "init"])
def test_kill_9_of_any_process_is_noticed_and_cleaned(booted: Store, victim: str) -> None:
    store = booted
    store.veneer("start", "b1", "--wait")
    runtime = json.loads((store.run / "machines" / "b1.json").read_text())
    keeper = _ppid(_ppid(runtime["pid"]))
    pids = {
        "nspawn": runtime["pid"],
        "boot-script": _ppid(runtime["pid"]),
        "console-keeper": keeper,
        "log-copier": next(
            p for p in _children(keeper) if "console.log" in Path(f"/proc/{p}/cmdline").read_text()
        ),
        "init": status(store, "b1")["pid"],
    }
    pid = pids[victim]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    if victim == "log-copier":
        # Only the console log stops: the machine runs on, and stops cleanly.
        time.sleep(0.5)
        assert status(store, "b1")["state"] == "running"
        store.veneer("stop", "b1")
        assert_nothing_left(store, "b1")
        return
    deadline = time.monotonic() + 20
    # `_reap` may still be cleaning up when the state already reads "failed": wait for both.
    while status(store, "b1")["state"] == "running" or mounts_under(store.root, store.run):
        assert time.monotonic() < deadline, f"not cleaned up after kill -9 of {victim}"
        time.sleep(0.2)
    info = status(store, "b1")
    assert info["state"] in ("failed", "stopped"), info
    assert_nothing_left(store, "b1")
    # And it starts again.
    store.veneer("start", "b1", "--wait")
    assert status(store, "b1")["state"] == "running"


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def test_limits_are_enforced_inside_only(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "lim", "--from", "bb", "--memory", "64M", "--pids", "30")
    # A process allocating past --memory is OOM-killed inside the machine; the shell around it goes on.
    out = store.veneer(
        "run",
        "lim",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; echo dd=$?",
    ).stdout
    assert out.strip() == "dd=137"
    # A fork loop stops at --pids (the inner shell dies at the first refused fork; its children stay).
    # The count uses no fork: a glob over /proc.
    script = 'sh -c "for i in \\$(seq 60); do sleep 5 & done" 2>/dev/null; set -- /proc/[0-9]*; echo $#'
    count = int(store.veneer("run", "lim", "--", "sh", "-c", script).stdout)
    assert 20 <= count < 30, count
    # Changeable while stopped.
    store.veneer("set", "lim", "--memory", "1G")
    assert status(store, "lim")["limits"] == {"memory": 1 << 30, "cpus": None, "pids": 30}
    assert not machine_cgroups(store, "lim")


def test_set_changes_the_limits_of_a_running_machine(busybox: Store) -> None:
    store = busybox
    name = f"set{os.getpid() % 10000}"  # interfaces are host-wide: a name no other test run uses
    store.veneer("create", name, "--from", "bb", "--pids", "30")
    try:
        store.veneer("start", name, "--wait")
        store.veneer("set", name, "--pids", "20")
        assert status(store, name)["limits"] == {"memory": None, "cpus": None, "pids": 20}
        assert [(d / "pids.max").read_text().strip() for d in machine_cgroups(store, name)
                if (d / "pids.max").exists()] == ["20"]  # fmt: skip
        assert "is running" in store.veneer("set", name, "--network", "none", ok=(1,)).stderr
    finally:
        store.veneer("stop", name, "--timeout", "5", ok=(0, 1))


def test_debian_boots_with_systemd_and_powers_off(store: Store, debian_tree: Path) -> None:
    store.veneer("image", "create", "deb", "--from-dir", str(debian_tree))
    store.veneer("create", "d1", "--from", "deb")
    try:
        store.veneer("start", "d1", "--wait", "--timeout", "60")
        state = store.veneer("exec", "d1", "--", "systemctl", "is-system-running", ok=(0, 1)).stdout.strip()
        # degraded would mean a unit failed in the container; name it in the failure.
        failed = store.veneer("exec", "d1", "--", "systemctl", "--failed", "--no-legend", ok=(0, 1)).stdout
        assert state == "running", failed
        deadline = time.monotonic() + 10
        while "login:" not in store.veneer("logs", "d1").stdout:
            assert time.monotonic() < deadline, "no login prompt on the console"
            time.sleep(0.2)
        assert "Startup finished" in store.veneer("journal", "d1", "--", "-b").stdout
        store.veneer("stop", "d1", "--timeout", "30")
        info = status(store, "d1")
        assert info["state"] == "stopped" and info["exit_status"] == 0
        assert_nothing_left(store, "d1")
        assert "Journal stopped" in store.veneer("journal", "d1").stdout, (
            "the journal is kept in the machine"
        )
    finally:
        store.veneer("stop", "d1", "--timeout", "5", ok=(0, 1))


def test_twenty_machines_start_and_stop_at_once(busybox: Store) -> None:
    store = busybox
    names = [f"m{i}" for i in range(20)]
    for name in names:
        store.veneer("create", name, "--from", "bb")
    try:
        starters = [store.spawn("start", name, "--wait") for name in names]
        assert [p.wait() for p in starters] == [0] * 20
        listed = json.loads(store.veneer("list", "--json").stdout)
        assert {m["name"] for m in listed if m["state"] == "running"} == set(names)
        for name in names:
            assert keeper_settings(store, name) == ("on", True), f"the console keeper of {name}"
        # Every console keeper got its settings, however the starts interleaved: a machine that powers
        # itself off is cleaned up by the keeper's hook, with no veneer command to notice it.
        for name in names[:5]:
            store.veneer("exec", name, "--", "poweroff")
        for name in names[:5]:
            root = store.root / "machines" / name / "root"
            deadline = time.monotonic() + 20
            while mounts_under(root):
                assert time.monotonic() < deadline, f"{name} powered off but was not cleaned up"
                time.sleep(0.2)
        still_running = names[5:]
        stoppers = [store.spawn("stop", name) for name in still_running]
        assert [p.wait() for p in stoppers] == [0] * len(still_running)
        assert_nothing_left(store, *names)
    finally:
        store.veneer("stop", *names, "--timeout", "5", ok=(0, 1))


def test_concurrent_start_and_rm_of_one_machine_serialize(booted: Store) -> None:
    store = booted
    racers = [store.spawn("start", "b1", "--wait") for _ in range(4)]
    codes = sorted(p.wait() for p in racers)
    # One boots it; the others find it booting (busy, 1) or booted (running already, 0): never twice.
    assert set(codes) <= {0, 1} and 0 in codes, codes
    assert status(store, "b1")["state"] == "running"
    assert "is running" in store.veneer("rm", "b1", ok=(1,)).stderr
    store.veneer("stop", "b1")
    store.veneer("rm", "b1")
    assert_nothing_left(store)


def test_console_attaches_and_ctrl_close_bracket_detaches(booted: Store) -> None:
    from veneer.util import proc

    store = booted
    store.veneer("start", "b1", "--wait")
    # `script` gives the console a terminal; typed keys go to the machine's console shell, Ctrl-] detaches.
    typed = 'sh -c \'printf "echo marker-\\$((6*7))\\n"; sleep 1; printf "\\035"; sleep 1\''
    command = f"{typed} | script -qfec '{' '.join(store.argv('console', 'b1'))}' /dev/null"
    result = proc.run(["sh", "-c", command], capture=True, check=False, env={**store.env(), "TERM": "xterm"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[detached (from session b1)]" in result.stdout
    assert "marker-42" in store.veneer("logs", "b1").stdout, "the typed command ran on the console"
    assert status(store, "b1")["state"] == "running", "detaching leaves the machine running"


def test_a_chatty_machines_log_keeps_its_latest_output(busybox: Store, tmp_path: Path) -> None:
    from veneer.util import proc

    store = busybox
    name = f"chat{os.getpid() % 10000}"  # interfaces are host-wide: a name no other test run uses
    store.veneer("create", name, "--from", "bb")
    store.veneer("start", name, "--wait")
    followed = tmp_path / "followed"
    follower = proc.spawn(["sh", "-c", f"exec {' '.join(store.argv('logs', '-f', name))} > {followed}"],
                          env=store.env())  # fmt: skip
    try:
        # About 8 MiB on the console: more than the 4 MiB the log once kept of a boot.
        store.veneer("exec", name, "--", "sh", "-c", "seq 1 600000 | sed 's/^/chatty /' > /dev/console")
        deadline = time.monotonic() + 120
        while "chatty 600000" not in store.veneer("logs", name, "-n", "1").stdout:
            assert time.monotonic() < deadline, "the log lost the machine's latest output"
            time.sleep(0.5)
        logs = store.root / "machines" / name
        assert (logs / "console.log.1").stat().st_size == 4 << 20, "rotated at 4 MiB"
        assert (logs / "console.log").stat().st_size < 4 << 20
        assert store.veneer("logs", name, "-n", "2").stdout.splitlines() == [
            "chatty 599999",
            "chatty 600000",
        ]
        store.veneer("stop", name)
        assert follower.wait() == 0
    finally:
        follower.kill()
        follower.wait()
        store.veneer("stop", name, "--timeout", "5", ok=(0, 1))
    lines = followed.read_text(errors="replace").splitlines()
    assert "chatty 600000" in lines, "logs -f went silent"
    # Nothing lost at the rotations while it followed (the first line may follow the shell's prompt).
    chatty = [line[line.index("chatty ") :] for line in lines if "chatty " in line]
    assert chatty == [f"chatty {i}" for i in range(1, 600001)]


def _reaps_of(store: Store) -> set[int]:
    """`veneer _reap` processes of this store running now."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            words = (entry / "cmdline").read_bytes().split(b"\0")
            if b"_reap" in words and os.fsencode(store.root) in words:
                found.add(int(entry.name))
    return found


def test_one_command_starts_and_stops_many_and_a_failure_loses_none(busybox: Store) -> None:
    store = busybox
    names = ["c1", "c2", "c3"]
    for name in names:
        store.veneer("create", name, "--from", "bb")
    try:
        store.veneer("start", "c3", "--wait")
        started = store.veneer("start", "c1", "nosuch", "c2", "c3", "--wait", ok=(1,))
        # Each machine named gets its line, in the order named; the one that failed stops none of the others.
        lines = started.stdout.splitlines()
        assert lines[:2] == ["Started machine 'c1' (busybox).", "Started machine 'c2' (busybox)."]
        assert len(lines) == 3 and lines[2].startswith("Machine 'c3' is running already"), lines
        assert "veneer: No machine named 'nosuch'" in started.stderr
        assert all(status(store, name)["state"] == "running" for name in names)
        # A stop cleans up itself: the console keepers start no `veneer _reap` for machines it ends.
        seen: set[int] = set()
        stopper = store.spawn("stop", "c1", "c2", "nosuch", "c3")
        while stopper.poll() is None:
            seen |= _reaps_of(store)
            time.sleep(0.005)
        assert stopper.returncode == 1
        time.sleep(0.5)
        seen |= _reaps_of(store)
        assert not seen, "a stop started `veneer _reap`"
        assert all(status(store, name)["state"] == "stopped" for name in names)
        assert_nothing_left(store, *names)
        assert not list((store.run / "machines").glob("*.stopping"))
    finally:
        store.veneer("stop", *names, "--timeout", "5", ok=(0, 1))
