"""What `run` and `start` share before nspawn starts: the machine's cgroups and network set up, its
`RunSpec`, and the one command line that launches nspawn inside them (`runtime.nspawn.launch_argv`).

The caller holds the machine's lock, has mounted its overlay and recorded its runtime, and cleans up with
`recovery.end_run` or `recovery.end_boot` if anything here fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from veneer.config.layout import Layout
from veneer.config.settings import Bind
from veneer.machines.guest import InitKind
from veneer.machines.netsetup import attach_machine
from veneer.machines.state import MachineRecord
from veneer.runtime import cgroups
from veneer.runtime.base import RunSpec
from veneer.runtime.nspawn import (
    NSPAWN_STATE_DIR,
    is_systemd_host,
    launch_argv,
    needs_private_state_dir,
    nspawn_argv,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """How to start nspawn in a machine that is set up for it."""

    argv: tuple[str, ...]
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
) -> Launch:
    """Set up the machine's cgroups and network for nspawn running `command`, or booting `init`."""
    name = record.name
    root = layout.machine_root(name)
    dirs = cgroups.setup_cgroups(layout.cgroup(name), record.limits)
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
        interactive=interactive,
        user=user,
        workdir=workdir,
        env=tuple(env),
        binds=record.binds + tuple(binds),
        systemd_host=is_systemd_host(),
        boot=init is not None,
        kill_signal=None if init is None else init.kill_signal(),
        notify_ready=init is not None and init.notifies(),
    )
    private_state = needs_private_state_dir()
    if private_state:
        NSPAWN_STATE_DIR.mkdir(parents=True, exist_ok=True)
    argv = launch_argv(nspawn_argv(spec), cgroup_dirs=dirs, private_state=private_state)
    return Launch(argv=tuple(argv), nat=net.bridge is not None)
