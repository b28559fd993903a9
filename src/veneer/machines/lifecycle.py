"""Machines: create, clone, rename, remove, mount, and run a command in one.

This module orchestrates; the mechanics live elsewhere (overlay mounts in `overlay.mount`, the nspawn
command line in `runtime.nspawn`, records in `machines.state`). Lock order: machine, then store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import (
    DEFAULT_NETWORK,
    Bind,
    ImageName,
    Limits,
    MachineName,
    Network,
    NetworkMode,
    Port,
    parse_machine_name,
)
from veneer.errors import CommandFailed, MachineBusy, MachineExists, MachineNotFound, StateCorrupt
from veneer.images.store import load_image, lower_dirs, prepare_store
from veneer.machines.diff import Change, diff_upper
from veneer.machines.guest import find_leader
from veneer.machines.idshift import shift_ownership
from veneer.machines.netsetup import (
    allocate_machine_address,
    attach_machine,
    configure_address,
)
from veneer.machines.recovery import (
    discard_machine,
    end_run,
    machine_lock,
    mount_overlay_of,
    recover_machine,
    refuse_if_mounted,
    refuse_if_running,
)
from veneer.machines.state import (
    UID_RANGE_FIRST,
    MachineRecord,
    RuntimeMode,
    RuntimeRecord,
    is_alive,
    list_machine_names,
    load_machine,
    load_runtime,
    process_start_time,
    save_machine,
    save_runtime,
)
from veneer.machines.uids import allocate_uid_range, rename_uid_range
from veneer.machines.upper import check_upper
from veneer.overlay.mount import is_mounted, unmount
from veneer.overlay.view import nofollow_view
from veneer.runtime import cgroups
from veneer.runtime.base import RunSpec
from veneer.runtime.nspawn import (
    NSPAWN_STATE_DIR,
    enter_private_state_dir,
    is_systemd_host,
    needs_private_state_dir,
    nspawn_argv,
)
from veneer.util.fs import locked, random_hex
from veneer.util.proc import spawn, wait_forwarding
from veneer.util.staging import staging_dir
from veneer.util.walk import TreeBudget

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How `run` executes its command, beyond the machine's own settings."""

    user: str | None = None
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    binds: tuple[Bind, ...] = field(default_factory=tuple)


def _refuse_existing(layout: Layout, name: MachineName) -> None:
    if layout.machine_dir(name).exists():
        raise MachineExists(
            f"Machine '{name}' exists already",
            hint=f"Pick another name, or remove it first with 'veneer rm {name}'.",
        )


def _publish_machine(layout: Layout, stage: Path, record: MachineRecord) -> MachineRecord:
    """Give a staged machine its uid range and rename it into place; the store lock must not be held."""
    with locked(layout.lock, what="The veneer store", wait=True):
        _refuse_existing(layout, record.name)
        load_image(layout, record.image).layers_of(record.revision)  # the image may be gone meanwhile
        if record.network.mode is NetworkMode.NAT and record.address is None:
            record = replace(record, address=allocate_machine_address(layout))
        if record.uid_base is not None:
            base = allocate_uid_range(layout, record.name)
            if base != record.uid_base:
                shift_ownership(stage / "upper", record.uid_base, base)
            record = replace(record, uid_base=base)
        save_machine(stage / "machine.json", record)
        os.rename(stage, layout.machine_dir(record.name))
    return record


def create_machine(
    layout: Layout,
    name: MachineName,
    image_name: ImageName,
    *,
    revision: int | None = None,
    privileged: bool = False,
    network: Network = DEFAULT_NETWORK,
    binds: Sequence[Bind] = (),
    ports: Sequence[Port] = (),
    limits: Limits | None = None,
    owner: tuple[int, int] | None = None,
) -> MachineRecord:
    """Make a machine as an empty overlay child of an image revision (no copy, whatever the base size)."""
    prepare_store(layout)
    sweep_ephemeral(layout)
    _refuse_existing(layout, name)
    image = load_image(layout, image_name)
    rev = image.latest if revision is None else revision
    image.layers_of(rev)
    with staging_dir(layout.staging, layout.lock, f"machine-{name}") as stage:
        # A provisional range: the real one is allocated under the store lock when publishing.
        uid_base = None if privileged else UID_RANGE_FIRST
        _make_machine_dirs(stage, uid_base)
        record = MachineRecord(
            name=name,
            image=image.name,
            revision=rev,
            created=time.time(),
            machine_id=random_hex(16),
            uid_base=uid_base,
            network=network,
            binds=tuple(binds),
            ports=tuple(ports),
            limits=limits or Limits(),
            owner=owner,
        )
        record = _publish_machine(layout, stage, record)
    logger.info("Created machine '%s' from image '%s' revision %d.", name, image.name, rev)
    return record


def _make_machine_dirs(stage: Path, uid_base: int | None) -> None:
    upper, work, root = stage / "upper", stage / "work", stage / "root"
    upper.mkdir(mode=0o755)
    work.mkdir(mode=0o700)
    root.mkdir(mode=0o755)
    if uid_base is not None:
        # Container root is host uid `uid_base`: it must own the top of the upper dir to write there.
        os.chown(upper, uid_base, uid_base)
    os.chmod(upper, 0o755)


def clone_machine(layout: Layout, source: MachineName, name: MachineName) -> MachineRecord:
    """Copy a stopped machine's writes and settings into a new machine with a uid range of its own."""
    from veneer.images.transfer import copy_tree

    prepare_store(layout)
    _refuse_existing(layout, name)
    with machine_lock(layout, source):
        original = load_machine(layout, source)
        refuse_if_running(layout, source)
        check_upper(layout, source)
        with staging_dir(layout.staging, layout.lock, f"machine-{name}") as stage:
            _make_machine_dirs(stage, original.uid_base)
            copy_tree(layout.machine_upper(source), stage / "upper", allow_whiteouts=True)
            record = MachineRecord(
                name=name,
                image=original.image,
                revision=original.revision,
                created=time.time(),
                machine_id=random_hex(16),
                uid_base=original.uid_base,
                network=original.network,
                binds=original.binds,
            )
            record = _publish_machine(layout, stage, record)
    logger.info("Cloned machine '%s' into '%s'.", source, name)
    return record


def rename_machine(layout: Layout, old: MachineName, new: MachineName) -> None:
    """Rename a stopped, unmounted machine; its uid range and writes stay."""
    with machine_lock(layout, old):
        refuse_if_running(layout, old)
        refuse_if_mounted(layout, old)
        with locked(layout.lock, what="The veneer store", wait=True):
            _refuse_existing(layout, new)
            # One rename: the record takes its name from the directory (see load_machine).
            os.rename(layout.machine_dir(old), layout.machine_dir(new))
            base = load_machine(layout, new).uid_base
            if base is not None:
                rename_uid_range(layout, old, new, base)
    logger.info("Renamed machine '%s' to '%s'.", old, new)


def change_machine(
    layout: Layout,
    name: MachineName,
    *,
    network: Network | None = None,
    ports: Sequence[Port] | None = None,
    memory: int | None = None,
    cpus: float | None = None,
    pids: int | None = None,
) -> MachineRecord:
    """Change the settings of a stopped machine; what is not given stays."""
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        record = load_machine(layout, name)
        old = record.limits
        limits = Limits(
            memory=old.memory if memory is None else memory,
            cpus=old.cpus if cpus is None else cpus,
            pids=old.pids if pids is None else pids,
        )
        record = replace(record, network=network or record.network, limits=limits)
        if ports is not None:
            record = replace(record, ports=tuple(ports))
        if record.network.mode is NetworkMode.NAT and record.address is None:
            with locked(layout.lock, what="The veneer store", wait=True):
                record = replace(record, address=allocate_machine_address(layout))
        save_machine(layout.machine_record(name), record)
    return record


def remove_machine(layout: Layout, name: MachineName, *, retire_range: bool = True) -> None:
    """Delete a stopped machine and everything it wrote. Its uid range is retired (see `machines.uids`)
    unless `retire_range` is False: a throwaway machine that had no binds left no file anywhere else."""
    prepare_store(layout)
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        discard_machine(layout, name, retire_range=retire_range)
    logger.info("Removed machine '%s'.", name)


def mount_machine(layout: Layout, name: MachineName) -> Path:
    """Mount a machine's overlay at its root dir (as `run` does) and return the path."""
    with machine_lock(layout, name):
        recover_machine(layout, name)
        root = layout.machine_root(name)
        if not is_mounted(root):
            mount_overlay_of(layout, load_machine(layout, name))
        return root


def umount_machine(layout: Layout, name: MachineName) -> None:
    """Unmount a machine's overlay; refused while a command runs in it."""
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        unmount(layout.machine_root(name))


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
        try:
            if owns_mount:
                mount_overlay_of(layout, record)
            net = attach_machine(layout, record, root)
            spec = RunSpec(
                name=name,
                root=root,
                nat_bridge=net.bridge,
                resolv_conf=net.resolv_conf,
                binds_ro=net.binds_ro,
                machine_id=record.machine_id,
                uid_base=record.uid_base,
                command=tuple(command),
                network=record.network,
                interactive=sys.stdin.isatty() and sys.stdout.isatty(),
                user=options.user,
                workdir=options.workdir,
                env=options.env,
                binds=record.binds + options.binds,
                systemd_host=is_systemd_host(),
            )
            # veneer locks its machines itself; nspawn's lock files would land next to the machine's root.
            env = {"SYSTEMD_NSPAWN_LOCK": "0"}
            if "TERM" in os.environ:
                env["TERM"] = os.environ["TERM"]
            private_state = needs_private_state_dir()
            if private_state:
                NSPAWN_STATE_DIR.mkdir(parents=True, exist_ok=True)
            dirs = cgroups.setup_cgroups(layout.cgroup(name), record.limits)

            def before_exec() -> None:
                # In the child, in this order: cgroups first, so nspawn and all below it are counted.
                cgroups.join_cgroups(dirs)
                if private_state:
                    enter_private_state_dir()

            process = spawn(nspawn_argv(spec), env=env, before_exec=before_exec)
            _save_runtime(layout, name, process.pid, owns_mount)
            if net.bridge is not None:
                _configure_when_ready(layout, record, process.pid)
            return wait_forwarding(process)
        finally:
            end_run(layout, name, owns_mount=owns_mount)


def _configure_when_ready(layout: Layout, record: MachineRecord, nspawn_pid: int) -> None:
    """Set the address of a run's nat network once nspawn has made the container (its command waits)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process_start_time(nspawn_pid) is not None:
        leader = find_leader(nspawn_pid)
        if leader is not None:
            with contextlib.suppress(CommandFailed):  # host0 may not be there yet: try again
                configure_address(layout, record, leader)
                return
        time.sleep(0.005)


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
        ),
    )


def run_ephemeral(
    layout: Layout,
    image_name: ImageName,
    command: Sequence[str],
    options: RunOptions = RunOptions(),
    *,
    network: Network = DEFAULT_NETWORK,
) -> int:
    """Run a command in a throwaway child of the image, removed afterwards whatever happens."""
    name = parse_machine_name(f"eph-{random_hex(4)}")
    me = os.getpid()
    create_machine(layout, name, image_name, network=network, owner=(me, process_start_time(me) or 0))
    try:
        return run_machine(layout, name, command, options)
    finally:
        with contextlib.suppress(MachineNotFound):
            remove_machine(layout, name, retire_range=bool(options.binds))


def sweep_ephemeral(layout: Layout) -> None:
    """Remove throwaway machines whose `run --ephemeral` or `image update` died without removing them
    (kill -9). Their command is stopped too: nobody waits for it any more."""
    for name in list_machine_names(layout):
        with contextlib.suppress(MachineNotFound, MachineBusy, StateCorrupt):
            owner = load_machine(layout, name).owner
            if owner is not None and process_start_time(owner[0]) != owner[1]:
                logger.info(
                    "Removing '%s', left by a 'veneer run --ephemeral' or 'image update' that died.", name
                )
                runtime = load_runtime(layout, name)
                if runtime is not None and is_alive(runtime):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(runtime.pid, signal.SIGKILL)
                    cgroups.kill_cgroups(layout.cgroup(name))
                remove_machine(layout, name)


def machines_using(layout: Layout, image: str) -> list[str]:
    """Names of the machines whose base is `image`."""
    return [n for n in list_machine_names(layout) if load_machine(layout, n).image == image]


def diff_machine(layout: Layout, name: MachineName) -> list[Change]:
    """What the machine added, changed and deleted relative to its base revision."""
    record = load_machine(layout, name)
    lowers = lower_dirs(layout, load_image(layout, record.image), record.revision)
    with nofollow_view(layout.machine_upper(name)) as upper:
        budget = TreeBudget(f"Machine '{name}'")
        return diff_upper(upper, lowers, uid_base=record.uid_base, budget=budget)
