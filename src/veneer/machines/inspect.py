"""Read-only views of machines: status, listing and the image/machine tree. Takes no locks."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.images.store import list_images
from veneer.machines.state import is_alive, list_machine_names, load_machine, load_runtime
from veneer.overlay.mount import is_mounted
from veneer.util.fs import dir_size


class MachineState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineStatus:
    """What a machine is now: its settings plus what runs and what it uses on disk."""

    name: str
    image: str
    revision: int
    state: MachineState
    pid: int | None
    network: str
    privileged: bool
    uid_base: int | None
    mounted: bool
    upper: str
    disk_bytes: int
    created: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "revision": self.revision,
            "state": self.state.value,
            "pid": self.pid,
            "network": self.network,
            "addresses": [],
            "privileged": self.privileged,
            "uid_base": self.uid_base,
            "mounted": self.mounted,
            "upper": self.upper,
            "disk_bytes": self.disk_bytes,
            "created": self.created,
        }


def machine_status(layout: Layout, name: MachineName) -> MachineStatus:
    """The status of one machine; a run whose process died counts as stopped."""
    record = load_machine(layout, name)
    runtime = load_runtime(layout, name)
    running = runtime is not None and is_alive(runtime)
    upper = layout.machine_upper(name)
    return MachineStatus(
        name=name,
        image=record.image,
        revision=record.revision,
        state=MachineState.RUNNING if running else MachineState.STOPPED,
        pid=runtime.pid if running and runtime is not None else None,
        network=record.network.value,
        privileged=record.privileged,
        uid_base=record.uid_base,
        mounted=is_mounted(layout.machine_root(name)),
        upper=str(upper),
        disk_bytes=dir_size(upper),
        created=record.created,
    )


def list_machines(layout: Layout) -> list[MachineStatus]:
    return [machine_status(layout, name) for name in list_machine_names(layout)]


def store_tree(layout: Layout) -> list[dict[str, Any]]:
    """Images, their revisions, and the machines on each revision."""
    machines = list_machines(layout)
    tree = []
    for image in list_images(layout):
        revisions = []
        for revision, layer in enumerate(image.layers):
            on_it = [m for m in machines if m.image == image.name and m.revision == revision]
            revisions.append(
                {
                    "revision": revision,
                    "created": layer.created,
                    "origin": layer.origin,
                    "machines": [{"name": m.name, "state": m.state.value} for m in on_it],
                }
            )
        tree.append({"name": image.name, "size_bytes": image.size_bytes, "revisions": revisions})
    return tree
