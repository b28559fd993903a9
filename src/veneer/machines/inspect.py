"""Views of machines: status, listing and the image/machine tree. They clean up after machines that
died (kill -9), so what they report is the truth; otherwise they change nothing."""

from __future__ import annotations

import contextlib
import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veneer.config.layout import Layout
from veneer.config.settings import MachineName, NetworkMode
from veneer.errors import MachineBusy, StateCorrupt
from veneer.machines.guest import find_leader
from veneer.machines.restoring import restore_interrupted
from veneer.machines.state import (
    RuntimeMode,
    is_alive,
    list_machine_names,
    load_exit,
    load_machine,
    load_runtime,
    rebase_interrupted,
)
from veneer.machines.sweep import sweep_ephemeral
from veneer.machines.upper import upper_disk_bytes
from veneer.overlay.mount import is_mounted

if TYPE_CHECKING:
    from veneer.machines.snapshots import Snapshot


class MachineState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"  # its last boot ended on its own with a non-zero status


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineStatus:
    """What a machine is now: its settings plus what runs and what it uses on disk."""

    name: str
    image: str
    revision: int
    state: MachineState
    pid: int | None  # the leader: the machine's init (boot) or nspawn (run)
    exit_status: int | None
    started: float | None
    init: str | None
    network: str
    addresses: list[str]
    ports: list[str]
    privileged: bool
    uid_base: int | None
    mounted: bool
    upper: str
    disk_bytes: int
    snapshots: int
    snapshot_bytes: int  # what its snapshots cost on disk: one copy of the upper dir each
    created: float
    limits: dict[str, int | float | None]
    last_rebase: dict[str, Any] | None  # what `rebase --undo` would undo: from, to, summary, created

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "revision": self.revision,
            "state": self.state.value,
            "pid": self.pid,
            "exit_status": self.exit_status,
            "uptime": None if self.started is None else round(time.time() - self.started, 3),
            "init": self.init,
            "network": self.network,
            "addresses": self.addresses,
            "ports": self.ports,
            "privileged": self.privileged,
            "uid_base": self.uid_base,
            "mounted": self.mounted,
            "upper": self.upper,
            "disk_bytes": self.disk_bytes,
            "snapshots": self.snapshots,
            "snapshot_bytes": self.snapshot_bytes,
            "created": self.created,
            "limits": self.limits,
            "last_rebase": self.last_rebase,
        }


def machine_status(layout: Layout, name: MachineName) -> MachineStatus:
    """The status of one machine; a run or boot whose processes died counts as stopped (or failed)."""
    # Recovery (and the network, cgroup and mount code under it) is loaded only when there is something to
    # recover: `list` and `status` of machines that are fine stay cheap to start.
    record = load_machine(layout, name)
    runtime = load_runtime(layout, name)
    unfinished = runtime is None and (
        rebase_interrupted(layout.machine_dir(name)) or restore_interrupted(layout, name)
    )
    if unfinished or layout.freeze_record(name).exists():
        # Taking the lock finishes the rebase or restore, and thaws a machine a killed snapshot froze.
        from veneer.machines.recovery import machine_lock

        with contextlib.suppress(MachineBusy), machine_lock(layout, name):
            record = load_machine(layout, name)
    if runtime is not None and not is_alive(runtime):
        # Something was killed without cleaning up: report the truth and clean up, unless another
        # command holds the machine and is about to.
        from veneer.machines.recovery import machine_lock, recover_machine

        with contextlib.suppress(MachineBusy):
            with machine_lock(layout, name):
                recover_machine(layout, name)
        runtime = load_runtime(layout, name)
    running = runtime is not None and is_alive(runtime)
    last = load_exit(layout, name)
    if running:
        state = MachineState.RUNNING
    elif runtime is None and last is not None and last.failed:
        state = MachineState.FAILED
    elif runtime is not None and runtime.mode is RuntimeMode.BOOT and not runtime.stopping:
        state = MachineState.FAILED  # died without anyone cleaning up yet (kill -9)
    else:
        state = MachineState.STOPPED
    leader = None
    if running and runtime is not None:
        leader = find_leader(runtime.pid) if runtime.mode is RuntimeMode.BOOT else runtime.pid
    upper = layout.machine_upper(name)
    snapshots = _snapshots(layout, name)
    nat = record.network.mode is NetworkMode.NAT
    return MachineStatus(
        name=name,
        image=record.image,
        revision=record.revision,
        state=state,
        pid=leader,
        exit_status=None if running or last is None else last.status,
        started=runtime.started if running and runtime is not None else None,
        init=runtime.init if running and runtime is not None else None,
        network=str(record.network),
        # Only nat gives the machine its recorded address: one moved to another network keeps it reserved.
        addresses=[record.address] if running and record.address and nat else [],
        ports=[str(p) for p in record.ports],
        privileged=record.privileged,
        uid_base=record.uid_base,
        mounted=is_mounted(layout.machine_root(name)),
        upper=str(upper),
        disk_bytes=upper_disk_bytes(layout, name),
        snapshots=len(snapshots),
        snapshot_bytes=sum(s.size_bytes for s in snapshots),
        created=record.created,
        limits=record.limits.to_json(),
        last_rebase=_last_rebase(layout.machine_dir(name)),
    )


def _snapshots(layout: Layout, name: MachineName) -> list[Snapshot]:
    if not layout.snapshots(name).is_dir():
        return []  # most machines: no need to load the snapshot machinery (copies, freezer) to say so
    from veneer.machines.snapshots import list_snapshots

    return list_snapshots(layout, name)


def _last_rebase(machine_dir: Path) -> dict[str, Any] | None:
    if not (machine_dir / "rebase" / "head.json").exists():
        return None
    from veneer.rebase.journal import load_report  # only for machines that were rebased

    with contextlib.suppress(StateCorrupt, KeyError):
        report = load_report(machine_dir, head=True)
        return {key: report[key] for key in ("from", "to", "summary", "created")}
    return None


def list_machines(layout: Layout) -> list[MachineStatus]:
    sweep_ephemeral(layout)  # throwaway machines of a killed `run --ephemeral` or `image update`
    return [machine_status(layout, name) for name in list_machine_names(layout)]


def store_tree(layout: Layout) -> list[dict[str, Any]]:
    """Images, their revisions, and the machines on each revision."""
    from veneer.images.store import list_images

    machines = list_machines(layout)
    tree = []
    for image in list_images(layout):
        revisions = []
        for revision in image.revisions:
            on_it = [m for m in machines if m.image == image.name and m.revision == revision.number]
            revisions.append(
                {
                    "revision": revision.number,
                    "current": revision.number == image.current,
                    "created": revision.created,
                    "origin": revision.command,
                    "machines": [{"name": m.name, "state": m.state.value} for m in on_it],
                }
            )
        tree.append({"name": image.name, "size_bytes": image.size_bytes, "revisions": revisions})
    return tree
