"""The standalone supervisor: veneer's own keeper, for hosts where systemd is not PID 1 (or cgroups are
not pure v2). A booted machine is nspawn in a pane of a tmux server of its own (`runtime.console`), run
by a boot script that records nspawn's exit status and then reaps the machine (`veneer _reap`) unless
`stop` is doing that already; the machine's cgroups are veneer's own (`runtime.cgroups`).

Nothing here asks tmux how the pane is while a machine starts or stops: the boot script's pid comes back
from the invocation that starts the session and is recorded with its start time, and nspawn (its child),
its end and its exit status are read from /proc and the status file, without running a process."""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from veneer.config.layout import Layout
from veneer.config.settings import Limits
from veneer.runtime import cgroups, console
from veneer.runtime.base import Confined
from veneer.runtime.nspawn import (
    NSPAWN_ENV,
    NSPAWN_STATE_DIR,
    launch_argv,
    launch_in_child,
    needs_private_state_dir,
)
from veneer.runtime.supervisor import SupervisorKind
from veneer.util.procfs import child_pids, process_start_time


def unless_stopping(stop_request: os.PathLike[str], command: str) -> str:
    """`command` as a shell command that runs only if `stop` is not ending the machine (pure): `stop`
    cleans up itself, and a Python interpreter started for nothing per stop is what 20 stops at once on
    two CPUs could least afford."""
    return f"[ -e {shlex.quote(os.fspath(stop_request))} ] || {command}"


def boot_script(
    launch: Sequence[str], *, env: Mapping[str, str], status_file: os.PathLike[str], reap: str
) -> str:
    """The shell script the console keeper runs: `launch` (nspawn in the machine's cgroups, see
    `runtime.nspawn.launch_argv`), then its exit status into `status_file` (the shell itself stays outside
    the machine's cgroups, so it outlives them), then `reap` (`veneer _reap NAME`, see `unless_stopping`).
    The keeper's pane-died hook reaps too, for when this shell is killed; whichever comes second finds the
    lock taken or the work done. The hook alone was not enough: under load, now and then a keeper ran no
    hook for a pane that died."""
    lines = [
        "#!/bin/sh",
        "# Made by veneer start: boots one machine in a pane of the console keeper.",
        *(f"export {key}={shlex.quote(value)}" for key, value in sorted({**NSPAWN_ENV, **env}.items())),
        shlex.join(launch),
        f"echo $? > {shlex.quote(os.fspath(status_file))}",
        f"{reap} >/dev/null 2>&1",
    ]
    return "\n".join(lines) + "\n"


class Keeper:
    """veneer's standalone supervisor for the machines of one store."""

    kind = SupervisorKind.STANDALONE
    terminal = True
    registers = False
    longest_poll = 0.005  # its answers are reads of /proc and of the keeper's files

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def cgroup(self, name: str) -> str:
        return self.layout.cgroup(name)

    def set_frozen(self, name: str, frozen: bool) -> None:
        unified = cgroups.Hierarchies.detect().unified
        if unified is None:
            raise OSError(errno.ENOTSUP, "no cgroup v2 hierarchy is mounted: its freezer is needed")
        cgroups.set_frozen(unified / self.cgroup(name), frozen)

    def accounting_cgroup(self, name: str, *, boot: bool) -> str:
        return self.cgroup(name)  # a run and a boot alike

    def confine(self, name: str, limits: Limits, argv: Sequence[str], *, boot: bool) -> Confined:
        dirs = cgroups.setup_cgroups(self.cgroup(name), limits)
        private_state = needs_private_state_dir()
        if private_state:
            NSPAWN_STATE_DIR.mkdir(parents=True, exist_ok=True)
        if boot:
            return Confined(tuple(launch_argv(argv, cgroup_dirs=dirs, private_state=private_state)))
        # `run` forks nspawn itself, so the wrappers' work is done in nspawn's own process.
        return Confined(tuple(argv), launch_in_child(cgroup_dirs=dirs, private_state=private_state))

    def start(
        self, name: str, launch: Sequence[str], *, env: Mapping[str, str], limits: Limits, notify: bool
    ) -> None:
        layout = self.layout
        reap = console.reap_command(layout.root, layout.run)
        reap = unless_stopping(layout.stop_request(name), f"exec {reap}")
        if notify:
            env = {**env, "NOTIFY_SOCKET": os.fspath(layout.notify_socket(name))}
        script = layout.boot_script(name)
        script.write_text(
            boot_script(
                launch, env=env, status_file=layout.boot_status(name), reap=f"{reap} {shlex.quote(name)}"
            )
        )
        layout.console_log(name).write_bytes(b"")
        layout.console_log_previous(name).unlink(missing_ok=True)
        layout.boot_status(name).unlink(missing_ok=True)
        shell = console.start_session(
            layout.console_socket(name),
            name,
            ["sh", os.fspath(script)],
            log=layout.console_log(name),
            reap=reap,
        )
        layout.boot_shell(name).write_text(f"{shell} {process_start_time(shell) or 0}\n")

    def _shell(self, name: str) -> int | None:
        """The boot script's shell while it runs (recorded by `start`; else asked of tmux)."""
        try:
            pid, started = self.layout.boot_shell(name).read_text().split()
        except (OSError, ValueError):
            return console.pane_pid(self.layout.console_socket(name), name)
        return int(pid) if process_start_time(int(pid)) == int(started) else None

    def enabled(self, name: str) -> bool:
        return False  # nothing starts machines at host boot without systemd

    def start_enabled(self, name: str) -> None:
        raise NotImplementedError("the standalone keeper has no enabled machines")

    def nspawn_pid(self, name: str) -> int | None:
        """nspawn, a child of the pane's shell once the boot script has started it."""
        shell = self._shell(name)
        for pid in child_pids(shell) if shell is not None else []:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/exe").endswith("systemd-nspawn"):
                    return pid
        return None

    def ended(self, name: str) -> bool:
        return self._shell(name) is None or self.layout.boot_status(name).exists()

    def ready(self, name: str) -> bool | None:
        return None

    def exit_status(self, name: str, *, patience: float = 2.0) -> int | None:
        """Written by the boot script's shell right after nspawn exits."""
        deadline = time.monotonic() + patience
        while True:
            with contextlib.suppress(OSError, ValueError):
                return int(self.layout.boot_status(name).read_text())
            if self._shell(name) is None or time.monotonic() > deadline:
                return None  # the shell is gone too: the console keeper was killed
            time.sleep(0.005)

    def release(self, name: str) -> None:
        layout = self.layout
        # The console keeper exits with its session, and takes `veneer _reap` (its child) with it.
        console.kill_session(layout.console_socket(name), name)
        for path in (
            layout.boot_script(name),
            layout.boot_shell(name),
            layout.notify_socket(name),
            layout.boot_status(name),
            layout.console_socket(name),
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_cgroups(self, name: str) -> None:
        with contextlib.suppress(OSError):
            cgroups.remove_cgroups(self.cgroup(name))

    def set_limits(self, name: str, limits: Limits) -> None:
        cgroups.setup_cgroups(self.cgroup(name), limits)

    def read_log(self, name: str, *, lines: int | None) -> bytes:
        return console.read_log(self.layout.console_log(name), lines=lines)

    def follow_log(self, name: str, *, lines: int | None, running: Callable[[], bool]) -> Iterator[bytes]:
        return console.follow_log(self.layout.console_log(name), lines=lines, running=running)

    def console_argv(self, name: str) -> list[str]:
        return console.attach_argv(self.layout.console_socket(name), name)
