"""Attacks from a machine's root through the verbs that reach inside it: exec, shell and logs.

Each test mounts the attack against a real busybox machine and checks that nothing of the host is reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from veneer.runtime import seccomp
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def running(busybox: Store) -> Iterator[Store]:
    """The busybox store with machine 'intruder' booted; stopped and removed whatever the test does."""
    busybox.veneer("create", "intruder", "--from", "bb")
    busybox.veneer("start", "intruder", "--wait")
    yield busybox
    busybox.veneer("stop", "intruder", "--timeout", "5", ok=(0, 1))


def inside(store: Store, script: str, *options: str, ok: tuple[int, ...] = (0,)) -> proc.Completed:
    return store.veneer("exec", *options, "intruder", "--", "sh", "-c", script, ok=ok)


def processes_named(comm: str, leader: int) -> list[int]:
    """Host pids of the processes named `comm` in the PID namespace of the machine whose init is `leader`."""
    namespace = os.readlink(f"/proc/{leader}/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(entry / "ns/pid") == namespace:
                if (entry / "comm").read_text().strip() == comm:
                    found.append(int(entry.name))
    return found


def status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


# 1. Working directories are resolved inside the machine, never through its symlinks on the host.


def test_exec_workdir_follows_no_symlink_out_of_the_machine(running: Store, tmp_path: Path) -> None:
    store = running
    host_dir = tmp_path / "host-only"
    host_dir.mkdir()
    (host_dir / "host-marker").write_text("the host's\n")
    inside(store, f"mkdir -p /srv /inside && touch /inside/inside-marker && ln -s {host_dir} /srv/app")
    inside(store, "ln -s ../inside /srv/ok && ln -s ../../../../../../.. /srv/up")

    escaped = inside(store, "ls -a; cd ..; ls -a", "--workdir", "/srv/app", ok=(0, 1, 2, 126, 127))
    assert "host-marker" not in escaped.stdout, "the machine's symlink was followed on the host"
    assert escaped.returncode == 1 and "/srv/app" in escaped.stderr, "a missing working dir is an error"

    upward = inside(store, f"pwd; ls {host_dir}", "--workdir", "/srv/up", ok=(0, 1))
    assert upward.stdout.splitlines()[0] == "/", "'..' stops at the machine's root"
    assert "host-marker" not in upward.stdout

    followed = inside(store, "pwd -P; ls", "--workdir", "/srv/ok")
    assert followed.stdout.split() == ["/inside", "inside-marker"], (
        "symlinks resolve as the machine sees them"
    )


def test_run_workdir_follows_no_symlink_out_of_the_machine(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    host_dir = tmp_path / "host-only"
    host_dir.mkdir()
    (host_dir / "host-marker").write_text("the host's\n")
    store.veneer("create", "intruder2", "--from", "bb")
    store.veneer("run", "intruder2", "--", "sh", "-c", f"mkdir /srv && ln -s {host_dir} /srv/app")
    escaped = store.veneer("run", "--workdir", "/srv/app", "intruder2", "--", "ls", "-a", ok=(0, 1))
    assert "host-marker" not in escaped.stdout and escaped.returncode == 1


def test_shell_is_a_login_shell_on_the_users_terminal(running: Store) -> None:
    store = running
    pid, master = pty.fork()
    if pid == 0:
        os.execve(store.argv()[0], store.argv("shell", "intruder"), {**store.env(), "TERM": "xterm"})
    os.write(master, b"echo marker-$((6*7)); exit 3\n")
    output = read_all(master)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert b"\nmarker-42" in output


def test_exec_user_lookup_reads_the_machines_passwd_only(running: Store, tmp_path: Path) -> None:
    store = running
    host_passwd = tmp_path / "passwd"
    host_passwd.write_text("hostonly:x:4242:4242::/host-only-home:/bin/sh\n")
    inside(store, "cp /etc/passwd /etc/passwd.real && echo guest:x:1000:1000::/:/bin/sh >> /etc/passwd.real")
    inside(store, "ln -sf passwd.real /etc/passwd")
    inside(store, "echo extra:x:2000:root,guest >> /etc/group")
    assert inside(store, "id -u; id -G", "--user", "guest").stdout.split() == ["1000", "1000", "2000"]
    inside(store, f"ln -sf {host_passwd} /etc/passwd")
    refused = inside(store, "echo $HOME", "--user", "hostonly", ok=(1,))
    assert "No user 'hostonly'" in refused.stderr


# 4. exec'd processes are confined like the machine's own and unattachable until they are inside.


def test_exec_is_confined_like_the_machines_own_processes(running: Store) -> None:
    store = running
    init = status_fields(inside(store, "cat /proc/1/status").stdout)
    entered = status_fields(inside(store, "cat /proc/self/status").stdout)
    for field in ("CapBnd", "CapPrm", "CapEff"):
        assert entered[field] == init[field], f"{field} differs from the machine init's"
    assert entered["NoNewPrivs"] == "1"
    assert entered["Seccomp"] == "2", "no seccomp filter"
    assert int(entered["Seccomp_filters"]) > int(init["Seccomp_filters"]), "nspawn's filters and one more"
    as_user = status_fields(inside(store, "cat /proc/self/status", "--user", "nobody").stdout)
    assert as_user["CapBnd"] == init["CapBnd"] and int(as_user["CapEff"], 16) == 0
    assert inside(store, "cat /proc/self/cgroup").stdout == inside(store, "cat /proc/1/cgroup").stdout

    # The very filters of the init, read from the host, and the one against TIOCSTI after them.
    leader = json.loads(store.veneer("status", "intruder", "--json").stdout)["pid"]
    sleeper = store.spawn("exec", "intruder", "--", "sleep", "1000")
    try:
        assert proc.wait_until(lambda: bool(processes_named("sleep", leader)), timeout=60)
        (entered_pid,) = processes_named("sleep", leader)
        assert seccomp.filters_of(entered_pid) == [
            *seccomp.filters_of(leader),
            seccomp.tty_injection_filter(),
        ]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_exec_brings_no_host_fd_and_no_host_root_or_cwd(running: Store, tmp_path: Path) -> None:
    store = running
    secret = tmp_path / "host-secret"
    secret.write_text("host-secret-42\n")
    inside(store, "touch /machine-marker")
    # veneer started with a host file open on fd 7, as a careless caller might leave it.
    veneer = " ".join(
        store.argv("exec", "intruder", "--", "sh", "-c", "ls -l /proc/self/fd/; cat /proc/self/fd/7")
    )
    leaked = proc.run(["sh", "-c", f"exec 7<{secret}; exec {veneer}"], capture=True, check=False,
                      env=store.env())  # fmt: skip
    assert "host-secret" not in leaked.stdout, "a host fd reached the machine"

    sleeper = store.spawn("exec", "intruder", "--", "sleep", "1000")
    try:
        found = inside(
            store, "until pidof sleep >/dev/null; do usleep 10000; done; pidof sleep"
        ).stdout.split()
        for pid in found:
            probe = f"readlink /proc/{pid}/cwd; ls /proc/{pid}/root/; ls /proc/{pid}/root{secret}"
            seen = inside(store, probe, ok=(0, 1))
            assert seen.stdout.splitlines()[0] == "/"
            assert "machine-marker" in seen.stdout and "host-secret" not in seen.stdout
            # Its parent, which entered on its behalf, is not in the machine: nothing there can name it.
            assert "PPid:\t0\n" in inside(store, f"cat /proc/{pid}/status").stdout
    finally:
        sleeper.kill()
        sleeper.wait()


TIOCSTI_PROBE = r"""
#include <stdio.h>
#include <sys/ioctl.h>
int main(void) {
    char c = 'x';
    if (ioctl(0, TIOCSTI, &c) == 0) { puts("injected"); return 0; }
    perror("TIOCSTI");
    return 1;
}
"""


def test_exec_cannot_push_keystrokes_into_the_users_terminal(running: Store, tmp_path: Path) -> None:
    store = running
    source = tmp_path / "tiocsti.c"
    source.write_text(TIOCSTI_PROBE)
    proc.run(["gcc", "-static", "-O", "-o", tmp_path / "tiocsti", source])
    shutil.copy(
        tmp_path / "tiocsti", store.root / "machines/intruder/root/tiocsti"
    )  # through its mounted root
    output = run_under_pty(store, "exec", "intruder", "--", "/tiocsti")
    assert b"injected" not in output and b"TIOCSTI: Operation not permitted" in output


# 10. logs neutralises terminal escape sequences on a terminal and passes the bytes on to a pipe.


def run_under_pty(store: Store, *args: str) -> bytes:
    """Run the CLI with a pseudo-terminal as stdin, stdout and stderr; return what it wrote."""
    pid, master = pty.fork()
    if pid == 0:
        os.execve(store.argv()[0], store.argv(*args), {**store.env(), "TERM": "xterm"})
    try:
        return read_all(master)
    finally:
        os.waitpid(pid, 0)


def read_all(master: int) -> bytes:
    """What the other side of a pseudo-terminal writes until it closes; closes `master`."""
    output = b""
    try:
        while chunk := os.read(master, 65536):
            output += chunk
    except OSError:  # EIO once every process on the terminal has closed it
        pass
    finally:
        os.close(master)
    return output


def test_logs_neutralise_escape_sequences_on_a_terminal_only(running: Store, tmp_path: Path) -> None:
    store = running
    inside(store, r"printf 'before\033]0;pwned\007\033[2J\233J\302\233Kafter\n' > /dev/console")
    raw = tmp_path / "piped"
    proc.run(["sh", "-c", f"{' '.join(store.argv('logs', 'intruder'))} | cat > {raw}"], env=store.env())
    piped = raw.read_bytes()
    assert b"before\x1b]0;pwned\x07\x1b[2J\x9bJ\xc2\x9bKafter" in piped, "a pipe gets the bytes as they are"
    shown = run_under_pty(store, "logs", "intruder")
    assert b"before" in shown and b"after" in shown
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\x9b" not in shown, shown
    assert b"\xc2\x9b" not in shown, "C1 controls in UTF-8 are neutralised too"
    assert b"pwned" in shown, "the text of a neutralised sequence stays visible"
    store.veneer("stop", "intruder")
    followed = run_under_pty(
        store, "logs", "intruder", "-f"
    )  # a stopped machine's log: to its end, then exit
    assert b"pwned" in followed and b"\x1b" not in followed
