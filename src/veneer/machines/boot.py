"""Booting machines in the background: start, stop, kill, and reaping a machine that ended.

A booted machine is nspawn running the machine's init, kept by the host's supervisor (a systemd unit, or
veneer's standalone keeper: `runtime.supervisor`); no veneer process stays behind. Whatever ends the
machine, `recovery.end_boot` undoes the start: from the supervisor when nspawn ends (`veneer _reap`,
`reap_machine`), from `stop`, and from
the next command that finds the machine dead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import Error, MachineBusy, MachineError, MachineRunning
from veneer.machines.guest import InitKind, detect_init, find_leader, has_init
from veneer.machines.recovery import (
    end_boot,
    machine_lock,
    mount_overlay_of,
    recover_machine,
    refuse_if_running,
)
from veneer.machines.state import (
    MachineRecord,
    RuntimeMode,
    RuntimeRecord,
    current_boot_id,
    is_alive,
    load_machine,
    load_runtime,
    process_start_time,
    save_runtime,
)
from veneer.overlay.mount import is_mounted
from veneer.runtime import cgroups
from veneer.runtime.supervisor import Supervisor, supervisor_for
from veneer.util.procfs import child_pids, wait_for_exit

if TYPE_CHECKING:
    from veneer.machines.app import AppProcess

# Each verb imports its own machinery where it is used, so neither loads the other's: a start the launch
# (nspawn's command line, the network, the image's run config), a stop the exec into the machine.

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0
START_TIMEOUT = 60.0
# Waits that /proc answers (nspawn started, its init exec'd, busybox init's first child) look this often:
# a read of /proc, no process run, so a short interval costs little and notices soon.
POLL_INTERVAL = 0.005


def start_machine(
    layout: Layout, name: MachineName, *, wait: bool = False, timeout: float = START_TIMEOUT
) -> RuntimeRecord:
    """Boot the machine's init in the background; return once it runs (with `wait`: once it is ready)."""
    running = load_runtime(layout, name)
    # Before the lock, which the keeper of a booted machine holds.
    if running is not None and running.mode is RuntimeMode.BOOT and is_alive(running):
        raise MachineRunning(
            f"Machine '{name}' is running already (pid {running.pid})",
            hint=f"Restart it with 'veneer restart {name}'.",
        )
    supervisor = supervisor_for(layout)
    if supervisor.enabled(name):
        return _start_enabled(layout, supervisor, name, wait=wait, timeout=timeout)
    from veneer.machines.launch import prepare_launch
    from veneer.machines.netsetup import configure_address

    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        layout.stop_request(name).unlink(missing_ok=True)  # of a stop that died before it ended
        record = load_machine(layout, name)
        root = layout.machine_root(name)
        owns_mount = not is_mounted(root)
        placeholder = RuntimeRecord(
            name=name, pid=os.getpid(), start_time=process_start_time(os.getpid()) or 0,
            mode=RuntimeMode.BOOT, started=time.time(), owns_mount=owns_mount, boot_id=current_boot_id(),
        )  # fmt: skip
        # Recorded before anything is set up, so a crash from here on is cleaned up by the next command.
        save_runtime(layout, placeholder)
        notify: socket.socket | None = None
        try:
            if owns_mount:
                mount_overlay_of(layout, record)
            init, app = _boot_plan(layout, record, root)
            launch = prepare_launch(
                layout, record, init=init, app=app, interactive=supervisor.terminal, supervisor=supervisor
            )
            if wait and init.notifies():
                notify = _bind_notify_socket(layout.notify_socket(name))
            supervisor.start(name, launch.argv, env={}, limits=record.limits, notify=notify is not None)
            pid = _wait_for_nspawn(layout, supervisor, name, timeout=timeout)
            runtime = replace(placeholder, pid=pid, start_time=process_start_time(pid) or 0, init=init)
            save_runtime(layout, runtime)
            leader = _wait_for_leader(layout, name, pid, app=init is InitKind.APP, timeout=timeout)
            configure_address(layout, record, leader)
            if wait:
                _wait_until_ready(layout, supervisor, name, runtime, init, notify, timeout=timeout)
        except BaseException:
            end_boot(layout, name, requested=True)
            raise
        finally:
            if notify is not None:
                notify.close()
                with contextlib.suppress(FileNotFoundError):
                    layout.notify_socket(name).unlink()
    logger.debug("Started machine '%s' (%s).", name, init.value)
    return runtime


def _boot_plan(layout: Layout, record: MachineRecord, root: Path) -> tuple[InitKind, AppProcess | None]:
    """What a start runs in the mounted machine: its init, or, in an image without one that names a
    command (an application image), that command as nspawn's PID 2."""
    if not has_init(root):
        from veneer.machines.app import image_run_config, resolve_app

        config = image_run_config(layout, record)
        if config is not None and config.command:
            return InitKind.APP, resolve_app(root, config)
    return detect_init(root), None


def _start_enabled(
    layout: Layout, supervisor: Supervisor, name: MachineName, *, wait: bool, timeout: float
) -> RuntimeRecord:
    """An enabled machine: its unit does the whole start (`boot_in_unit`, `configure_started`)."""
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
    supervisor.start_enabled(name)
    runtime = load_runtime(layout, name)
    if runtime is None or not is_alive(runtime) or runtime.init is None:
        raise _failure(layout, name, "failed to start")
    if wait:
        _wait_until_ready(layout, supervisor, name, runtime, runtime.init, None, timeout=timeout)
    logger.debug("Started machine '%s' (%s).", name, runtime.init.value)
    return runtime


def boot_in_unit(layout: Layout, name: MachineName) -> list[str]:
    """Run by an enabled machine's unit (ExecStart, `veneer _boot`): set the machine up as `start` does,
    and return nspawn's command line for the caller to exec, so that nspawn is the unit's main process
    (the pid recorded here). The lock is let go first: nspawn must not inherit it."""
    from veneer.machines.launch import prepare_launch

    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        record = load_machine(layout, name)
        root = layout.machine_root(name)
        runtime = RuntimeRecord(
            name=name, pid=os.getpid(), start_time=process_start_time(os.getpid()) or 0,
            mode=RuntimeMode.BOOT, started=time.time(), owns_mount=not is_mounted(root),
            boot_id=current_boot_id(),
        )  # fmt: skip
        save_runtime(layout, runtime)
        try:
            if runtime.owns_mount:
                mount_overlay_of(layout, record)
            init, app = _boot_plan(layout, record, root)
            supervisor = supervisor_for(layout)
            launch = prepare_launch(
                layout, record, init=init, app=app, interactive=supervisor.terminal, supervisor=supervisor
            )
            save_runtime(layout, replace(runtime, init=init))
        except BaseException:
            end_boot(layout, name, requested=True)
            raise
    return list(launch.argv)


def configure_started(layout: Layout, name: MachineName, *, timeout: float = START_TIMEOUT) -> None:
    """Run by an enabled machine's unit once nspawn runs (ExecStartPost, `veneer _started`): what `start`
    does from the host once the container exists (its address on the nat network)."""
    from veneer.machines.netsetup import configure_address

    with machine_lock(layout, name):
        runtime = load_runtime(layout, name)
        if runtime is None or not is_alive(runtime):
            raise _failure(layout, name, "stopped while starting")
        app = runtime.init is InitKind.APP
        leader = _wait_for_leader(layout, name, runtime.pid, app=app, timeout=timeout)
        configure_address(layout, load_machine(layout, name), leader)


def _bind_notify_socket(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(os.fspath(path))
    return sock


def _failure(layout: Layout, name: MachineName, what: str) -> MachineError:
    tail = _log_tail(layout, name)
    return MachineError(
        f"Machine '{name}' {what}" + (f":\n{tail}" if tail else ""),
        hint=f"See 'veneer logs {name}' for its console.",
    )


def _log_tail(layout: Layout, name: MachineName, lines: int = 8) -> str:
    with contextlib.suppress(OSError, Error):
        text = supervisor_for(layout).read_log(name, lines=lines).decode(errors="replace")
        return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())
    return ""


def _wait_for_nspawn(layout: Layout, supervisor: Supervisor, name: MachineName, *, timeout: float) -> int:
    """The pid of nspawn once the supervisor has started it."""
    deadline = time.monotonic() + timeout
    pauses = _pauses(supervisor)
    while time.monotonic() < deadline:
        pid = supervisor.nspawn_pid(name)
        if pid is not None:
            return pid
        if supervisor.ended(name):
            raise _failure(layout, name, "failed to start")
        time.sleep(next(pauses))
    raise _failure(layout, name, f"did not start within {timeout:.0f} s")


def _pauses(supervisor: Supervisor) -> Iterator[float]:
    """The pauses between a wait's questions to the supervisor: short at first, as most starts answer
    soon, doubling up to what the supervisor's answers cost (`longest_poll`)."""
    pause = min(POLL_INTERVAL, supervisor.longest_poll)
    while True:
        yield pause
        pause = min(pause * 2, supervisor.longest_poll)


def _wait_for_leader(
    layout: Layout, name: MachineName, pid: int, *, app: bool = False, timeout: float
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = find_leader(pid)
        if leader is not None:
            # Until the init is exec'd, the leader is still a copy of nspawn; an application's leader stays
            # one (nspawn's stub init), and its child becomes the application.
            if any(not _is_nspawn(p) for p in (child_pids(leader) if app else [leader])):
                return leader
        if process_start_time(pid) is None:
            raise _failure(layout, name, "stopped while starting")
        time.sleep(POLL_INTERVAL)
    raise _failure(layout, name, f"did not start its init within {timeout:.0f} s")


def _is_nspawn(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe").endswith("systemd-nspawn")
    except OSError:
        return True  # gone, or not exec'd yet: not the guest's own process


def _wait_until_ready(
    layout: Layout,
    supervisor: Supervisor,
    name: MachineName,
    runtime: RuntimeRecord,
    init: InitKind,
    notify: socket.socket | None,
    *,
    timeout: float,
) -> None:
    """systemd: until it reports READY=1 through nspawn (to the supervisor, or to veneer's socket). Other
    inits cannot tell: ready once PID 1 has started its first child (busybox init its console shell,
    sysvinit its rc scripts)."""
    deadline = time.monotonic() + timeout
    pauses = _pauses(supervisor)
    while time.monotonic() < deadline:
        if not is_alive(runtime):
            raise _failure(layout, name, "stopped while starting")
        reported = supervisor.ready(name)
        if init.notifies() and reported:
            return
        if notify is not None and reported is None:
            notify.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    return
        else:
            leader = find_leader(runtime.pid)
            if reported is not False and leader is not None and child_pids(leader):
                return
            time.sleep(next(pauses))
    raise _failure(layout, name, f"did not report ready within {timeout:.0f} s")


def stop_machine(layout: Layout, name: MachineName, *, timeout: float = STOP_TIMEOUT) -> bool:
    """Ask the machine's init to power off; kill it after `timeout`. False if it was not running."""
    with machine_lock(layout, name):
        runtime = _running_boot(layout, name)
        if runtime is None:
            return False
        runtime = replace(runtime, stopping=True)
        save_runtime(layout, runtime)
        # This stop cleans up: the supervisor need not start `veneer _reap` when nspawn exits.
        layout.stop_request(name).touch()
        init = runtime.init or InitKind.OTHER
        command = init.stop_command()
        if init is InitKind.APP:
            _signal_app(layout, name, runtime.pid)
        elif command is not None:
            from veneer.machines.inside import exec_in_machine

            with contextlib.suppress(MachineError):
                exec_in_machine(layout, name, command, quiet=True)
        else:
            # nspawn passes this on to the init as its --kill-signal, the init's own poweroff signal.
            with contextlib.suppress(ProcessLookupError):
                os.kill(runtime.pid, signal.SIGTERM)
        if not wait_for_exit(runtime.pid, runtime.start_time, timeout=timeout):
            logger.warning("Machine '%s' did not power off within %.0f s; killing it.", name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(runtime.pid, signal.SIGKILL)
            cgroups.kill_cgroups(supervisor_for(layout).cgroup(name))
        end_boot(layout, name, requested=True)
    logger.debug("Stopped machine '%s'.", name)
    return True


def _signal_app(layout: Layout, name: MachineName, nspawn_pid: int) -> None:
    """Send an application machine's process its image's stop signal (SIGTERM if it names none), as
    Podman does; when it exits, nspawn's stub init ends the machine."""
    from veneer.images.runconfig import signal_number
    from veneer.machines.app import image_run_config

    config = image_run_config(layout, load_machine(layout, name))
    number = signal_number(config.stop_signal) if config and config.stop_signal else signal.SIGTERM
    leader = find_leader(nspawn_pid)
    for pid in child_pids(leader) if leader is not None else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)


def restart_machine(
    layout: Layout, name: MachineName, *, wait: bool = False, timeout: float = START_TIMEOUT
) -> RuntimeRecord:
    """Stop the machine if it runs (within `STOP_TIMEOUT`), then start it as `start_machine` does."""
    stop_machine(layout, name)
    return start_machine(layout, name, wait=wait, timeout=timeout)


def kill_machine(layout: Layout, name: MachineName, *, signal_number: int = signal.SIGTERM) -> None:
    """Send a signal to every process of the running machine (as `machinectl kill` does)."""
    runtime = load_runtime(layout, name)
    if runtime is None or not is_alive(runtime) or runtime.mode is not RuntimeMode.BOOT:
        raise MachineError(f"Machine '{name}' is not running", hint=f"Start it with 'veneer start {name}'.")
    nspawn_pids = {runtime.pid}
    for pid in cgroups.cgroup_pids(supervisor_for(layout).cgroup(name)) - nspawn_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal_number)


def _running_boot(layout: Layout, name: MachineName) -> RuntimeRecord | None:
    recover_machine(layout, name)
    runtime = load_runtime(layout, name)
    if runtime is not None and runtime.mode is not RuntimeMode.BOOT:
        raise MachineBusy(
            f"Machine '{name}' runs a command ('veneer run'), it was not started",
            hint="Wait for the command to finish.",
        )
    return runtime


def reap_machine(layout: Layout, name: MachineName) -> None:
    """Called by the supervisor when a machine's nspawn exited: clean up unless a command holding
    the machine's lock (stop, start) is about to do it."""
    try:
        with machine_lock(layout, name):
            runtime = load_runtime(layout, name)
            if runtime is not None and runtime.mode is RuntimeMode.BOOT and not is_alive(runtime):
                end_boot(layout, name, requested=False)
    except MachineBusy:
        pass
