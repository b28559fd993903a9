"""The host-wide registry of machines' uid ranges, so that no two machines on a host share host uids.

Every store on the host allocates from one file, `Layout.uid_registry` (/var/lib/veneer-uids/ranges.json,
or under $VENEER_UIDS), whatever its root; the file is changed under an flock on its directory. Each entry
is a 65536-id range that one machine of one store uses, or a retired one: its machine was removed, but
files it left outside its own directory (on a `--bind` directory) still carry its uids, so the next
machine must not get them. Allocation takes the lowest range no entry names; only when none is left does
it reuse the range retired longest ago (or one whose store or machine is gone), with a warning. Throwaway
machines without binds (`run --ephemeral`, `image update`) leave nothing behind, so their ranges are
freed at once.

Each change first reconciles the entries of the caller's store with its machine records: machines made
before the registry existed are registered with the ranges they have, entries of machines that are gone
are retired. Callers hold their store's lock, so its machines do not change meanwhile.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import UID_RANGE_SIZE, MachineName
from veneer.errors import MachineError, MachineNotFound, StateCorrupt
from veneer.machines.state import UID_RANGE_FIRST, UID_RANGE_LAST, list_machine_names, load_machine
from veneer.util.fs import locked, make_private_dir, save_json, try_lock

logger = logging.getLogger(__name__)

REGISTRY_VERSION = 1


class RangeState(enum.StrEnum):
    USED = "used"
    RETIRED = "retired"  # its machine is gone; files it left may still carry these uids


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeEntry:
    """A uid range, the store and machine it belongs (or belonged) to, and since when."""

    base: int
    state: RangeState
    store: str
    machine: str
    since: float

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "state": self.state.value,
            "store": self.store,
            "machine": self.machine,
            "since": self.since,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RangeEntry:
        return cls(
            base=int(data["base"]),
            state=RangeState(data["state"]),
            store=str(data["store"]),
            machine=str(data["machine"]),
            since=float(data["since"]),
        )


def load_ranges(path: Path) -> list[RangeEntry]:
    """The registry's entries; none if it does not exist yet."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise StateCorrupt(
            f"Cannot read the registry of uid ranges '{path}': {e}",
            hint="Restore it from a backup: it records which host uids every machine on this host owns.",
        ) from e
    try:
        if data.get("version") != REGISTRY_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        return [RangeEntry.from_json(entry) for entry in data["ranges"]]
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        raise StateCorrupt(f"The registry of uid ranges '{path}' is malformed: {e}") from e


@contextlib.contextmanager
def _registry(layout: Layout) -> Iterator[list[RangeEntry]]:
    """The entries, under the registry's lock, reconciled with this store's machines; saved afterwards."""
    make_private_dir(layout.uids)
    with locked(layout.uids, what="The registry of uid ranges", wait=True, directory=True):
        entries = load_ranges(layout.uid_registry)
        before = list(entries)
        _reconcile(layout, entries)
        yield entries
        if entries != before:
            entries.sort(key=lambda e: (e.base, e.store, e.machine))
            save_json(
                layout.uid_registry, {"version": REGISTRY_VERSION, "ranges": [e.to_json() for e in entries]}
            )


def _reconcile(layout: Layout, entries: list[RangeEntry]) -> None:
    """Register this store's machines that the registry does not know; retire entries of its machines that
    are gone or have another range now."""
    store = os.fspath(layout.root)
    ranges: dict[str, int | None] = {}  # machine name -> its range
    for name in list_machine_names(layout):
        with contextlib.suppress(MachineNotFound, StateCorrupt):  # an unreadable record: leave it be
            ranges[name] = load_machine(layout, name).uid_base
    now = time.time()
    for index, entry in enumerate(entries):
        if entry.store != store or entry.state is not RangeState.USED:
            continue
        if entry.machine in ranges and ranges[entry.machine] != entry.base:
            entries[index] = replace(entry, state=RangeState.RETIRED, since=now)
        elif entry.machine not in ranges and not layout.machine_record(entry.machine).exists():
            entries[index] = replace(entry, state=RangeState.RETIRED, since=now)
    known = {(e.machine, e.base) for e in entries if e.store == store and e.state is RangeState.USED}
    for machine, base in ranges.items():
        if base is None or (machine, base) in known:
            continue
        for other in entries:
            if other.base == base and other.state is RangeState.USED:
                logger.warning(
                    "Machine '%s' shares its uid range %d with machine '%s' of the store %s (both made "
                    "before veneer kept one registry per host); clone one and remove the original to "
                    "separate them.",
                    machine, base, other.machine, other.store,
                )  # fmt: skip
        entries.append(RangeEntry(base=base, state=RangeState.USED, store=store, machine=machine, since=now))


def allocate_uid_range(layout: Layout, name: MachineName) -> int:
    """A range no machine on the host has, registered for machine `name` of this store."""
    with _registry(layout) as entries:
        taken = {e.base for e in entries}
        base = next(
            (b for b in range(UID_RANGE_FIRST, UID_RANGE_LAST + 1, UID_RANGE_SIZE) if b not in taken), None
        )
        if base is None:
            base = _reuse_oldest(layout, entries)
        entries.append(
            RangeEntry(
                base=base,
                state=RangeState.USED,
                store=os.fspath(layout.root),
                machine=name,
                since=time.time(),
            )
        )
        return base


def _reuse_oldest(layout: Layout, entries: list[RangeEntry]) -> int:
    reusable = [e for e in entries if e.state is RangeState.RETIRED or _orphaned(layout, e)]
    if not reusable:
        raise MachineError(
            "No free uid range is left for a new machine: every range on this host belongs to a machine",
            hint="Remove machines you no longer need ('veneer rm NAME').",
        )
    oldest = min(reusable, key=lambda e: e.since)
    entries.remove(oldest)
    logger.warning(
        "Every uid range has been used: reusing %d of removed machine '%s' (store %s). Files it left "
        "outside its own directory (on bind mounts) belong to the new machine.",
        oldest.base, oldest.machine, oldest.store,
    )  # fmt: skip
    return oldest.base


def _orphaned(layout: Layout, entry: RangeEntry) -> bool:
    """Whether a used range belongs to a machine whose store or record is gone (another store's entries are
    not reconciled here). A store that is publishing a machine holds its lock: its entries count as used."""
    other = replace(layout, root=Path(entry.store))
    if not other.machines.is_dir():
        return True
    fd = try_lock(other.lock)
    if fd is None:
        return False
    try:
        return not other.machine_record(entry.machine).exists()
    finally:
        os.close(fd)


def release_uid_range(layout: Layout, name: MachineName, base: int, *, retire: bool) -> None:
    """After machine `name` of this store is gone: its range is retired, or with `retire=False` (a machine
    that wrote nothing outside its own directory) free again."""
    store = os.fspath(layout.root)
    with _registry(layout) as entries:  # reconciling retires the entry of the removed machine
        if not retire:
            _forget_retired(layout, entries, name, base)
        elif not any(e.store == store and e.machine == name and e.base == base for e in entries):
            # Made before the registry and removed before anything registered it.
            entries.append(
                RangeEntry(base=base, state=RangeState.RETIRED, store=store, machine=name, since=time.time())
            )


def rename_uid_range(layout: Layout, old: MachineName, new: MachineName, base: int) -> None:
    """The range of machine `old` of this store belongs to `new`, after a rename."""
    with _registry(layout) as entries:  # reconciling has retired `old` and registered `new` already
        _forget_retired(layout, entries, old, base)


def _forget_retired(layout: Layout, entries: list[RangeEntry], name: str, base: int) -> None:
    store = os.fspath(layout.root)
    entries[:] = [
        e
        for e in entries
        if not (e.store == store and e.machine == name and e.base == base and e.state is RangeState.RETIRED)
    ]
