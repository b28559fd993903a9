"""Being inside a running machine: exec, shell, console, logs and journal.

`exec` enters the machine through `runtime.enter` (its namespaces, user namespace included, so the command
is the machine's root, not the host's; its cgroups; its init's confinement), with the environment its
init has and the working directory resolved inside the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import MachineError, UsageError
from veneer.machines.guest import find_leader, lookup_groups, lookup_user
from veneer.machines.state import RuntimeMode, RuntimeRecord, is_alive, load_machine, load_runtime
from veneer.overlay.view import nofollow_view
from veneer.runtime import pseudoterminal
from veneer.runtime.cgroups import Hierarchies
from veneer.runtime.enter import EnterFailed, EnterSpec, start_entered
from veneer.runtime.supervisor import supervisor_for
from veneer.util import proc

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def running_leader(layout: Layout, name: MachineName) -> tuple[RuntimeRecord, int]:
    """The runtime record and the init's host pid of a booted, running machine."""
    load_machine(layout, name)
    runtime = load_runtime(layout, name)
    leader = find_leader(runtime.pid) if runtime is not None and is_alive(runtime) else None
    if runtime is None or leader is None:
        raise MachineError(f"Machine '{name}' is not running", hint=f"Start it with 'veneer start {name}'.")
    return runtime, leader


def leader_environment(leader: int) -> dict[str, str]:
    """The variables nspawn gave the machine's init that a command inside should see too."""
    env = {"PATH": DEFAULT_PATH}
    with contextlib.suppress(OSError):
        for item in Path(f"/proc/{leader}/environ").read_bytes().split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep and key in ("PATH", "container", "container_uuid", "LANG"):
                env[key] = value
    return env


def _cgroups_of(leader: int) -> Iterator[Path]:
    """The leader's own cgroups, in every hierarchy veneer knows."""
    hierarchies = Hierarchies.detect()
    for line in Path(f"/proc/{leader}/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0":
            mount = hierarchies.unified
        else:
            mount = next((hierarchies.v1[c] for c in controllers.split(",") if c in hierarchies.v1), None)
        if mount is not None:
            yield mount / path.lstrip("/")


def _entering_error(name: MachineName, command: Sequence[str], workdir: str, e: EnterFailed) -> MachineError:
    if e.step == "chdir":
        return MachineError(
            f"Failed to enter working directory '{workdir}' in machine '{name}': {e.strerror}",
            hint="Create it in the machine, or choose another with --workdir.",
        )
    if e.step == "exec":
        return MachineError(
            f"Failed to run '{command[0]}' in machine '{name}': {e.strerror}",
            hint="Check the command's name and the PATH of the machine.",
        )
    return MachineError(f"Failed to enter machine '{name}' ({e.step}): {e.strerror}")


# Why the init's seccomp filters could not be read (runtime.seccomp.filters_of), by errno.
_READING_HINTS = {
    errno.EPERM: "Something in the machine traces its init; stop it, or restart the machine.",
    errno.EACCES: "veneer runs under a seccomp filter itself, so the kernel will not show it the init's.",
    errno.ETIME: "Its init does not run (a frozen cgroup?); thaw it, or restart the machine.",
}


def exec_in_machine(
    layout: Layout,
    name: MachineName,
    command: Sequence[str],
    *,
    user: str | None = None,
    workdir: str | None = None,
    env: Sequence[tuple[str, str]] = (),
    quiet: bool = False,
    terminal: bool = False,
) -> int:
    """Run a command in the running machine, confined as its own processes are; return its exit status.

    Args:
        terminal: on a pseudo-terminal of the machine's, relayed to this process's terminal.
    """
    if not command:
        raise UsageError("Missing command to run", hint=f"Use: veneer exec {name} -- CMD...")
    workdir = workdir or "/"
    if not workdir.startswith("/") or "\0" in workdir:
        raise UsageError(
            f"Working directory '{workdir}' is not absolute", hint="Give its full path in the machine."
        )
    _, leader = running_leader(layout, name)
    root = Path(f"/proc/{leader}/root")
    account = lookup_user(root, user or "0")
    variables = leader_environment(leader)
    variables.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    if "TERM" in os.environ:
        variables["TERM"] = os.environ["TERM"]
    variables.update(dict(env))
    spec = EnterSpec(
        leader=leader,
        argv=tuple(command),
        env=tuple(sorted(variables.items())),
        uid=account.uid,
        gid=account.gid,
        groups=lookup_groups(root, account.name),
        workdir=workdir,
        cgroups=tuple(_cgroups_of(leader)),
        ptrace_lock=layout.enter_lock,
        quiet=quiet,
    )
    if not terminal:
        return proc.wait_forwarding(_start(spec, name, command, workdir))
    master, peer = _machine_pty(leader)
    try:
        try:
            pid = _start(replace(spec, terminal=peer), name, command, workdir)
        finally:
            os.close(peer)  # the command holds it now: the relay ends when the machine's side is closed
        pseudoterminal.relay(master)
    finally:
        os.close(master)
    return proc.wait_forwarding(pid)


def _start(spec: EnterSpec, name: MachineName, command: Sequence[str], workdir: str) -> int:
    try:
        return start_entered(spec)
    except EnterFailed as e:
        raise _entering_error(name, command, workdir, e) from None
    except OSError as e:
        raise MachineError(
            f"Failed to enter machine '{name}': {e.strerror}", hint=_READING_HINTS.get(e.errno or 0)
        ) from None


def _machine_pty(leader: int) -> tuple[int, int]:
    root = os.open(f"/proc/{leader}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return pseudoterminal.open_pair(root)
    except OSError as e:
        raise MachineError(
            f"Failed to make a terminal in the machine: {e.strerror}",
            hint="Its /dev/pts must be the devpts nspawn mounted; 'veneer exec' works without a terminal.",
        ) from None
    finally:
        os.close(root)


def shell_in_machine(layout: Layout, name: MachineName, *, user: str | None = None) -> int:
    """A login shell of `user` (root by default) in the running machine."""
    _, leader = running_leader(layout, name)
    account = lookup_user(Path(f"/proc/{leader}/root"), user or "0")
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    return exec_in_machine(layout, name, [account.shell, "-l"], user=user, terminal=terminal)


def attach_console(layout: Layout, name: MachineName, *, on_attach: Callable[[], None] | None = None) -> int:
    """Attach this terminal to the machine's boot console until the detach key (Ctrl-]).

    Args:
        on_attach: called once the machine is known to run, just before attaching.
    """
    running_leader(layout, name)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("'veneer console' needs a terminal", hint=f"Use 'veneer logs {name}' to read it.")
    term = {"TERM": os.environ.get("TERM", "xterm")}
    if on_attach is not None:
        on_attach()
    return proc.wait_forwarding(proc.spawn(supervisor_for(layout).console_argv(name), env=term))


def read_logs(layout: Layout, name: MachineName, *, lines: int | None = None) -> bytes:
    """The console output of the machine's current or last boot (the last `lines` lines)."""
    load_machine(layout, name)
    return supervisor_for(layout).read_log(name, lines=lines)


def follow_logs(layout: Layout, name: MachineName, *, lines: int | None = None) -> Iterator[bytes]:
    """The console output, then what is added to it, until the machine stops."""
    load_machine(layout, name)

    def running() -> bool:
        runtime = load_runtime(layout, name)
        return runtime is not None and is_alive(runtime)

    return supervisor_for(layout).follow_log(name, lines=lines, running=running)


def journal_argv(journal: Path, args: Sequence[str]) -> list[str]:
    """journalctl over a machine's persistent journal directory; pure."""
    return ["journalctl", f"--directory={journal}", "--no-pager", *args]


def show_journal(layout: Layout, name: MachineName, args: Sequence[str]) -> int:
    """The machine's own journal: read inside while it runs, from its upper dir when it is stopped."""
    runtime = load_runtime(layout, name)
    if runtime is not None and is_alive(runtime) and runtime.mode is RuntimeMode.BOOT:
        return exec_in_machine(layout, name, ["journalctl", "--no-pager", *args])
    record = load_machine(layout, name)
    # journalctl (as host root) resolves the path and opens the files the machine left there: through a
    # view that follows none of the machine's symlinks, so they cannot point it at the host's journal.
    with nofollow_view(layout.machine_upper(name)) as upper:
        journal = upper / "var/log/journal" / record.machine_id
        if not journal.is_dir():
            raise MachineError(
                f"Machine '{name}' has no persistent journal",
                hint="Only systemd guests with /var/log/journal keep one; start it, then 'veneer journal'.",
            )
        return proc.wait_forwarding(proc.spawn(journal_argv(journal, args)))
