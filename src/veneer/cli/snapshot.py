"""Snapshot verbs: `snapshot NAME [SNAP]`, `snapshot list [NAME]`, `snapshot rm NAME SNAP...`, `restore`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from veneer.cli.args import layout_of
from veneer.cli.output import human_size, print_json, print_table, when
from veneer.config.values import parse_machine_name, parse_snapshot_name
from veneer.errors import UsageError

if TYPE_CHECKING:
    from veneer.config.layout import Layout
    from veneer.machines.snapshots import Snapshot

USAGE = """veneer snapshot NAME [SNAP] [--keep N]
       veneer snapshot list [NAME] [--json]
       veneer snapshot rm NAME SNAP..."""


def register(verbs: Any) -> None:
    snapshot = verbs.add_parser(
        "snapshot",
        help="take a snapshot of a machine (its upper dir and record), list or remove snapshots",
        usage=USAGE,
    )
    snapshot.add_argument("words", nargs="+", metavar="NAME [SNAP] | list [NAME] | rm NAME SNAP")
    snapshot.add_argument(
        "--keep", type=int, metavar="N", help="then remove the machine's oldest snapshots beyond N"
    )
    snapshot.add_argument("--json", action="store_true")
    snapshot.set_defaults(handler=cmd_snapshot)

    restore = verbs.add_parser("restore", help="put a stopped machine back as a snapshot of it has it")
    restore.add_argument("name", type=parse_machine_name)
    restore.add_argument("snapshot", type=parse_snapshot_name, metavar="SNAP")
    restore.set_defaults(handler=cmd_restore)


def cmd_snapshot(args: argparse.Namespace) -> int:
    layout = layout_of(args)
    words: list[str] = args.words
    if words[0] == "list":
        if len(words) > 2:
            raise UsageError("Too many names for 'snapshot list'", hint="Use: veneer snapshot list [NAME]")
        return _list(layout, words[1:], json=args.json)
    if words[0] == "rm":
        if len(words) < 3:
            raise UsageError(
                "Name the machine and its snapshots", hint="Use: veneer snapshot rm NAME SNAP..."
            )
        return _remove(layout, words[1], words[2:])
    if len(words) > 2:
        raise UsageError(
            f"Unexpected argument(s): {' '.join(words[2:])}", hint=f"Use: {USAGE.splitlines()[0]}"
        )
    return _take(layout, words[0], words[1] if len(words) > 1 else None, keep=args.keep)


def _take(layout: Layout, machine: str, snap: str | None, *, keep: int | None) -> int:
    from veneer.machines.snapshots import take_snapshot

    name = parse_machine_name(machine)
    taken = take_snapshot(layout, name, None if snap is None else parse_snapshot_name(snap), keep=keep)
    snapshot = taken.snapshot
    how = "running, frozen while its files were copied" if snapshot.frozen else "stopped"
    print(
        f"Took snapshot '{snapshot.name}' of machine '{name}' ({how}; revision {snapshot.revision} of "
        f"'{snapshot.image}', {human_size(snapshot.size_bytes)})."
    )
    for old in taken.removed:
        print(f"Removed snapshot '{old}' (--keep {keep}).")
    return 0


def _list(layout: Layout, machines: list[str], *, json: bool) -> int:
    from veneer.machines.snapshots import all_snapshots, list_snapshots
    from veneer.machines.state import load_machine

    if machines:
        found = list_snapshots(layout, parse_machine_name(machines[0]))
    else:
        found = list(all_snapshots(layout))
    if json:
        print_json([{k: v for k, v in s.to_json().items() if k != "record"} for s in found])
        return 0
    revisions = {s.machine: load_machine(layout, s.machine).revision for s in found}
    rows = [
        (s.machine, s.name, when(s.created), f"{s.image}@{s.revision}", human_size(s.size_bytes),
         _note(s, revisions[s.machine]))
        for s in found
    ]  # fmt: skip
    print_table(("MACHINE", "SNAPSHOT", "CREATED", "IMAGE", "SIZE", "NOTE"), rows)
    return 0


def _note(snapshot: Snapshot, revision: int) -> str:
    frozen = "taken running" if snapshot.frozen else ""
    if snapshot.revision != revision:
        return ", ".join(filter(None, [frozen, f"machine now on revision {revision}"]))
    return frozen


def _remove(layout: Layout, machine: str, snaps: list[str]) -> int:
    from veneer.machines.snapshots import remove_snapshot

    name = parse_machine_name(machine)
    for snap in snaps:
        remove_snapshot(layout, name, parse_snapshot_name(snap))
        print(f"Removed snapshot '{snap}' of machine '{name}'.")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from veneer.machines.snapshots import restore_snapshot

    restored = restore_snapshot(layout_of(args), args.name, args.snapshot)
    snapshot = restored.snapshot
    print(f"Restored machine '{args.name}' from snapshot '{snapshot.name}' ({when(snapshot.created)}).")
    if snapshot.revision != restored.previous_revision:
        print(
            f"It is back on revision {snapshot.revision} of image '{snapshot.image}', which the snapshot "
            f"was taken on; it was on revision {restored.previous_revision} (rebased since). To move it on "
            f"again: 'veneer rebase {args.name} --to {restored.previous_revision}' (or the image's current "
            f"revision: 'veneer rebase {args.name}')."
        )
    return 0
