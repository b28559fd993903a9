"""What `run` and `start` share before nspawn starts: the machine's cgroups and network set up, its
`RunSpec`, and how nspawn is launched inside them (`runtime.nspawn.launch_argv` for a boot,
`launch_in_child` for a run).

The caller holds the machine's lock, has mounted its overlay and recorded its runtime, and cleans up with
`recovery.end_run` or `recovery.end_boot` if anything here fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import Bind
from veneer.errors import MachineError
from veneer.machines.app import AppProcess
from veneer.machines.guest import InitKind
from veneer.machines.netsetup import attach_machine
from veneer.machines.state import MachineRecord
from veneer.runtime.base import RunSpec
from veneer.runtime.nspawn import nspawn_argv
from veneer.runtime.supervisor import Supervisor


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """How to start nspawn in a machine that is set up for it."""

    argv: tuple[str, ...]
    # For a caller that forks nspawn itself (`run`): what nspawn's process does between fork and exec.
    before_exec: Callable[[], None] | None
    nat: bool  # on veneer's nat network: its address is set from the host once the container exists


def prepare_launch(
    layout: Layout,
    record: MachineRecord,
    *,
    command: Sequence[str] = (),
    init: InitKind | None = None,
    interactive: bool,
    user: str | None = None,
    workdir: str | None = None,
    env: Sequence[tuple[str, str]] = (),
    binds: Sequence[Bind] = (),
    app: AppProcess | None = None,
    supervisor: Supervisor,
    address_gate: Path | None = None,
) -> Launch:
    """Set up the machine's network and the command line that launches nspawn running `command` (or
    `app`'s), or booting `init` (`InitKind.APP`: `app` under nspawn's stub init), confined by `supervisor`
    (its cgroups and limits)."""
    name = record.name
    for bind in (*record.binds, *binds):
        # Checked here, before the network is set up: nspawn's own "Failed to stat" names no option.
        if not os.path.exists(bind.source):
            raise MachineError(
                f"Cannot bind '{bind.source}' into machine '{name}': it does not exist on the host",
                hint="Create it first, or leave out that --bind.",
            )
    root = layout.machine_root(name)
    if app is not None:
        command, workdir, env = app.command, app.workdir, app.env
    boot = init is not None and init is not InitKind.APP
    net = attach_machine(layout, record, root)
    spec = RunSpec(
        name=name,
        root=root,
        machine_id=record.machine_id,
        uid_base=record.uid_base,
        command=tuple(command),
        network=record.network,
        nat_bridge=net.bridge,
        resolv_conf=net.resolv_conf,
        binds_ro=net.binds_ro,
        address_gate=address_gate,
        interactive=interactive,
        user=user,
        workdir=workdir,
        env=tuple(env),
        binds=record.binds + tuple(binds),
        register=supervisor.registers,
        boot=boot,
        as_pid2=init is InitKind.APP,
        ids=None if app is None else app.ids,
        kill_signal=None if init is None else init.kill_signal(),
        notify_ready=init is not None and init.notifies(),
    )
    confined = supervisor.confine(name, record.limits, nspawn_argv(spec), boot=init is not None)
    return Launch(argv=confined.argv, before_exec=confined.before_exec, nat=net.bridge is not None)
