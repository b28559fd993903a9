"""`veneer rebase` and `veneer commit`: moving machines between revisions, and revisions from machines."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from veneer.cli.args import layout_of
from veneer.cli.output import print_json
from veneer.config.values import parse_image_name, parse_machine_name
from veneer.errors import UsageError

if TYPE_CHECKING:
    from veneer.config.layout import Layout
    from veneer.machines.rebase import RebaseResult


def register(verbs: Any) -> None:
    rebase = verbs.add_parser(
        "rebase",
        help="move machines onto another revision of their image, keeping what they wrote",
        usage="veneer rebase NAME...|--all [--image IMAGE] [--to REV] [--dry-run] [--prefer child|base]\n"
        "       veneer rebase --undo NAME",
    )
    rebase.add_argument("names", nargs="*", type=parse_machine_name, metavar="NAME")
    rebase.add_argument("--all", action="store_true", help="every machine (of --image, if given)")
    add_rebase_options(rebase)
    rebase.add_argument(
        "--image", type=parse_image_name, help="move onto this image (default: the machine's)"
    )
    rebase.add_argument("--to", type=int, metavar="REV", help="this revision (default: the image's current)")
    rebase.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    rebase.add_argument("--undo", action="store_true", help="put the machine back as before its last rebase")
    rebase.add_argument("--json", action="store_true")
    rebase.set_defaults(handler=cmd_rebase)

    commit = verbs.add_parser("commit", help="turn a stopped machine's changes into a new image or revision")
    commit.add_argument("machine", type=parse_machine_name)
    commit.add_argument("image", nargs="?", type=parse_image_name, help="name of the new image")
    commit.add_argument(
        "--revision", action="store_true", help="make them the next revision of the machine's own image"
    )
    commit.set_defaults(handler=cmd_commit)


def add_rebase_options(parser: argparse.ArgumentParser) -> None:
    """The options `rebase` shares with `image update --rebase`."""
    parser.add_argument(
        "--prefer", choices=("child", "base"), default="child", help="whose version wins a conflict"
    )
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="refuse running machines instead of restarting",
    )


def rebase_and_print(
    layout: Layout, names: list[str], args: argparse.Namespace, *, dry_run: bool
) -> list[RebaseResult]:
    """Rebase (or plan) each machine in turn (`machines.rebase.rebase_all`), printing as it goes."""
    from veneer.cli.progress import stderr_progress
    from veneer.machines.rebase import RebaseFailure, rebase_all
    from veneer.rebase.merge import Prefer

    def report(outcome: RebaseResult | RebaseFailure) -> None:
        progress.clear()
        if isinstance(outcome, RebaseFailure):
            e = outcome.error
            print(
                f"{outcome.machine}: failed: {e.message}" + (f" ({e.hint})" if e.hint else ""),
                file=sys.stderr,
            )
        elif not args.json:
            _print_result(outcome)

    with stderr_progress() as progress:
        return rebase_all(
            layout, names, image=args.image, to=args.to, prefer=Prefer(args.prefer), restart=args.restart,
            dry_run=dry_run, report=report, progress=progress,
        )  # fmt: skip


def _print_result(result: RebaseResult) -> None:
    move = (
        f"'{result.source.image}' revision {result.source.revision} -> "
        f"'{result.target.image}' revision {result.target.revision}"
    )
    if result.source == result.target:
        print(f"{result.machine}: on '{result.target.image}' revision {result.target.revision} already.")
        return
    print(f"{result.machine}: {move}{'' if result.applied else ' (dry run)'}")
    for action in result.plan.actions:
        print("  " + action.describe().replace("\n", "\n  "))
    tail = f"  {result.plan.summary()}; {result.plan.examined} entries examined."
    if result.applied:
        tail += f" Undo with 'veneer rebase --undo {result.machine}'."
        if result.restarted:
            tail += " Restarted."
    print(tail)


def cmd_rebase(args: argparse.Namespace) -> int:
    from veneer.machines.rebase import undo_rebase
    from veneer.machines.state import machines_on

    layout = layout_of(args)
    if args.undo:
        if args.all or len(args.names) != 1:
            raise UsageError("--undo takes exactly one machine", hint="veneer rebase --undo NAME")
        source = undo_rebase(layout, args.names[0], restart=args.restart)
        print(f"{args.names[0]}: back on '{source.image}' revision {source.revision}, as before the rebase.")
        return 0
    if args.all == bool(args.names):
        raise UsageError("Name the machines to rebase, or pass --all", hint="veneer rebase NAME... | --all")
    names = list(machines_on(layout, args.image)) if args.all else args.names
    results = rebase_and_print(layout, names, args, dry_run=args.dry_run)
    if args.json:
        print_json([r.to_json() for r in results])
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from veneer.machines.revisions import commit_machine

    if args.revision == (args.image is not None):
        raise UsageError("Give a name for the new image, or --revision", hint="veneer commit MACHINE IMAGE")
    layout = layout_of(args)
    record = commit_machine(layout, args.machine, args.image, as_revision=args.revision)
    print(f"Image '{record.name}' revision {record.current} holds the changes of '{args.machine}'.")
    return 0
