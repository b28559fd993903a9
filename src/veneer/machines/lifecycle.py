"""Machines: create, clone, rename, change, remove, mount, diff; and a throwaway machine for one command.

This module orchestrates; the mechanics live elsewhere (overlay mounts in `overlay.mount`, records in
`machines.state`, the lock and crash cleanup in `machines.recovery`, the foreground run in `machines.run`).
Lock order: machine, then store. `RunOptions` and `run_machine` are importable from here too, as image
update has always done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
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
from veneer.errors import MachineExists, MachineNotFound
from veneer.images.store import load_image, lower_dirs, prepare_store
from veneer.machines.diff import Change, diff_upper
from veneer.machines.idshift import shift_ownership
from veneer.machines.netsetup import (
    allocate_machine_address,
    refuse_missing_bridge,
)
from veneer.machines.recovery import (
    discard_machine,
    machine_lock,
    mount_overlay_of,
    recover_machine,
    refuse_if_mounted,
    refuse_if_running,
)

# Re-exported: image update and other callers import these two from here.
from veneer.machines.run import RunOptions as RunOptions
from veneer.machines.run import run_machine as run_machine
from veneer.machines.state import (
    UID_RANGE_FIRST,
    MachineRecord,
    RuntimeMode,
    load_machine,
    load_runtime,
    process_start_time,
    save_machine,
)
from veneer.machines.sweep import sweep_ephemeral
from veneer.machines.uids import allocate_uid_range, rename_uid_range
from veneer.machines.upper import check_upper
from veneer.overlay.mount import is_mounted, unmount
from veneer.overlay.view import nofollow_view
from veneer.runtime.supervisor import supervisor_for
from veneer.util.fs import locked, random_hex
from veneer.util.staging import staging_dir
from veneer.util.walk import TreeBudget

logger = logging.getLogger(__name__)


def refuse_existing_machine(layout: Layout, name: MachineName) -> None:
    if layout.machine_dir(name).exists():
        raise MachineExists(
            f"Machine '{name}' exists already",
            hint=f"Pick another name, or remove it first with 'veneer rm {name}'.",
        )


def _publish_machine(layout: Layout, stage: Path, record: MachineRecord) -> MachineRecord:
    """Give a staged machine its uid range and rename it into place; the store lock must not be held."""
    with locked(layout.lock, what="The veneer store", wait=True):
        return publish_staged_machine(layout, stage, record)


def publish_staged_machine(layout: Layout, stage: Path, record: MachineRecord) -> MachineRecord:
    """Give the machine staged in `stage` (its upper dir owned in the range `record.uid_base`) a uid range
    of its own and an address, and rename it into place; the caller holds the store lock."""
    refuse_existing_machine(layout, record.name)
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
    refuse_existing_machine(layout, name)
    refuse_missing_bridge(network)
    image = load_image(layout, image_name)
    rev = image.latest if revision is None else revision
    image.layers_of(rev)
    with staging_dir(layout.staging, layout.lock, f"machine-{name}") as stage:
        # A provisional range: the real one is allocated under the store lock when publishing.
        uid_base = None if privileged else UID_RANGE_FIRST
        make_machine_dirs(stage, uid_base)
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
    logger.debug("Created machine '%s' from image '%s' revision %d.", name, image.name, rev)
    return record


def make_machine_dirs(stage: Path, uid_base: int | None) -> None:
    upper, work, root = stage / "upper", stage / "work", stage / "root"
    upper.mkdir(mode=0o755)
    work.mkdir(mode=0o700)
    root.mkdir(mode=0o755)
    if uid_base is not None:
        # Container root is host uid `uid_base`: it must own the top of the upper dir to write there.
        os.chown(upper, uid_base, uid_base)
    os.chmod(upper, 0o755)


def clone_machine(
    layout: Layout, source: MachineName, name: MachineName, *, snapshot: str | None = None
) -> MachineRecord:
    """Copy a stopped machine's writes and settings into a new machine with a uid range of its own; or,
    from `snapshot`, the writes and settings that snapshot of it holds (the machine may run)."""
    from veneer.images.transfer import copy_tree
    from veneer.machines.snapshots import load_snapshot, refuse_missing_revision

    prepare_store(layout)
    refuse_existing_machine(layout, name)
    with machine_lock(layout, source):
        original = load_machine(layout, source)
        if snapshot is None:
            refuse_if_running(layout, source)
            check_upper(layout, source)
            settings, upper = original, layout.machine_upper(source)
        else:
            taken = load_snapshot(layout, source, snapshot)
            refuse_missing_revision(layout, taken, verb="clone")
            settings, upper = taken.record, layout.snapshot_dir(source, snapshot) / "upper"
        with staging_dir(layout.staging, layout.lock, f"machine-{name}") as stage:
            make_machine_dirs(stage, original.uid_base)
            copy_tree(upper, stage / "upper", allow_whiteouts=True)
            record = MachineRecord(
                name=name,
                image=settings.image,
                revision=settings.revision,
                created=time.time(),
                machine_id=random_hex(16),
                uid_base=original.uid_base,
                network=settings.network,
                binds=settings.binds,
            )
            record = _publish_machine(layout, stage, record)
    logger.debug("Cloned machine '%s' into '%s'.", source, name)
    return record


def rename_machine(layout: Layout, old: MachineName, new: MachineName) -> None:
    """Rename a stopped, unmounted machine; its uid range and writes stay."""
    with machine_lock(layout, old):
        refuse_if_running(layout, old)
        refuse_if_mounted(layout, old)
        with locked(layout.lock, what="The veneer store", wait=True):
            refuse_existing_machine(layout, new)
            # One rename: the record takes its name from the directory (see load_machine).
            os.rename(layout.machine_dir(old), layout.machine_dir(new))
            base = load_machine(layout, new).uid_base
            if base is not None:
                rename_uid_range(layout, old, new, base)
    logger.debug("Renamed machine '%s' to '%s'.", old, new)


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
    """Change the settings of a machine; what is not given stays. The limits of a running machine change
    at once (its supervisor applies them), and an enabled machine's unit is rewritten with them; its
    network and ports change only while it is stopped."""
    if network is not None:
        refuse_missing_bridge(network)
    with machine_lock(layout, name):
        recover_machine(layout, name)
        runtime = load_runtime(layout, name)
        if runtime is not None and (
            network is not None or ports is not None or runtime.mode is RuntimeMode.RUN
        ):
            refuse_if_running(layout, name)
        record = load_machine(layout, name)
        old = record.limits
        limits = Limits(
            memory=old.memory if memory is None else memory,
            cpus=old.cpus if cpus is None else cpus,
            pids=old.pids if pids is None else pids,
        )
        supervisor = supervisor_for(layout)
        if runtime is not None:
            supervisor.set_limits(name, limits)
        record = replace(record, network=network or record.network, limits=limits)
        if ports is not None:
            record = replace(record, ports=tuple(ports))
        if record.network.mode is NetworkMode.NAT and record.address is None:
            with locked(layout.lock, what="The veneer store", wait=True):
                record = replace(record, address=allocate_machine_address(layout))
        save_machine(layout.machine_record(name), record)
        if supervisor.enabled(name):
            from veneer.machines.units import refresh_unit

            refresh_unit(layout, name)
    return record


def remove_machine(layout: Layout, name: MachineName, *, retire_range: bool = True) -> None:
    """Delete a stopped machine and everything it wrote. Its uid range is retired (see `machines.uids`)
    unless `retire_range` is False: a throwaway machine that had no binds left no file anywhere else."""
    prepare_store(layout)
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        discard_machine(layout, name, retire_range=retire_range)
    logger.debug("Removed machine '%s'.", name)


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


def diff_machine(layout: Layout, name: MachineName) -> list[Change]:
    """What the machine added, changed and deleted relative to its base revision."""
    record = load_machine(layout, name)
    lowers = lower_dirs(layout, load_image(layout, record.image), record.revision)
    with nofollow_view(layout.machine_upper(name)) as upper:
        budget = TreeBudget(f"Machine '{name}'")
        return diff_upper(upper, lowers, uid_base=record.uid_base, budget=budget)
