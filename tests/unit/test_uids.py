"""The host-wide registry of uid ranges, on stores in tmp_path (no root needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from veneer.config.layout import Layout
from veneer.config.settings import UID_RANGE_SIZE, MachineName
from veneer.errors import MachineError
from veneer.machines import uids
from veneer.machines.state import UID_RANGE_FIRST
from veneer.machines.uids import (
    RangeEntry,
    RangeState,
    allocate_uid_range,
    load_ranges,
    release_uid_range,
    rename_uid_range,
)

ENTRY = RangeEntry(base=0x70010000, state=RangeState.RETIRED, store="/srv/a", machine="web", since=1.5)
ENTRY_JSON = {"base": 0x70010000, "state": "retired", "store": "/srv/a", "machine": "web", "since": 1.5}
FIRST, SECOND, THIRD = (UID_RANGE_FIRST + n * UID_RANGE_SIZE for n in range(3))


def store(tmp_path: Path, name: str) -> Layout:
    layout = Layout(root=tmp_path / name, run=tmp_path / "run", uids=tmp_path / "uids")
    layout.machines.mkdir(parents=True)
    return layout


def add_machine(layout: Layout, name: str, base: int) -> None:
    """A published machine as far as the registry looks: its record's uid_base."""
    layout.machine_dir(name).mkdir()
    record = {"version": 1, "name": name, "image": "bb", "revision": 0, "created": 1.0}
    record.update(machine_id="0" * 32, uid_base=base, network="none")
    layout.machine_record(name).write_text(json.dumps(record))


def states(layout: Layout) -> list[tuple[int, str, str, str]]:
    return [
        (e.base, e.state.value, os.path.basename(e.store), e.machine)
        for e in load_ranges(layout.uid_registry)
    ]


def test_registry_entry_golden() -> None:
    assert ENTRY.to_json() == ENTRY_JSON
    assert RangeEntry.from_json(ENTRY_JSON) == ENTRY


def test_stores_share_ranges_and_removed_ones_are_retired(tmp_path: Path) -> None:
    a, b = store(tmp_path, "a"), store(tmp_path, "b")
    assert allocate_uid_range(a, MachineName("m1")) == FIRST
    add_machine(a, "m1", FIRST)
    assert allocate_uid_range(b, MachineName("m1")) == SECOND
    add_machine(b, "m1", SECOND)
    os.unlink(a.machine_record("m1"))
    release_uid_range(a, MachineName("m1"), FIRST, retire=True)
    assert allocate_uid_range(b, MachineName("m2")) == THIRD, "a retired range is not handed out again"
    assert states(b) == [
        (FIRST, "retired", "a", "m1"),
        (SECOND, "used", "b", "m1"),
        (THIRD, "used", "b", "m2"),
    ]


def test_throwaway_ranges_are_freed_and_renames_follow(tmp_path: Path) -> None:
    a = store(tmp_path, "a")
    allocate_uid_range(a, MachineName("eph"))
    release_uid_range(a, MachineName("eph"), FIRST, retire=False)  # never published: gone already
    assert states(a) == []
    allocate_uid_range(a, MachineName("old"))
    add_machine(a, "old", FIRST)
    a.machine_dir("old").rename(a.machine_dir("new"))
    rename_uid_range(a, MachineName("old"), MachineName("new"), FIRST)
    assert states(a) == [(FIRST, "used", "a", "new")]


def test_machines_made_before_the_registry_are_registered(tmp_path: Path) -> None:
    a = store(tmp_path, "a")
    add_machine(a, "legacy", SECOND)
    assert allocate_uid_range(a, MachineName("m1")) == FIRST
    assert allocate_uid_range(store(tmp_path, "b"), MachineName("m1")) == THIRD
    # One removed before anything registered it is retired all the same.
    c = store(tmp_path, "c")
    release_uid_range(c, MachineName("gone"), 0x7F000000, retire=True)
    assert (0x7F000000, "retired", "c", "gone") in states(c)


def test_reuse_only_when_everything_else_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uids, "UID_RANGE_LAST", SECOND)
    a, b = store(tmp_path, "a"), store(tmp_path, "b")
    for name, base in (("m1", FIRST), ("m2", SECOND)):
        allocate_uid_range(a, MachineName(name))
        add_machine(a, name, base)
    with pytest.raises(MachineError, match="No free uid range"):
        allocate_uid_range(b, MachineName("n1"))
    os.unlink(a.machine_record("m2"))
    release_uid_range(a, MachineName("m2"), SECOND, retire=True)
    assert allocate_uid_range(b, MachineName("n1")) == SECOND
    # A store that is gone leaves its ranges to be reused as well.
    os.rename(a.root, tmp_path / "elsewhere")
    assert allocate_uid_range(b, MachineName("n2")) == FIRST
