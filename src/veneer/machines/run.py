"""Running one command in a machine in the foreground (`veneer run`): stdio and exit status passed through.

The machine's overlay is mounted for the run if it was not mounted, and everything the run set up is
undone when it ends (`recovery.end_run`), also after a kill -9 of veneer (by the next command).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import Bind, MachineName, Network, NetworkMode
from veneer.errors import NetworkError
from veneer.machines.app import image_run_config, resolve_app
from veneer.machines.guest import find_leader
from veneer.machines.launch import prepare_launch
from veneer.machines.netsetup import configure_address
from veneer.machines.recovery import end_run, machine_lock, mount_overlay_of, refuse_if_running
from veneer.machines.state import (
    MachineRecord,
    RuntimeMode,
    RuntimeRecord,
    current_boot_id,
    load_machine,
    process_start_time,
    save_runtime,
)
from veneer.overlay.mount import is_mounted
from veneer.runtime.nspawn import NSPAWN_ENV
from veneer.runtime.supervisor import supervisor_for
from veneer.util.proc import spawn, wait_forwarding

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How `run` executes its command, beyond the machine's own settings."""

    user: str | None = None
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    binds: tuple[Bind, ...] = field(default_factory=tuple)
    network: Network | None = None  # this run only, instead of the machine's own (`veneer cp`: none)
    # Run as the image's run config says (`veneer run`), the settings above overriding it; else only
    # the command given, as root.
    app: bool = False
    entrypoint: tuple[str, ...] | None = None  # with `app`: instead of the image's (Cmd is then dropped)


def run_machine(
    layout: Layout,
    name: MachineName,
    command: Sequence[str],
    options: RunOptions = RunOptions(),
) -> int:
    """Run a command in the machine in the foreground; return its exit status."""
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        record = load_machine(layout, name)
        if record.privileged:
            logger.warning("Machine '%s' runs privileged: container root is host root.", name)
        root = layout.machine_root(name)
        owns_mount = not is_mounted(root)
        # Record before mounting, so a crash from here on is found and cleaned up by the next command.
        _save_runtime(layout, name, os.getpid(), owns_mount)
        if options.network is not None:
            record = replace(record, network=options.network)
        gate_path = layout.address_gate(name) if record.network.mode is NetworkMode.NAT else None
        try:
            if owns_mount:
                mount_overlay_of(layout, record)
            app = None
            if options.app:
                app = resolve_app(
                    root,
                    image_run_config(layout, record),
                    command=command,
                    entrypoint=options.entrypoint,
                    user=options.user,
                    workdir=options.workdir,
                    env=options.env,
                )
            launch = prepare_launch(
                layout,
                record,
                command=command,
                interactive=sys.stdin.isatty() and sys.stdout.isatty(),
                user=None if options.app else options.user,
                workdir=options.workdir,
                env=options.env,
                binds=options.binds,
                app=app,
                supervisor=supervisor_for(layout),
                address_gate=gate_path,
            )
            env = dict(NSPAWN_ENV)
            if "TERM" in os.environ:
                env["TERM"] = os.environ["TERM"]
            with _address_gate(gate_path, owner=record.uid_base) as gate:
                process = spawn(launch.argv, env=env, before_exec=launch.before_exec)
                _save_runtime(layout, name, process.pid, owns_mount)
                if gate is not None:
                    _configure_when_ready(layout, record, process.pid)
                    _open_gate(gate)
                return wait_forwarding(process)
        finally:
            end_run(layout, name, owns_mount=owns_mount)


@contextlib.contextmanager
def _address_gate(path: Path | None, *, owner: int | None) -> Iterator[int | None]:
    """A FIFO that a nat run's command waits on until its address is set (`runtime.nspawn`), held open
    read-write for the whole run: the guest's open never blocks, and the line written stays until read."""
    if path is None:
        yield None
        return
    # The machine's command may run as any of its users, so the FIFO is readable by all; its directory
    # keeps the host's users away from it.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a veneer that was killed
    os.mkfifo(path, 0o600)
    os.chmod(path, 0o604)  # not through mkfifo's mode, which the umask narrows
    if owner is not None:  # the machine's root
        os.chown(path, owner, owner)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _open_gate(gate: int) -> None:
    # Non-blocking: the machine can write to the gate too, and must not make veneer wait on a full pipe.
    with contextlib.suppress(BlockingIOError):
        os.write(gate, b"\n")


def _configure_when_ready(layout: Layout, record: MachineRecord, nspawn_pid: int) -> None:
    """Set the address of a run's nat network once nspawn has made the container (its command waits at
    the gate). Reading /proc costs no process, so the wait can be short."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process_start_time(nspawn_pid) is not None:
        leader = find_leader(nspawn_pid)
        if leader is not None:
            with contextlib.suppress(NetworkError):  # host0 may not be there yet: try again
                configure_address(layout, record, leader)
                return
        time.sleep(0.001)


def _save_runtime(layout: Layout, name: MachineName, pid: int, owns_mount: bool) -> None:
    start_time = process_start_time(pid)
    if start_time is None:
        return  # it has ended already; the record of the caller (kept until cleanup) says enough
    save_runtime(
        layout,
        RuntimeRecord(
            name=name,
            pid=pid,
            start_time=start_time,
            mode=RuntimeMode.RUN,
            started=time.time(),
            owns_mount=owns_mount,
            boot_id=current_boot_id(),
        ),
    )
