"""Machine records on disk (settings in the state root, pids in the runtime root) and liveness checks.

Records are JSON with `"version": 1`, written atomically. A machine runs only if its recorded pid exists
*and* /proc/<pid>/stat shows the recorded start time, so a recycled pid is never taken for the machine.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import (
    DEFAULT_NETWORK,
    Bind,
    Limits,
    MachineName,
    Network,
    Port,
    parse_network,
    parse_port,
)
from veneer.errors import MachineNotFound, StateCorrupt
from veneer.machines.guest import InitKind
from veneer.util.fs import atomic_write, save_json
from veneer.util.procfs import process_start_time as process_start_time

RECORD_VERSION = 1
# Each machine owns 65536 host uids and gids, as systemd-nspawn's --private-users expects. veneer's ranges
# start above nspawn's own "pick" range (0x00080000-0x6FFF0000) and stay below 2^31.
UID_RANGE_FIRST = 0x70000000
UID_RANGE_LAST = 0x7FFD0000  # 0x7FFE0000-0x7FFEFFFF is systemd's "foreign" range


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineRecord:
    """A machine's settings: which image revision it is a child of, and how it runs."""

    name: MachineName
    image: str
    revision: int
    created: float
    machine_id: str
    uid_base: int | None  # None: privileged, no user namespace
    network: Network = DEFAULT_NETWORK
    address: str | None = None  # nat: the machine's address in the pool, fixed at create
    ports: tuple[Port, ...] = ()
    binds: tuple[Bind, ...] = field(default_factory=tuple)
    limits: Limits = field(default_factory=Limits)
    owner: tuple[int, int] | None = None  # (pid, start time) of the `run --ephemeral` it belongs to

    @property
    def privileged(self) -> bool:
        return self.uid_base is None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "name": self.name,
            "image": self.image,
            "revision": self.revision,
            "created": self.created,
            "machine_id": self.machine_id,
            "uid_base": self.uid_base,
            "network": str(self.network),
            "address": self.address,
            "ports": [str(p) for p in self.ports],
            "binds": [
                {"source": b.source, "target": b.target, "readonly": b.readonly, "options": b.options}
                for b in self.binds
            ],
            "limits": self.limits.to_json(),
            "owner": None if self.owner is None else list(self.owner),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineRecord:
        return cls(
            name=MachineName(data["name"]),
            image=data["image"],
            revision=int(data["revision"]),
            created=float(data["created"]),
            machine_id=data["machine_id"],
            uid_base=None if data["uid_base"] is None else int(data["uid_base"]),
            network=parse_network(data["network"]),
            address=data.get("address"),
            ports=tuple(parse_port(p) for p in data.get("ports", [])),
            binds=tuple(Bind(**b) for b in data.get("binds", [])),
            limits=Limits.from_json(data.get("limits", {})),
            owner=None if data.get("owner") is None else (int(data["owner"][0]), int(data["owner"][1])),
        )


class RuntimeMode(enum.StrEnum):
    """What runs for a machine; the values are those of the runtime record on disk."""

    RUN = "run"  # a foreground command (`veneer run`)
    BOOT = "boot"  # the machine's init, in the background (`veneer start`)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeRecord:
    """What is running for a machine: the nspawn process and whether veneer mounted the overlay for it."""

    name: MachineName
    pid: int
    start_time: int
    mode: RuntimeMode
    started: float
    owns_mount: bool  # veneer mounted the overlay for this run and unmounts it afterwards
    init: InitKind | None = None  # boot: the init it boots
    stopping: bool = False  # boot: veneer asked it to stop, so its exit is no failure
    # The host's boot it runs in: after a reboot a pid (and its start time) may be another process's.
    boot_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "name": self.name,
            "pid": self.pid,
            "start_time": self.start_time,
            "mode": self.mode.value,
            "started": self.started,
            "owns_mount": self.owns_mount,
            "init": None if self.init is None else self.init.value,
            "stopping": self.stopping,
            "boot_id": self.boot_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeRecord:
        return cls(
            name=MachineName(data["name"]),
            pid=int(data["pid"]),
            start_time=int(data["start_time"]),
            mode=RuntimeMode(data["mode"]),
            started=float(data["started"]),
            owns_mount=bool(data["owns_mount"]),
            init=None if data.get("init") is None else InitKind(data["init"]),
            stopping=bool(data.get("stopping", False)),
            boot_id=data.get("boot_id"),
        )


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StateCorrupt(
            f"Cannot read {what} '{path}': {e}", hint="Restore the file from a backup or remove the object."
        ) from e
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        raise StateCorrupt(
            f"Unknown record version in '{path}'", hint="This record was written by another veneer version."
        )
    return data


def load_machine(layout: Layout, name: MachineName) -> MachineRecord:
    """Read a machine's settings, or raise `MachineNotFound`."""
    path = layout.machine_record(name)
    if not path.exists():
        raise MachineNotFound(f"No machine named '{name}'", hint="See 'veneer list' for the machines.")
    try:
        # The directory is the name: a rename moves the directory, never rewrites the record.
        return replace(MachineRecord.from_json(_load_json(path, "machine record")), name=name)
    except (KeyError, ValueError, TypeError) as e:
        raise StateCorrupt(f"Machine record '{path}' is malformed: {e}") from e


def save_machine(path: Path, record: MachineRecord) -> None:
    save_json(path, record.to_json())


def list_machine_names(layout: Layout) -> list[MachineName]:
    """Names of the published machines, sorted."""
    if not layout.machines.is_dir():
        return []
    return sorted(MachineName(p.name) for p in layout.machines.iterdir() if (p / "machine.json").exists())


def machines_on(layout: Layout, image: str | None, *, throwaway: bool = False) -> list[MachineName]:
    """The machines on `image` (on any image with None), sorted. The throwaway machines of a
    `run --ephemeral` or an `image update` in progress only with `throwaway`: a rebase leaves them be,
    but they keep their image from being removed."""
    records = [load_machine(layout, name) for name in list_machine_names(layout)]
    return [
        r.name for r in records if (throwaway or r.owner is None) and (image is None or r.image == image)
    ]


def load_runtime(layout: Layout, name: MachineName) -> RuntimeRecord | None:
    """The runtime record of a machine, or None if it has none."""
    path = layout.runtime_record(name)
    if not path.exists():
        return None
    try:
        return RuntimeRecord.from_json(_load_json(path, "runtime record"))
    except (KeyError, ValueError, TypeError) as e:
        raise StateCorrupt(f"Runtime record '{path}' is malformed: {e}") from e


def save_runtime(layout: Layout, record: RuntimeRecord) -> None:
    layout.runtime_record(record.name).parent.mkdir(parents=True, exist_ok=True)
    # Not durable: a runtime record means nothing after a reboot (`boot_id`), and the rename alone keeps
    # readers from seeing half of one.
    text = json.dumps(record.to_json(), indent=2) + "\n"
    atomic_write(layout.runtime_record(record.name), text, durable=False)


def remove_runtime(layout: Layout, name: MachineName) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.runtime_record(name))


def current_boot_id() -> str:
    """The kernel's id of this boot of the host."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def is_alive(record: RuntimeRecord) -> bool:
    """Whether the recorded process still runs (same boot of the host, same pid and same start time).

    A runtime dir on a disk (VENEER_RUN) outlives a reboot, and with it a record whose pid and start time
    (clock ticks since boot) may well match a process of the new boot."""
    if record.boot_id is not None and record.boot_id != current_boot_id():
        return False
    return process_start_time(record.pid) == record.start_time


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitRecord:
    """How a machine's last boot ended: nspawn's exit status, and whether veneer had asked it to stop."""

    status: int
    requested: bool
    ended: float

    @property
    def failed(self) -> bool:
        return self.status != 0 and not self.requested

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "status": self.status,
            "requested": self.requested,
            "ended": self.ended,
        }


def load_exit(layout: Layout, name: MachineName) -> ExitRecord | None:
    path = layout.exit_record(name)
    if not path.exists():
        return None
    data = _load_json(path, "exit record")
    return ExitRecord(
        status=int(data["status"]), requested=bool(data["requested"]), ended=float(data["ended"])
    )


def save_exit(layout: Layout, name: MachineName, record: ExitRecord) -> None:
    save_json(layout.exit_record(name), record.to_json())


def rebase_interrupted(machine_dir: Path) -> bool:
    """Whether a rebase or its undo was cut short (a cheap check: two stats in the usual case); recovery
    resumes it."""
    try:
        return (machine_dir / "rebase" / "state").read_text().strip() != "applied"
    except FileNotFoundError:
        return (machine_dir / "rebase.new").exists()
