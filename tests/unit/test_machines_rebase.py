"""Undoing a rebase whose undo was cut short: journal, machine record and lock, on plain files."""

import dataclasses
from pathlib import Path

import pytest

from veneer.config.layout import Layout
from veneer.config.settings import parse_machine_name
from veneer.errors import MachineNotFound, RebaseError
from veneer.machines.rebase import RebaseFailure, RebaseResult, rebase_all, undo_rebase
from veneer.machines.state import MachineRecord, load_machine, save_machine
from veneer.rebase import journal
from veneer.rebase.actions import Action, Operation, Plan, Verdict
from veneer.rebase.journal import Target
from veneer.util.staging import trash


def test_undo_asked_again_after_a_killed_undo_finishes_it(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path / "state", run=tmp_path / "run")
    name = parse_machine_name("c1")
    machine_dir, upper = layout.machine_dir(name), layout.machine_upper(name)
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/motd").write_text("the child's\n")
    record = MachineRecord(
        name=name, image="deb", revision=1, created=0.0, machine_id="0" * 32, uid_base=None
    )
    save_machine(layout.machine_record(name), record)
    action = Action(path="etc/motd", verdict=Verdict.CONFLICT, operation=Operation.REMOVE, reason="base's")
    journal.prepare(
        machine_dir,
        upper,
        Plan(actions=(action,), examined=2),
        source=Target(image="deb", revision=1),
        target=Target(image="deb", revision=2),
        prefer="base",
        trash=lambda path: trash(path, layout.staging),
    )
    journal.apply(machine_dir, upper)
    save_machine(layout.machine_record(name), dataclasses.replace(record, revision=2))
    journal.finish(machine_dir)
    assert not (upper / "etc/motd").exists()
    # An undo killed after it put the entries back, before it switched the machine record.
    journal.undo(machine_dir, upper, trash=lambda path: trash(path, layout.staging))
    assert journal.state(machine_dir) == journal.UNDOING

    # Asked again, the undo finishes: the lock resumes the interrupted one, and nothing is left to do.
    assert undo_rebase(layout, name) == Target(image="deb", revision=1)
    assert load_machine(layout, name).revision == 1
    assert (upper / "etc/motd").read_text() == "the child's\n"
    assert journal.state(machine_dir) is None


def test_rebase_all_tries_every_machine_then_names_those_that_failed(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path / "state", run=tmp_path / "run")
    heard: list[RebaseResult | RebaseFailure] = []
    with pytest.raises(RebaseError, match="Rebase failed for gone1, gone2"):
        rebase_all(layout, ["gone1", "gone2"], dry_run=True, report=heard.append)
    assert [(h.machine, type(h.error)) for h in heard if isinstance(h, RebaseFailure)] == [
        ("gone1", MachineNotFound),
        ("gone2", MachineNotFound),
    ]
    assert rebase_all(layout, [], report=heard.append) == []
