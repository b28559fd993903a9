"""Snapshots of a machine: a copy of its upper dir and its record, kept in the machine's directory
(`machines/NAME/snapshots/SNAP/{snapshot.json,upper}`), and the restore of one.

A snapshot costs one copy of the upper dir (`cp --reflink=auto`: shared blocks where the filesystem can).
It is made in the store's staging dir and renamed into place, so a killed snapshot leaves nothing. The
upper dir of a running machine is copied while the machine is frozen (the cgroup freezer), through a view
that follows none of its symlinks (`overlay.view`); `cp -a` keeps owners, modes, xattrs (trusted.overlay.*
too) and whiteouts exactly. A snapshot records the image revision the machine stood on; a rebase leaves
snapshots alone, a restore puts the machine back on that revision, and `image prune` keeps it.
The restore's own steps are in `machines.restoring`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import MachineName, NetworkMode, SnapshotName
from veneer.errors import ImageError, MachineError, SnapshotNotFound, StateCorrupt, UsageError
from veneer.images.store import load_image, prepare_store
from veneer.images.transfer import copy_tree
from veneer.machines import restoring
from veneer.machines.freeze import frozen
from veneer.machines.netsetup import allocate_machine_address
from veneer.machines.recovery import machine_lock, recover_machine, refuse_if_mounted, refuse_if_running
from veneer.machines.state import (
    MachineRecord,
    RuntimeMode,
    is_alive,
    list_machine_names,
    load_machine,
    load_runtime,
)
from veneer.machines.upper import check_upper
from veneer.overlay.view import nofollow_view
from veneer.util.fs import dir_size, locked, make_private_dir, remove_tree, save_json
from veneer.util.staging import staging_dir, trash

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One snapshot: when, of which revision, what it costs, and the machine's record at the time."""

    machine: MachineName
    name: SnapshotName
    created: float
    size_bytes: int
    frozen: bool  # taken from a running machine, frozen while its upper dir was copied
    record: MachineRecord

    @property
    def image(self) -> str:
        return self.record.image

    @property
    def revision(self) -> int:
        return self.record.revision

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "machine": self.machine,
            "name": self.name,
            "created": self.created,
            "size_bytes": self.size_bytes,
            "frozen": self.frozen,
            "image": self.image,
            "revision": self.revision,
            "record": self.record.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            machine=MachineName(data["machine"]),
            name=SnapshotName(data["name"]),
            created=float(data["created"]),
            size_bytes=int(data["size_bytes"]),
            frozen=bool(data["frozen"]),
            record=MachineRecord.from_json(data["record"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Taken:
    """What `take_snapshot` did: the new snapshot and the old ones `--keep` removed."""

    snapshot: Snapshot
    removed: tuple[SnapshotName, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Restored:
    """What `restore_snapshot` did: the snapshot, and the revision the machine was on before."""

    snapshot: Snapshot
    previous_revision: int


def _snapshot_upper(layout: Layout, name: MachineName, snapshot: str) -> Path:
    return layout.snapshot_dir(name, snapshot) / "upper"


def load_snapshot(layout: Layout, name: MachineName, snapshot: str) -> Snapshot:
    """One snapshot of the machine, or `SnapshotNotFound`."""
    path = layout.snapshot_dir(name, snapshot) / "snapshot.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        load_machine(layout, name)
        raise SnapshotNotFound(
            f"Machine '{name}' has no snapshot '{snapshot}'",
            hint=f"See its snapshots with 'veneer snapshot list {name}'.",
        ) from None
    except (OSError, ValueError) as e:
        raise StateCorrupt(f"Cannot read snapshot record '{path}': {e}") from e
    try:
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        return replace(Snapshot.from_json(data), machine=name, name=SnapshotName(snapshot))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise StateCorrupt(f"Snapshot record '{path}' is malformed: {e}") from e


def list_snapshots(layout: Layout, name: MachineName) -> list[Snapshot]:
    """The machine's snapshots, oldest first."""
    load_machine(layout, name)
    directory = layout.snapshots(name)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        with contextlib.suppress(SnapshotNotFound):  # removed meanwhile
            found.append(load_snapshot(layout, name, entry.name))
    return sorted(found, key=lambda s: (s.created, s.name))


def all_snapshots(layout: Layout) -> Iterator[Snapshot]:
    """Every snapshot of every machine of the store."""
    for name in list_machine_names(layout):
        with contextlib.suppress(MachineError):
            yield from list_snapshots(layout, name)


def snapshot_revisions(layout: Layout) -> set[tuple[str, int]]:
    """(image, revision) pairs some snapshot stands on: `image prune` keeps them for a restore."""
    return {(s.image, s.revision) for s in all_snapshots(layout)}


def _default_name(layout: Layout, name: MachineName) -> SnapshotName:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    candidate, n = stamp, 1
    while os.path.lexists(layout.snapshot_dir(name, candidate)):
        n += 1
        candidate = f"{stamp}-{n}"
    return SnapshotName(candidate)


def take_snapshot(
    layout: Layout, name: MachineName, snapshot: SnapshotName | None = None, *, keep: int | None = None
) -> Taken:
    """Copy the machine's upper dir and record into a new snapshot; a running machine is frozen while
    its upper dir is copied. With `keep`, then remove the oldest snapshots beyond that many."""
    if keep is not None and keep < 1:
        raise UsageError(f"Invalid --keep {keep}", hint="Keep 1 snapshot or more.")
    prepare_store(layout)
    with machine_lock(layout, name):
        recover_machine(layout, name)
        snapshot = snapshot or _default_name(layout, name)
        if os.path.lexists(layout.snapshot_dir(name, snapshot)):
            raise MachineError(
                f"Machine '{name}' has a snapshot '{snapshot}' already",
                hint=f"Pick another name, or remove it first: 'veneer snapshot rm {name} {snapshot}'.",
            )
        runtime = load_runtime(layout, name)
        running = runtime is not None and is_alive(runtime) and runtime.mode is RuntimeMode.BOOT
        with staging_dir(layout.staging, layout.lock, f"snapshot-{name}") as stage:
            (stage / "upper").mkdir()
            with frozen(layout, name) if running else contextlib.nullcontext():
                record = load_machine(layout, name)
                check_upper(layout, name)
                with nofollow_view(layout.machine_upper(name)) as upper:
                    copy_tree(upper, stage / "upper", allow_whiteouts=True)
            taken = Snapshot(
                machine=name,
                name=snapshot,
                created=time.time(),
                size_bytes=dir_size(stage / "upper"),
                frozen=running,
                record=record,
            )
            save_json(stage / "snapshot.json", taken.to_json())
            make_private_dir(layout.snapshots(name))
            os.rename(stage, layout.snapshot_dir(name, snapshot))
        removed: list[SnapshotName] = []
        if keep is not None:
            for old in list_snapshots(layout, name)[:-keep]:
                if old.name != snapshot:
                    _remove(layout, name, old.name)
                    removed.append(old.name)
    logger.debug("Took snapshot '%s' of machine '%s'.", snapshot, name)
    return Taken(snapshot=taken, removed=tuple(removed))


def remove_snapshot(layout: Layout, name: MachineName, snapshot: str) -> None:
    """Delete one snapshot of the machine."""
    with machine_lock(layout, name):
        load_snapshot(layout, name, snapshot)
        _remove(layout, name, snapshot)


def _remove(layout: Layout, name: MachineName, snapshot: str) -> None:
    with locked(layout.lock, what="The veneer store", wait=True):
        gone = trash(layout.snapshot_dir(name, snapshot), layout.staging)
    remove_tree(gone)


def refuse_missing_revision(layout: Layout, taken: Snapshot, *, verb: str) -> None:
    """Raise a clear error if the image revision the snapshot was taken on is no longer there."""
    try:
        load_image(layout, taken.image).layers_of(taken.revision)
    except ImageError as e:
        raise MachineError(
            f"Cannot {verb} snapshot '{taken.name}' of machine '{taken.machine}': it was taken on revision "
            f"{taken.revision} of image '{taken.image}', which is gone ({e.message})",
            hint=f"Its files are still in '{_snapshot_upper(layout, taken.machine, taken.name)}'; "
            f"remove it with 'veneer snapshot rm {taken.machine} {taken.name}'.",
        ) from e


def restore_snapshot(layout: Layout, name: MachineName, snapshot: str) -> Restored:
    """Put a stopped machine's upper dir and record back as the snapshot has them."""
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        refuse_if_mounted(layout, name)
        taken = load_snapshot(layout, name, snapshot)
        refuse_missing_revision(layout, taken, verb="restore")
        current = load_machine(layout, name)
        record = replace(
            current,
            image=taken.image,
            revision=taken.revision,
            network=taken.record.network,
            ports=taken.record.ports,
            binds=taken.record.binds,
            limits=taken.record.limits,
        )
        if record.network.mode is NetworkMode.NAT and record.address is None:
            with locked(layout.lock, what="The veneer store", wait=True):
                record = replace(record, address=allocate_machine_address(layout))
        restoring.discard_pending(layout, name)
        pending = restoring.pending_dir(layout, name)
        pending.mkdir(mode=0o700)
        (pending / "upper").mkdir()
        copy_tree(_snapshot_upper(layout, name, snapshot), pending / "upper", allow_whiteouts=True)
        restoring.commit_restore(layout, name, record, snapshot)
        restoring.finish_restore(layout, name)
    logger.debug("Restored machine '%s' from snapshot '%s'.", name, snapshot)
    return Restored(snapshot=taken, previous_revision=current.revision)
